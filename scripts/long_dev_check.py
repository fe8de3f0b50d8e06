"""Long-document development check: how should a model with a 512-token table read longer texts?

Data (development only, never training): the GIMP user manual as Debian ships it (`gimp-help-LANG`, a source
that none of our training or evaluation data comes from). Per language, the corpus is every manual page of
at least --min-tokens tokens; queries are (a) each page's title, (b) its section headings that start past
the first 512 tokens of the page and occur in no other page (the text that truncation never reads) and (c)
two sentences of the page past its first 512 tokens that no other page holds (a needle test on real text:
the page's other windows share its topic). The relevant document is the page. Score: nDCG@10 (the eval
harness's metric). --kind picks the adapters: retrieval (query / passage) or a symmetric kind on both sides.

One encoding pass per overlap gives every pooling at once: "cut" (the first window only: truncation at the
table), "mean" (mean of the windows' mean-pooled vectors; the Embedder's "tokens" pooling is the same here,
since every window of a long text is full), "unit" (mean of the windows' normalised vectors), "cut+mean"
(the normalised sum of the two: the opening counts as much as the whole), "tokens" (windows weighted by the
text tokens they read). Layouts: OVERLAP:PREFIX, the prefix "repeat"ed in every window or read "once".
--cache keeps the window vectors.

    apt-get download gimp-help-en gimp-help-de ...; dpkg -x each .deb into ROOT
    python scripts/long_dev_check.py ROOT --langs en de ja --layouts 0:repeat 0:once [--model DIR]
"""

from __future__ import annotations

import argparse
import html
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

import taskembed
from taskembed.adapters import KINDS
from taskembed.eval.metrics import ndcg_at_k

HEADING = re.compile(r"<h([1-4])[^>]*>(.*?)</h\1>", re.S)
TAG = re.compile(r"<[^>]+>")
# section numbers: "1.2. ", "9 ", "A. ", "A.1. " (the capital of "Chapter" or "A Brief ..." stays)
SECTION_NUMBER = re.compile(r"^(\d+(\.\d+)*\.?|[A-Z](\.\d+)*\.)\s+")
UP = re.compile(r'<link rel="up" href="([^"]+)"')  # DocBook's parent section of a page


def _text(fragment: str) -> str:
    return re.sub(r"\s+", " ", html.unescape(TAG.sub(" ", fragment))).strip()


def _clean_heading(h: str) -> str:
    return SECTION_NUMBER.sub("", _text(h).replace("\xa0", " ")).strip()


def read_pages(folder: Path) -> list[dict]:
    """Manual pages: title, body text, headings with their character offsets in the body, the parent
    section's file ("up", None when the page names none)."""
    pages = []
    for f in sorted(folder.glob("*.html")):
        raw = f.read_text(encoding="utf-8", errors="replace")
        m = re.search(r'<div class="(?:sect|chapter|article|refentry|appendix)[^"]*".*', raw, re.S)
        if not m:
            continue
        body_html = re.split(r'<div class="navfooter"', m.group(0))[0]
        heads = [(mh.start(), _clean_heading(mh.group(2))) for mh in HEADING.finditer(body_html)]
        if not heads or not heads[0][1]:
            continue
        text, offsets, pos = [], [], 0
        for start, head in heads:  # offset of each heading in the plain text
            text.append(_text(body_html[pos:start]))
            offsets.append((len(" ".join(text)), head))
            pos = start
        body = _text(body_html)
        up = UP.search(raw)
        pages.append({"id": f.name, "title": heads[0][1], "text": body,
                      "headings": [(min(o, len(body)), h) for o, h in offsets[1:]], "up": up and up.group(1)})
    return pages


def build_task(pages: list[dict], emb, min_tokens: int, max_tokens: int):
    counts = emb.tokenizer.count_tokens([p["text"] for p in pages])
    docs = [p for p, n in zip(pages, counts, strict=True) if n >= min_tokens]
    for d in docs:
        enc = emb.tokenizer.backend.encode(d["text"], add_special_tokens=False)
        d["cut_char"] = enc.offsets[min(509, len(enc.offsets) - 1)][1]  # end of what one window reads
        if len(enc.offsets) > max_tokens:
            d["text"] = d["text"][: enc.offsets[max_tokens - 1][1]]
    seen: dict[str, int] = {}
    for p in pages:
        for _, h in p["headings"]:
            seen[h.lower()] = seen.get(h.lower(), 0) + 1
    titles = [(d["title"], i) for i, d in enumerate(docs)]
    deep = [(h, i) for i, d in enumerate(docs) for o, h in d["headings"]
            if o > d["cut_char"] and o < len(d["text"]) and seen.get(h.lower()) == 1 and len(h.split()) >= 2]
    return docs, titles, deep, deep_sentences(docs, SENTENCES_PER_PAGE)


SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[。！？])")
SENTENCES_PER_PAGE = 2


