"""Task folders (the format documented in data/eval/README.md), LongEmbed-style generated long-document
tasks, and one runner that embeds a task's texts with a model and scores them with :mod:`metrics`.

A model is anything with ``encode(texts, task=..., dimensions=..., batch_size=...) -> (n, d) array``.
A model may also offer ``retrieval_scores(queries, docs) -> (nq, nd) array`` (lexical baselines such as
BM25; used instead of embeddings for retrieval) and ``supported_task_types`` (a set; other types raise
:class:`UnsupportedTask`).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from taskembed.adapters import TASK_ADAPTERS
from taskembed.eval import metrics
from taskembed.io import read_jsonl

TASK_TYPES = (
    "retrieval",
    "long_retrieval",
    "reranking",
    "sts",
    "pair_classification",
    "classification",
    "clustering",
    "bitext_mining",
)

MAIN_SCORE: dict[str, str] = {
    "retrieval": "ndcg_at_10",
    "long_retrieval": "ndcg_at_10",
    "reranking": "map",
    "clustering": "v_measure",
    "classification": "accuracy",
    "pair_classification": "ap",
    "sts": "cosine_spearman",
    "bitext_mining": "f1",
}

# Sentinel for "use TASK_ADAPTERS"; None means "no adapter" (the base model).
AUTO = "auto"

RETRIEVAL_K = (1, 3, 5, 10, 100)
LONG_KINDS = ("passkey", "needle")


class Model(Protocol):
    def encode(
        self,
        texts: list[str],
        task: str | list[str] | None = None,
        dimensions: int | None = None,
        batch_size: int = 32,
    ) -> np.ndarray: ...


class UnsupportedTask(Exception):
    """The model cannot run this task type (e.g. BM25 on STS)."""


@dataclass
class Task:
    name: str
    type: str
    path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    # long_retrieval only: generator parameters
    long_kind: str | None = None
    length: int | None = None

    @property
    def languages(self) -> list[str]:
        return list(self.meta.get("languages", []))


def load_task(path: str | Path) -> Task:
    path = Path(path)
    meta = json.loads((path / "task.json").read_text(encoding="utf-8"))
    ttype = meta["type"]
    if ttype not in TASK_TYPES:
        raise ValueError(f"{path}: unknown task type {ttype!r}")
    return Task(name=meta.get("name", path.name), type=ttype, path=path, meta=meta)


# Required files and the fields each row must have, per task type (the documented folder format).
TASK_FILES: dict[str, dict[str, tuple[str, ...]]] = {
    "retrieval": {
        "corpus.jsonl": ("id", "text"),
        "queries.jsonl": ("id", "text"),
        "qrels.jsonl": ("query_id", "doc_id", "score"),
    },
    "bitext_mining": {"pairs.jsonl": ("source", "target")},
    "classification": {"train.jsonl": ("text", "label"), "test.jsonl": ("text", "label")},
    "clustering": {"items.jsonl": ("text", "label")},
    "pair_classification": {"pairs.jsonl": ("text1", "text2", "label")},
    "sts": {"pairs.jsonl": ("text1", "text2", "score")},
    "reranking": {"samples.jsonl": ("query", "positive", "negative")},
}
TASK_JSON_FIELDS = ("name", "type", "languages", "source", "description", "main_score")


def validate_task(path: str | Path) -> list[str]:
    """Problems with a task folder (empty list: valid): task.json fields, required files and row fields,
    and cross-references (qrels ids exist, pair labels are 0/1, bitext has source/target_lang)."""
    path = Path(path)
    errors: list[str] = []
    try:
        meta = json.loads((path / "task.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return [f"task.json: {e}"]
    errors += [f"task.json: missing {f!r}" for f in TASK_JSON_FIELDS if f not in meta]
    ttype = meta.get("type")
    if ttype not in TASK_FILES:
        return errors + [f"task.json: type {ttype!r} is not one of {sorted(TASK_FILES)}"]
    if ttype == "bitext_mining":
        errors += [f"task.json: missing {f!r}" for f in ("source_lang", "target_lang") if f not in meta]
    rows: dict[str, list[dict[str, Any]]] = {}
    for fname, fields in TASK_FILES[ttype].items():
        try:
            rows[fname] = read_jsonl(path / fname)
        except (OSError, ValueError) as e:
            errors.append(f"{fname}: {e}")
            continue
        if not rows[fname]:
            errors.append(f"{fname}: empty")
        for i, r in enumerate(rows[fname]):
            missing = [f for f in fields if f not in r]
            if missing:
                errors.append(f"{fname}:{i + 1}: missing {missing}")
                break
    if errors:
        return errors
    if ttype == "retrieval":
        docs = {str(d["id"]) for d in rows["corpus.jsonl"]}
        qs = {str(q["id"]) for q in rows["queries.jsonl"]}
        bad = [r for r in rows["qrels.jsonl"] if str(r["query_id"]) not in qs or str(r["doc_id"]) not in docs]
        if bad:
            errors.append(f"qrels.jsonl: {len(bad)} rows name unknown query/doc ids, e.g. {bad[0]}")
    if ttype == "pair_classification" and {r["label"] for r in rows["pairs.jsonl"]} - {0, 1}:
        errors.append("pairs.jsonl: labels must be 0 or 1")
    if ttype == "reranking":
        for i, r in enumerate(rows["samples.jsonl"]):
            if not isinstance(r["positive"], list) or not isinstance(r["negative"], list):
                errors.append(f"samples.jsonl:{i + 1}: positive/negative must be lists")
                break
    return errors


def discover_tasks(root: str | Path) -> list[Task]:
    """Every folder under ``root`` holding a task.json, sorted by path for a stable order."""
    root = Path(root)
    return [load_task(p.parent) for p in sorted(root.rglob("task.json"))]


def long_task(kind: str, length: int, n_docs: int = 20) -> Task:
    if kind not in LONG_KINDS:
        raise ValueError(f"long task kind must be one of {LONG_KINDS}, not {kind!r}")
    meta = {
        "name": f"{kind}@{length}",
        "type": "long_retrieval",
        "languages": ["en"],
        "source": "generated (LongEmbed-style)",
        "main_score": "ndcg_at_10",
        "n_docs": n_docs,
    }
    return Task(name=meta["name"], type="long_retrieval", meta=meta, long_kind=kind, length=length)


def parse_task_spec(spec: str, data_dir: str | Path | None = None) -> list[Task]:
    """``passkey@1024`` / ``needle@256`` -> generated task; a path or a name under ``data_dir`` -> folder
    task(s) (a folder without task.json is searched recursively)."""
    if "@" in spec:
        kind, _, length = spec.partition("@")
        return [long_task(kind, int(length))]
    candidates = [Path(spec)]
    if data_dir is not None:
        candidates.append(Path(data_dir) / spec)
    for c in candidates:
        if (c / "task.json").is_file():
            return [load_task(c)]
        if c.is_dir():
            found = discover_tasks(c)
            if found:
                return found
    if data_dir is not None and Path(data_dir).is_dir():
        by_name = [t for t in discover_tasks(data_dir) if t.name == spec]
        if by_name:
            return by_name
    raise FileNotFoundError(f"no task {spec!r} (looked in {[str(c) for c in candidates]})")


# ---------------------------------------------------------------------------------------------------------
# LongEmbed-style generated tasks


_PASSKEY_FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."

_NAMES = (
    "Alice Moreau",
    "Bruno Keller",
    "Chiara Rossi",
    "Dmitri Volkov",
    "Elena Garcia",
    "Farid Haddad",
    "Greta Nilsson",
    "Hiroshi Tanaka",
    "Ines Duarte",
    "Jonas Becker",
    "Kavya Iyer",
    "Liam O'Brien",
    "Mei Chen",
    "Nikos Papadakis",
    "Olga Nowak",
    "Pablo Ruiz",
    "Quentin Laurent",
    "Rosa Jimenez",
    "Sven Lindqvist",
    "Tomasz Zielinski",
    "Ursula Weber",
    "Viktor Horvath",
    "Wanjiru Kamau",
    "Xavier Dubois",
    "Yara Nasser",
    "Zofia Kowalska",
    "Amir Tehrani",
    "Beatriz Costa",
    "Cem Yilmaz",
    "Dalia Haddad",
    "Emil Novak",
    "Fatima Zahra",
    "Goran Petrovic",
    "Hana Svoboda",
    "Ivan Petrov",
    "Julia Schmidt",
    "Kenji Mori",
    "Lucia Bianchi",
    "Mateo Silva",
    "Nadia Rahman",
)

_CITIES = (
    "Lisbon",
    "Kyoto",
    "Montreal",
    "Nairobi",
    "Reykjavik",
    "Valparaiso",
    "Tbilisi",
    "Hanoi",
    "Bergen",
    "Marrakesh",
    "Ljubljana",
    "Cusco",
    "Tallinn",
    "Zanzibar",
    "Hobart",
    "Porto",
    "Seville",
    "Krakow",
    "Istanbul",
    "Quebec",
    "Dubrovnik",
    "Salzburg",
    "Chiang Mai",
    "Cartagena",
    "Oaxaca",
    "Edinburgh",
    "Bruges",
    "Granada",
    "Luang Prabang",
    "Kotor",
    "Trieste",
    "Riga",
    "Vilnius",
    "Bologna",
    "Lyon",
    "Galway",
    "Matera",
    "Sintra",
    "Hallstatt",
    "Colmar",
)

_ACTIVITIES = (
    "eat a sandwich in the old harbour at dawn",
    "ride the oldest tram to the end of the line",
    "listen to a choir in the cathedral on Sunday",
    "buy warm bread from the bakery by the bridge",
    "climb the hill behind the station at sunset",
    "swim in the cold lake before breakfast",
    "read in the library garden under the lime trees",
    "watch the fishing boats come back at noon",
    "try the spiced soup at the night market",
    "rent a bicycle and follow the river north",
    "visit the tiny museum of mechanical clocks",
    "drink mint tea on a rooftop terrace",
    "walk the city walls when the gates open",
    "take the ferry to the island with the lighthouse",
    "learn to fold paper cranes from a street artist",
    "hear jazz in the cellar bar near the square",
)

_SUBJECTS = (
    "The committee",
    "A young farmer",
    "The old bridge",
    "Our neighbour",
    "The museum",
    "A small boat",
    "The river",
    "The train",
    "A stray cat",
    "The library",
    "The new manager",
    "The orchestra",
    "A quiet student",
    "The village baker",
    "The harbour crane",
    "The mountain road",
)
_VERBS = (
    "described",
    "repaired",
    "painted",
    "ignored",
    "measured",
    "carried",
    "followed",
    "remembered",
    "discussed",
    "photographed",
    "questioned",
    "delivered",
    "sorted",
    "borrowed",
    "finished",
    "watched",
)
_OBJECTS = (
    "the wooden fence",
    "a box of letters",
    "the evening schedule",
    "three green bottles",
    "the winter harvest",
    "an unfinished map",
    "the tall chimney",
    "a basket of pears",
    "the broken clock",
    "the annual report",
    "a pair of boots",
    "the distant hills",
    "the morning newspaper",
    "a long rope",
)
_TAILS = (
    "before the rain started",
    "without saying a word",
    "after the long meeting",
    "for the second time",
    "in the cold morning light",
    "while the market was closing",
    "near the old stone wall",
    "during the summer festival",
    "with great patience",
    "as the bells were ringing",
)


def proxy_token_count(text: str) -> int:
    # about 1.3 subword tokens per English word for XLM-R/BERT vocabularies; good enough to size documents
    # identically for every model (tokenizer-measured lengths would give each model different data)
    return int(round(len(text.split()) * 1.3))


def _haystack_sentence(rng: random.Random) -> str:
    return f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_TAILS)}."


def _fit_length(sentences: list[str], needle: str, pos_frac: float, length: int, count: Callable[[str], int]) -> str:
    """Largest prefix of ``sentences`` (plus the needle at relative position pos_frac) within ``length``."""

    def build(n: int) -> str:
        body = sentences[:n]
        at = int(round(pos_frac * n))
        return " ".join(body[:at] + [needle] + body[at:])

    lo, hi = 0, len(sentences)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(build(mid)) <= length:
            lo = mid
        else:
            hi = mid - 1
    return build(lo)


def generate_long_task(
    kind: str,
    length: int,
    n_docs: int = 20,
    seed: int = 42,
    count_tokens: Callable[[str], int] | None = None,
) -> tuple[dict[str, str], dict[str, str], dict[str, dict[str, float]]]:
    """Corpus, queries and qrels of a passkey or needle task at ``length`` tokens (about, by ``count_tokens``,
    default :func:`proxy_token_count`). One query per document; doc ``d{i}`` answers ``q{i}``.

    passkey (LongEmbed): repetitive filler with "The pass key for NAME is KEY." at a random depth; the
    query asks for NAME's pass key. needle: varied narrative filler with "The best thing to do in CITY is
    ACTIVITY." at a random depth; the query asks about CITY.
    """
    if n_docs > len(_NAMES):
        raise ValueError(f"n_docs must be <= {len(_NAMES)}")
    count = count_tokens or proxy_token_count
    rng = random.Random(f"{kind}:{length}:{n_docs}:{seed}")
    corpus, queries, qrels = {}, {}, {}
    # every filler sentence is >= 3 words (about 4 tokens), so this many always overfills; _fit_length cuts
    n_sent = length // 3 + 8
    names = rng.sample(_NAMES, n_docs)
    cities = rng.sample(_CITIES, n_docs)
    for i in range(n_docs):
        if kind == "passkey":
            key = rng.randint(10000, 99999)
            needle = f"The pass key for {names[i]} is {key}. Remember it. {key} is the pass key for {names[i]}."
            filler = _PASSKEY_FILLER.split(". ")
            sentences = [s.rstrip(".") + "." for s in (filler * (n_sent // len(filler) + 1))[:n_sent]]
            query = f"What is the pass key for {names[i]}?"
        elif kind == "needle":
            needle = f"The best thing to do in {cities[i]} is to {rng.choice(_ACTIVITIES)}."
            sentences = [_haystack_sentence(rng) for _ in range(n_sent)]
            query = f"What is the best thing to do in {cities[i]}?"
        else:
            raise ValueError(f"unknown long task kind {kind!r}")
        corpus[f"d{i}"] = _fit_length(sentences, needle, rng.random(), length, count)
        queries[f"q{i}"] = query
        qrels[f"q{i}"] = {f"d{i}": 1.0}
    return corpus, queries, qrels


# ---------------------------------------------------------------------------------------------------------
# Runner


class _CachedEncoder:
    """Encodes each distinct (text, adapter) once per task run."""

    def __init__(self, model: Model, dimensions: int | None, batch_size: int) -> None:
        self.model = model
        self.dimensions = dimensions
        self.batch_size = batch_size
        self.cache: dict[tuple[str | None, str], np.ndarray] = {}

    def __call__(self, texts: Sequence[str], adapter: str | None) -> np.ndarray:
        todo = list(dict.fromkeys(t for t in texts if (adapter, t) not in self.cache))
        if todo:
            emb = np.asarray(
                self.model.encode(todo, task=adapter, dimensions=self.dimensions, batch_size=self.batch_size),
                dtype=np.float32,
            )
            if emb.shape[0] != len(todo):
                raise ValueError(f"model returned {emb.shape[0]} embeddings for {len(todo)} texts")
            for t, e in zip(todo, emb, strict=True):
                self.cache[(adapter, t)] = e
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([self.cache[(adapter, t)] for t in texts])

    @property
    def n_encoded(self) -> int:
        return len(self.cache)


def resolve_adapters(
    task_type: str,
    adapters: Mapping[str, tuple[str | None, str | None]] | None = None,
    task_override: str | None = AUTO,
) -> tuple[str | None, str | None]:
    """(query adapter, document adapter) for a task type. ``task_override`` other than AUTO forces one
    adapter (or None: no adapter) on both sides."""
    if task_override != AUTO:
        return task_override, task_override
    table = TASK_ADAPTERS if adapters is None else {**TASK_ADAPTERS, **adapters}
    return table[task_type]


def _subsample(n: int, limit: int | None, seed: int) -> list[int]:
    if limit is None or limit >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), limit))


def _doc_text(doc: Mapping[str, Any]) -> str:
    # BEIR / MTEB join title and body with a space
    return (str(doc.get("title") or "") + " " + str(doc["text"])).strip()


def _retrieval(
    model: Any,
    enc: _CachedEncoder,
    corpus: dict[str, str],
    queries: dict[str, str],
    qrels: dict[str, dict[str, float]],
    adapters: tuple[str | None, str | None],
    k_values: Sequence[int],
    ignore_identical_ids: bool = False,
) -> dict[str, float]:
    qids = [q for q in queries if any(g > 0 for g in qrels.get(q, {}).values())]
    dids = list(corpus)
    qtexts = [queries[q] for q in qids]
    dtexts = [corpus[d] for d in dids]
    k = max(k_values)
    run: dict[str, dict[str, float]] = {}
    if hasattr(model, "retrieval_scores"):
        scores = np.asarray(model.retrieval_scores(qtexts, dtexts), dtype=np.float64)
        run = metrics.top_k_run(scores, qids, dids, k)
    else:
        q_emb = enc(qtexts, adapters[0])
        d_emb = enc(dtexts, adapters[1])
        for start in range(0, len(qids), 512):
            sims = metrics.cosine_matrix(q_emb[start : start + 512], d_emb)
            run.update(metrics.top_k_run(sims, qids[start : start + 512], dids, k))
    qrels_used = {q: qrels[q] for q in qids}
    return metrics.retrieval_scores(qrels_used, run, k_values, ignore_identical_ids=ignore_identical_ids)


def run_task(
    task: Task,
    model: Any,
    dimensions: int | None = None,
    *,
    batch_size: int = 32,
    adapters: Mapping[str, tuple[str | None, str | None]] | None = None,
    task_override: str | None = AUTO,
    seed: int = 42,
    limit: int | None = None,
    k_values: Sequence[int] = RETRIEVAL_K,
    n_experiments: int = 10,
    samples_per_label: int | None = None,
    cluster_runs: int = 10,
) -> dict[str, Any]:
    """Embed the task's texts with ``model`` at ``dimensions`` and score them.

    ``limit`` caps the number of evaluation units (queries, pairs, samples, items, test rows) by a seeded
    sample, for quick CPU runs. Returns ``{"name", "type", "languages", "adapters", "dimensions",
    "metrics", "main_metric", "main_score", "n_encoded", "time_s"}``.
    """
    supported = getattr(model, "supported_task_types", None)
    if supported is not None and task.type not in supported:
        raise UnsupportedTask(f"{type(model).__name__} does not run {task.type} tasks")
    t0 = time.perf_counter()
    q_ad, d_ad = resolve_adapters(task.type, adapters, task_override)
    enc = _CachedEncoder(model, dimensions, batch_size)
    p = task.path
    ttype = task.type
    meta = task.meta

    if ttype == "retrieval":
        assert p is not None
        corpus = {str(d["id"]): _doc_text(d) for d in read_jsonl(p / "corpus.jsonl")}
        queries = {str(q["id"]): str(q["text"]) for q in read_jsonl(p / "queries.jsonl")}
        qrels: dict[str, dict[str, float]] = {}
        for r in read_jsonl(p / "qrels.jsonl"):
            qrels.setdefault(str(r["query_id"]), {})[str(r["doc_id"])] = float(r.get("score", 1))
        if limit is not None:
            keep = [q for q in queries if q in qrels]
            keep = [keep[i] for i in _subsample(len(keep), limit, seed)]
            queries = {q: queries[q] for q in keep}
        scores = _retrieval(
            model, enc, corpus, queries, qrels, (q_ad, d_ad), k_values, bool(meta.get("ignore_identical_ids"))
        )
    elif ttype == "long_retrieval":
        counter = None
        if meta.get("length_unit") == "tokenizer" and hasattr(model, "count_tokens"):

            def counter(text: str) -> int:
                return int(model.count_tokens([text])[0])

        assert task.long_kind is not None and task.length is not None
        corpus, queries, qrels = generate_long_task(
            task.long_kind, task.length, int(meta.get("n_docs", 20)), seed, counter
        )
        scores = _retrieval(model, enc, corpus, queries, qrels, (q_ad, d_ad), k_values)
    elif ttype == "reranking":
        assert p is not None
        rows = read_jsonl(p / "samples.jsonl")
        rows = [rows[i] for i in _subsample(len(rows), limit, seed)]
        # one encode call per side, so the model sees full batches
        enc([r["query"] for r in rows], q_ad)
        enc([t for r in rows for t in list(r["positive"]) + list(r["negative"])], d_ad)
        samples = []
        for r in rows:
            cands = list(r["positive"]) + list(r["negative"])
            sims = metrics.cosine_matrix(enc([r["query"]], q_ad), enc(cands, d_ad))[0]
            samples.append((sims, np.r_[np.ones(len(r["positive"])), np.zeros(len(r["negative"]))]))
        scores = metrics.reranking_scores(samples)
    elif ttype in ("sts", "pair_classification"):
        assert p is not None
        rows = read_jsonl(p / "pairs.jsonl")
        rows = [rows[i] for i in _subsample(len(rows), limit, seed)]
        e1 = enc([r["text1"] for r in rows], q_ad)
        e2 = enc([r["text2"] for r in rows], d_ad)
        if ttype == "sts":
            scores = metrics.sts_scores(e1, e2, [float(r["score"]) for r in rows])
        else:
            scores = metrics.pair_classification_scores(e1, e2, [int(r["label"]) for r in rows])
    elif ttype == "classification":
        assert p is not None
        train = read_jsonl(p / "train.jsonl")
        test = read_jsonl(p / "test.jsonl")
        test = [test[i] for i in _subsample(len(test), limit, seed)]
        spl = samples_per_label if samples_per_label is not None else int(meta.get("samples_per_label", 8))
        train_labels = [r["label"] for r in train]
        # only the rows some experiment trains on need embedding
        chosen = metrics.undersample_indices(train_labels, spl, n_experiments, seed)
        used = sorted(set().union(*chosen)) if chosen else []
        tr_emb = np.zeros((len(train), 0), dtype=np.float32)
        if used:
            e = enc([train[i]["text"] for i in used], d_ad)
            tr_emb = np.zeros((len(train), e.shape[1]), dtype=np.float32)
            tr_emb[used] = e
        te_emb = enc([r["text"] for r in test], q_ad)
        scores = metrics.classification_scores(
            tr_emb,
            train_labels,
            te_emb,
            [r["label"] for r in test],
            n_experiments=n_experiments,
            samples_per_label=spl,
            seed=seed,
        )
    elif ttype == "clustering":
        assert p is not None
        rows = read_jsonl(p / "items.jsonl")
        rows = [rows[i] for i in _subsample(len(rows), limit, seed)]
        emb = enc([r["text"] for r in rows], q_ad)
        scores = metrics.clustering_scores(emb, [r["label"] for r in rows], n_runs=cluster_runs, seed=seed)
    elif ttype == "bitext_mining":
        assert p is not None
        rows = read_jsonl(p / "pairs.jsonl")
        rows = [rows[i] for i in _subsample(len(rows), limit, seed)]
        scores = metrics.bitext_scores(enc([r["source"] for r in rows], q_ad), enc([r["target"] for r in rows], d_ad))
    else:
        raise ValueError(f"unknown task type {ttype!r}")

    main_metric = str(meta.get("main_score") or MAIN_SCORE[ttype])
    if main_metric not in scores:
        main_metric = MAIN_SCORE[ttype]
    return {
        "name": task.name,
        "type": ttype,
        "languages": task.languages,
        "adapters": {"query": q_ad, "document": d_ad},
        "dimensions": dimensions,
        "metrics": scores,
        "main_metric": main_metric,
        "main_score": float(scores[main_metric]),
        "n_encoded": enc.n_encoded,
        "time_s": round(time.perf_counter() - t0, 3),
    }
