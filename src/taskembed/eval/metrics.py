"""Evaluation metrics, numpy/scikit-learn/scipy only, following pytrec_eval, BEIR and MTEB conventions.

Conventions (chosen to match pytrec_eval / MTEB v2, the reference implementations):
- Ranking: documents sorted by score descending, ties broken by doc id descending (pytrec_eval's order;
  MTEB sorts its MRR the same way).
- nDCG@k: linear gain (the qrels grade itself), discount 1/log2(rank + 1); the ideal DCG uses all judged
  docs of the query, sorted by grade, cut at k (trec_eval ``ndcg_cut``).
- MAP@k: sum of precision@rank over relevant docs retrieved in the top k, divided by the number of relevant
  docs of the query (not min(k, R)), as trec_eval ``map_cut``.
- Recall@k: relevant docs in the top k / relevant docs of the query (trec_eval ``recall``).
- MRR@k: 1 / rank of the first relevant doc in the top k, else 0 (BEIR / MTEB ``mrr``).
- A doc is relevant when its grade is > 0. Queries without any relevant doc are skipped (trec_eval would
  score them 0; MTEB's data never has them).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

Qrels = Mapping[str, Mapping[str, float]]
Run = Mapping[str, Mapping[str, float]]

DEFAULT_K = (1, 3, 5, 10, 100)


def rank_docs(doc_scores: Mapping[str, float], k: int | None = None) -> list[str]:
    """Doc ids by score descending, ties by doc id descending (pytrec_eval order)."""
    ranked = sorted(doc_scores.items(), key=lambda item: (item[1], item[0]), reverse=True)
    ids = [doc_id for doc_id, _ in ranked]
    return ids if k is None else ids[:k]


def ndcg_at_k(ranked: Sequence[str], rels: Mapping[str, float], k: int) -> float:
    gains = [float(rels.get(d, 0.0)) for d in ranked[:k]]
    dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains) if g > 0)
    ideal = sorted((float(g) for g in rels.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def average_precision_at_k(ranked: Sequence[str], rels: Mapping[str, float], k: int) -> float:
    n_rel = sum(1 for g in rels.values() if g > 0)
    if n_rel == 0:
        return 0.0
    hits, total = 0, 0.0
    for i, d in enumerate(ranked[:k]):
        if rels.get(d, 0) > 0:
            hits += 1
            total += hits / (i + 1)
    return total / n_rel


def recall_at_k(ranked: Sequence[str], rels: Mapping[str, float], k: int) -> float:
    n_rel = sum(1 for g in rels.values() if g > 0)
    if n_rel == 0:
        return 0.0
    return sum(1 for d in ranked[:k] if rels.get(d, 0) > 0) / n_rel


def reciprocal_rank_at_k(ranked: Sequence[str], rels: Mapping[str, float], k: int) -> float:
    for i, d in enumerate(ranked[:k]):
        if rels.get(d, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def retrieval_scores(
    qrels: Qrels,
    run: Run,
    k_values: Iterable[int] = DEFAULT_K,
    ignore_identical_ids: bool = False,
) -> dict[str, float]:
    """Mean over queries of nDCG@k, MAP@k, Recall@k, MRR@k (keys like ``ndcg_at_10``), as MTEB names them.

    ``run`` maps query id -> {doc id: score}; it may hold only the top hits of each query. Queries in qrels
    without a positive grade are skipped; queries with no run entry score 0.
    """
    k_values = sorted(set(k_values))
    k_max = max(k_values)
    sums: dict[str, float] = {}
    n = 0
    for qid, rels in qrels.items():
        if not any(g > 0 for g in rels.values()):
            continue
        doc_scores = dict(run.get(qid, {}))
        if ignore_identical_ids:
            doc_scores.pop(qid, None)
        ranked = rank_docs(doc_scores, k_max)
        n += 1
        for k in k_values:
            for name, fn in (
                ("ndcg", ndcg_at_k),
                ("map", average_precision_at_k),
                ("recall", recall_at_k),
                ("mrr", reciprocal_rank_at_k),
            ):
                key = f"{name}_at_{k}"
                sums[key] = sums.get(key, 0.0) + fn(ranked, rels, k)
    if n == 0:
        return {f"{name}_at_{k}": 0.0 for k in k_values for name in ("ndcg", "map", "recall", "mrr")}
    return {key: value / n for key, value in sums.items()}


def top_k_run(
    scores: np.ndarray, query_ids: Sequence[str], doc_ids: Sequence[str], k: int
) -> dict[str, dict[str, float]]:
    """Turn a (queries x docs) score matrix into a run holding the top k docs of each query.

    Docs tied with the k-th score are all kept so that the id tie-break of ``rank_docs`` decides, not the
    column order.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n_docs = scores.shape[1]
    run: dict[str, dict[str, float]] = {}
    for i, qid in enumerate(query_ids):
        row = scores[i]
        if k < n_docs:
            kth = np.partition(row, n_docs - k)[n_docs - k]
            idx = np.flatnonzero(row >= kth)
        else:
            idx = np.arange(n_docs)
        run[qid] = {doc_ids[j]: float(row[j]) for j in idx}
    return run


