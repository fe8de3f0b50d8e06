"""The command line, run as a user would (a subprocess with the installed console script's module)."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np

from taskembed.cli import main


def run(*args, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "taskembed", *map(str, args)], input=stdin,
                          capture_output=True, text=True, timeout=120)


def test_encode_jsonl_matches_python_api(tiny, tiny_dir):
    r = run("encode", "--model", tiny_dir, "--task", "retrieval.query", "--dimensions", "32", "hello", "Кошка")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["text"] for row in rows] == ["hello", "Кошка"]
    want = tiny.encode(["hello", "Кошка"], task="retrieval.query", dimensions=32)
    np.testing.assert_allclose(np.array([row["embedding"] for row in rows]), want, atol=1e-6)


def test_encode_int8_is_close_to_float_and_not_equal(tiny, tiny_dir):
    r = run("encode", "--model", tiny_dir, "--task", "classification", "--int8", "hello world", "Кошка сидит")
    assert r.returncode == 0, r.stderr
    got = np.array([json.loads(line)["embedding"] for line in r.stdout.splitlines()])
    want = tiny.encode(["hello world", "Кошка сидит"], task="classification")
    assert np.abs(got - want).max() > 0 and (got * want).sum(1).min() > 0.99


def test_encode_stdin_npy(tiny, tiny_dir, tmp_path):
    out = tmp_path / "v.npy"
    r = run("encode", "--model", tiny_dir, "--task", "separation", "--format", "npy", "--output", out,
            "--precision", "ubinary", stdin="first line\nsecond line\n")
    assert r.returncode == 0, r.stderr
    got = np.load(out)
    np.testing.assert_array_equal(got, tiny.encode(["first line", "second line"], task="separation",
                                                   precision="ubinary"))


def test_encode_npy_to_stdout(tiny_dir):
    r = subprocess.run([sys.executable, "-m", "taskembed", "encode", "--model", str(tiny_dir), "--task",
                        "separation", "--format", "npy", "x"], capture_output=True, timeout=120)
    assert r.returncode == 0
    assert np.load(io.BytesIO(r.stdout)).shape == (1, 64)


def test_info(tiny_dir):
    r = run("info", tiny_dir)
    assert r.returncode == 0, r.stderr
    assert "2 layers, hidden 64" in r.stdout
    assert "per adapter" in r.stdout and "retrieval.query" in r.stdout
    assert "dimensions: [8, 16, 32, 64]" in r.stdout


def test_errors_are_one_line_not_tracebacks(tiny_dir, tmp_path):
    r = run("encode", "--model", tiny_dir, "--task", "nope", "x")
    assert r.returncode == 2 and "unknown task 'nope'" in r.stderr and "Traceback" not in r.stderr


def test_error_messages_in_process(tiny_dir, tmp_path, capsys):
    assert main(["encode", "--model", str(tiny_dir), "--dimensions", "7", "--task", "separation", "x"]) == 2
    assert "dimensions=7 not allowed" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "missing")]) == 2
    assert "model directory not found" in capsys.readouterr().err
