"""Move a trained model back from a remote GPU machine whose file transfer is small (a few 16 MB files).

The default model's recipe never changes the word-embedding table (it is frozen in every stage), so only
the rest travels, in fp16 shards; the table is taken from the local pruned initial model.

    python scripts/remote_model.py export TRAINED_DIR INIT_DIR OUT_DIR [--prefix final]   # on the GPU machine
    python scripts/remote_model.py assemble OUT_DIR INIT_DIR DEST [--prefix final]        # here
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

TABLE = "roberta.embeddings.word_embeddings.parametrizations.weight.original"
SHARD_BYTES = 15 * 2**20


def _read_all(d: Path) -> dict[str, torch.Tensor]:
    files = sorted(d.glob("model*.safetensors"))
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.to(torch.float16).contiguous().numpy().tobytes()).hexdigest()


def export(trained: Path, init: Path, out: Path, prefix: str) -> None:
    state, base = _read_all(trained), _read_all(init)
    table = state.pop(TABLE)
    if not torch.equal(table.to(torch.float16), base[TABLE].to(torch.float16)):
        raise SystemExit("the word-embedding table changed in training: it cannot be left behind")
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(f"{prefix}-*.safetensors"):
        old.unlink()
    meta = {"config": (trained / "config.json").read_text(), "table_sha256": _digest(table)}
    shards, cur, size = [], {}, 0
    for k in sorted(state):
        v = state[k].to(torch.float16).contiguous()
        if cur and size + v.numel() * 2 > SHARD_BYTES:
            shards.append(cur)
            cur, size = {}, 0
        cur[k] = v
        size += v.numel() * 2
    shards.append(cur)
    for i, s in enumerate(shards):
        save_file(s, str(out / f"{prefix}-{i}.safetensors"), metadata=meta)
    print(f"exported {sum(len(s) for s in shards)} tensors in {len(shards)} shards to {out}")


def assemble(src: Path, init: Path, dest: Path, prefix: str) -> None:
    files = sorted(src.glob(f"{prefix}-*.safetensors"))
    if not files:
        raise SystemExit(f"no {prefix}-*.safetensors in {src}")
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    with safe_open(str(files[0]), "pt") as fh:
        meta = fh.metadata()
    table = _read_all(init)[TABLE].to(torch.float16)
    if _digest(table) != meta["table_sha256"]:
        raise SystemExit("the local initial model's word-embedding table is not the one trained with")
    state[TABLE] = table
    dest.mkdir(parents=True, exist_ok=True)
    save_file(dict(sorted(state.items())), str(dest / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads(meta["config"])
    cfg["torch_dtype"] = "float16"
    (dest / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (dest / "tokenizer.json").write_bytes((init / "tokenizer.json").read_bytes())
    print(f"assembled {len(state)} tensors into {dest}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("cmd", choices=["export", "assemble"])
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("c", type=Path)
    p.add_argument("--prefix", default="final")
    args = p.parse_args()
    (export if args.cmd == "export" else assemble)(args.a, args.b, args.c, args.prefix)
