"""A naive jina-embeddings-v3 forward written independently of the package, for tests.

It reads the saved checkpoint (official tensor names) straight from safetensors and computes one text at
a time in float64 with explicit loops and matmuls: effective weights W + s*B@A (Embedding: W + s*A@B),
rotary positions by the pairwise rotation formula, softmax attention, erf GELU, post-LN.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer


class Reference:
    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        self.cfg = json.loads((path / "config.json").read_text())
        raw = load_file(str(path / "model.safetensors"))
        self.w = {k.removeprefix("roberta."): v.astype(np.float64) for k, v in raw.items()}
        self.tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tok.no_truncation()
        self.tok.no_padding()

    def weight(self, module: str, task: int | None, embedding: bool = False) -> np.ndarray:
        p = module + ".parametrizations.weight."
        w = self.w[p + "original"]
        if task is None:
            return w
        a, b = self.w[p + "0.lora_A"][task], self.w[p + "0.lora_B"][task]
        scale = self.cfg["lora_alpha"] / self.cfg["lora_rank"]
        return w + scale * (a @ b if embedding else b @ a)

    @staticmethod
    def layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * g + b

    def rotate(self, x: np.ndarray) -> np.ndarray:
        """x: (L, D). Pair i with i + D/2 and rotate by angle pos / base^(2i/D)."""
        n, d = x.shape
        half = d // 2
        base = self.cfg["rotary_emb_base"]
        out = x.copy()
        for pos in range(n):
            for i in range(half):
                theta = pos / base ** (2 * i / d)
                c, s = math.cos(theta), math.sin(theta)
                a, b = x[pos, i], x[pos, i + half]
                out[pos, i] = a * c - b * s
                out[pos, i + half] = b * c + a * s
        return out

    def hidden(self, ids: list[int], task: int | None) -> np.ndarray:
        c, w = self.cfg, self.w
        eps = c["layer_norm_eps"]
        h, nh = c["hidden_size"], c["num_attention_heads"]
        d = h // nh
        we = self.weight("embeddings.word_embeddings", task, embedding=True)
        te = self.weight("embeddings.token_type_embeddings", task, embedding=True)
        x = we[ids] + te[0]
        x = self.layer_norm(x, w["emb_ln.weight"], w["emb_ln.bias"], eps)
        for i in range(c["num_hidden_layers"]):
            p = f"encoder.layers.{i}."
            qkv = x @ self.weight(p + "mixer.Wqkv", task).T + w[p + "mixer.Wqkv.bias"]
            q, k, v = qkv[:, :h], qkv[:, h: 2 * h], qkv[:, 2 * h:]
            heads = []
            for j in range(nh):
                sl = slice(j * d, (j + 1) * d)
                qj, kj = self.rotate(q[:, sl]), self.rotate(k[:, sl])
                scores = qj @ kj.T / math.sqrt(d)
                scores = np.exp(scores - scores.max(-1, keepdims=True))
                heads.append((scores / scores.sum(-1, keepdims=True)) @ v[:, sl])
            attn = np.concatenate(heads, -1) @ self.weight(p + "mixer.out_proj", task).T + w[p + "mixer.out_proj.bias"]
            x = self.layer_norm(x + attn, w[p + "norm1.weight"], w[p + "norm1.bias"], eps)
            f = x @ self.weight(p + "mlp.fc1", task).T + w[p + "mlp.fc1.bias"]
            f = 0.5 * f * (1 + np.vectorize(math.erf)(f / math.sqrt(2)))
            f = f @ self.weight(p + "mlp.fc2", task).T + w[p + "mlp.fc2.bias"]
            x = self.layer_norm(x + f, w[p + "norm2.weight"], w[p + "norm2.bias"], eps)
        return x

    def embed(self, text: str, task: str | None, dim: int | None = None, normalize: bool = True) -> np.ndarray:
        tasks = self.cfg["lora_adaptations"]
        t = None if task is None else tasks.index(task)
        prefix = "" if task is None else self.cfg["task_instructions"].get(task, "")
        ids = self.tok.encode(prefix + text).ids
        v = self.hidden(ids, t).mean(0)
        if dim is not None:
            v = v[:dim]
        return v / np.linalg.norm(v) if normalize else v
