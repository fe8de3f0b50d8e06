"""Inserted-sentence tuples: find the document that holds a sentence among copies that hold another.

Needle and pass-key retrieval ask whether a document's one embedding still carries each of its sentences:
twenty documents of the same kind differ by one sentence each. Distillation keeps the average of a document
but not that detail (model README). These tuples train it contrastively, from training-side text only: a
document is consecutive texts of one file joined to about `chars` characters; `variants` sentences, each
from a translation pair, are inserted into copies of it, one per copy. The query is the inserted sentence or,
with probability `translated`, its translation (the surface match alone then does not find the copy); the
positive is the copy holding it, and the hard negatives are the other copies:

    {"query": s_k, "positive": doc + s_k, "negatives": [doc + s_j for j != k]}

`taskembed train adapters` reads them as tuples (text-matching serves long-document retrieval); a dev file
of the same records becomes a bitext-mining check in which each copy must find its own sentence and back.

    python -m taskembed_train.insertions --documents FILES --sentences PAIR_FILES --out OUT.jsonl \
        [--n 2000 --variants 4 --chars 1000 --translated 0.5 --seed 0]
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Sequence
from pathlib import Path

from taskembed.io import write_jsonl

from .distill import insert_sentence, long_samples, read_texts
from .scored import read_translations


def read_pairs(paths: Sequence[str | Path], max_chars: int = 200) -> list[tuple[str, str]]:
    """(text, translation) from query/positive files, both ways round; texts of 20..max_chars characters."""
    return [pair for a, b in read_translations(paths, max_chars) if min(len(a), len(b)) >= 20
            for pair in ((a, b), (b, a))]


def insertion_tuples(documents: list[list[str]], pairs: list[tuple[str, str]], n: int, rng: random.Random,
                     variants: int = 4, chars: int = 1000, translated: float = 0.5) -> list[dict]:
    """n tuples in groups of `variants` copies of one document (see the module docstring)."""
    if variants < 2:
        raise ValueError("variants must be >= 2: the other copies are the hard negatives")
    different = len({s for s, _ in pairs})
    if different < variants:
        raise ValueError(f"need at least {variants} different sentence pairs, got {different}")
    documents = [d for d in documents if d]
    if not documents:
        raise ValueError("no document texts")
    out: list[dict] = []
    while len(out) < n:
        doc = long_samples(documents, rng, 1, chars)[0]
        picked = rng.sample(pairs, variants)
        if len({s for s, _ in picked}) < variants:
            continue
        copies = [insert_sentence(doc, s, rng, chars) for s, _ in picked]
        for k, (s, tr) in enumerate(picked):
            query = tr if rng.random() < translated else s
            out.append({"query": query, "positive": copies[k],
                        "negatives": [c for j, c in enumerate(copies) if j != k]})
    return out[:n]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m taskembed_train.insertions", description=__doc__.split("\n\n")[0])
    p.add_argument("--documents", nargs="+", required=True, help="JSONL files whose texts make documents "
                   "(a document joins consecutive texts of one file)")
    p.add_argument("--sentences", nargs="+", required=True, help="query -> positive translation pair files")
    p.add_argument("--out", required=True, help="output JSONL of tuples")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--variants", type=int, default=4, help="copies per document (1 positive + the rest negative)")
    p.add_argument("--chars", type=int, default=1000, help="document length in characters")
    p.add_argument("--translated", type=float, default=0.5, help="share of queries that are the translation")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    documents = [read_texts(f) for f in args.documents]
    pairs = read_pairs(args.sentences)
    rows = insertion_tuples(documents, pairs, args.n, random.Random(args.seed), args.variants, args.chars,
                            args.translated)
    write_jsonl(Path(args.out), rows)
    print(f"{len(rows)} tuples from {sum(map(len, documents))} texts and {len(pairs)} sentences -> {args.out}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
