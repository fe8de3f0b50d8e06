"""Matryoshka development check: does a channel order keep short vectors better, on text from other sources?

A channel order (channel_order.json, from `taskembed_train.reorder` or a recipe's reorder step) is an exact
permutation, so the reordered model's vector is the original's `v[:, order]`: every order is scored here from
one encoding pass. Data (development only, never training): the GIMP manual from Debian (`gimp-help-LANG`),
page titles as queries, the first 512 tokens of each page as documents (nDCG@10), in each language.

    python scripts/matryoshka_dev_check.py ROOT --order A/channel_order.json [B/...] --langs en de ja
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import taskembed
from long_dev_check import read_pages, score


def cut(v: np.ndarray, channels: np.ndarray) -> np.ndarray:
    v = v[:, channels]
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", help="folder the gimp-help .debs were unpacked into")
    p.add_argument("--order", nargs="*", default=[], help="channel_order.json files to compare with the identity")
    p.add_argument("--langs", nargs="+", default=["en", "de", "ja"])
    p.add_argument("--dims", nargs="+", type=int, default=[32, 64, 128, 256])
    p.add_argument("--model", default=None, help="model in its original channel order (default: bundled)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    emb = taskembed.load(args.model)
    h = emb.config.hidden_size
    orders = {"identity": np.arange(h)}
    for f in args.order:
        orders[f] = np.array(json.loads(Path(f).read_text())["order"])
    rows = {name: {d: [] for d in [*args.dims, h]} for name in orders}
    for lang in args.langs:
        pages = read_pages(Path(args.root) / "usr/share/gimp/2.0/help" / lang)
        q = emb.encode([pg["title"] for pg in pages], task="retrieval.query", normalize=False)
        d = emb.encode([pg["text"] for pg in pages], task="retrieval.passage", normalize=False, max_length=512)
        gold = list(range(len(pages)))
        for name, order in orders.items():
            line = []
            for dim in [*args.dims, h]:
                s = score(cut(q, order[:dim]), cut(d, order[:dim]), gold)
                rows[name][dim].append(s)
                line.append(f"{dim}: {s:.4f}")
            print(f"{lang} {len(pages)} pages, {name}: " + "  ".join(line), flush=True)
    print("\n| order | " + " | ".join(f"{d} dims" for d in [*args.dims, h]) + " |")
    print("|---|" + "---|" * (len(args.dims) + 1))
    for name, by_dim in rows.items():
        full = np.mean(by_dim[h])
        cells = [f"{np.mean(v):.4f} ({np.mean(v) / full:.1%})" for d, v in by_dim.items()]
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
