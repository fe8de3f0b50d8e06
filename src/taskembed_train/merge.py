"""Weight-average two models of one lineage (same teacher, same vocabulary) in the teacher's channel order.

    python -m taskembed_train.merge A B OUT [--weight 0.5] [--adapters a|b]

OUT = (1 - weight) x A + weight x B on every base weight, compared channel for channel: a model whose hidden
channels were reordered (`channel_order.json`, taskembed_train.reorder) is permuted back first. The LoRA factors are
taken whole from one of the two (an average of two adapters' factors is not the average of their products).
OUT is saved in A's channel order, with A's config, tokenizer and channel_order.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import taskembed

from .reorder import copy_order, read_order


def _in_teacher_order(path: Path) -> tuple[taskembed.Embedder, list[int] | None]:
    emb = taskembed.load(path, dtype=torch.float32)
    order = read_order(path)
    if order is not None:
        emb.model.permute_hidden(torch.argsort(torch.tensor(order)))
    return emb, order


def merge(a: Path, b: Path, out: Path, weight: float, adapters: str = "a") -> None:
    ea, order = _in_teacher_order(a)
    eb, _ = _in_teacher_order(b)
    sa, sb = ea.model.state_dict(), eb.model.state_dict()
    if sa.keys() != sb.keys() or any(sa[k].shape != sb[k].shape for k in sa):
        raise SystemExit(f"{a} and {b} differ in their weights' names or shapes: not one lineage")
    if ea.tokenizer.backend.to_str() != eb.tokenizer.backend.to_str():
        raise SystemExit(f"{a} and {b} have different tokenizers")
    keep = sa if adapters == "a" else sb
    merged = {k: keep[k] if "lora_" in k else (1 - weight) * v.float() + weight * sb[k].float() for k, v in sa.items()}
    ea.model.load_state_dict(merged)
    if order is not None:
        ea.model.permute_hidden(torch.tensor(order))
    ea.clear_merged()
    ea.save(out)
    copy_order(a, out)
    print(f"merged {a} and {b} ({weight}) -> {out}, adapters from {adapters}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--weight", type=float, default=0.5, help="share of B")
    p.add_argument("--adapters", choices=["a", "b"], default="a", help="whose LoRA factors to keep")
    args = p.parse_args()
    merge(args.a, args.b, args.out, args.weight, args.adapters)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