def deep_sentences(docs: list[dict], per_page: int) -> list[tuple[str, int]]:
    """Sentences past a page's first window that no other page holds, evenly spaced, a few per page: a
    needle test on real text (every window of a page shares its topic; only the sentence names the page)."""
    found = []
    for i, d in enumerate(docs):
        sents = []
        for s in SENTENCE_END.split(d["text"][d["cut_char"]:])[1:]:  # the first piece may start mid-sentence
            long_enough = len(s.split()) >= 8 or (len(s.split()) < 3 and len(s) >= 30)  # CJK: no spaces
            if long_enough and len(s) < 400:
                sents.append(s.strip())
        sents = [s for s in sents if sum(s in other["text"] for other in docs) == 1]
        step = max(len(sents) // per_page, 1)
        found += [(s, i) for s in sents[step // 2 :: step][:per_page]]
    return found


def window_vectors(emb, texts: list[str], task: str):
    """(vectors per window, owner, tokens per window) in one pass over all windows."""
    prefixed, task_ids = emb.prepare(texts, task)
    ids = emb.tokenizer.encode(prefixed, max_length=100_000).ids
    pooling, emb.window_pooling = emb.window_pooling, "tokens"  # weights = text tokens per window
    try:
        seqs, owner, weights = emb.split_windows(ids, task_ids)
    finally:
        emb.window_pooling = pooling
    out = torch.empty((len(seqs), emb.config.hidden_size))
    with torch.inference_mode():
        for batch in emb.batches([len(s) for s in seqs], 32):
            out[torch.tensor(batch)] = emb.forward_pooled([seqs[i] for i in batch], [task_ids[owner[i]] for i in batch])
    return out, np.array(owner), np.array(weights, dtype=np.float32)


def pool(vecs: torch.Tensor, owner: np.ndarray, lens: np.ndarray, n: int, how: str) -> np.ndarray:
    if how == "cut+mean":
        return _unit(pool(vecs, owner, lens, n, "cut") + pool(vecs, owner, lens, n, "mean"))
    v = vecs.numpy()
    if how == "unit":
        v = v / np.linalg.norm(v, axis=1, keepdims=True)
    out = np.zeros((n, v.shape[1]), dtype=np.float32)
    if how == "cut":
        first = np.unique(owner, return_index=True)[1]
        out[owner[first]] = v[first]
    else:
        w = lens if how == "tokens" else np.ones_like(lens)
        np.add.at(out, owner, v * w[:, None])
    return _unit(out)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=1, keepdims=True)


POOLINGS = ("cut", "mean", "tokens", "unit", "cut+mean")


def score(q: np.ndarray, d: np.ndarray, gold: list[int]) -> float:
    ranking = np.argsort(-(q @ d.T), axis=1)[:, :10]
    return float(np.mean([ndcg_at_k([str(x) for x in r], {str(g): 1.0}, 10)
                          for r, g in zip(ranking, gold, strict=True)]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", help="folder the gimp-help .debs were unpacked into")
    p.add_argument("--langs", nargs="+", default=["en", "de", "ja"])
    p.add_argument("--layouts", nargs="+", default=["0:repeat", "0:once", "128:repeat"])
    p.add_argument("--model", default=None)
    p.add_argument("--min-tokens", type=int, default=700)
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--max-docs", type=int, default=150)
    p.add_argument("--cache", type=Path, help="folder for the window vectors (reused when present)")
    p.add_argument("--kind", default="retrieval", choices=[k.name for k in KINDS],
                   help="the adapters that read queries and pages (text-matching: both sides alike)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    emb = taskembed.load(args.model)
    kind = next(k for k in KINDS if k.name == args.kind)
    rows = []
    for lang in args.langs:
        pages = read_pages(Path(args.root) / "usr/share/gimp/2.0/help" / lang)
        docs, titles, deep, sents = build_task(pages, emb, args.min_tokens, args.max_tokens)
        docs = docs[: args.max_docs]
        titles = [(t, i) for t, i in titles if i < len(docs)]
        deep = [(t, i) for t, i in deep if i < len(docs)]
        sents = [(t, i) for t, i in sents if i < len(docs)]
        qt = emb.encode([t for t, _ in titles], task=kind.query)
        qd = emb.encode([t for t, _ in deep], task=kind.query) if deep else None
        qs = emb.encode([t for t, _ in sents], task=kind.query) if sents else None
        print(f"{lang}: {len(docs)} pages, {len(titles)} title, {len(deep)} deep-heading and {len(sents)} "
              f"deep-sentence queries", flush=True)
        for layout in args.layouts:
            overlap, prefix = int(layout.split(":")[0]), layout.split(":")[1]
            emb.window_overlap, emb.window_prefix = overlap, prefix
            t0 = time.time()
            cached = args.cache / f"{lang}-{overlap}-{prefix}-{len(docs)}.pt" if args.cache else None
            if cached and cached.is_file():
                vecs, owner, lens = torch.load(cached, weights_only=False)
            else:
                vecs, owner, lens = window_vectors(emb, [d["text"] for d in docs], kind.document)
                if cached:
                    cached.parent.mkdir(parents=True, exist_ok=True)
                    torch.save((vecs, owner, lens), cached)
            for how in POOLINGS:
                if how == "cut" and layout != args.layouts[0]:
                    continue
                dv = pool(vecs, owner, lens, len(docs), how)
                st = score(qt, dv, [i for _, i in titles])
                sd = score(qd, dv, [i for _, i in deep]) if deep else float("nan")
                ss = score(qs, dv, [i for _, i in sents]) if sents else float("nan")
                rows.append((lang, how, layout if how != "cut" else "-", st, sd, ss))
                print(f"  {how:8s} {layout:11s}: titles {st:.4f}  deep headings {sd:.4f}  deep sentences "
                      f"{ss:.4f}  ({time.time() - t0:.0f} s, {len(vecs)} windows)", flush=True)
    print("\n| lang | pooling | layout | titles nDCG@10 | deep headings nDCG@10 | deep sentences nDCG@10 |\n"
          "|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.4f} | {r[4]:.4f} | {r[5]:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
