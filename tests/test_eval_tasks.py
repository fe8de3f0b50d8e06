"""The task runner, suite and CLI end to end on tiny task folders with a fake deterministic model."""

import json
import zlib

import numpy as np
import pytest

pytest.importorskip("sklearn")

from taskembed.eval import suite, tasks  # noqa: E402
from taskembed.eval.cli import eval_main  # noqa: E402
from taskembed.eval.mteb import TaskembedMTEBWrapper, adapter_for  # noqa: E402


class HashModel:
    """Bag of character trigrams hashed into 256 dims, L2-normalised; records the adapters it saw."""

    def __init__(self, dim: int = 256) -> None:
        self.dim = dim
        self.calls: list[tuple[str | None, int]] = []

    def encode(self, texts, task=None, dimensions=None, batch_size=32):
        self.calls.append((task, len(texts)))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            t = f"  {t.lower()}  "
            for j in range(len(t) - 2):
                out[i, zlib.crc32(t[j : j + 3].encode()) % self.dim] += 1.0
        if dimensions is not None:
            out = out[:, :dimensions]
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def count_tokens(self, texts):
        return [len(t.split()) for t in texts]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def make_task(root, name, ttype, files, **meta):
    d = root / name
    d.mkdir(parents=True)
    info = {"name": name, "type": ttype, "languages": ["en"], "source": "test", "description": "tiny",
            "main_score": tasks.MAIN_SCORE[ttype]}  # fmt: skip
    info.update(meta)
    (d / "task.json").write_text(json.dumps(info), encoding="utf-8")
    for fname, rows in files.items():
        write_jsonl(d / fname, rows)
    return d


TOPICS = [
    "cats purr and sleep on warm windowsills",
    "the stock market fell sharply on friday",
    "volcanoes erupt molten lava and ash",
    "bake bread with flour water yeast and salt",
    "the football team won the championship final",
    "planets orbit the sun in elliptical paths",
]
LABELS = ["pets", "finance", "geology", "cooking", "sport", "astronomy"]


@pytest.fixture
def suite_dir(tmp_path):
    root = tmp_path / "eval"
    docs = [{"id": f"d{i}", "text": t} for i, t in enumerate(TOPICS)]
    make_task(
        root,
        "ret-identical",
        "retrieval",
        {
            "corpus.jsonl": docs,
            "queries.jsonl": [{"id": f"q{i}", "text": t} for i, t in enumerate(TOPICS)],
            "qrels.jsonl": [{"query_id": f"q{i}", "doc_id": f"d{i}", "score": 1} for i in range(len(TOPICS))],
        },
        main_score="ndcg_at_10",
    )
    make_task(
        root,
        "sts-tiny",
        "sts",
        {
            "pairs.jsonl": [
                {"text1": "a cat sleeps", "text2": "a cat sleeps", "score": 5.0},
                {"text1": "a cat sleeps", "text2": "a cat is sleeping", "score": 4.0},
                {"text1": "a cat sleeps", "text2": "the cat naps", "score": 2.5},
                {"text1": "a cat sleeps", "text2": "stock prices rose", "score": 0.0},
            ]
        },
    )
    make_task(
        root,
        "pc-tiny",
        "pair_classification",
        {
            "pairs.jsonl": [{"text1": t, "text2": t + ".", "label": 1} for t in TOPICS]
            + [{"text1": t, "text2": TOPICS[(i + 3) % 6], "label": 0} for i, t in enumerate(TOPICS)]
        },
    )
    variants = ["", " indeed", " today", " again"]
    make_task(
        root,
        "cls-tiny",
        "classification",
        {
            "train.jsonl": [
                {"text": t + v, "label": lab} for t, lab in zip(TOPICS, LABELS, strict=True) for v in variants
            ],
            "test.jsonl": [{"text": t + " now", "label": lab} for t, lab in zip(TOPICS, LABELS, strict=True)],
        },
    )
    make_task(
        root,
        "clu-tiny",
        "clustering",
        {
            "items.jsonl": [
                {"text": t + v, "label": lab} for t, lab in zip(TOPICS, LABELS, strict=True) for v in variants
            ]
        },
    )
    make_task(
        root,
        "bitext-tiny",
        "bitext_mining",
        {"pairs.jsonl": [{"source": t, "target": t.upper() + "!"} for t in TOPICS]},
        source_lang="en",
        target_lang="en",
    )
    make_task(
        root,
        "rr-tiny",
        "reranking",
        {
            "samples.jsonl": [
                {"query": t, "positive": [t + " indeed"], "negative": [TOPICS[(i + 1) % 6], TOPICS[(i + 2) % 6]]}
                for i, t in enumerate(TOPICS)
            ]
        },
    )
    return root


