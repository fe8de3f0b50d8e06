"""Data sources and the batch stream: kinds, lazy cycling readers, Parquet, the overlap filter, sampling,
token-budget buckets, classification tuples and exact stream resume."""

from __future__ import annotations

import collections
import json

import pytest

from taskembed.io import write_jsonl
from taskembed_train.data import (
    BatchStream,
    ClassificationTuples,
    DataError,
    Source,
    detect_kind,
    too_much_overlap,
)


def test_detect_kind():
    assert detect_kind({"query": "q", "positive": "p"}) == "pairs"
    assert detect_kind({"query": "q", "positive": "p", "negatives": []}) == "tuples"
    assert detect_kind({"text1": "a", "text2": "b", "score": 1}) == "scored"
    assert detect_kind({"text": "a", "label": 1}) == "labelled"
    assert detect_kind({"text": "a"}) == "raw"
    with pytest.raises(DataError, match="unknown record"):
        detect_kind({"foo": 1})


def test_a_bad_line_in_a_training_file_names_the_file(tmp_path):
    f = tmp_path / "pairs.jsonl"
    good = json.dumps({"query": "q", "positive": "p"}) + "\n"
    f.write_text(good + "[1, 2]\n")
    src = Source(f)
    assert src.next() == {"query": "q", "positive": "p"}
    said = r"pairs\.jsonl \(the line ending at byte \d+\): not a JSON record \(a JSON object"
    with pytest.raises(DataError, match=said):
        src.next()
    f.write_text("{not json\n" + good)
    with pytest.raises(DataError, match=r"pairs\.jsonl: not a JSON record"):
        Source(f)


def test_overlap_filter_rule():
    long_ = "The quick brown fox jumps over the lazy dog near the river bank"
    assert too_much_overlap("quick brown fox jumps", long_)  # 4 of 4 words
    assert not too_much_overlap("brown fox jumps", long_)  # only 3 words: below the 4-word minimum
    assert not too_much_overlap("quick brown fox jumps high above all", long_)  # 4 of 7 < 80%
    assert too_much_overlap("Quick BROWN fox jumps lazy", long_)  # case-folded


def test_jsonl_source_cycles_and_filters(tmp_path):
    recs = [{"query": f"q{i}", "positive": f"p{i}"} for i in range(3)]
    recs.insert(1, {"query": "river bank dog fox", "positive": "the dog and the fox by the river bank"})
    src = Source(write_jsonl(tmp_path / "a.jsonl", recs), filter_overlap=True)
    assert src.kind == "pairs" and src.size == 4
    got = [src.next()["query"] for _ in range(7)]
    assert got == ["q0", "q1", "q2", "q0", "q1", "q2", "q0"]
    state = src.state_dict()
    nxt = [src.next()["query"] for _ in range(3)]
    src2 = Source(tmp_path / "a.jsonl", filter_overlap=True)
    src2.load_state_dict(state)
    assert [src2.next()["query"] for _ in range(3)] == nxt


