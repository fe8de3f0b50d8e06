"""Dev tasks for adapter training: suite-format tasks from held-out training-side files, hard negatives by
the base model, scored by the suite's own code."""

from __future__ import annotations

import json

import numpy as np
import pytest

from taskembed.eval.tasks import validate_task
from taskembed_train.devtasks import build_dev_tasks


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _encode_groups(texts):
    # q0,q1 point one way, q2,q3 another, ...: each text's nearest other is its partner
    out = []
    for t in texts:
        i = int(t[1:])
        v = np.zeros(8)
        v[i // 2] = 1.0
        v[7] = 0.1 * (i % 2)
        out.append(v / np.linalg.norm(v))
    return np.array(out, dtype=np.float32)


def _rows(tasks, name):
    (t,) = [t for t in tasks if t.type == name]
    assert validate_task(t.path) == []
    return t, [json.loads(line) for f in sorted(t.path.glob("*.jsonl")) for line in f.read_text().splitlines()]


def test_pair_tasks_take_the_nearest_other_text_as_negative(tmp_path):
    f = _write(tmp_path / "bitext.jsonl", [{"query": f"q{i}", "positive": f"p{i}"} for i in range(6)])
    tasks = build_dev_tasks([f], "classification", tmp_path / "out", _encode_groups, n=3)
    _, rows = _rows(tasks, "pair_classification")
    assert len(rows) == 6
    for i, r in enumerate(rows):
        assert r["text2"] == f"q{i}"
        # positives are the pair itself; negatives the translation of the partner (the nearest other query)
        assert (r["label"], r["text1"]) == ((1, f"p{i}") if i % 2 == 0 else (0, f"p{i - 1}"))

    tasks = build_dev_tasks([f], "separation", tmp_path / "sep", _encode_groups, n=6)
    _, samples = _rows(tasks, "reranking")
    for i, s in enumerate(samples):
        assert s["positive"] == [f"p{i}"] and f"p{i}" not in s["negative"]
        assert s["negative"][0] == f"p{i ^ 1}"  # the hardest first


def test_labelled_file_gives_disjoint_classification_and_balanced_clustering(tmp_path):
    rows = [{"text": f"{lb} text {i}", "label": lb} for lb in "abc" for i in range(30)]
    rows += [{"text": f"rare {i}", "label": "rare"} for i in range(5)]  # too few to be a class
    f = _write(tmp_path / "labelled.jsonl", rows)
    clf = build_dev_tasks([f], "classification", tmp_path / "c", _encode_groups, n=30)
    t, _ = _rows(clf, "classification")
    train = [json.loads(x) for x in (t.path / "train.jsonl").read_text().splitlines()]
    test = [json.loads(x) for x in (t.path / "test.jsonl").read_text().splitlines()]
    assert {r["label"] for r in train} == {r["label"] for r in test} == set("abc")
    assert not {r["text"] for r in train} & {r["text"] for r in test}
    assert len(test) == 30
    sep = build_dev_tasks([f], "separation", tmp_path / "s", _encode_groups, n=30)
    t, items = _rows(sep, "clustering")
    assert t.meta["n_clusters"] == 3 and len(items) == 30


def test_files_that_make_no_task_of_the_kind_are_refused(tmp_path):
    f = _write(tmp_path / "labelled.jsonl", [{"text": f"t{i}", "label": "a"} for i in range(20)])
    with pytest.raises(ValueError, match="no dev task"):
        build_dev_tasks([f], "classification", tmp_path / "o", _encode_groups)
    with pytest.raises(ValueError, match="unknown adapter kind"):
        build_dev_tasks([f], "reranking", tmp_path / "o", _encode_groups)


class _Fake:
    """Queries and passages of pair i share direction i (8 dims); at 2 dims most pairs collide."""

    def encode(self, texts, task=None, dimensions=None, batch_size=32):
        out = np.zeros((len(texts), 8), dtype=np.float32)
        for j, t in enumerate(texts):
            out[j, int(t[1:])] = 1.0
        out = out[:, :dimensions] + 1e-3
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_scores_at_matryoshka_sizes_share_the_dev_mean(tmp_path):
    from taskembed_train.devtasks import score_dev_tasks

    f = _write(tmp_path / "index.jsonl", [{"query": f"q{i}", "positive": f"p{i}"} for i in range(8)])
    tasks = build_dev_tasks([f], "retrieval", tmp_path / "r", _encode_groups, n=8)
    s = score_dev_tasks(tasks, _Fake(), dims=[None, 2])
    assert set(s) == {"retrieval", "retrieval@2", "dev"}
    assert s["retrieval"] == pytest.approx(100.0)
    assert s["retrieval@2"] < 80.0  # six of eight queries tie on an empty prefix
    assert s["dev"] == pytest.approx((s["retrieval"] + s["retrieval@2"]) / 2)


def test_a_document_linked_from_several_queries_appears_once(tmp_path):
    rows = [{"query": f"q{i}", "positive": f"p{i // 2}"} for i in range(8)]  # two keywords per page
    f = _write(tmp_path / "index.jsonl", rows)
    tasks = build_dev_tasks([f], "retrieval", tmp_path / "r", _encode_groups, n=8)
    corpus = [json.loads(x)["text"] for x in (tasks[0].path / "corpus.jsonl").read_text().splitlines()]
    assert corpus == ["p0", "p1", "p2", "p3"]


def test_matryoshka_sizes_come_from_one_full_size_pass_as_the_model_cuts_them(tmp_path):
    from support.tiny import make_tiny_embedder
    from taskembed.eval.tasks import run_task
    from taskembed_train.devtasks import _FullSizeOnce

    emb = make_tiny_embedder()
    calls = []

    class Counting:
        def encode(self, texts, **kw):
            calls.append(len(texts))
            return emb.encode(texts, **kw)

    f = _write(tmp_path / "pairs.jsonl", [{"query": f"word {i} query", "positive": f"text number {i} here"}
                                          for i in range(12)])
    (task,) = build_dev_tasks([f], "retrieval", tmp_path / "r", lambda t: emb.encode(list(t)), n=12)
    cached = _FullSizeOnce(Counting())
    for dim in (None, 8, 16):
        got = run_task(task, cached, dimensions=dim)["main_score"]
        assert got == pytest.approx(run_task(task, emb, dimensions=dim)["main_score"], abs=1e-6)
    assert sum(calls) == 24  # 12 queries and 12 documents, encoded once for all three sizes
    v = cached.encode(["text number 3 here"], task="retrieval.passage", dimensions=8)
    np.testing.assert_allclose(v, emb.encode(["text number 3 here"], task="retrieval.passage", dimensions=8),
                               atol=1e-6)
