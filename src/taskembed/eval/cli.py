"""``taskembed eval``: run the evaluation suite on one or more models and baselines."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from taskembed.eval import suite
from taskembed.eval import tasks as T


def build_parser(prog: str = "taskembed eval") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Evaluate embedding models on the held-out suite.")
    p.add_argument("--model", help="model folder or Hugging Face hub id (taskembed.load)")
    p.add_argument("--compare", nargs="+", default=[], metavar="DIR", help="more models, run side by side")
    p.add_argument(
        "--baseline",
        nargs="+",
        default=[],
        choices=["bm25", "e5-small", "minilm"],
        help="add package-shipped baselines (optional extras)",
    )
    p.add_argument("--tasks", nargs="+", help="task folder names/paths or passkey@N / needle@N (default: all)")
    p.add_argument("--data-dir", type=Path, help="suite root (default: data/eval or $TASKEMBED_EVAL_DATA)")
    p.add_argument(
        "--long",
        nargs="*",
        default=list(suite.DEFAULT_LONG_SPECS),
        metavar="SPEC",
        help="generated long-document tasks added when --tasks is not given; '--long' alone adds none",
    )
    p.add_argument("--dimensions", nargs="+", type=int, help="Matryoshka dimensions to evaluate (default: full)")
    p.add_argument("--output", type=Path, help="write the results as JSON here")
    p.add_argument("--seed", type=int, default=suite.DEFAULT_SEED)
    p.add_argument("--device", default="cpu", help="where our models run: cpu, cuda, cuda:1 (fp32 on each)")
    p.add_argument("--int8", action="store_true", help="our models with dynamic int8 Linear layers (CPU)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--limit", type=int, help="evaluate at most N queries/pairs/items per task (seeded sample)")
    adapter = p.add_mutually_exclusive_group()
    adapter.add_argument("--no-adapter", action="store_true", help="encode without any task adapter (base)")
    adapter.add_argument("--adapter", help="force this adapter for every task type")
    p.add_argument("--keep-going", action="store_true", help="record a failing task as an error and go on")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-task progress on stderr")
    return p


def _load_model(path: str, device: str = "cpu", int8: bool = False) -> Any:
    import torch

    import taskembed

    # fp32 on every device, so scores compare across machines (int8: dynamic int8 Linear layers on CPU)
    return taskembed.load(path, device=device, dtype=torch.float32, int8=int8)


def _model_name(path: str) -> str:
    p = Path(path)
    return p.name if p.name else path


def eval_main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.model and not args.compare and not args.baseline:
        from taskembed import CheckpointError, default_model_dir

        try:
            args.model = str(default_model_dir())  # the bundled model
        except CheckpointError as e:
            print(f"taskembed eval: {e}", file=sys.stderr)
            return 2
    try:
        task_list = suite.select_tasks(args.tasks, data_dir=args.data_dir, long_specs=args.long)
    except (FileNotFoundError, ValueError) as e:
        print(f"taskembed eval: {e}", file=sys.stderr)
        return 2
    if not task_list:
        print("taskembed eval: no tasks found (is data/eval there? use --data-dir)", file=sys.stderr)
        return 2

    models: list[tuple[str, Any]] = []
    for path in ([args.model] if args.model else []) + list(args.compare):
        models.append((_model_name(path), _load_model(path, args.device, args.int8)))
    if args.baseline:
        from taskembed.eval import baselines

        for name in args.baseline:
            try:
                models.append((name, baselines.load_baseline(name)))
            except ImportError as e:
                print(f"taskembed eval: baseline {name} unavailable: {e}", file=sys.stderr)
                return 2

    override: str | None = T.AUTO
    if args.no_adapter:
        override = None
    elif args.adapter:
        override = args.adapter
    suite.run_suite(
        models,
        task_list,
        args.dimensions,
        seed=args.seed,
        batch_size=args.batch_size,
        limit=args.limit,
        task_override=override,
        output=args.output,
        log=None if args.quiet else sys.stderr,
        keep_going=args.keep_going,
    )
    if args.output:
        print(f"\nwrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(eval_main())