def test_identical_retrieval_is_perfect(suite_dir):
    model = HashModel()
    r = tasks.run_task(tasks.load_task(suite_dir / "ret-identical"), model)
    assert r["main_metric"] == "ndcg_at_10"
    assert r["main_score"] == pytest.approx(1.0)
    assert r["metrics"]["mrr_at_10"] == pytest.approx(1.0)
    assert r["metrics"]["recall_at_100"] == pytest.approx(1.0)
    assert r["adapters"] == {"query": "retrieval.query", "document": "retrieval.passage"}
    assert {c[0] for c in model.calls} == {"retrieval.query", "retrieval.passage"}


def test_all_types_sensible_scores(suite_dir):
    model = HashModel()
    results = {t.name: tasks.run_task(t, model, dimensions=128) for t in tasks.discover_tasks(suite_dir)}
    assert set(results) == {"ret-identical", "sts-tiny", "pc-tiny", "cls-tiny", "clu-tiny", "bitext-tiny", "rr-tiny"}
    assert results["sts-tiny"]["main_score"] == pytest.approx(1.0)
    assert results["pc-tiny"]["main_score"] == pytest.approx(1.0)
    assert results["cls-tiny"]["main_score"] == pytest.approx(1.0)
    assert results["clu-tiny"]["main_score"] > 0.8
    assert results["bitext-tiny"]["main_score"] == pytest.approx(1.0)
    assert results["rr-tiny"]["main_score"] == pytest.approx(1.0)
    assert results["sts-tiny"]["adapters"]["query"] == "text-matching"
    assert results["clu-tiny"]["adapters"]["query"] == "separation"
    assert results["pc-tiny"]["adapters"]["query"] == "classification"
    for r in results.values():
        assert 0.0 <= r["main_score"] <= 1.0


def test_dedupe_encodes_each_text_once(suite_dir):
    model = HashModel()
    r = tasks.run_task(tasks.load_task(suite_dir / "sts-tiny"), model)
    # "a cat sleeps" appears four times but is encoded once
    assert sum(n for _, n in model.calls) == 4
    assert r["n_encoded"] == 4


def test_task_override_none_and_custom_map(suite_dir):
    model = HashModel()
    t = tasks.load_task(suite_dir / "ret-identical")
    r = tasks.run_task(t, model, task_override=None)
    assert r["adapters"] == {"query": None, "document": None}
    assert {c[0] for c in model.calls} == {None}
    r = tasks.run_task(t, model, adapters={"retrieval": ("text-matching", "text-matching")})
    assert r["adapters"]["document"] == "text-matching"
    assert tasks.TASK_ADAPTERS["retrieval"] == ("retrieval.query", "retrieval.passage")


def test_long_tasks_deterministic_and_sized():
    c1, q1, r1 = tasks.generate_long_task("passkey", 512, n_docs=5, seed=1)
    c2, q2, r2 = tasks.generate_long_task("passkey", 512, n_docs=5, seed=1)
    assert (c1, q1, r1) == (c2, q2, r2)
    for d in c1.values():
        assert 400 <= tasks.proxy_token_count(d) <= 512
        assert "pass key for" in d
    cn, qn, _ = tasks.generate_long_task("needle", 256, n_docs=5, seed=1)
    assert all("best thing to do in" in d for d in cn.values())
    assert cn != tasks.generate_long_task("needle", 256, n_docs=5, seed=2)[0]