def test_parquet_source(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table({"text1": [f"a{i}" for i in range(10)], "text2": [f"b{i}" for i in range(10)],
                      "score": [float(i) for i in range(10)]})
    pq.write_table(table, tmp_path / "s.parquet", row_group_size=3)
    src = Source(tmp_path / "s.parquet")
    assert src.kind == "scored" and src.size == 10
    got = [src.next()["score"] for _ in range(12)]
    assert got == [float(i) for i in range(10)] + [0.0, 1.0]
    state = src.state_dict()
    a = [src.next()["text1"] for _ in range(4)]
    src.load_state_dict(state)
    assert [src.next()["text1"] for _ in range(4)] == a


def test_tuples_fixed_negative_count(tmp_path):
    p = write_jsonl(tmp_path / "t.jsonl", [{"query": "q", "positive": "p", "negatives": ["n1", "n2"]}])
    assert Source(p, num_negatives=3).next()["negatives"] == ["n1", "n2", "n1"]
    assert Source(p, num_negatives=1).next()["negatives"] == ["n1"]


def _sources(tmp_path, sizes):
    return [Source(write_jsonl(tmp_path / f"s{i}.jsonl", [{"text": f"s{i}-{j}"} for j in range(n)]))
            for i, n in enumerate(sizes)]


def test_one_source_per_batch_sampled_by_size(tmp_path):
    stream = BatchStream(_sources(tmp_path, [300, 100]), batch_size=4, seed=0)
    counts = collections.Counter()
    for _ in range(400):
        b = next(stream)
        assert len({r["text"].split("-")[0] for r in b.records}) == 1  # one source per batch
        counts[b.source] += 1
    assert 0.68 < counts["s0"] / 400 < 0.82


def test_given_weights_and_seed(tmp_path):
    a = BatchStream(_sources(tmp_path, [300, 100]), batch_size=2, weights=[0, 1], seed=1)
    assert {next(a).source for _ in range(20)} == {"s1"}
    s1, s2 = (BatchStream(_sources(tmp_path, [5, 5]), batch_size=2, seed=7) for _ in range(2))
    assert [next(s1).records for _ in range(10)] == [next(s2).records for _ in range(10)]


def test_token_budget_buckets(tmp_path):
    recs = [{"text": "w " * n} for n in [1, 30, 2, 29, 3, 28, 4, 27] * 4]
    src = Source(write_jsonl(tmp_path / "r.jsonl", recs))
    stream = BatchStream([src], batch_size=8, seed=0, max_tokens=64, length_fn=lambda r: len(r["text"].split()),
                         pool_batches=4)
    seen = []
    for _ in range(6):
        b = next(stream).records
        lens = [len(r["text"].split()) for r in b]
        assert len(b) <= 8 and max(lens) * len(b) <= 64
        seen.append(max(lens) - min(lens))
    assert min(seen) <= 3  # short texts batch with short ones


def test_stream_resume_is_exact(tmp_path):
    def make():
        return BatchStream(_sources(tmp_path, [7, 5, 3]), batch_size=3, seed=4, max_tokens=100,
                           length_fn=lambda r: len(r["text"]), pool_batches=2)
    a = make()
    for _ in range(5):
        next(a)
    state = a.state_dict()
    want = [next(a).records for _ in range(8)]
    b = make()
    b.load_state_dict(state)
    assert [next(b).records for _ in range(8)] == want


def test_classification_tuples_with_ids(tmp_path):
    recs = [{"text": f"{lab} text {i}", "label": lab} for lab in ("pos", "neg", "neu") for i in range(4)]
    ct = ClassificationTuples(Source(write_jsonl(tmp_path / "c.jsonl", recs)), num_negatives=7, seed=0)
    ids = set()
    for _ in range(20):
        t = ct.next()
        q, p, negs = t["query"], t["positive"], t["negatives"]
        assert len(negs) == 7
        tid = q.rsplit("[", 1)[1]
        ids.add(tid)
        assert all(x.endswith("[" + tid) for x in [p, *negs])  # every text of the tuple carries its ID
        label = q.split()[0]
        assert p.split()[0] == label and q != p
        assert all(n.split()[0] != label for n in negs)  # negatives from other classes
    assert len(ids) == 20
    with pytest.raises(DataError, match="two labels"):
        ClassificationTuples(Source(write_jsonl(tmp_path / "one.jsonl", recs[:4])))


def test_sample_subset_sets_dev_records_apart_from_training(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    src, out = tmp_path / "full", tmp_path / "sub"
    src.mkdir()
    rows = [{"text": f"paragraph {i}", "label": "swriter" if i % 2 else "scalc"} for i in range(50)]
    (src / "lohelp-module-en.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    script = Path(__file__).resolve().parents[1] / "data" / "train" / "sample_subset.py"
    subprocess.run([sys.executable, str(script), str(src), str(out), "--scale", "0.01", "--dev", "20"], check=True,
                   capture_output=True)
    train = [json.loads(x)["text"] for x in (out / "lohelp-module-en.jsonl").read_text().splitlines()]
    dev = [json.loads(x)["text"] for x in (out / "dev" / "lohelp-module-en.jsonl").read_text().splitlines()]
    assert train == [r["text"] for r in rows[:15]]  # cap 1500 x 0.01
    assert dev == [r["text"] for r in rows[15:35]]  # the next 20, unread by training
