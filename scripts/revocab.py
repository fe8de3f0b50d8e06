"""Give a trained student another vocabulary selection, taken from the teacher's full table.

The recipe keeps the vocabulary table frozen, so every row of a trained model is an original mE5 row and a
different 60k selection can be swapped in afterwards: rows come from the full (unpruned) teacher, the
adapters' embedding-LoRA rows move with their pieces, and pieces new to the selection start with zero
adapter rows. Used once for the shipped model (see its README); a rebuild selects the final vocabulary
before distilling instead.

    python scripts/revocab.py TRAINED_DIR FULL_HF_DIR NEW_TOKENIZER_JSON OUT_DIR
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

TABLE = "roberta.embeddings.word_embeddings.parametrizations.weight."


def revocab(src: Path, full_hf: Path, new_tokenizer: Path, dst: Path) -> int:
    full = [p for p, _ in json.loads((full_hf / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]]
    index = {p: i for i, p in enumerate(full)}
    new = [p for p, _ in json.loads(new_tokenizer.read_text(encoding="utf-8"))["model"]["vocab"]]
    old = {p: i for i, (p, _) in enumerate(json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
                                              ["model"]["vocab"])}
    keep = [index[p] for p in new]
    table = load_file(str(full_hf / "model.safetensors"))["embeddings.word_embeddings.weight"]
    state = load_file(str(src / "model.safetensors"))
    state[TABLE + "original"] = table[keep].to(state[TABLE + "original"].dtype).contiguous()
    a = state[TABLE + "0.lora_A"]  # (tasks, vocab, rank)
    new_a = torch.zeros(a.shape[0], len(new), a.shape[2], dtype=a.dtype)
    hits = 0
    for n, piece in enumerate(new):
        if piece in old:
            new_a[:, n] = a[:, old[piece]]
            hits += 1
    state[TABLE + "0.lora_A"] = new_a
    dst.mkdir(parents=True, exist_ok=True)
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    shutil.copy(new_tokenizer, dst / "tokenizer.json")
    cfg = json.loads((src / "config.json").read_text())
    cfg["vocab_size"] = len(new)
    (dst / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return hits


if __name__ == "__main__":
    a, b, c, d = (Path(x) for x in sys.argv[1:5])
    n = revocab(a, b, c, d)
    print(f"{n} pieces kept their adapter rows; the others start at zero")