def test_long_task_runs(suite_dir):
    model = HashModel()
    r = tasks.run_task(tasks.long_task("needle", 256, n_docs=8), model)
    assert r["type"] == "long_retrieval"
    assert r["adapters"]["query"] == "text-matching"
    assert 0.0 <= r["main_score"] <= 1.0


def test_limit_subsamples(suite_dir):
    model = HashModel()
    r = tasks.run_task(tasks.load_task(suite_dir / "ret-identical"), model, limit=3)
    assert r["n_encoded"] == 3 + 6


def test_suite_json_and_compare(suite_dir, tmp_path, capsys):
    out = tmp_path / "res.json"
    res = suite.run_suite(
        [("hash", HashModel()), ("hash64", HashModel(64))],
        suite.select_tasks(None, data_dir=suite_dir, long_specs=["passkey@256"]),
        dimensions=[32],
        output=out,
        n_experiments=3,
        cluster_runs=3,
    )
    data = json.loads(out.read_text())
    assert data["seed"] == res["seed"] == 42
    assert len(data["runs"]) == 2
    run = data["runs"][0]
    assert run["model"] == "hash"
    assert "passkey@256" in run["tasks"]
    assert set(run["averages"]) >= {"retrieval", "sts", "overall"}
    printed = capsys.readouterr().out
    assert "hash64" in printed and "overall" in printed
    # reproducible
    res2 = suite.run_suite(
        [("hash", HashModel())], suite.select_tasks(["sts-tiny", "clu-tiny"], data_dir=suite_dir), print_tables=False
    )
    res3 = suite.run_suite(
        [("hash", HashModel())], suite.select_tasks(["sts-tiny", "clu-tiny"], data_dir=suite_dir), print_tables=False
    )
    assert res2["runs"][0]["averages"] == res3["runs"][0]["averages"]


def test_cli_with_fake_loader(suite_dir, tmp_path, monkeypatch, capsys):
    import taskembed

    monkeypatch.setattr(taskembed, "load", lambda path, **kw: HashModel(), raising=False)
    out = tmp_path / "cli.json"
    rc = eval_main(
        ["--model", str(tmp_path / "m1"), "--data-dir", str(suite_dir), "--tasks", "sts-tiny", "ret-identical",
         "--dimensions", "64", "--output", str(out), "--compare", str(tmp_path / "m2")]
    )  # fmt: skip
    assert rc == 0
    data = json.loads(out.read_text())
    assert [r["model"] for r in data["runs"]] == ["m1", "m2"]
    assert data["runs"][0]["dimensions"] == 64
    assert data["runs"][0]["tasks"]["ret-identical"]["main_score"] == pytest.approx(1.0)


class FakeMeta:
    def __init__(self, name, type_):
        self.name = name
        self.type = type_


class FakePrompt:
    def __init__(self, value):
        self.value = value


def test_mteb_wrapper_maps_adapters():
    model = HashModel()
    w = TaskembedMTEBWrapper(model, dimensions=64)
    batches = [{"text": ["hello world", "foo"]}, {"text": ["bar"]}]
    e = w.encode(batches, task_metadata=FakeMeta("X", "Retrieval"), hf_split="test", hf_subset="default",
                 prompt_type=FakePrompt("query"))  # fmt: skip
    assert e.shape == (3, 64)
    assert model.calls[-1][0] == "retrieval.query"
    w.encode(batches, task_metadata=FakeMeta("X", "Retrieval"), hf_split="test", hf_subset="default",
             prompt_type=FakePrompt("document"))  # fmt: skip
    assert model.calls[-1][0] == "retrieval.passage"
    w.encode(batches, task_metadata=FakeMeta("X", "Reranking"), hf_split="test", hf_subset="default")
    assert model.calls[-1][0] == "separation"
    # v1 form: list of sentences and a task name looked up in the map
    e = w.encode(["a sleeping cat", "the stock market"], task_name="STS12", prompt_type=None)
    assert e.shape == (2, 64)
    assert adapter_for("PairClassification", None) == "classification"
    assert adapter_for("BitextMining", None) == "text-matching"
    assert adapter_for("Clustering", None) == "separation"
    sim = w.similarity(e, e)
    assert np.allclose(np.diag(sim), 1.0, atol=1e-5)


