"""Bulk embedding throughput: `embed-corpus` in one process (torch on all cores) vs the Ray Data engine with
N single-thread actors, same model, same texts (documents of the eval suite's retrieval corpora).

    python -m benchmarks.corpus_bulk --docs 2000 --size small --workers 2

Prints texts/s and tokens/s per engine, wall time including model load (and for Ray its start-up), and
checks that both outputs are equal row for row. Random weights: only speed is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from taskembed import corpus
from taskembed.io import iter_jsonl
from tests.support.tiny import make_tiny_embedder

ROOT = Path(__file__).resolve().parents[1]
SIZES = {
    "tiny": {},
    "small": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=6, intermediate_size=1536),
}


def docs(n: int) -> list[dict]:
    out = []
    for d in sorted((ROOT / "data" / "eval").glob("*retrieval*")):
        for r in iter_jsonl(d / "corpus.jsonl"):
            out.append({"id": f"{d.name}/{r['id']}", "text": r["text"]})
            if len(out) == n:
                return out
    return out


def vectors(table) -> np.ndarray:
    col = table.column("vector").combine_chunks()
    return col.flatten().to_numpy(zero_copy_only=False).reshape(len(table), col.type.list_size)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--size", default="small", choices=list(SIZES))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shard-size", type=int, default=250)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--engines", nargs="*", default=["local", "ray"], choices=["local", "ray"])
    args = ap.parse_args()

    import torch

    work = Path(tempfile.mkdtemp(prefix="bulkbench-"))
    emb = make_tiny_embedder(seed=0, **SIZES[args.size])
    emb.save(work / "model")
    rows = docs(args.docs)
    src = work / "corpus.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    n_tokens = sum(min(t, args.max_length) for t in emb.count_tokens([r["text"] for r in rows], "retrieval.passage"))
    cores = os.cpu_count() or 1
    print(f"{len(rows)} documents, {n_tokens} tokens (max_length {args.max_length}), model {args.size} "
          f"(hidden {emb.config.hidden_size}, {emb.config.num_hidden_layers} layers), {cores} cores")
    print("| engine | wall s | texts/s | tokens/s |")
    print("|---|---:|---:|---:|")
    outs = {}
    for engine in args.engines:
        job = corpus.CorpusJob(input=src, output=work / engine, model=str(work / "model"), shard_size=args.shard_size,
                         max_length=args.max_length)
        t = time.perf_counter()
        if engine == "local":
            torch.set_num_threads(cores)
            from taskembed import load

            corpus.run(job, load(job.model), progress=False)
            label = f"local, 1 process x {cores} threads"
        else:
            import ray

            corpus.run_ray(job, workers=args.workers, progress=False)
            ray.shutdown()
            label = f"ray, {args.workers} actors x {max(1, cores // args.workers)} threads"
        wall = time.perf_counter() - t
        outs[engine] = corpus.read_output(work / engine)
        print(f"| {label} | {wall:.1f} | {len(rows) / wall:.1f} | {n_tokens / wall:.0f} |", flush=True)
    if len(outs) == 2:
        a, b = outs["local"], outs["ray"]
        same = a.column("id").to_pylist() == b.column("id").to_pylist()
        diff = float(np.abs(vectors(a) - vectors(b)).max())
        verdict = "identical" if same else "DIFFER"
        print(f"\nray output equals local output: ids {verdict}, max |vector diff| {diff:.2e}")


if __name__ == "__main__":
    main()
