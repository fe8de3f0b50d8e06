"""Vector index benchmark: build time, single-query latency p50/p99 and recall@10 against exact search, and
disk footprint, for the candidate libraries (usearch, faiss-cpu, lancedb) and for taskembed's own index
(exact, HNSW, binary + float rescoring).

    python -m benchmarks.index_search --sizes 10000 100000 --dim 256 --queries 200
    python -m benchmarks.index_search --eval --sizes        # model vectors: the eval suite's retrieval corpora

Datasets: `clustered-N` (unit vectors around N/100 random centres: local structure like real embeddings),
`gaussian-N` (uniform on the sphere: no structure, the hardest case for graph indexes) and, with
--eval, `eval-suite` (every retrieval corpus of data/eval/ embedded with the tiny random model, its queries
as queries). Ground truth is brute-force cosine (numpy matmul) on the same vectors. Queries run one at a
time on one thread, which is what a search request does.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

K = 10
ROOT = Path(__file__).resolve().parents[1]


def exact_topk(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    out = []
    for i in range(0, len(queries), 256):
        s = queries[i : i + 256] @ base.T
        top = np.argpartition(-s, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, top, 1), axis=1)
        out.append(np.take_along_axis(top, order, 1))
    return np.concatenate(out)


def recall(found: list[np.ndarray], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[:K].tolist()) & set(t.tolist())) / K for f, t in zip(found, truth, strict=True)]))


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def time_queries(fn: Callable[[np.ndarray], np.ndarray], queries: np.ndarray) -> tuple[list[np.ndarray], list[float]]:
    found, lat = [], []
    fn(queries[0])  # warm-up (lazy loads, JIT)
    for q in queries:
        t = time.perf_counter()
        found.append(np.asarray(fn(q)))
        lat.append((time.perf_counter() - t) * 1000)
    return found, lat


def pct(xs: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(xs), p))


# --- candidates ----------------------------------------------------------------------------------------


def run_usearch(base, queries, work: Path):
    from usearch.index import Index

    t = time.perf_counter()
    idx = Index(ndim=base.shape[1], metric="ip", dtype="f32", connectivity=16, expansion_add=128, expansion_search=64)
    idx.add(np.arange(len(base), dtype=np.uint64), base, threads=os.cpu_count() or 1)
    build = time.perf_counter() - t
    path = work / "usearch.idx"
    idx.save(str(path))
    found, lat = time_queries(lambda q: idx.search(q, K, threads=1).keys, queries)
    return build, found, lat, dir_bytes(path)


def run_faiss(base, queries, work: Path):
    import faiss

    t = time.perf_counter()
    idx = faiss.IndexHNSWFlat(base.shape[1], 16, faiss.METRIC_INNER_PRODUCT)
    idx.hnsw.efConstruction = 128
    idx.add(base)
    build = time.perf_counter() - t
    idx.hnsw.efSearch = 64
    path = work / "faiss.idx"
    faiss.write_index(idx, str(path))
    faiss.omp_set_num_threads(1)
    found, lat = time_queries(lambda q: idx.search(q[None, :], K)[1][0], queries)
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    return build, found, lat, dir_bytes(path)


def run_lancedb(base, queries, work: Path):
    import lancedb
    import pyarrow as pa

    t = time.perf_counter()
    db = lancedb.connect(str(work / "lance"))
    vec = pa.FixedSizeListArray.from_arrays(pa.array(base.reshape(-1)), base.shape[1])
    tbl = db.create_table("t", data=pa.table({"i": pa.array(np.arange(len(base))), "vector": vec}))
    indexed = len(base) >= 5000  # IVF needs enough rows to train its partitions
    if indexed:
        tbl.create_index(metric="cosine", vector_column_name="vector", index_type="IVF_HNSW_SQ")
    build = time.perf_counter() - t

    def one(q):
        s = tbl.search(q).metric("cosine").limit(K)
        if indexed:
            s = s.nprobes(20).refine_factor(5)
        return s.to_arrow()["i"].to_numpy()

    found, lat = time_queries(one, queries)
    return build, found, lat, dir_bytes(work / "lance")


def run_taskembed(base, queries, work: Path, mode: str, ef: int = 64, store: str | None = None):
    from taskembed import index as tindex

    t = time.perf_counter()
    path = work / f"te-{mode}"
    tindex.build_index_from_arrays(
        path, base, ids=[str(i) for i in range(len(base))], kind="hnsw" if mode.endswith("hnsw") else "exact",
        binary=mode.startswith("binary"), store=store, hnsw={"expansion_search": ef},
    )
    build = time.perf_counter() - t
    idx = tindex.VectorIndex.open(path)
    found, lat = time_queries(lambda q: idx.search_vectors(q[None, :], K)[0][0], queries)
    return build, found, lat, dir_bytes(path)


RUNNERS = {
    "usearch-hnsw": run_usearch,
    "faiss-hnsw": run_faiss,
    "lancedb-ivf-hnsw-sq": run_lancedb,
    "taskembed-exact": lambda b, q, w: run_taskembed(b, q, w, "exact"),
    "taskembed-hnsw": lambda b, q, w: run_taskembed(b, q, w, "hnsw"),
    "taskembed-binary": lambda b, q, w: run_taskembed(b, q, w, "binary"),
    "taskembed-hnsw-ef256": lambda b, q, w: run_taskembed(b, q, w, "hnsw", ef=256),
    "taskembed-binary-hnsw": lambda b, q, w: run_taskembed(b, q, w, "binary-hnsw"),
    "taskembed-binary-bitsonly": lambda b, q, w: run_taskembed(b, q, w, "binary", store="none"),
}


# --- datasets ------------------------------------------------------------------------------------------


def random_set(n: int, dim: int, nq: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n + nq, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x[:n], x[n:]


def clustered_set(n: int, dim: int, nq: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around n/100 random centres (noise norm ~ 0.7 x the centre's): neighbourhoods like real
    embeddings have, where uniform Gaussian noise has none."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((max(n // 100, 1), dim), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    x = centers[rng.integers(0, len(centers), n + nq)] + rng.standard_normal((n + nq, dim), dtype=np.float32) * (
        0.7 / np.sqrt(dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x[:n], x[n:]


def eval_set(nq: int) -> tuple[np.ndarray, np.ndarray]:
    """All retrieval corpora of the eval suite, embedded with the tiny random model (64-d)."""
    from tests.support.tiny import make_tiny_embedder

    emb = make_tiny_embedder(seed=0)
    docs, qs = [], []
    for d in sorted((ROOT / "data" / "eval").glob("*retrieval*")):
        if not (d / "corpus.jsonl").exists():
            continue
        docs += [json.loads(x)["text"] for x in (d / "corpus.jsonl").open(encoding="utf-8")]
        qs += [json.loads(x)["text"] for x in (d / "queries.jsonl").open(encoding="utf-8")]
    rng = np.random.default_rng(0)
    qs = [qs[i] for i in rng.choice(len(qs), min(nq, len(qs)), replace=False)]
    base = emb.encode(docs, task="retrieval.passage", max_length=512)
    return base, emb.encode(qs, task="retrieval.query", max_length=512)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--data", nargs="*", default=["clustered"], choices=["clustered", "gaussian"])
    ap.add_argument("--eval", action="store_true", help="also the eval suite's retrieval corpora (tiny model)")
    ap.add_argument("--libs", nargs="*", default=list(RUNNERS), choices=list(RUNNERS))
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()

    sets: list[tuple[str, Callable[[], tuple[np.ndarray, np.ndarray]]]] = []
    if args.eval:
        sets.append(("eval-suite", lambda: eval_set(args.queries)))
    makers = {"gaussian": random_set, "clustered": clustered_set}
    for n in args.sizes:
        for kind in args.data:
            sets.append((f"{kind}-{n // 1000}k-d{args.dim}",
                         lambda n=n, kind=kind: makers[kind](n, args.dim, args.queries)))

    rows = []
    print("| dataset | index | build s | p50 ms | p99 ms | recall@10 | disk MB |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, make in sets:
        base, queries = make()
        base, queries = np.ascontiguousarray(base, np.float32), np.ascontiguousarray(queries, np.float32)
        truth = exact_topk(base, queries, K)
        for lib in args.libs:
            work = Path(tempfile.mkdtemp(prefix="idxbench-"))
            try:
                build, found, lat, size = RUNNERS[lib](base, queries, work)
            except Exception as e:  # a library that fails on this machine is reported, not fatal
                print(f"| {name} (n={len(base)}) | {lib} | failed: {type(e).__name__}: {e} |")
                continue
            finally:
                shutil.rmtree(work, ignore_errors=True)
            row = dict(dataset=name, n=len(base), index=lib, build_s=build, p50_ms=pct(lat, 50), p99_ms=pct(lat, 99),
                       recall=recall(found, truth), disk_mb=size / 1e6, mean_ms=statistics.fmean(lat))
            rows.append(row)
            print(f"| {name} (n={len(base)}) | {lib} | {build:.2f} | {row['p50_ms']:.3f} | {row['p99_ms']:.3f} | "
                  f"{row['recall']:.3f} | {row['disk_mb']:.1f} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
