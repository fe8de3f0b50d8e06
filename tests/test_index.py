"""The vector index: every search path checked against brute-force cosine on the same vectors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from support.tiny import SAMPLE_TEXTS
from taskembed import corpus, index

pytest.importorskip("usearch")


def _unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute(q: np.ndarray, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s = q @ x.T
    rows = np.stack([np.lexsort((np.arange(len(x)), -r))[:k] for r in s])  # ties by row, as the index
    return rows, np.take_along_axis(s, rows, 1)


def _recall(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(got, want, strict=True)]))


@pytest.fixture(scope="module")
def data():
    # Clustered vectors (like real embeddings, unlike uniform noise) so HNSW and sign bits have structure.
    centers = _unit(40, 64, 1)
    x = centers[np.arange(3000) % 40] + 0.35 * _unit(3000, 64, 2)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = centers[np.arange(25) % 40] + 0.35 * _unit(25, 64, 3)
    return x.astype(np.float32), (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def test_exact_equals_brute_force(data, tmp_path):
    x, q = data
    index.build_index_from_arrays(tmp_path / "i", x, kind="exact")
    idx = index.VectorIndex.open(tmp_path / "i")
    rows, scores = idx.search_vectors(q, 10)
    want_rows, want_scores = _brute(q, x, 10)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    assert idx.search_vectors(q[:1], 5000)[0].shape == (1, 3000)  # k larger than the index: everything


def test_hnsw_recall_and_true_scores(data, tmp_path):
    x, q = data
    index.build_index_from_arrays(tmp_path / "h", x, kind="hnsw")
    idx = index.VectorIndex.open(tmp_path / "h")
    assert idx.info["kind"] == "hnsw"
    rows, scores = idx.search_vectors(q, 10)
    want_rows, _ = _brute(q, x, 10)
    assert _recall(rows, want_rows) >= 0.95
    np.testing.assert_allclose(scores, np.take_along_axis(q @ x.T, rows, 1), atol=1e-5)
    np.testing.assert_array_equal(idx.search_vectors(q, 10, exact=True)[0], want_rows)


@pytest.mark.parametrize("kind", ["exact", "hnsw"])
def test_binary_with_rescoring(data, tmp_path, kind):
    x, q = data
    index.build_index_from_arrays(tmp_path / "b", x, kind=kind, binary=True, store="float32")
    idx = index.VectorIndex.open(tmp_path / "b")
    rows, scores = idx.search_vectors(q, 10, rescore=4)
    want_rows, _ = _brute(q, x, 10)
    # Rescored scores are the float cosines of the returned rows, best first.
    np.testing.assert_allclose(scores, np.take_along_axis(q @ x.T, rows, 1), atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 1e-7)
    # 64 sign bits are a coarse filter; more candidates, better recall.
    assert _recall(rows, want_rows) >= 0.6
    assert _recall(idx.search_vectors(q, 10, rescore=10)[0], want_rows) >= max(0.85, _recall(rows, want_rows))
    if kind == "exact":  # every vector a candidate: rescoring gives exactly the float top-k
        np.testing.assert_array_equal(idx.search_vectors(q, 10, rescore=300)[0], want_rows)


def test_binary_hamming_and_int8_storage(data, tmp_path):
    x, q = data
    bits = np.packbits(x > 0, axis=1)
    qb = np.packbits(q > 0, axis=1)
    want = np.unpackbits(qb[:, None, :] ^ bits[None, :, :], axis=2).sum(2)
    np.testing.assert_array_equal(index.hamming(qb, bits), want)
    index.build_index_from_arrays(tmp_path / "i8", x, binary=True)  # default store with binary: int8
    idx = index.VectorIndex.open(tmp_path / "i8")
    assert idx.info["storage"] == "int8" and idx.vectors.dtype == np.int8
    rows, scores = idx.search_vectors(q, 10)
    np.testing.assert_allclose(scores, np.take_along_axis(q @ x.T, rows, 1), atol=0.02)
    index.build_index_from_arrays(tmp_path / "bits", x, binary=True, store="none")
    rows, scores = index.VectorIndex.open(tmp_path / "bits").search_vectors(q, 10)
    np.testing.assert_allclose(scores, 1 - 2 * np.take_along_axis(want, rows, 1) / 64, atol=1e-6)


def test_errors(data, tmp_path):
    x, q = data
    index.build_index_from_arrays(tmp_path / "i", x[:50])
    with pytest.raises(ValueError, match="exists"):
        index.build_index_from_arrays(tmp_path / "i", x[:50])
    idx = index.VectorIndex.open(tmp_path / "i")
    with pytest.raises(ValueError, match="dimensions"):
        idx.search_vectors(q[:, :32], 3)
    with pytest.raises(FileNotFoundError, match="not an index"):
        index.VectorIndex.open(tmp_path)


@pytest.fixture(scope="module")
def built(tiny, tiny_dir, tmp_path_factory):
    """A tiny-model corpus with a kept column, embedded and indexed through the command line."""
    d = tmp_path_factory.mktemp("idx")
    src = d / "c.jsonl"
    src.write_text("".join(json.dumps({"id": f"d{i}", "text": t, "pos": i}, ensure_ascii=False) + "\n"
                           for i, t in enumerate(SAMPLE_TEXTS[:18])), encoding="utf-8")
    assert corpus.main([str(src), "-o", str(d / "out"), "--model", str(tiny_dir), "--dimensions", "32",
                        "--keep", "pos", "--shard-size", "7", "--quiet", "--threads", "1"]) == 0
    assert index.index_main([str(d / "out"), "--index", str(d / "ix")]) == 0
    return d


def test_cli_search_matches_brute_force(built, tiny, capsys):
    table = corpus.read_output(built / "out")
    vecs, _ = index.vectors_from_table(table, "float32")
    query = "How do I change the font size?"
    capsys.readouterr()
    assert index.search_main([str(built / "ix"), query, "-k", "5", "--json"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    qv = tiny.encode([query], task="retrieval.query", dimensions=32)
    want_rows, want_scores = _brute(qv, vecs, 5)
    assert [h["id"] for h in hits] == [f"d{r}" for r in want_rows[0]]
    assert [h["pos"] for h in hits] == want_rows[0].tolist()  # kept columns come back with hits
    np.testing.assert_allclose([h["score"] for h in hits], want_scores[0], atol=1e-5)


def test_server_search_route(built, tiny):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from taskembed.serve import ServerSettings, create_app
    from taskembed.serve.search import register_search

    idx = index.VectorIndex.open(built / "ix")
    app = create_app(tiny, ServerSettings(api_keys=["k"]))
    register_search(app, idx)
    with TestClient(app) as c:
        h = {"Authorization": "Bearer k"}
        assert c.post("/v1/search", json={"query": "cat"}).status_code == 401
        r = c.post("/v1/search", json={"query": ["Wie ändere ich die Schriftgröße?", "cat"], "k": 3}, headers=h)
        assert r.status_code == 200, r.text
        body = r.json()
        qv = tiny.encode(["Wie ändere ich die Schriftgröße?", "cat"], task="retrieval.query", dimensions=32)
        want = idx.search(qv, 3)
        for got, exp in zip(body["data"], want, strict=True):
            assert [x["id"] for x in got["hits"]] == [x.fields["id"] for x in exp]
            np.testing.assert_allclose([x["score"] for x in got["hits"]], [x.score for x in exp], atol=1e-5)
        v = c.post("/v1/search", json={"vector": qv[1].tolist(), "k": 3}, headers=h).json()
        assert [x["id"] for x in v["data"][0]["hits"]] == [x.fields["id"] for x in want[1]]
        assert c.post("/v1/search", json={"vector": [0.1] * 5}, headers=h).status_code == 400
        assert c.post("/v1/search", json={"query": "x", "k": 0}, headers=h).status_code == 400
        assert c.post("/v1/search", json={}, headers=h).status_code == 400
