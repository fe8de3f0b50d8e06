"""An embedded vector index over `taskembed embed-corpus` output: `taskembed index` and `taskembed search`.

Layout of an index folder (written to a temp folder, then renamed into place):

    index.json     kind (exact | hnsw), dims, count, storage, binary, the corpus' model/task, HNSW params
    vectors.npy    the L2-normalised vectors (float32, float16 or int8 x 127), memory-mapped on open;
                   exact search and rescoring read them
    bits.npy       packed sign bits (dims / 8 bytes per vector) when built with binary=True
    hnsw.usearch   the HNSW graph (usearch) when kind == hnsw; over the float vectors, or over the bits
                   (Hamming) when binary
    meta.parquet   id, chunk spans (late chunking) and the kept columns, one row per vector

Search: exact = one matmul against all vectors (numpy; exact and fast up to ~100k vectors). hnsw = usearch's
HNSW graph (approximate; recall measured in benchmarks/index_search.py). binary = the sentence-transformers /
Jina recipe: find k * rescore candidates by Hamming distance of the packed sign bits (32x smaller than
float32), then rescore them with the float query against the stored vectors and keep the best k.
Scores are cosine similarities (the vectors are unit length); with binary and no stored vectors they are
1 - 2 * hamming / dims, the cosine estimate of random-hyperplane hashing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

INDEX_FILE = "index.json"
FORMAT_VERSION = 1
# Below this many vectors `kind="auto"` is exact: a matmul over 50k x 1024 float32 takes a few ms per query
# on one core, and exact results need no recall caveat.
EXACT_THRESHOLD = 50_000
DEFAULT_RESCORE = 4  # binary: candidates = k * rescore (the sentence-transformers default multiplier)
HNSW_DEFAULTS = {"connectivity": 16, "expansion_add": 128, "expansion_search": 64}
STORAGE = ("float32", "float16", "int8", "none")


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def _encode_store(v: np.ndarray, store: str) -> np.ndarray:
    if store == "float32":
        return v.astype(np.float32)
    if store == "float16":
        return v.astype(np.float16)
    return np.clip(np.rint(v * 127.0), -127, 127).astype(np.int8)  # same fixed scale as precision="int8"


def _decode_store(v: np.ndarray) -> np.ndarray:
    if v.dtype == np.int8:
        return v.astype(np.float32) / 127.0
    return np.asarray(v, dtype=np.float32)  # float32 storage: no copy of the (memory-mapped) block


def hamming(query_bits: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """Hamming distances (m, n) between packed bit rows."""
    if bits.shape[1] % 8 == 0:  # popcount on 64-bit words: 8x fewer element operations
        q, b = query_bits.view(np.uint64), np.ascontiguousarray(bits).view(np.uint64)
    else:
        q, b = query_bits, bits
    if not hasattr(np, "bitwise_count"):  # numpy < 2: a byte lookup table
        q, b = query_bits, bits
        return np.stack([_POPCOUNT8[np.bitwise_xor(b, row)].sum(1, dtype=np.int64) for row in q])
    return np.stack([np.bitwise_count(np.bitwise_xor(b, row)).sum(1, dtype=np.int64) for row in q])


_POPCOUNT8 = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(1).astype(np.int64)


def _topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best k columns per row by descending score, ties by ascending index (stable, so tests can compare)."""
    k = min(k, scores.shape[1])
    if k < scores.shape[1]:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.tile(np.arange(scores.shape[1]), (scores.shape[0], 1))
    s = np.take_along_axis(scores, part, 1)
    order = np.lexsort((part, -s), axis=1)
    idx = np.take_along_axis(part, order, 1)
    return idx, np.take_along_axis(scores, idx, 1)


@dataclass
class Hit:
    rank: int
    score: float
    row: int
    fields: dict[str, Any]  # id, chunk spans, kept columns

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "score": self.score, **self.fields}