def test_real_tiny_embedder_end_to_end(tiny, suite_dir):
    """The real Embedder (tiny random weights) through the whole suite, incl. a generated long task."""
    res = suite.run_suite(
        [("tiny", tiny)],
        suite.select_tasks(None, data_dir=suite_dir, long_specs=["needle@256"]),
        dimensions=[tiny.dimensions[0]],
        print_tables=False,
        n_experiments=2,
        cluster_runs=2,
    )
    run = res["runs"][0]
    assert len(run["tasks"]) == 8
    for r in run["tasks"].values():
        assert np.isfinite(r["main_score"])
    # retrieval of identical texts stays near-perfect even with random weights (different adapters per side)
    assert run["tasks"]["ret-identical"]["main_score"] > 0.5


def test_bm25_tokenize_and_ranking():
    from taskembed.eval import baselines

    assert baselines.bm25_tokenize("Hello, World!") == ["hello", "world"]
    assert baselines.bm25_tokenize("猫が寝る") == ["猫", "が", "寝", "る", "猫が", "が寝", "寝る"]
    try:
        bm25 = baselines.load_baseline("bm25")
    except ImportError:
        pytest.skip("neither bm25s nor rank-bm25 installed")
    scores = bm25.retrieval_scores(["warm windowsills", "stock market"], TOPICS)
    assert scores[0].argmax() == 0 and scores[1].argmax() == 1
    with pytest.raises(tasks.UnsupportedTask):
        tasks.run_task(tasks.Task(name="x", type="sts"), bm25)


def test_wrapper_inside_real_mteb_tasks(monkeypatch):
    """Optional (needs `pip install mteb`): real mteb task objects fed local data give our metrics."""
    mteb = pytest.importorskip("mteb")
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from taskembed.eval import metrics

    rng = np.random.default_rng(0)
    words = " ".join(TOPICS).split()
    model = HashModel()
    w = TaskembedMTEBWrapper(model, dimensions=128, name="local/hash")
    assert isinstance(w, mteb.models.models_protocols.EncoderProtocol)

    docs = [" ".join(rng.choice(words, 8)) for _ in range(40)]
    queries = [" ".join(rng.choice(d.split(), 2)) for d in docs[:20]]
    rel = {f"q{i}": {f"d{i}": 1, f"d{i + 20}": int(rng.integers(0, 3))} for i in range(20)}
    task = mteb.get_task("SciFact")
    task.dataset = {
        "default": {
            "test": {
                "corpus": datasets.Dataset.from_dict(
                    {"id": [f"d{i}" for i in range(40)], "title": [""] * 40, "text": docs}
                ),  # fmt: skip
                "queries": datasets.Dataset.from_dict({"id": [f"q{i}" for i in range(20)], "text": queries}),
                "relevant_docs": rel,
                "top_ranked": None,
            }
        }
    }
    task.data_loaded = True
    res = task.evaluate(w, "test", encode_kwargs={"batch_size": 16})["default"]
    assert {c[0] for c in model.calls} == {"retrieval.query", "retrieval.passage"}
    q = model.encode(queries, dimensions=128)
    d = model.encode(docs, dimensions=128)
    run = metrics.top_k_run(
        metrics.cosine_matrix(q, d), [f"q{i}" for i in range(20)], [f"d{i}" for i in range(40)], 100
    )
    ours = metrics.retrieval_scores(rel, run, [10, 100])
    for key in ("ndcg_at_10", "map_at_10", "mrr_at_10", "recall_at_100"):
        assert res[key] == pytest.approx(ours[key], abs=1e-5)  # mteb rounds to 5 decimals

    model.calls.clear()
    s1 = [" ".join(rng.choice(words, 5)) for _ in range(40)]
    s2 = [" ".join(rng.choice(words, 5)) for _ in range(40)]
    gold = [float(x) for x in np.round(rng.random(40) * 5, 1)]
    task = mteb.get_task("STS12")
    data = datasets.Dataset.from_dict({"sentence1": s1, "sentence2": s2, "score": gold})
    task.dataset = {"default": datasets.DatasetDict({"test": data})}
    task.data_loaded = True
    res = task.evaluate(w, "test", encode_kwargs={"batch_size": 16})["default"]
    assert {c[0] for c in model.calls} == {"text-matching"}
    ours = metrics.sts_scores(model.encode(s1, dimensions=128), model.encode(s2, dimensions=128), gold)
    # mteb's "spearman" uses the wrapper's similarity; its "cosine_spearman" recomputes cosine in float32,
    # which can reorder near-ties, so only the first is compared exactly
    assert res["spearman"] == pytest.approx(ours["cosine_spearman"], abs=1e-9)


