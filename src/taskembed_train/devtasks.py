"""Held-out checks for adapter training: small tasks of the evaluation suite's own kinds, built from
training-side records that training does not read (``data/train/sample_subset.py --dev``), and scored by
the suite's code (``eval.tasks.run_task``), so a run can keep the adapter state that scores best.

An adapter is checked on the task types it serves in the suite (``adapters.KINDS``): a
classification adapter on classification and pair classification, separation on clustering and reranking.
The suite's hard negatives (same help page, same application module) have no counterpart in the training
files, so negatives here are the nearest other texts by the frozen base model: without them pair
classification and reranking sit near 100 and say nothing.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from taskembed.adapters import KINDS
from taskembed.eval.baselines import _truncate
from taskembed.eval.tasks import AUTO, MAIN_SCORE, Task, run_task
from taskembed.io import read_jsonl, write_jsonl

from .data import detect_kind

# adapter kind -> the suite's task types it serves, in the order a dev task is made from a file
DEV_TYPES: dict[str, tuple[str, ...]] = {k.name: k.serves for k in KINDS}
# which record kind each task type is made from
_FROM = {"classification": "labelled", "clustering": "labelled", "pair_classification": "pairs",
         "reranking": "pairs", "retrieval": "pairs", "bitext_mining": "pairs", "sts": "scored"}

Encode = Callable[[Sequence[str]], np.ndarray]


def _nearest(encode: Encode, anchors: Sequence[str], pool: Sequence[str], k: int,
             exclude: Sequence[int]) -> list[list[int]]:
    """For each anchor the k pool indices most similar by the base model, without its own index."""
    a, p = encode(list(anchors)), encode(list(pool))
    sims = a @ p.T
    sims[np.arange(len(anchors)), list(exclude)] = -np.inf
    k = min(k, len(pool) - 1)  # the excluded own index sorts last
    return [list(np.argsort(-row, kind="stable")[:k]) for row in sims]


def _labelled(rows: list[dict], ttype: str, n: int, rng: random.Random) -> tuple[dict, dict] | None:
    by_label: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        by_label[str(r["label"])].append(str(r["text"]))
    labels = sorted(lb for lb, texts in by_label.items() if len(texts) >= 10)
    if len(labels) < 2:
        return None
    for lb in labels:
        rng.shuffle(by_label[lb])
    per = max(2, n // len(labels))
    if ttype == "clustering":
        items = [{"text": t, "label": lb} for lb in labels for t in by_label[lb][:per]]
        return {"n_clusters": len(labels)}, {"items.jsonl": items}
    # first half of each label trains the classifier (8 per label, as the suite), the rest is tested
    train = [{"text": t, "label": lb} for lb in labels for t in by_label[lb][: len(by_label[lb]) // 2]]
    test = [{"text": t, "label": lb} for lb in labels for t in by_label[lb][len(by_label[lb]) // 2:][:per]]
    return {"samples_per_label": 8}, {"train.jsonl": train, "test.jsonl": test}


def _paired(rows: list[dict], ttype: str, n: int, encode: Encode) -> tuple[dict, dict]:
    # One row per document: several index keywords link the same page, and a copy of the positive among
    # the corpus or the negatives would count as a miss.
    rows = list({str(r["positive"]): r for r in reversed(rows)}.values())[::-1]
    rows = rows[: 2 * n] if ttype == "pair_classification" else rows[:n]
    queries, docs = [str(r["query"]) for r in rows], [str(r["positive"]) for r in rows]
    if ttype == "bitext_mining":
        return {}, {"pairs.jsonl": [{"source": d, "target": q} for q, d in zip(queries, docs, strict=True)]}
    if ttype == "retrieval":
        corpus = [{"id": f"d{i}", "text": d} for i, d in enumerate(docs)]
        qs = [{"id": f"q{i}", "text": q} for i, q in enumerate(queries)]
        qrels = [{"query_id": f"q{i}", "doc_id": f"d{i}", "score": 1} for i in range(len(rows))]
        return {}, {"corpus.jsonl": corpus, "queries.jsonl": qs, "qrels.jsonl": qrels}
    if ttype == "reranking":
        near = _nearest(encode, queries, docs, 15, range(len(rows)))
        samples = [{"query": q, "positive": [docs[i]], "negative": [docs[j] for j in near[i]]}
                   for i, q in enumerate(queries)]
        return {}, {"samples.jsonl": samples}
    # pair classification: (translation, English) is a positive; a negative pairs the English text with the
    # translation of its nearest other English text (the suite's same-page negatives are as close)
    near = _nearest(encode, queries, queries, 1, range(len(rows)))
    pairs = [{"text1": docs[i] if i % 2 == 0 else docs[near[i][0]], "text2": q, "label": int(i % 2 == 0)}
             for i, q in enumerate(queries)]
    return {}, {"pairs.jsonl": pairs}


def build_dev_tasks(files: Sequence[str | Path], kind: str, out: str | Path, encode: Encode, n: int = 150,
                    seed: int = 0) -> list[Task]:
    """Write the dev tasks of an adapter kind (suite folder format) under ``out`` and return them.

    Each file gives one task per type of the kind that its records can make (labelled records:
    classification or clustering; pairs, or tuples by their query and positive: pair classification,
    reranking, retrieval or bitext mining;
    scored pairs: STS). ``encode`` (the frozen base model) picks the hard negatives."""
    if kind not in DEV_TYPES:
        raise ValueError(f"unknown adapter kind {kind!r}; choose one of {', '.join(DEV_TYPES)}")
    out = Path(out)
    tasks = []
    for f in map(Path, files):
        rows = read_jsonl(f)
        if not rows:
            raise ValueError(f"{f}: empty dev file")
        rkind = detect_kind(rows[0])
        if rkind == "tuples":  # its query and positive are a pair; the hard negatives are not needed here
            rkind = "pairs"
        for ttype in DEV_TYPES[kind]:
            if _FROM.get(ttype) != rkind:  # long_retrieval is made by no record kind
                continue
            rng = random.Random(f"{seed}-{f.name}-{ttype}")
            if rkind == "labelled":
                made = _labelled(rows, ttype, n, rng)
            elif rkind == "scored":
                made = {}, {"pairs.jsonl": rows[:n]}
            else:
                made = _paired(rows, ttype, n, encode)
            if made is None:
                continue
            meta, files_ = made
            name = f"dev-{ttype}-{f.stem}"
            d = out / name
            d.mkdir(parents=True, exist_ok=True)
            meta = {"name": name, "type": ttype, "languages": [], "source": str(f), "main_score": MAIN_SCORE[ttype],
                    "description": f"adapter dev check: {ttype} from held-out training records", **meta}
            (d / "task.json").write_text(json.dumps(meta), encoding="utf-8")
            for fname, recs in files_.items():
                write_jsonl(d / fname, recs)
            tasks.append(Task(name=name, type=ttype, path=d, meta=meta))
    if not tasks:
        made_from = ", ".join(str(f) for f in files)
        raise ValueError(f"no dev task of types {', '.join(DEV_TYPES[kind])} can be made from {made_from}")
    return tasks


class _FullSizeOnce:
    """A model that encodes each (task, text) once at full size; a Matryoshka size is that vector cut and
    renormalised, as the model itself makes it, so checking several sizes costs one encoding pass."""

    def __init__(self, model) -> None:
        self.model, self.cache = model, {}

    def encode(self, texts: Sequence[str], task: str | None = None, dimensions: int | None = None,
               batch_size: int = 32, **kw) -> np.ndarray:
        todo = list(dict.fromkeys(t for t in texts if (task, t) not in self.cache))
        if todo:
            vecs = np.asarray(self.model.encode(todo, task=task, batch_size=batch_size, **kw), dtype=np.float32)
            self.cache.update(((task, t), v) for t, v in zip(todo, vecs, strict=True))
        if not texts:
            return np.zeros((0, 0), np.float32)
        return _truncate(np.stack([self.cache[(task, t)] for t in texts]), dimensions)


def score_dev_tasks(tasks: Sequence[Task], model, adapter_override: str | None = AUTO,
                    dims: Sequence[int | None] = (None,), batch_size: int = 32) -> dict[str, float]:
    """Main score per task type (mean over its tasks, x100; ``type@D`` at a Matryoshka size D) and their
    mean, ``dev``; the adapters are the suite's (TASK_ADAPTERS), or none with ``adapter_override=None``."""
    by_type: dict[str, list[float]] = defaultdict(list)
    model = _FullSizeOnce(model)
    for dim in dims:
        for t in tasks:
            r = run_task(t, model, dimensions=dim, batch_size=batch_size, task_override=adapter_override)
            by_type[t.type if dim is None else f"{t.type}@{dim}"].append(100 * float(r["main_score"]))
    scores = {key: float(np.mean(v)) for key, v in by_type.items()}
    scores["dev"] = float(np.mean(list(scores.values())))
    return scores


__all__ = ["DEV_TYPES", "build_dev_tasks", "score_dev_tasks"]