class VectorIndex:
    """A built index, opened from its folder. Vectors and bits are memory-mapped; the HNSW graph is viewed
    from disk (usearch `view`), so opening is cheap and pages load as searches touch them."""

    def __init__(self, path: Path, info: dict[str, Any], vectors: np.ndarray | None, bits: np.ndarray | None,
                 hnsw: Any, meta: Any) -> None:
        self.path, self.info, self.vectors, self.bits, self.hnsw, self.meta = path, info, vectors, bits, hnsw, meta

    @property
    def size(self) -> int:
        return int(self.info["count"])

    @property
    def dimensions(self) -> int:
        return int(self.info["dimensions"])

    @classmethod
    def open(cls, path: str | Path, mmap: bool = True) -> VectorIndex:
        import pyarrow.parquet as pq

        path = Path(path)
        if not (path / INDEX_FILE).exists():
            raise FileNotFoundError(f"{path} is not an index (no {INDEX_FILE}); build one with `taskembed index`")
        info = json.loads((path / INDEX_FILE).read_text(encoding="utf-8"))
        if info.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: index format {info.get('format_version')} is not supported; rebuild it")
        mode = "r" if mmap else None
        vectors = np.load(path / "vectors.npy", mmap_mode=mode) if info["storage"] != "none" else None
        bits = np.load(path / "bits.npy", mmap_mode=mode) if info["binary"] else None
        hnsw = None
        if info["kind"] == "hnsw":
            from usearch.index import Index

            hnsw = Index.restore(str(path / "hnsw.usearch"), view=mmap)
            hnsw.expansion_search = info["hnsw"]["expansion_search"]
        return cls(path, info, vectors, bits, hnsw, pq.read_table(path / "meta.parquet"))

    # --- search ---

    def search_vectors(self, queries: np.ndarray, k: int = 10, rescore: int | None = None,
                       exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(rows, scores), each (m, min(k, size)), best first. `exact` forces brute force over the stored
        vectors whatever the index kind (the reference the approximate paths are measured against)."""
        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if q.shape[1] != self.dimensions:
            raise ValueError(f"query vectors have {q.shape[1]} dimensions; the index has {self.dimensions}")
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        q = _normalize(q)
        k = min(k, self.size)
        if exact and self.vectors is not None:
            return self._exact(q, k)
        if self.bits is not None:
            return self._binary(q, k, DEFAULT_RESCORE if rescore is None else rescore)
        if self.hnsw is not None:
            m = self.hnsw.search(q, k, threads=1)
            if np.any(np.asarray(m.counts).reshape(-1) < k):  # the graph walk found too few: answer exactly
                return self._exact(q, k) if self.vectors is not None else self._binary(q, k, 1)
            rows = np.asarray(m.keys, dtype=np.int64).reshape(len(q), -1)
            return rows, 1.0 - np.asarray(m.distances, dtype=np.float32).reshape(len(q), -1)
        return self._exact(q, k)

    def _exact(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        block = 65536  # bounds the float copy of int8/float16 storage and the score matrix
        best_rows, best_scores = None, None
        for a in range(0, self.size, block):
            v = _decode_store(self.vectors[a : a + block])
            # A few queries: einsum's single-thread loop. A multi-threaded BLAS GEMV is slower here on a
            # busy machine (measured 20 ms vs 3 ms for 10k x 256), and a server already runs requests in
            # parallel; query batches go to BLAS.
            s = np.einsum("nd,md->mn", v, q) if len(q) <= 4 else q @ v.T
            rows, scores = _topk(s, k)
            rows = rows + a
            if best_rows is None:
                best_rows, best_scores = rows, scores
            else:
                allr, alls = np.concatenate([best_rows, rows], 1), np.concatenate([best_scores, scores], 1)
                i, best_scores = _topk_pairs(alls, allr, k)
                best_rows = i
        return best_rows, best_scores

    def _binary(self, q: np.ndarray, k: int, rescore: int) -> tuple[np.ndarray, np.ndarray]:
        qbits = np.packbits(q > 0, axis=-1)
        n_cand = min(self.size, k * max(rescore, 1)) if self.vectors is not None else k
        dims = self.dimensions
        m = self.hnsw.search(qbits, n_cand, threads=1) if self.hnsw is not None else None
        if m is not None and np.all(np.asarray(m.counts).reshape(-1) >= n_cand):  # else: a full scan
            cand = np.asarray(m.keys, dtype=np.int64).reshape(len(q), -1)
            ham = np.asarray(m.distances, dtype=np.float32).reshape(len(q), -1)
        else:
            cand, neg = _topk(-hamming(qbits, self.bits).astype(np.float32), n_cand)
            ham = -neg
        if self.vectors is None:  # no stored vectors: the Hamming estimate of the cosine
            return cand[:, :k], (1.0 - 2.0 * ham[:, :k] / dims).astype(np.float32)
        rows_out, scores_out = [], []
        for i in range(len(q)):
            c = cand[i]
            s = _decode_store(self.vectors[np.sort(c)]) @ q[i]
            r, sc = _topk_pairs(s[None, :], np.sort(c)[None, :], k)
            rows_out.append(r[0])
            scores_out.append(sc[0])
        return np.stack(rows_out), np.stack(scores_out)

    def hits(self, rows: np.ndarray, scores: np.ndarray) -> list[Hit]:
        fields = self.meta.take(np.asarray(rows, dtype=np.int64)).to_pylist()
        return [Hit(rank=i + 1, score=float(s), row=int(r), fields=f)
                for i, (r, s, f) in enumerate(zip(rows, scores, fields, strict=True))]

    def search(self, queries: np.ndarray, k: int = 10, rescore: int | None = None) -> list[list[Hit]]:
        rows, scores = self.search_vectors(queries, k, rescore)
        return [self.hits(r, s) for r, s in zip(rows, scores, strict=True)]

    def search_text(self, emb: Any, texts: list[str], k: int = 10, task: str | None = None,
                    rescore: int | None = None) -> list[list[Hit]]:
        """Embed the query texts (default task: the index's query task) at the index's size and search."""
        task = task or self.info.get("query_task")
        q = emb.encode(texts, task=task, dimensions=self.dimensions)
        return self.search(q, k, rescore)


def _topk_pairs(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best k of (score, row) pairs per line, ties by ascending row."""
    order = np.lexsort((rows, -scores), axis=1)[:, :k]
    return np.take_along_axis(rows, order, 1), np.take_along_axis(scores, order, 1)


# --- building ------------------------------------------------------------------------------------------


def query_task_for(task: str | None) -> str | None:
    """The task to embed queries with, given the corpus' task (asymmetric retrieval pairs up)."""
    return "retrieval.query" if task == "retrieval.passage" else task


def build_index_from_arrays(path: str | Path, vectors: np.ndarray, ids: list[str] | None = None, meta: Any = None,
                            kind: str = "auto", binary: bool = False, store: str | None = None,
                            corpus: dict[str, Any] | None = None, overwrite: bool = False,
                            hnsw: dict[str, int] | None = None, bits: np.ndarray | None = None) -> Path:
    """Build an index folder from an (n, d) float array (or packed `bits` alone, for binary corpora).

    kind: exact, hnsw or auto (hnsw from EXACT_THRESHOLD vectors on). store: how the vectors used for exact
    search and rescoring are kept (float32, float16, int8, none; default float32, int8 with binary).
    meta: a pyarrow Table with one row per vector (default: just `ids`).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if path.exists() and not overwrite:
        raise ValueError(f"{path} exists; choose another --index or pass --overwrite")
    if vectors is None and bits is None:
        raise ValueError("no vectors to index")
    n = len(vectors) if vectors is not None else len(bits)
    if n == 0:
        raise ValueError("no vectors to index")
    dims = int(vectors.shape[1]) if vectors is not None else int(bits.shape[1]) * 8
    if kind not in ("auto", "exact", "hnsw"):
        raise ValueError(f"kind must be auto, exact or hnsw, got {kind!r}")
    kind = ("hnsw" if n >= EXACT_THRESHOLD else "exact") if kind == "auto" else kind
    binary = binary or vectors is None
    store = store or ("int8" if binary else "float32")
    if vectors is None:
        store = "none"
    if store not in STORAGE:
        raise ValueError(f"store must be one of {STORAGE}, got {store!r}")
    if store == "none" and not binary:
        raise ValueError("store='none' keeps no float vectors: only possible with binary vectors")
    if binary and dims % 8:
        raise ValueError(f"binary vectors need dimensions divisible by 8, got {dims}")
    if meta is None:
        meta = pa.table({"id": pa.array(ids if ids is not None else [str(i) for i in range(n)], pa.string())})
    if meta.num_rows != n:
        raise ValueError(f"metadata has {meta.num_rows} rows for {n} vectors")
    params = {**HNSW_DEFAULTS, **(hnsw or {})}

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        v = _normalize(vectors) if vectors is not None else None
        if v is not None and store != "none":
            np.save(tmp / "vectors.npy", _encode_store(v, store))
        if binary:
            bits = np.packbits(v > 0, axis=-1) if v is not None else np.asarray(bits, dtype=np.uint8)
            np.save(tmp / "bits.npy", bits)
        if kind == "hnsw":
            from usearch.index import Index

            threads = os.cpu_count() or 1
            if binary:
                g = Index(ndim=dims, metric="hamming", dtype="b1", connectivity=params["connectivity"],
                          expansion_add=params["expansion_add"], expansion_search=params["expansion_search"])
                g.add(np.arange(n, dtype=np.uint64), bits, threads=threads)
            else:
                # Unit vectors: inner product == cosine, and skips usearch's per-distance normalisation.
                g = Index(ndim=dims, metric="ip", dtype="f32", connectivity=params["connectivity"],
                          expansion_add=params["expansion_add"], expansion_search=params["expansion_search"])
                g.add(np.arange(n, dtype=np.uint64), v, threads=threads)
            g.save(str(tmp / "hnsw.usearch"))
        pq.write_table(meta, tmp / "meta.parquet")
        corpus = corpus or {}
        info = {"format_version": FORMAT_VERSION, "kind": kind, "count": n, "dimensions": dims, "binary": binary,
                "storage": store, "hnsw": params if kind == "hnsw" else None, "metric": "cosine",
                "model": corpus.get("model"), "task": corpus.get("task"),
                "query_task": query_task_for(corpus.get("task")), "corpus": corpus.get("output")}
        (tmp / INDEX_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def vectors_from_table(table: Any, precision: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(float vectors, packed bits) from an embed-corpus table's `vector` column."""
    col = table.column("vector").combine_chunks()
    width = col.type.list_size
    flat = col.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
    if precision in ("float32", "float16"):
        return flat.astype(np.float32), None
    if precision == "int8":
        return flat.astype(np.float32) / 127.0, None
    if precision == "uint8":
        return flat.astype(np.float32) / 127.5 - 1.0, None
    if precision == "ubinary":
        return None, flat.astype(np.uint8)
    return None, (flat.astype(np.int16) + 128).astype(np.uint8)  # binary: int8 offset by -128


def build_index(corpus_dir: str | Path, index_dir: str | Path, kind: str = "auto", binary: bool = False,
                store: str | None = None, overwrite: bool = False, hnsw: dict[str, int] | None = None) -> Path:
    """Build an index from an `embed-corpus` output folder (all its finished shards; it must be complete)."""
    from .corpus import read_manifest, read_output

    m = read_manifest(Path(corpus_dir))
    if m is None:
        raise FileNotFoundError(f"{corpus_dir} has no manifest.json: not an embed-corpus output")
    if not m.get("complete"):
        raise ValueError(f"{corpus_dir} is not complete: finish it (rerun embed-corpus) before indexing")
    table = read_output(corpus_dir)
    params = m["params"]
    vectors, bits = vectors_from_table(table, params["precision"])
    meta = table.drop_columns(["vector"])
    corpus = {"model": str(params["model"]).split("#")[0], "task": params["task"], "output": str(corpus_dir)}
    return build_index_from_arrays(index_dir, vectors, meta=meta, kind=kind, binary=binary, store=store,
                                   corpus=corpus, overwrite=overwrite, hnsw=hnsw, bits=bits)


# --- command line ----------------------------------------------------------------------------------------


def index_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="taskembed index", description="Build a vector index from embed-corpus output")
    p.add_argument("corpus", help="an embed-corpus output folder")
    p.add_argument("--index", required=True, help="index folder to write")
    p.add_argument("--kind", default="auto", choices=["auto", "exact", "hnsw"],
                   help=f"auto: exact below {EXACT_THRESHOLD} vectors, HNSW from there on")
    p.add_argument("--binary", action="store_true", help="also keep packed sign bits: Hamming search + rescoring")
    p.add_argument("--store", choices=STORAGE, help="stored vectors for exact search / rescoring "
                   "(default float32; int8 with --binary; none: bits only)")
    p.add_argument("--connectivity", type=int, default=HNSW_DEFAULTS["connectivity"], help="HNSW M")
    p.add_argument("--expansion-add", type=int, default=HNSW_DEFAULTS["expansion_add"], help="HNSW efConstruction")
    p.add_argument("--expansion-search", type=int, default=HNSW_DEFAULTS["expansion_search"], help="HNSW ef")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    t = time.perf_counter()
    try:
        out = build_index(args.corpus, args.index, kind=args.kind, binary=args.binary, store=args.store,
                          overwrite=args.overwrite, hnsw={"connectivity": args.connectivity,
                                                          "expansion_add": args.expansion_add,
                                                          "expansion_search": args.expansion_search})
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    info = json.loads((out / INDEX_FILE).read_text())
    print(f"index: {info['count']} vectors x {info['dimensions']} ({info['kind']}"
          f"{', binary' if info['binary'] else ''}, stored {info['storage']}) in {out} "
          f"({time.perf_counter() - t:.1f}s)", file=sys.stderr)
    return 0


def search_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="taskembed search", description="Search an index with text queries")
    p.add_argument("index", help="index folder (from `taskembed index`)")
    p.add_argument("query", nargs="+", help="query text(s)")
    p.add_argument("-k", type=int, default=10, help="hits per query")
    p.add_argument("--task", help="query task (default: retrieval.query for a retrieval.passage corpus, "
                   "else the corpus' task)")
    p.add_argument("--model", help="model folder or hub id (default: the model that embedded the corpus)")
    p.add_argument("--rescore", type=int, help=f"binary: candidates = k x this (default {DEFAULT_RESCORE})")
    p.add_argument("--json", action="store_true", help="one JSON object per hit")
    args = p.parse_args(argv)
    try:
        from . import load
        from .corpus import resolve_model

        idx = VectorIndex.open(args.index)
        emb = load(resolve_model(args.model or idx.info.get("model")))
        results = idx.search_text(emb, args.query, k=args.k, task=args.task, rescore=args.rescore)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for q, hits in zip(args.query, results, strict=True):
        if args.json:
            for h in hits:
                print(json.dumps({"query": q, **h.to_dict()}, ensure_ascii=False, default=str))
            continue
        print(f"query: {q}")
        for h in hits:
            extra = {k: v for k, v in h.fields.items() if k != "id"}
            tail = ("  " + json.dumps(extra, ensure_ascii=False, default=str)) if extra else ""
            print(f"  {h.rank:>3}. {h.score:.4f}  {h.fields.get('id')}{tail}")
    return 0
