"""Matryoshka channel order: move the hidden channels that tell matching pairs apart to the front.

Truncation keeps the first k channels. Training with the Matryoshka loss pushes information there; on top of
that, reordering the residual channels is an exact reparametrisation of the model (Encoder.permute_hidden):
full-size embeddings only change order, so every full-size score stays the same. Each channel c is scored
over positive pairs (q, d) of unit vectors at full size by

    cov(q_c, d_c) = E[q_c d_c] - E[q_c] E[d_c]

which is channel c's share of the gap between a matching pair's cosine and that of a random pair: the
channels that carry the retrieval signal, rather than those with a large constant offset or noise.

    python -m taskembed_train.reorder MODEL OUT --data FILES... [--pairs 2000]

OUT/channel_order.json records the permutation (output channel j is input channel order[j]): anything that
compares the model with its unreordered self or with its distillation teacher, channel by channel, needs it
(`embedding[:, argsort(order)]` restores the old order; so does `Encoder.permute_hidden(argsort(order))`).
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from taskembed.embedder import Embedder
from taskembed.io import read_jsonl

ORDER_FILE = "channel_order.json"


def read_order(model_dir: str | Path) -> list[int] | None:
    """The channel order saved beside a reordered model (its output channel j is the original channel
    order[j]), or None for a model in its original order."""
    f = Path(model_dir) / ORDER_FILE
    return json.loads(f.read_text())["order"] if f.is_file() else None


def copy_order(src_dir: str | Path, dst_dir: str | Path) -> None:
    """Carry a reordered model's channel order file over to a model saved from it in the same order (a
    trained, distilled or merged copy); nothing for a model in its original order."""
    src, dst = Path(src_dir) / ORDER_FILE, Path(dst_dir) / ORDER_FILE
    if src.is_file() and src.resolve() != dst.resolve():
        shutil.copyfile(src, dst)


def channel_scores(queries: np.ndarray, passages: np.ndarray) -> np.ndarray:
    """cov(q_c, d_c) per channel over matching rows, on L2-normalised vectors."""
    if queries.shape != passages.shape or queries.ndim != 2 or len(queries) < 2:
        raise ValueError("need two (n, dim) arrays of matching rows, n >= 2")
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    d = passages / np.linalg.norm(passages, axis=1, keepdims=True)
    return (q * d).mean(0) - q.mean(0) * d.mean(0)


def channel_order(
    emb: Embedder,
    queries: Sequence[str],
    passages: Sequence[str],
    query_task: str = "retrieval.query",
    passage_task: str = "retrieval.passage",
    max_length: int = 256,
) -> torch.Tensor:
    """Channels by decreasing score on these (query, passage) pairs, for Encoder.permute_hidden."""
    q = emb.encode(list(queries), task=query_task, normalize=False, max_length=max_length)
    d = emb.encode(list(passages), task=passage_task, normalize=False, max_length=max_length)
    return torch.from_numpy(np.argsort(-channel_scores(q, d), kind="stable").copy())


def read_pairs(files: Sequence[str | Path], n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Up to n (query, positive) pairs, drawn evenly from the JSONL training files."""
    rng = random.Random(seed)
    per_file = max(1, -(-n // max(1, len(files))))
    pairs: list[tuple[str, str]] = []
    for f in sorted(map(str, files)):
        recs = [(r["query"], r["positive"]) for r in read_jsonl(f) if r.get("query") and r.get("positive")]
        rng.shuffle(recs)
        pairs += recs[:per_file]
    if len(pairs) < 2:
        raise ValueError("no (query, positive) records in the data files")
    rng.shuffle(pairs)
    return pairs[:n]


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    from taskembed.checkpoint import load

    p = argparse.ArgumentParser(prog="python -m taskembed_train.reorder", description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("output")
    p.add_argument("--data", nargs="+", required=True, help="JSONL training files with query/positive records")
    p.add_argument("--pairs", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    emb = load(args.model, dtype=torch.float32)
    saved_dtype = json.loads((Path(args.model) / "config.json").read_text()).get("torch_dtype", "float32")
    pairs = read_pairs(args.data, args.pairs, args.seed)
    order = channel_order(emb, [a for a, _ in pairs], [b for _, b in pairs])
    emb.model.permute_hidden(order)
    emb.save(args.output, dtype=getattr(torch, saved_dtype, torch.float32))
    prev = read_order(args.model)
    if prev is not None:  # reordering twice composes the two permutations
        order = torch.tensor(prev)[order]
    Path(args.output, ORDER_FILE).write_text(json.dumps({"order": order.tolist(), "pairs": len(pairs)}) + "\n")
    print(f"reordered {len(order)} channels on {len(pairs)} pairs; first 16: {order[:16].tolist()} -> {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
