"""embed-corpus: formats, stable order, kept columns, late chunking, and resume after a kill."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from support.tiny import SAMPLE_TEXTS
from taskembed import corpus
from taskembed.late_chunking import late_chunk

SRC = Path(__file__).resolve().parents[1] / "src"


def _rows(n: int = 30) -> list[dict]:
    # Varied lengths so token-budget batches reorder texts inside a shard.
    return [{"id": f"doc-{i}", "text": " ".join(SAMPLE_TEXTS[(i + j) % len(SAMPLE_TEXTS)] for j in range(1 + i % 2)),
             "lang": ["en", "de", "fr"][i % 3], "n": i} for i in range(n)]


@pytest.fixture()
def jsonl(tmp_path) -> Path:
    p = tmp_path / "corpus.jsonl"
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in _rows()), encoding="utf-8")
    return p


def _job(inp: Path, out: Path, model: str = "tiny", **kw) -> corpus.CorpusJob:
    return corpus.CorpusJob(input=inp, output=out, model=model, **{"shard_size": 8, "dimensions": 32, **kw})


def _vectors(table: pa.Table) -> np.ndarray:
    col = table.column("vector").combine_chunks()
    return col.flatten().to_numpy(zero_copy_only=False).reshape(len(table), col.type.list_size)


def test_jsonl_shards_match_encode(tiny, jsonl, tmp_path):
    out = tmp_path / "out"
    m = corpus.run(_job(jsonl, out, keep=("lang", "n")), tiny, progress=False)
    assert m["complete"] and m["total_rows"] == 30 and [s["file"] for s in m["shards"]] == [
        f"part-{k:05d}.parquet" for k in range(4)]
    t = corpus.read_output(out)
    rows = _rows()
    assert t.column("id").to_pylist() == [r["id"] for r in rows]
    assert t.column("lang").to_pylist() == [r["lang"] for r in rows]
    assert t.column("n").to_pylist() == list(range(30))
    assert pa.types.is_fixed_size_list(t.schema.field("vector").type)
    want = tiny.encode([r["text"] for r in rows], task="retrieval.passage", dimensions=32)
    np.testing.assert_allclose(_vectors(t), want, atol=1e-5)
    # Running again is a no-op; other parameters on the same output are refused.
    assert corpus.run(_job(jsonl, out, keep=("lang", "n")), tiny, progress=False)["complete"]
    with pytest.raises(ValueError, match="dimensions"):
        corpus.run(_job(jsonl, out, keep=("lang", "n"), dimensions=16), tiny, progress=False)


def test_parquet_and_txt_folder_inputs(tiny, jsonl, tmp_path):
    rows = _rows(12)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    folder = tmp_path / "txt"
    folder.mkdir()
    for r in rows:
        (folder / f"{r['id']}.txt").write_text(r["text"], encoding="utf-8")
    a = corpus.read_output(corpus.run(_job(tmp_path / "c.parquet", tmp_path / "a", keep=("lang",)), tiny,
                                      progress=False) and tmp_path / "a")
    b = corpus.read_output(corpus.run(_job(folder, tmp_path / "b"), tiny, progress=False) and tmp_path / "b")
    assert a.column("id").to_pylist() == [r["id"] for r in rows] and a.column("lang").to_pylist()[:2] == ["en", "de"]
    assert b.column("id").to_pylist() == sorted(f"{r['id']}.txt" for r in rows)
    want = tiny.encode([r["text"] for r in rows], task="retrieval.passage", dimensions=32)
    np.testing.assert_allclose(_vectors(a), want, atol=1e-5)
    order = sorted(range(12), key=lambda i: f"doc-{i}.txt")
    np.testing.assert_allclose(_vectors(b), want[order], atol=1e-5)


def test_bad_input_is_a_clear_error(tiny, tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"id": 1, "text": "ok"}\n{"id": 2, "body": "no text"}\n')
    with pytest.raises(ValueError, match="row 1: field 'text'"):
        corpus.run(_job(p, tmp_path / "o"), tiny, progress=False)
    assert corpus.main([str(p), "--output", str(tmp_path / "o2")]) == 2  # no --model, no default model


def test_late_chunking_rows_and_spans(tiny, tmp_path):
    text = " ".join(SAMPLE_TEXTS[:6])
    p = tmp_path / "long.jsonl"
    p.write_text(json.dumps({"id": "a", "text": text}) + "\n" + json.dumps({"id": "b", "text": "short"}) + "\n")
    corpus.run(_job(p, tmp_path / "o", late_chunking=True, chunk_size=80), tiny, progress=False)
    t = corpus.read_output(tmp_path / "o")
    ids, starts, ends = t.column("id").to_pylist(), t.column("start").to_pylist(), t.column("end").to_pylist()
    spans = [(s, e) for i, s, e in zip(ids, starts, ends, strict=True) if i == "a"]
    assert len(spans) > 2 and spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))  # contiguous, no gaps
    assert t.column("chunk").to_pylist()[: len(spans)] == list(range(len(spans)))
    want = late_chunk(tiny, [text[s:e] for s, e in spans], task="retrieval.passage", dimensions=32, separator="")
    np.testing.assert_allclose(_vectors(t)[: len(spans)], want, atol=1e-5)
    assert ids[-1] == "b" and (starts[-1], ends[-1]) == (0, 5)


def _cli(args: list[str], env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC), **env_extra}
    return subprocess.run([sys.executable, "-m", "taskembed", "embed-corpus", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_killed_run_resumes_without_duplicates_or_gaps(tiny, tiny_dir, jsonl, tmp_path):
    ref_out, out = tmp_path / "ref", tmp_path / "out"
    corpus.run(_job(jsonl, ref_out, model=str(tiny_dir), keep=("n",)), tiny, progress=False)
    args = [str(jsonl), "--output", str(out), "--model", str(tiny_dir), "--shard-size", "8", "--dimensions", "32",
            "--keep", "n", "--threads", "1"]
    # Killed after shard 1's rename but before the manifest recorded it: an orphan shard on disk.
    r = _cli(args, {corpus.EXIT_HOOK_ENV: "1:renamed"})
    assert r.returncode == 17, r.stderr
    assert len(corpus.read_manifest(out)["shards"]) == 1 and (out / "part-00001.parquet").exists()
    first = (out / "part-00000.parquet").stat().st_mtime_ns
    # Resumed, then killed again with shard 2 half-written (only its temp file exists).
    r = _cli(args, {corpus.EXIT_HOOK_ENV: "2:tmp"})
    assert r.returncode == 17, r.stderr
    assert len(corpus.read_manifest(out)["shards"]) == 2 and list(out.glob("*.tmp"))
    # Finished in this process.
    m = corpus.run(_job(jsonl, out, model=str(tiny_dir), keep=("n",)), tiny, progress=False)
    assert m["complete"] and not list(out.glob("*.tmp"))
    assert (out / "part-00000.parquet").stat().st_mtime_ns == first  # finished shards are not redone
    got, want = corpus.read_output(out), corpus.read_output(ref_out)
    assert got.column("id").to_pylist() == want.column("id").to_pylist()  # no row duplicated or dropped
    assert got.column("n").to_pylist() == list(range(30))
    np.testing.assert_allclose(_vectors(got), _vectors(want), atol=1e-6)


def test_ray_engine_equals_local(tiny, tiny_dir, jsonl, tmp_path):
    # Through the CLI in a child process, as a user runs it; Ray's local cluster stays out of pytest's process.
    local, dist = tmp_path / "local", tmp_path / "ray"
    corpus.run(_job(jsonl, local, model=str(tiny_dir), keep=("lang",)), tiny, progress=False)
    r = subprocess.run(
        [sys.executable, "-m", "taskembed", "embed-corpus", str(jsonl), "--output", str(dist), "--model",
         str(tiny_dir), "--keep", "lang", "--shard-size", "8", "--dimensions", "32", "--engine", "ray",
         "--workers", "2", "--quiet"],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((dist / "manifest.json").read_text())
    assert m["complete"] and len(m["shards"]) == 4
    a, b = corpus.read_output(local), corpus.read_output(dist)
    assert a.column("id").to_pylist() == b.column("id").to_pylist()
    assert a.column("lang").to_pylist() == b.column("lang").to_pylist()
    np.testing.assert_allclose(_vectors(a), _vectors(b), atol=1e-6)


def test_cli_int8_writes_calibrated_int8_vectors_and_keeps_them_apart(tiny, tiny_dir, jsonl, tmp_path):
    import taskembed

    out = tmp_path / "out"
    args = [str(jsonl), "--output", str(out), "--model", str(tiny_dir), "--dimensions", "32", "--threads", "1"]
    r = _cli(args + ["--int8"], {})
    assert r.returncode == 0, r.stderr
    texts = [row["text"] for row in _rows()]
    got = _vectors(corpus.read_output(out))
    want = taskembed.load(tiny_dir, int8=True).encode(texts, task="retrieval.passage", dimensions=32)
    np.testing.assert_allclose(got, want, atol=1e-5)  # the same int8 model as load(int8=True)
    fp32 = tiny.encode(texts, task="retrieval.passage", dimensions=32)
    assert np.abs(got - fp32).max() > 1e-4 and (got * fp32).sum(1).min() > 0.98
    assert corpus.read_manifest(out)["params"]["int8"] is True
    # Resuming the same output without --int8 would mix two models' vectors: refused.
    r = _cli(args, {})
    assert r.returncode == 2 and "int8" in r.stderr, r.stderr
    r = _cli([str(jsonl), "--output", str(tmp_path / "gpu"), "--model", str(tiny_dir), "--int8", "--device", "cuda"],
             {})
    assert r.returncode == 2 and "--int8 runs on CPU" in r.stderr, r.stderr
