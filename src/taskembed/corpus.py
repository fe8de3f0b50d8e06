"""`taskembed embed-corpus`: embed a whole corpus into Parquet shards, resumably.

Input: a JSONL file, a Parquet file, or a folder of .txt files (one document per file, id = relative path,
sorted). Output folder:

    part-00000.parquet ...   columns: id, [chunk, start, end,] vector (fixed-size list), kept columns
    manifest.json            job parameters, input fingerprint, finished shards, complete flag

Shard k holds input rows [k * shard_size, (k + 1) * shard_size) in input order, so the output order is
stable and a shard's content depends only on the input and the parameters. Each shard is written to a
temporary name and renamed into place, and the manifest (also replaced atomically) is updated after the
rename; a killed run therefore leaves finished shards, at most one orphan shard that is not in the manifest
(rewritten identically on resume) and maybe a temp file (deleted). A resumed run checks that the input
fingerprint and parameters match, skips the finished shards' rows and continues: no row is duplicated or
dropped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .io import iter_jsonl

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
DEFAULT_SHARD_SIZE = 10_000
# Texts handed to Embedder.encode per call: large enough for good token-budget batches, small enough for a
# progress line every few seconds.
ENCODE_CHUNK = 1024
# Test hook: "K" exits the process right after shard K is recorded; "K:renamed" after its rename but before
# the manifest update; "K:tmp" after writing its temp file. Simulates a kill at each step.
EXIT_HOOK_ENV = "TASKEMBED_TEST_EXIT_AFTER_SHARD"


def resolve_model(model: str | None) -> str:
    """The model directory a job records: the one given, else the bundled default model."""
    from . import checkpoint

    return str(model) if model else str(checkpoint.default_model_dir())


# --- reading ---------------------------------------------------------------------------------------------


def input_kind(path: Path) -> str:
    if path.is_dir():
        return "txt"
    suffix = path.name.lower()
    if suffix.endswith((".jsonl", ".ndjson", ".jsonl.txt")):
        return "jsonl"
    if suffix.endswith((".parquet", ".pq")):
        return "parquet"
    if not path.exists():
        raise FileNotFoundError(f"input {path} does not exist")
    raise ValueError(f"input {path}: expected a .jsonl file, a .parquet file or a folder of .txt files")


def _txt_files(path: Path) -> list[Path]:
    files = sorted(p for p in path.rglob("*.txt") if p.is_file())
    if not files:
        raise ValueError(f"input folder {path} has no .txt files")
    return files


def fingerprint(path: Path) -> str:
    """sha256 over the input's bytes (and, for a folder, its file names): any edit changes it."""
    h = hashlib.sha256()
    files = _txt_files(path) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode() + b"\0")
        with f.open("rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def count_rows(path: Path) -> int:
    kind = input_kind(path)
    if kind == "txt":
        return len(_txt_files(path))
    if kind == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    with path.open("rb") as fh:
        return sum(1 for line in fh if line.strip())


def iter_records(path: Path, text_field: str = "text", id_field: str = "id", keep: list[str] | None = None,
                 start: int = 0) -> Iterator[dict[str, Any]]:
    """Rows {"id": str, "text": str, **kept} in input order, from row `start` on.

    A row without the id field gets its row number as id; a row without a string text field is an error
    naming the row, since silently skipping it would shift every later shard.
    """
    keep = list(keep or [])
    kind = input_kind(path)

    def row(i: int, rec: dict[str, Any]) -> dict[str, Any]:
        text = rec.get(text_field)
        if not isinstance(text, str):
            raise ValueError(f"{path} row {i}: field {text_field!r} is missing or not a string "
                             f"(choose the field with --text-field)")
        rid = rec.get(id_field)
        out = {"id": str(i) if rid is None else str(rid), "text": text}
        for c in keep:
            out[c] = rec.get(c)
        return out

    if kind == "txt":
        for i, f in enumerate(_txt_files(path)):
            if i >= start:
                yield {"id": str(f.relative_to(path)), "text": f.read_text(encoding="utf-8"),
                       **{c: None for c in keep}}
        return
    if kind == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        missing = [c for c in [text_field, *keep] if c not in names]
        if missing:
            raise ValueError(f"{path} has no column(s) {missing}; columns: {names}")
        cols = [c for c in dict.fromkeys([text_field, id_field, *keep]) if c in names]
        i = 0
        for batch in pf.iter_batches(batch_size=4096, columns=cols):
            if i + batch.num_rows <= start:
                i += batch.num_rows
                continue
            for rec in batch.to_pylist():
                if i >= start:
                    yield row(i, rec)
                i += 1
        return
    for i, rec in enumerate(iter_jsonl(path)):
        if i >= start:
            yield row(i, rec)


# --- chunking for late chunking --------------------------------------------------------------------------


def split_spans(text: str, chunk_size: int) -> list[tuple[int, int]]:
    """Contiguous character spans covering `text`, each about chunk_size characters, cut at whitespace.

    The chunks are joined with separator "" for late chunking, so the document the model sees is exactly
    the input text and the spans index into it directly. A tail without content joins the previous chunk
    (a chunk must produce tokens).
    """
    spans, a, n = [], 0, len(text)
    while a < n:
        b = min(a + chunk_size, n)
        while b < n and not text[b].isspace():  # finish the word
            b += 1
        if spans and not text[a:b].strip():
            spans[-1] = (spans[-1][0], b)
        else:
            spans.append((a, b))
        a = b
    if len(spans) > 1 and not text[spans[0][0]:spans[0][1]].strip():
        spans[1] = (0, spans[1][1])
        spans.pop(0)
    return spans or [(0, n)]


# --- the job ---------------------------------------------------------------------------------------------


@dataclass
class CorpusJob:
    input: Path
    output: Path
    model: str
    task: str | None = "retrieval.passage"
    dimensions: int | None = None
    precision: str = "float32"
    text_field: str = "text"
    id_field: str = "id"
    keep: tuple[str, ...] = ()
    shard_size: int = DEFAULT_SHARD_SIZE
    batch_size: int = 32
    max_length: int = 8192
    late_chunking: bool = False
    chunk_size: int = 1000
    int8: bool = False

    def params(self) -> dict[str, Any]:
        """What the output depends on; a resumed run must match it exactly."""
        out = {
            "model": self.model, "task": self.task, "dimensions": self.dimensions, "precision": self.precision,
            "text_field": self.text_field, "id_field": self.id_field, "keep": list(self.keep),
            "shard_size": self.shard_size, "max_length": self.max_length, "late_chunking": self.late_chunking,
            "chunk_size": self.chunk_size if self.late_chunking else None,
        }
        if self.int8:  # only when set, so outputs written before the option existed still resume
            out["int8"] = True
        return out


def shard_name(k: int) -> str:
    return f"part-{k:05d}.parquet"


def _write_json_atomic(path: Path, obj: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, ensure_ascii=False)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_manifest(output: Path) -> dict[str, Any] | None:
    p = Path(output) / MANIFEST
    return json.loads(p.read_text(encoding="utf-8")) if p.exists() else None


def _exit_hook(k: int, stage: str) -> None:
    spec = os.environ.get(EXIT_HOOK_ENV)
    if not spec:
        return
    want, _, want_stage = spec.partition(":")
    if int(want) == k and (want_stage or "manifest") == stage:
        sys.stderr.flush()
        os._exit(17)  # no cleanup, like a kill


def model_identity(emb: Any, model: str) -> str:
    """The model as recorded in the manifest: its path plus a hash of its config (a retrained model in the
    same folder has other weights, but then its config usually differs too; the path is what users see)."""
    cfg = json.dumps(emb.config.to_dict(), sort_keys=True, default=str)
    return f"{model}#{hashlib.sha256(cfg.encode()).hexdigest()[:12]}"


def vectors_to_arrow(vecs: np.ndarray):
    import pyarrow as pa

    flat = pa.array(np.ascontiguousarray(vecs).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, vecs.shape[1])


def embed_rows(emb: Any, job: CorpusJob, rows: list[dict[str, Any]], on_progress: Callable[[int], None] | None = None):
    """One shard's rows -> a pyarrow Table (the shard). Shared by the local and the Ray engine."""
    import pyarrow as pa

    keep = list(job.keep)
    if not job.late_chunking:
        parts = []
        for i in range(0, len(rows), ENCODE_CHUNK):
            texts = [r["text"] for r in rows[i : i + ENCODE_CHUNK]]
            parts.append(emb.encode(texts, task=job.task, dimensions=job.dimensions, precision=job.precision,
                                    batch_size=job.batch_size, max_length=job.max_length))
            if on_progress:
                on_progress(len(texts))
        vecs = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
        cols = {"id": pa.array([r["id"] for r in rows], pa.string()), "vector": vectors_to_arrow(vecs)}
        for c in keep:
            cols[c] = pa.array([r[c] for r in rows])
        return pa.table(cols)

    from . import late_chunking
    from .embedder import quantize

    ids, chunk, starts, ends, vecs, kept = [], [], [], [], [], {c: [] for c in keep}
    for r in rows:
        text = r["text"]
        spans = split_spans(text, job.chunk_size) if text.strip() else []
        if spans:
            v = late_chunking.late_chunk(emb, [text[a:b] for a, b in spans], task=job.task,
                                         dimensions=job.dimensions, separator="",
                                         window=min(job.max_length, emb.config.max_tokens))
        else:  # an empty document: one chunk, embedded as usual so the row is not lost
            spans = [(0, len(text))]
            v = emb.encode([text], task=job.task, dimensions=job.dimensions, max_length=job.max_length)
        vecs.append(quantize(v, job.precision))
        for j, (a, b) in enumerate(spans):
            ids.append(r["id"])
            chunk.append(j)
            starts.append(a)
            ends.append(b)
            for c in keep:
                kept[c].append(r[c])
        if on_progress:
            on_progress(1)
    cols = {"id": pa.array(ids, pa.string()), "chunk": pa.array(chunk, pa.int32()),
            "start": pa.array(starts, pa.int64()), "end": pa.array(ends, pa.int64()),
            "vector": vectors_to_arrow(np.concatenate(vecs))}
    for c in keep:
        cols[c] = pa.array(kept[c])
    return pa.table(cols)


class Progress:
    """texts/s and ETA on stderr: one rewritten line on a terminal, plain lines in a log."""

    def __init__(self, total: int, done: int, enabled: bool = True) -> None:
        self.total, self.done, self.start_done = total, done, done
        self.t0 = time.perf_counter()
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def add(self, n: int, force: bool = False) -> None:
        self.done += n
        now = time.perf_counter()
        # A terminal gets a rewritten line twice a second; a log file a line per shard or every 10 s.
        if not self.enabled or (not force and now - self.last < (0.5 if self.tty else 10.0)):
            return
        self.last = now
        rate = (self.done - self.start_done) / max(now - self.t0, 1e-9)
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta = "?" if left == float("inf") else f"{int(left) // 60}m{int(left) % 60:02d}s"
        pct = 100.0 * self.done / max(self.total, 1)
        line = f"embed-corpus: {self.done}/{self.total} texts ({pct:.1f}%), {rate:.1f} texts/s, ETA {eta}"
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled and self.tty:
            print(file=sys.stderr)


def prepare_output(job: CorpusJob, emb: Any, overwrite: bool = False) -> tuple[dict[str, Any], int]:
    """Create or check the output folder; returns (manifest, total rows)."""
    job.output.mkdir(parents=True, exist_ok=True)
    fp = fingerprint(job.input)
    params = {**job.params(), "model": model_identity(emb, job.model)}
    old = read_manifest(job.output)
    if old is not None and not overwrite:
        if old.get("input_fingerprint") != fp:
            raise ValueError(f"{job.output} holds the output of a different input (fingerprint changed): "
                             "use a new --output, or --overwrite to start again")
        diff = sorted(k for k in set(params) | set(old.get("params", {})) if params.get(k) != old["params"].get(k))
        if diff:
            raise ValueError(f"{job.output} was written with other parameters ({', '.join(diff)} differ): "
                             "use the same options, a new --output, or --overwrite")
        manifest = old
    else:
        for p in job.output.glob("part-*.parquet*"):
            p.unlink()
        manifest = {"format_version": FORMAT_VERSION, "input": str(job.input), "input_fingerprint": fp,
                    "params": params, "total_rows": count_rows(job.input), "shards": [], "complete": False}
        _write_json_atomic(job.output / MANIFEST, manifest)
    for p in job.output.glob("*.tmp"):  # leftovers of a killed run
        p.unlink()
    for s in manifest["shards"]:
        if not (job.output / s["file"]).exists():
            raise ValueError(f"{job.output}: finished shard {s['file']} is missing; use --overwrite to start again")
    return manifest, manifest["total_rows"]


def run(job: CorpusJob, emb: Any, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Embed the corpus (or the rest of it) on this machine. Returns the final manifest."""
    import pyarrow.parquet as pq

    manifest, total = prepare_output(job, emb, overwrite)
    if manifest["complete"]:
        if progress:
            print(f"embed-corpus: {job.output} is already complete ({total} rows)", file=sys.stderr)
        return manifest
    k = len(manifest["shards"])
    start = k * job.shard_size
    prog = Progress(total, start, progress)
    records = iter_records(job.input, job.text_field, job.id_field, list(job.keep), start=start)
    while True:
        rows = [r for _, r in zip(range(job.shard_size), records, strict=False)]
        if not rows:
            break
        table = embed_rows(emb, job, rows, prog.add)
        name = shard_name(k)
        tmp = job.output / (name + ".tmp")
        pq.write_table(table, tmp)
        _exit_hook(k, "tmp")
        os.replace(tmp, job.output / name)
        _exit_hook(k, "renamed")
        manifest["shards"].append({"file": name, "first_row": k * job.shard_size, "input_rows": len(rows),
                                   "output_rows": table.num_rows})
        _write_json_atomic(job.output / MANIFEST, manifest)
        prog.add(0, force=True)
        _exit_hook(k, "manifest")
        k += 1
    prog.close()
    done = sum(s["input_rows"] for s in manifest["shards"])
    if done != total:
        raise ValueError(f"read {done} rows but the input has {total}: the input changed during the run")
    manifest["complete"] = True
    _write_json_atomic(job.output / MANIFEST, manifest)
    return manifest


# --- Ray Data engine --------------------------------------------------------------------------------------


class _RayEmbedder:
    """A Ray actor: one model replica, loaded once, embedding whole shards (so shard content, and therefore
    the batches inside it, are the same as in the local engine)."""

    def __init__(self, job: CorpusJob, threads: int) -> None:
        import torch

        from . import load

        torch.set_num_threads(max(1, threads))
        self.job = job
        self.emb = load(job.model, device=None if job.int8 or not torch.cuda.is_available() else "cuda",
                        int8=job.int8)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        k = int(batch["shard"][0])
        rows = json.loads(batch["rows"][0])
        table = embed_rows(self.emb, self.job, rows)
        name = shard_name(k)
        tmp = self.job.output / (name + f".{os.getpid()}.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, self.job.output / name)  # the driver records it in the manifest
        return {"shard": np.array([k]), "output_rows": np.array([table.num_rows]),
                "input_rows": np.array([len(rows)]), "file": pa.array([name]).to_numpy(zero_copy_only=False)}


def run_ray(job: CorpusJob, address: str | None = None, workers: int = 2, gpus_per_worker: float = 0.0,
            overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """The same job on Ray Data: the driver reads the input and cuts it into shards (one dataset row per
    shard), `map_batches` runs them on `workers` actors with one model replica each, and the driver records
    finished shards in the manifest as they arrive. The output equals the local engine's, shard for shard.
    Needs the output folder to be shared storage when the cluster has several machines.
    """
    try:
        import ray
    except ModuleNotFoundError:
        raise ValueError("--engine ray needs Ray Data: pip install 'taskembed[distributed]'") from None
    from . import load

    emb = load(job.model)  # the driver only checks the model and records its identity
    manifest, total = prepare_output(job, emb, overwrite)
    del emb
    if manifest["complete"]:
        return manifest
    k0 = len(manifest["shards"])
    items, k = [], k0
    records = iter_records(job.input, job.text_field, job.id_field, list(job.keep), start=k0 * job.shard_size)
    while rows := [r for _, r in zip(range(job.shard_size), records, strict=False)]:
        items.append({"shard": k, "rows": json.dumps(rows, ensure_ascii=False)})
        k += 1
    if items:
        if not ray.is_initialized():
            ray.init(address=address, num_cpus=None if address else max(workers, 1), include_dashboard=False,
                     log_to_driver=False, ignore_reinit_error=True)
        threads = max(1, (os.cpu_count() or 1) // max(workers, 1)) if not address else os.cpu_count() or 1
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        out = ds.map_batches(
            _RayEmbedder, fn_constructor_kwargs={"job": job, "threads": threads}, batch_size=1,
            concurrency=workers, num_cpus=1 if not gpus_per_worker else 0, num_gpus=gpus_per_worker or None,
        )
        prog = Progress(total, k0 * job.shard_size, progress)
        done: dict[int, dict[str, Any]] = {}
        for b in out.iter_batches(batch_size=1, batch_format="numpy"):
            s = int(b["shard"][0])
            done[s] = {"file": str(b["file"][0]), "first_row": s * job.shard_size,
                       "input_rows": int(b["input_rows"][0]), "output_rows": int(b["output_rows"][0])}
            # Record the finished prefix only: the manifest must list shards 0..k-1 with no gap.
            while len(manifest["shards"]) in done:
                manifest["shards"].append(done.pop(len(manifest["shards"])))
            _write_json_atomic(job.output / MANIFEST, manifest)
            prog.add(int(b["input_rows"][0]), force=True)
        prog.close()
    if sum(s["input_rows"] for s in manifest["shards"]) != total:
        raise ValueError("some shards did not finish; rerun the same command to resume")
    manifest["complete"] = True
    _write_json_atomic(job.output / MANIFEST, manifest)
    return manifest


def read_output(output: str | Path):
    """All finished shards of an output folder as one pyarrow Table, in shard order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    m = read_manifest(Path(output))
    if m is None:
        raise FileNotFoundError(f"{output} has no {MANIFEST}: not an embed-corpus output")
    tables = [pq.read_table(Path(output) / s["file"]) for s in m["shards"]]
    if not tables:
        raise ValueError(f"{output} has no finished shards")
    return pa.concat_tables(tables)


# --- command line ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="taskembed embed-corpus", description="Embed a corpus (JSONL, Parquet or "
                                "a folder of .txt files) into Parquet shards; rerun the same command to resume")
    p.add_argument("input", help="a .jsonl file, a .parquet file or a folder of .txt files")
    p.add_argument("--output", "-o", required=True, help="output folder (shards + manifest.json)")
    p.add_argument("--model", help="model folder (official jina-embeddings-v3 layout) or Hugging Face hub id")
    p.add_argument("--task", default="retrieval.passage", help="task adapter ('none' for the base weights)")
    p.add_argument("--dimensions", type=int, help="Matryoshka output size")
    p.add_argument("--precision", default="float32",
                   choices=["float32", "float16", "int8", "uint8", "binary", "ubinary"])
    p.add_argument("--text-field", default="text")
    p.add_argument("--id-field", default="id", help="id column (missing: the row number)")
    p.add_argument("--keep", nargs="*", default=[], metavar="COL", help="input columns copied to the output")
    p.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="input rows per output shard")
    p.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (also a token budget)")
    p.add_argument("--max-length", type=int, default=8192, help="tokens per text (longer ones are cut)")
    p.add_argument("--late-chunking", action="store_true",
                   help="one vector per chunk of each document, with its character span (start, end)")
    p.add_argument("--chunk-size", type=int, default=1000, help="late chunking: characters per chunk")
    p.add_argument("--engine", default="local", choices=["local", "ray"], help="ray: Ray Data ([distributed])")
    p.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--workers", type=int, default=2, help="Ray: model replicas (actors)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="Ray: GPUs per actor")
    p.add_argument("--device", help="torch device for the local engine, e.g. cuda")
    p.add_argument("--int8", action="store_true",
                   help="int8 Linear layers on CPU (calibrated; cosine ~0.998 to fp32, faster on CPU)")
    p.add_argument("--threads", type=int, help="torch threads (default: all local cores)")
    p.add_argument("--overwrite", action="store_true", help="discard an existing output in --output")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def job_from_args(args: argparse.Namespace) -> CorpusJob:
    if args.shard_size < 1:
        raise ValueError("--shard-size must be >= 1")
    if args.chunk_size < 1:
        raise ValueError("--chunk-size must be >= 1")
    return CorpusJob(input=Path(args.input), output=Path(args.output), model=resolve_model(args.model),
               task=None if args.task in ("none", "") else args.task, dimensions=args.dimensions,
               precision=args.precision, text_field=args.text_field, id_field=args.id_field,
               keep=tuple(args.keep), shard_size=args.shard_size, batch_size=args.batch_size,
               max_length=args.max_length, late_chunking=args.late_chunking, chunk_size=args.chunk_size,
               int8=args.int8)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        job = job_from_args(args)
        input_kind(job.input)
        if job.int8 and ((args.device or "cpu") != "cpu" or args.gpus_per_worker):
            raise ValueError("--int8 runs on CPU; on a GPU leave it out (the model runs in its own dtype)")
        if args.engine == "ray":
            manifest = run_ray(job, address=args.address, workers=args.workers, gpus_per_worker=args.gpus_per_worker,
                               overwrite=args.overwrite, progress=not args.quiet)
        else:
            import torch

            from . import load

            torch.set_num_threads(args.threads or os.cpu_count() or 1)  # all local cores, not torch's guess
            emb = load(job.model, device=args.device, int8=job.int8)
            manifest = run(job, emb, overwrite=args.overwrite, progress=not args.quiet)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = sum(s["output_rows"] for s in manifest["shards"])
    print(f"embed-corpus: {manifest['total_rows']} inputs -> {rows} vectors in {len(manifest['shards'])} shards "
          f"in {job.output}", file=sys.stderr)
    return 0