def average_precision(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Average precision with scikit-learn's definition: sum over distinct thresholds of
    (R_n - R_{n-1}) * P_n, so tied scores form one step instead of depending on order."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos = int(y.sum())
    if n_pos == 0:
        return 0.0
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    # last index of each block of equal scores is where a threshold can sit
    ends = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]
    tp = np.cumsum(y)[ends]
    precision = tp / (ends + 1)
    recall = tp / n_pos
    prev = np.r_[0.0, recall[:-1]]
    return float(np.sum((recall - prev) * precision))


def paired_mrr(queries: np.ndarray, docs: np.ndarray, gold: Sequence[int] | None = None) -> float:
    """Mean reciprocal rank of each query's gold document (docs[i] for query i by default) among all docs;
    unit vectors. Ties rank the gold first."""
    s = np.asarray(queries) @ np.asarray(docs).T
    gold = np.arange(len(s)) if gold is None else np.asarray(gold)
    ranks = (s > s[np.arange(len(s)), gold][:, None]).sum(1) + 1
    return float(np.mean(1.0 / ranks))


def reranking_scores(samples: Sequence[tuple[np.ndarray, np.ndarray]], mrr_k: int = 10) -> dict[str, float]:
    """MTEB reranking: per sample (similarities, 0/1 labels) -> AP and MRR@k over the candidates, mean.

    Samples without positives or without negatives are skipped, as MTEB's v1 RerankingEvaluator does.
    """
    aps, rrs = [], []
    for sims, labels in samples:
        labels = np.asarray(labels).astype(bool)
        if labels.all() or not labels.any():
            continue
        aps.append(average_precision(labels, sims))
        ids = [str(i) for i in range(len(sims))]
        ranked = rank_docs({ids[i]: float(sims[i]) for i in range(len(sims))})
        rels = {ids[i]: 1.0 for i in np.flatnonzero(labels)}
        rrs.append(reciprocal_rank_at_k(ranked, rels, mrr_k))
    if not aps:
        return {"map": 0.0, f"mrr_at_{mrr_k}": 0.0}
    return {"map": float(np.mean(aps)), f"mrr_at_{mrr_k}": float(np.mean(rrs))}


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as scipy.stats.rankdata 'average')."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    starts = np.r_[0, np.flatnonzero(np.diff(xs) != 0) + 1]
    ends = np.r_[starts[1:], len(xs)]
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    return ranks


def pearson(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64) - np.mean(a)
    b = np.asarray(b, dtype=np.float64) - np.mean(b)
    denom = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b / denom) if denom > 0 else 0.0


