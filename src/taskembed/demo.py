"""`make run` until the bundled model lands: build a tiny random model, save it in the official layout,
load it back and embed multilingual sample texts with every task adapter.

The weights are random, so the similarities show the machinery (tasks, dims, precisions), not quality.
"""

from __future__ import annotations

import tempfile

import numpy as np

from . import load
from .tiny import make_tiny_embedder

TEXTS = [
    "How do I change the default font size in a spreadsheet?",
    "Wie ändere ich die Standardschriftgröße in einer Tabelle?",
    "如何更改电子表格中的默认字体大小？",
    "The cat sits on the warm windowsill.",
]


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        make_tiny_embedder(seed=0).save(d)
        emb = load(d)
        print(f"tiny random model saved and reloaded from {d}")
        print(f"tasks: {emb.tasks}; dims: {emb.dimensions}")
        for task in emb.tasks:
            v = emb.encode(TEXTS, task=task, dimensions=32)
            sims = v @ v.T
            print(f"\n[{task}] cosine similarity, 32 dims (random weights: machinery only)")
            for text, row in zip(TEXTS, sims, strict=True):
                print(f"  {text[:40]:<42}" + " ".join(f"{x:+.2f}" for x in row))
        bits = emb.encode(TEXTS[:1], task="retrieval.query", precision="ubinary")
        print(f"\nubinary: {bits.shape[1]} bytes per vector: {bits[0].tolist()}")
        mixed = emb.encode(TEXTS[:2], task=["retrieval.query", "retrieval.passage"])
        print(f"mixed tasks in one call: shape {mixed.shape}, norms {np.linalg.norm(mixed, axis=1).round(4)}")


if __name__ == "__main__":
    main()