def test_validate_task(suite_dir):
    for t in tasks.discover_tasks(suite_dir):
        assert tasks.validate_task(t.path) == [], (t.name, tasks.validate_task(t.path))
    bad = suite_dir / "ret-identical"
    write_jsonl(bad / "qrels.jsonl", [{"query_id": "q0", "doc_id": "nope", "score": 1}])
    assert any("unknown" in e for e in tasks.validate_task(bad))
    (suite_dir / "pc-tiny" / "pairs.jsonl").write_text('{"text1": "a", "text2": "b"}\n')
    assert any("missing ['label']" in e for e in tasks.validate_task(suite_dir / "pc-tiny"))


def test_keep_going_records_errors(suite_dir):
    (suite_dir / "sts-tiny" / "pairs.jsonl").unlink()
    task_list = suite.select_tasks(["sts-tiny", "pc-tiny"], data_dir=suite_dir)
    with pytest.raises(FileNotFoundError):
        suite.run_suite([("hash", HashModel())], task_list, print_tables=False)
    res = suite.run_suite([("hash", HashModel())], task_list, print_tables=False, keep_going=True)
    run = res["runs"][0]
    assert "FileNotFoundError" in run["tasks"]["sts-tiny"]["error"]
    assert set(run["averages"]) == {"pair_classification", "overall"}
    assert "-" in suite.format_tables(res)


def test_cli_passes_device_and_int8_to_the_loader(suite_dir, tmp_path, monkeypatch):
    import taskembed

    seen = []
    monkeypatch.setattr(taskembed, "load", lambda path, **kw: seen.append(kw) or HashModel(), raising=False)
    assert eval_main(["--model", str(tmp_path / "m1"), "--data-dir", str(suite_dir), "--tasks", "sts-tiny",
                      "--int8", "-q"]) == 0
    assert seen[0]["int8"] is True and seen[0]["device"] == "cpu"
    assert eval_main(["--model", str(tmp_path / "m1"), "--data-dir", str(suite_dir), "--tasks", "sts-tiny",
                      "-q"]) == 0
    assert seen[1]["int8"] is False


def test_cli_without_model_says_when_the_bundled_model_is_missing(suite_dir, monkeypatch, capsys):
    import taskembed

    def missing():
        raise taskembed.CheckpointError("the bundled default model is missing from X")

    monkeypatch.setattr(taskembed, "default_model_dir", missing)
    assert eval_main(["--data-dir", str(suite_dir), "--tasks", "sts-tiny"]) == 2
    assert "bundled default model is missing" in capsys.readouterr().err