def spearman(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    return pearson(_average_ranks(np.asarray(a, dtype=np.float64)), _average_ranks(np.asarray(b, dtype=np.float64)))


def sts_scores(emb1: np.ndarray, emb2: np.ndarray, gold: Sequence[float]) -> dict[str, float]:
    """MTEB STS: Spearman (main) and Pearson of the pairwise cosine against the gold scores."""
    cos = paired_cosine(emb1, emb2)
    rho, r = spearman(cos, gold), pearson(cos, gold)
    # MTEB v2 reports both the model-similarity ("spearman") and cosine variants; ours are the same number
    return {"cosine_spearman": rho, "cosine_pearson": r, "spearman": rho, "pearson": r}


def paired_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    return np.sum(a * b, axis=1) / np.maximum(na * nb, 1e-12)


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return a @ b.T


def undersample_indices(
    labels: Sequence[object], samples_per_label: int, n_experiments: int, seed: int = 42
) -> list[list[int]]:
    """MTEB's classification undersampling: each experiment re-shuffles the previous order with a fresh
    RandomState(seed) and keeps the first ``samples_per_label`` items of each label."""
    idxs = list(range(len(labels)))
    out = []
    for _ in range(n_experiments):
        np.random.RandomState(seed).shuffle(idxs)
        counts: dict[object, int] = {}
        chosen = []
        for i in idxs:
            if counts.get(labels[i], 0) < samples_per_label:
                chosen.append(i)
                counts[labels[i]] = counts.get(labels[i], 0) + 1
        out.append(chosen)
    return out


def classification_scores(
    train_emb: np.ndarray,
    train_labels: Sequence[object],
    test_emb: np.ndarray,
    test_labels: Sequence[object],
    n_experiments: int = 10,
    samples_per_label: int = 8,
    seed: int = 42,
    max_iter: int = 100,
) -> dict[str, float]:
    """MTEB classification: logistic regression (max_iter 100, random_state seed) on undersampled train sets,
    accuracy and macro-F1 on the full test set, mean over experiments."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    train_emb = np.asarray(train_emb)
    test_emb = np.asarray(test_emb)
    accs, f1s, f1ws = [], [], []
    for chosen in undersample_indices(train_labels, samples_per_label, n_experiments, seed):
        y = [train_labels[i] for i in chosen]
        if len(set(y)) < 2:
            # a one-class train set cannot fit a classifier; predict that class
            pred = np.asarray([y[0]] * len(test_labels), dtype=object)
        else:
            clf = LogisticRegression(max_iter=max_iter, random_state=seed)
            with warnings.catch_warnings():
                # max_iter 100 is MTEB's protocol; the non-convergence warning would repeat per experiment
                warnings.simplefilter("ignore", ConvergenceWarning)
                clf.fit(train_emb[chosen], y)
            pred = clf.predict(test_emb)
        accs.append(accuracy_score(test_labels, pred))
        f1s.append(f1_score(test_labels, pred, average="macro"))
        f1ws.append(f1_score(test_labels, pred, average="weighted"))
    return {"accuracy": float(np.mean(accs)), "f1": float(np.mean(f1s)), "f1_weighted": float(np.mean(f1ws))}


def clustering_scores(
    emb: np.ndarray, labels: Sequence[object], n_runs: int = 10, seed: int = 42, batch_size: int = 512
) -> dict[str, float]:
    """V-measure of MiniBatchKMeans (k = number of gold labels, k-means++, n_init 1, batch 512 as MTEB),
    averaged over ``n_runs`` seeds seed, seed+1, ... on the full item set (MTEB bootstraps instead; our
    sets are small, so resampling with replacement would only add duplicates)."""
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.metrics.cluster import v_measure_score
    from threadpoolctl import threadpool_limits

    emb = np.asarray(emb, dtype=np.float32)
    # a --limit sample can hold fewer items than labels; k-means needs k <= n
    k = min(len(set(labels)), len(emb))
    scores = []
    # MiniBatchKMeans' OpenMP threads thrash on small shared machines (10x slower than one thread here);
    # the result does not depend on the thread count
    with threadpool_limits(limits=1, user_api="openmp"):
        for r in range(n_runs):
            km = MiniBatchKMeans(n_clusters=k, batch_size=batch_size, init="k-means++", n_init=1, random_state=seed + r)
            scores.append(v_measure_score(list(labels), km.fit_predict(emb)))
    return {"v_measure": float(np.mean(scores)), "v_measure_std": float(np.std(scores))}


def best_accuracy_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """MTEB's max accuracy over thresholds between distinct consecutive scores (high score = positive)."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    s = np.asarray(scores, dtype=np.float64)[order]
    y = np.asarray(labels)[order]
    best, thr = 0.0, -1.0
    pos_so_far, neg_left = 0, int(np.sum(y == 0))
    for i in range(len(s) - 1):
        if y[i] == 1:
            pos_so_far += 1
        else:
            neg_left -= 1
        if s[i] == s[i + 1]:
            continue
        acc = (pos_so_far + neg_left) / len(y)
        if acc > best:
            best, thr = acc, (s[i] + s[i + 1]) / 2
    return best, thr


def best_f1_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float, float, float]:
    """MTEB's max F1 over thresholds: (f1, precision, recall, threshold)."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    s = np.asarray(scores, dtype=np.float64)[order]
    y = np.asarray(labels)[order]
    n_pos = int(np.sum(y == 1))
    best = (0.0, 0.0, 0.0, 0.0)
    correct = 0
    for i in range(len(s) - 1):
        if y[i] == 1:
            correct += 1
        if s[i] == s[i + 1] or correct == 0:
            continue
        p, r = correct / (i + 1), correct / n_pos
        f1 = 2 * p * r / (p + r)
        if f1 > best[0]:
            best = (f1, p, r, (s[i] + s[i + 1]) / 2)
    return best


def pair_classification_scores(emb1: np.ndarray, emb2: np.ndarray, labels: Sequence[int]) -> dict[str, float]:
    """MTEB pair classification on cosine similarity: AP (main), best accuracy and best F1."""
    cos = paired_cosine(emb1, emb2)
    y = np.asarray(labels, dtype=np.int64)
    acc, acc_thr = best_accuracy_threshold(cos, y)
    f1, p, r, f1_thr = best_f1_threshold(cos, y)
    return {
        "ap": average_precision(y, cos),
        "accuracy": float(acc),
        "accuracy_threshold": float(acc_thr),
        "f1": float(f1),
        "precision": float(p),
        "recall": float(r),
        "f1_threshold": float(f1_thr),
    }


def bitext_direction_scores(src_emb: np.ndarray, tgt_emb: np.ndarray) -> dict[str, float]:
    """One direction of MTEB bitext mining: each source's nearest target by cosine must be its own
    translation (row i <-> row i). F1/precision/recall are sklearn's weighted averages, as MTEB."""
    from sklearn.metrics import f1_score, precision_score, recall_score

    sims = cosine_matrix(src_emb, tgt_emb)
    pred = np.argmax(sims, axis=1)
    gold = np.arange(len(pred))
    return {
        "accuracy": float(np.mean(pred == gold)),
        "precision": float(precision_score(gold, pred, zero_division=0, average="weighted")),
        "recall": float(recall_score(gold, pred, zero_division=0, average="weighted")),
        "f1": float(f1_score(gold, pred, zero_division=0, average="weighted")),
    }


def bitext_scores(src_emb: np.ndarray, tgt_emb: np.ndarray) -> dict[str, float]:
    """Both directions (src->tgt, tgt->src) and their mean (keys without a prefix)."""
    fwd = bitext_direction_scores(src_emb, tgt_emb)
    bwd = bitext_direction_scores(tgt_emb, src_emb)
    out = {f"s2t_{k}": v for k, v in fwd.items()}
    out.update({f"t2s_{k}": v for k, v in bwd.items()})
    out.update({k: (fwd[k] + bwd[k]) / 2 for k in fwd})
    return out
