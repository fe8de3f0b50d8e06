"""Vocabulary pruning for the bundled model's size budget (issue 5: fp16 total under 100 MB).

XLM-R's 250,002 x 384 embedding table alone is 192 MB in fp16. A Unigram tokenizer keeps working when pieces
are removed: the Viterbi segmentation falls back to the shorter pieces that remain, so keeping every
single-character piece (and the specials) means text still tokenises without <unk> wherever it did before;
it just costs more tokens. The pieces kept are the ones the training text uses most.

    counts = count_pieces(tokenizer, texts)
    keep = choose_pieces(tokenizer_json, counts, max_pieces=60000)
    new_json = prune_tokenizer_json(tokenizer_json, keep)
    prune_embeddings(encoder, keep)          # word embedding rows (and their LoRA rows), config.vocab_size
    coverage(old_tokenizer, new_tokenizer, texts)
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable

import torch

from ..encoder import Encoder
from ..tokenizer import Tokenizer

SPECIAL_PIECES = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")


def count_pieces(tokenizer: Tokenizer, texts: Iterable[str], batch: int = 1024) -> Counter:
    """How often each token id occurs in texts (specials not counted)."""
    counts: Counter = Counter()
    buf: list[str] = []
    for t in texts:
        buf.append(t)
        if len(buf) >= batch:
            for e in tokenizer.backend.encode_batch(buf, add_special_tokens=False):
                counts.update(e.ids)
            buf = []
    for e in tokenizer.backend.encode_batch(buf, add_special_tokens=False):
        counts.update(e.ids)
    return counts


def choose_pieces(tokenizer_json: str, counts: Counter, max_pieces: int) -> list[int]:
    """Old ids to keep, ascending: specials, every single-character piece, then the most used pieces.

    The list is also the embedding rows to keep (:func:`prune_embeddings`), in their new order.
    """
    vocab = json.loads(tokenizer_json)["model"]["vocab"]
    must = {i for i, (p, _) in enumerate(vocab) if p in SPECIAL_PIECES or len(p.lstrip("▁")) <= 1}
    if len(must) > max_pieces:
        raise ValueError(f"{len(must)} specials and single characters already exceed max_pieces={max_pieces}")
    ranked = [i for i, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if i not in must and i < len(vocab)]
    # Added tokens outside the model vocabulary (a <mask> appended after it) keep their place at the end.
    added = sorted(a["id"] for a in json.loads(tokenizer_json).get("added_tokens", []) if a["id"] >= len(vocab))
    return sorted(must | set(ranked[: max_pieces - len(must)])) + added


def prune_tokenizer_json(tokenizer_json: str, keep: list[int]) -> str:
    """The tokenizer restricted to `keep` (old ids, ascending); ids renumbered in the same order."""
    tok = json.loads(tokenizer_json)
    remap = {old: new for new, old in enumerate(keep)}
    vocab = tok["model"]["vocab"]
    tok["model"]["vocab"] = [vocab[i] for i in keep if i < len(vocab)]
    tok["model"]["unk_id"] = remap[tok["model"]["unk_id"]]
    for a in tok.get("added_tokens", []):
        a["id"] = remap[a["id"]]
    for spec in (tok.get("post_processor") or {}).get("special_tokens", {}).values():
        spec["ids"] = [remap[i] for i in spec["ids"]]
    return json.dumps(tok, ensure_ascii=False)


@torch.no_grad()
def prune_embeddings(model: Encoder, keep: list[int]) -> None:
    """Keep only the rows `keep` of the word embedding (and of its per-task LoRA A factors), in place."""
    emb = model.embeddings.word_embeddings
    idx = torch.tensor(keep, dtype=torch.long, device=emb.weight.device)
    emb.weight = torch.nn.Parameter(emb.weight.index_select(0, idx).contiguous())
    emb.lora_A = torch.nn.Parameter(emb.lora_A.index_select(1, idx).contiguous())
    if hasattr(emb, "num_embeddings"):
        emb.num_embeddings = len(keep)
    model.config.vocab_size = len(keep)


def coverage(old: Tokenizer, new: Tokenizer, texts: list[str]) -> dict[str, float]:
    """What pruning costs on texts: tokens per text (ratio), share of texts segmented differently, <unk> rates."""
    a = old.backend.encode_batch(texts, add_special_tokens=False)
    b = new.backend.encode_batch(texts, add_special_tokens=False)
    n_old, n_new = sum(len(e.ids) for e in a), sum(len(e.ids) for e in b)
    unk_old = sum(e.ids.count(old.backend.token_to_id("<unk>")) for e in a)
    unk_new = sum(e.ids.count(new.backend.token_to_id("<unk>")) for e in b)
    changed = sum(x.tokens != y.tokens for x, y in zip(a, b, strict=True))
    return {"texts": len(texts), "token_ratio": n_new / max(n_old, 1), "changed_texts": changed / max(len(texts), 1),
            "unk_rate_old": unk_old / max(n_old, 1), "unk_rate_new": unk_new / max(n_new, 1)}  # fmt: skip


def _texts(paths: list[str], per_file: int) -> list[str]:
    from .distill import read_texts

    return [t for p in paths for t in read_texts(p, per_file, min_chars=1)]


def main(argv: list[str] | None = None) -> int:
    """python -m taskembed.train.vocab MODEL OUT --data FILES... [--max-pieces 60000] [--check FILES...]"""
    import argparse
    import sys

    from ..checkpoint import load

    p = argparse.ArgumentParser(prog="python -m taskembed.train.vocab", description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("output")
    p.add_argument("--data", nargs="+", required=True, help="training JSONL files whose pieces are kept")
    p.add_argument("--per-file", type=int, default=20000, help="records read per file for the counts")
    p.add_argument("--max-pieces", type=int, default=60000)
    p.add_argument("--check", nargs="*", default=[], help="JSONL files to measure the coverage lost on")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    emb = load(args.model, dtype=torch.float32)
    tok_json = emb.tokenizer.backend.to_str()
    keep = choose_pieces(tok_json, count_pieces(emb.tokenizer, _texts(args.data, args.per_file)), args.max_pieces)
    new_tok = Tokenizer(type(emb.tokenizer.backend).from_str(prune_tokenizer_json(tok_json, keep)), "<pruned>")
    report = {"pieces": len(keep), "of": emb.config.vocab_size}
    if args.check:
        report["coverage"] = coverage(emb.tokenizer, new_tok, _texts(args.check, 0))
    prune_embeddings(emb.model, keep)
    emb.tokenizer = new_tok
    emb.clear_merged()
    emb.save(args.output, dtype=torch.float16)
    print(json.dumps(report), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
