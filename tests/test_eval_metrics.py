"""Each metric against a hand-computed case and, where one exists, an independent implementation."""

import math

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("scipy")

from scipy.stats import pearsonr, spearmanr  # noqa: E402
from sklearn.metrics import average_precision_score, ndcg_score  # noqa: E402

from taskembed.eval import metrics  # noqa: E402


def naive_ndcg(ranked, rels, k):
    # textbook formula, written independently: DCG = sum rel_i / log2(i + 1) for i = 1..k
    dcg = 0.0
    for i in range(1, min(k, len(ranked)) + 1):
        dcg += rels.get(ranked[i - 1], 0) / math.log(i + 1, 2)
    ideal = sorted(rels.values(), reverse=True)
    idcg = 0.0
    for i in range(1, min(k, len(ideal)) + 1):
        idcg += ideal[i - 1] / math.log(i + 1, 2)
    return dcg / idcg


# ranking: d3 (rel 0), d1 (rel 2), d5 (unjudged), d2 (rel 1); d4 (rel 1) never retrieved
RUN = {"q": {"d3": 0.9, "d1": 0.8, "d5": 0.7, "d2": 0.6}}
QRELS = {"q": {"d1": 2, "d2": 1, "d3": 0, "d4": 1}}


def test_ndcg_hand_computed():
    dcg = 2 / math.log2(3) + 1 / math.log2(5)
    idcg = 2 / 1 + 1 / math.log2(3) + 1 / math.log2(4)
    s = metrics.retrieval_scores(QRELS, RUN, k_values=[1, 3, 10])
    assert s["ndcg_at_10"] == pytest.approx(dcg / idcg)
    assert s["ndcg_at_1"] == 0.0
    # at k=3 only d1 contributes; ideal cut at 3
    assert s["ndcg_at_3"] == pytest.approx((2 / math.log2(3)) / idcg)


def test_map_mrr_recall_hand_computed():
    s = metrics.retrieval_scores(QRELS, RUN, k_values=[1, 2, 10])
    # relevant: d1 (rank 2), d2 (rank 4), d4 (missing); 3 relevant docs in total
    assert s["map_at_10"] == pytest.approx((1 / 2 + 2 / 4) / 3)
    assert s["map_at_2"] == pytest.approx((1 / 2) / 3)
    assert s["mrr_at_10"] == pytest.approx(0.5)
    assert s["mrr_at_1"] == 0.0
    assert s["recall_at_10"] == pytest.approx(2 / 3)
    assert s["recall_at_2"] == pytest.approx(1 / 3)


def test_mean_over_queries_and_skip_unjudged():
    run = {"a": {"x": 1.0, "y": 0.5}, "b": {"x": 1.0, "y": 0.5}, "c": {"x": 1.0}}
    qrels = {"a": {"x": 1}, "b": {"y": 1}, "c": {"x": 0}}  # c has no relevant doc: skipped
    s = metrics.retrieval_scores(qrels, run, k_values=[10])
    assert s["mrr_at_10"] == pytest.approx((1 + 0.5) / 2)
    assert s["ndcg_at_10"] == pytest.approx((1 + 1 / math.log2(3)) / 2)


def test_ties_broken_by_doc_id_descending():
    run = {"q": {"a": 0.5, "b": 0.5, "c": 0.5}}
    assert metrics.rank_docs(run["q"]) == ["c", "b", "a"]
    s = metrics.retrieval_scores({"q": {"a": 1}}, run, k_values=[1, 3])
    assert s["mrr_at_3"] == pytest.approx(1 / 3)
    assert s["mrr_at_1"] == 0.0


def test_ignore_identical_ids():
    run = {"q1": {"q1": 1.0, "d": 0.5}}
    s = metrics.retrieval_scores({"q1": {"d": 1}}, run, k_values=[1], ignore_identical_ids=True)
    assert s["mrr_at_1"] == 1.0


@pytest.mark.parametrize("seed", range(5))
def test_ndcg_against_sklearn_and_naive(seed):
    rng = np.random.default_rng(seed)
    n = 30
    grades = rng.integers(0, 4, size=n).astype(float)
    grades[0] = 3  # at least one relevant
    scores = rng.permutation(n).astype(float)  # distinct: no tie handling differences
    ids = [f"d{i:02d}" for i in range(n)]
    run = {"q": dict(zip(ids, scores, strict=True))}
    qrels = {"q": {i: g for i, g in zip(ids, grades, strict=True) if g > 0}}
    ranked = metrics.rank_docs(run["q"])
    for k in (1, 5, 10, 30):
        ours = metrics.retrieval_scores(qrels, run, k_values=[k])[f"ndcg_at_{k}"]
        assert ours == pytest.approx(ndcg_score([grades], [scores], k=k), abs=1e-12)
        assert ours == pytest.approx(naive_ndcg(ranked, qrels["q"], k), abs=1e-12)


def test_top_k_run_keeps_best():
    scores = np.array([[0.1, 0.9, 0.5, 0.7]])
    run = metrics.top_k_run(scores, ["q"], ["a", "b", "c", "d"], k=2)
    assert run == {"q": {"b": pytest.approx(0.9), "d": pytest.approx(0.7)}}


def test_average_precision_hand_and_sklearn():
    # ranking by score: 1, 0, 1, 0 -> AP = (1/1 + 2/3) / 2
    assert metrics.average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx((1 + 2 / 3) / 2)
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.integers(0, 2, size=40)
        y[0] = 1
        s = np.round(rng.random(40), 1)  # coarse rounding creates ties
        assert metrics.average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_reranking_map_and_skips():
    samples = [
        (np.array([0.9, 0.2, 0.5]), np.array([1, 1, 0])),  # pos ranks 1 and 3 -> AP (1 + 2/3)/2, RR 1
        (np.array([0.1, 0.8]), np.array([1, 0])),  # pos rank 2 -> AP 1/2, RR 1/2
        (np.array([0.3]), np.array([1])),  # no negatives: skipped as MTEB does
    ]
    s = metrics.reranking_scores(samples)
    assert s["map"] == pytest.approx(((1 + 2 / 3) / 2 + 0.5) / 2)
    assert s["mrr_at_10"] == pytest.approx(0.75)


def test_spearman_pearson_against_scipy():
    assert metrics.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert metrics.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # hand case with a tie: ranks a = 1, 2.5, 2.5, 4; b = 1..4
    ra, rb = np.array([1, 2.5, 2.5, 4]), np.array([1, 2, 3, 4])
    expected = np.corrcoef(ra, rb)[0, 1]
    assert metrics.spearman([0.1, 0.5, 0.5, 0.9], [1, 2, 3, 4]) == pytest.approx(expected)
    rng = np.random.default_rng(1)
    for _ in range(10):
        a = np.round(rng.random(50), 1)
        b = rng.random(50)
        assert metrics.spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
        assert metrics.pearson(a, b) == pytest.approx(pearsonr(a, b).statistic, abs=1e-12)


def test_sts_scores_uses_cosine():
    e1 = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    e2 = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])  # cosines 1, 0.707, 0
    s = metrics.sts_scores(e1, e2, [5.0, 2.0, 1.0])
    assert s["cosine_spearman"] == pytest.approx(1.0)
    s = metrics.sts_scores(e1, e2, [1.0, 2.0, 5.0])
    assert s["cosine_spearman"] == pytest.approx(-1.0)


def test_pair_classification_hand_case():
    # cosines 1, 0.6, 0.8, 0 with labels 1, 0, 1, 0: perfectly separable -> AP 1, accuracy 1, F1 1
    e1 = np.array([[1.0, 0.0]] * 4)
    e2 = np.array([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6], [0.0, 1.0]])
    s = metrics.pair_classification_scores(e1, e2, [1, 0, 1, 0])
    assert s["ap"] == pytest.approx(1.0)
    assert s["accuracy"] == pytest.approx(1.0)
    assert s["f1"] == pytest.approx(1.0)
    assert 0.6 < s["accuracy_threshold"] < 0.8
    # swap labels of the top two: ranking 1(0), .8(1), .6(0), 0(1)... AP = (1/2 + 2/4)/2
    s = metrics.pair_classification_scores(e1, e2, [0, 0, 1, 1])
    assert s["ap"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert s["ap"] == pytest.approx(average_precision_score([0, 0, 1, 1], metrics.paired_cosine(e1, e2)))


def test_best_accuracy_and_f1_thresholds():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    labels = np.array([1, 1, 0, 1, 0])
    acc, thr = metrics.best_accuracy_threshold(scores, labels)
    # best cut after 0.8 (4/5 right) or after 0.6 (4/5): first best is kept
    assert acc == pytest.approx(0.8)
    assert thr == pytest.approx(0.75)
    f1, p, r, _ = metrics.best_f1_threshold(scores, labels)
    # cut after 0.6: p = 3/4, r = 1 -> f1 = 6/7; after 0.8: p = 1, r = 2/3 -> 0.8
    assert f1 == pytest.approx(6 / 7)
    assert (p, r) == (pytest.approx(0.75), pytest.approx(1.0))


def test_bitext_hand_case():
    src = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    tgt = np.array([[0.9, 0.1, 0.0], [0.0, 1.0, 0.1], [0.0, 0.9, 0.2]])
    s = metrics.bitext_scores(src, tgt)
    # s->t: 0->0, 1->1, 2->2 (cos 0.2/0.92 vs 0.1/1.005): all right
    assert s["s2t_accuracy"] == pytest.approx(1.0)
    # t->s: t0->s0, t1->s1, t2->s1 (wrong)
    assert s["t2s_accuracy"] == pytest.approx(2 / 3)
    assert s["accuracy"] == pytest.approx((1 + 2 / 3) / 2)
    # weighted F1 of t->s: class 0 f1 1, class 1 p=1/2 r=1 f1=2/3, class 2 f1 0 -> mean (1 + 2/3 + 0)/3
    assert s["t2s_f1"] == pytest.approx((1 + 2 / 3) / 3)


def test_undersample_matches_mteb_procedure():
    labels = ["a"] * 10 + ["b"] * 10
    chosen = metrics.undersample_indices(labels, 3, 4, seed=42)
    assert len(chosen) == 4
    for c in chosen:
        assert sorted(labels[i] for i in c) == ["a"] * 3 + ["b"] * 3
    # MTEB: the same idxs list is reshuffled each experiment with a fresh RandomState(seed)
    idxs = list(range(20))
    np.random.RandomState(42).shuffle(idxs)
    first = [i for i in idxs if i < 10][:3] + [i for i in idxs if i >= 10][:3]
    assert sorted(chosen[0]) == sorted(first)
    assert chosen[0] != chosen[1]


def test_classification_separable():
    rng = np.random.default_rng(0)
    centers = np.eye(3) * 5
    y_train = [i % 3 for i in range(60)]
    y_test = [i % 3 for i in range(30)]
    x_train = centers[y_train] + rng.normal(size=(60, 3)) * 0.1
    x_test = centers[y_test] + rng.normal(size=(30, 3)) * 0.1
    s = metrics.classification_scores(x_train, y_train, x_test, y_test, n_experiments=3)
    assert s["accuracy"] == pytest.approx(1.0)
    assert s["f1"] == pytest.approx(1.0)
    # deterministic
    assert s == metrics.classification_scores(x_train, y_train, x_test, y_test, n_experiments=3)


def test_clustering_perfect_and_random():
    rng = np.random.default_rng(0)
    labels = [i % 4 for i in range(80)]
    x = np.eye(4)[labels] * 10 + rng.normal(size=(80, 4)) * 0.01
    assert metrics.clustering_scores(x, labels, n_runs=3)["v_measure"] == pytest.approx(1.0)
    noise = rng.normal(size=(80, 4))
    assert metrics.clustering_scores(noise, labels, n_runs=3)["v_measure"] < 0.3


@pytest.mark.parametrize("seed", range(3))
def test_retrieval_against_pytrec_eval(seed):
    """pytrec_eval is what MTEB/BEIR use; it is optional here (pip install pytrec-eval-terrier)."""
    pytrec_eval = pytest.importorskip("pytrec_eval")
    rng = np.random.default_rng(seed)
    qrels, run = {}, {}
    for q in range(20):
        docs = [f"d{j}" for j in rng.choice(60, size=25, replace=False)]
        # coarse scores create ties, exercising the doc-id tie-break
        run[f"q{q}"] = {d: float(np.round(rng.random(), 1)) for d in docs}
        judged = rng.choice(60, size=6, replace=False)
        qrels[f"q{q}"] = {f"d{j}": int(rng.integers(0, 3)) for j in judged}
        qrels[f"q{q}"][f"d{judged[0]}"] = 2  # at least one relevant
    ks = [1, 3, 5, 10, 100]
    measures = {"ndcg_cut." + ",".join(map(str, ks)), "map_cut." + ",".join(map(str, ks)),
                "recall." + ",".join(map(str, ks))}  # fmt: skip
    ref = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    ours = metrics.retrieval_scores(qrels, run, ks)
    for k in ks:
        for name, key in (("ndcg", "ndcg_cut"), ("map", "map_cut"), ("recall", "recall")):
            expected = np.mean([ref[q][f"{key}_{k}"] for q in ref])
            assert ours[f"{name}_at_{k}"] == pytest.approx(expected, abs=1e-9), (name, k)


def test_paired_mrr_hand_computed():
    q = np.array([[1.0, 0], [1.0, 0.1], [0, 1.0]])
    d = np.array([[1.0, 0], [0.8, 0.6], [0, 1.0]])  # query 1's gold (doc 1, 0.86) loses to doc 0 (1.0)
    assert metrics.paired_mrr(q, d) == pytest.approx((1 + 1 / 2 + 1) / 3)
    assert metrics.paired_mrr(q, d, gold=[0, 0, 2]) == pytest.approx(1.0)
    assert metrics.paired_mrr(q, d, gold=[2, 1, 0]) == pytest.approx((1 / 3 + 1 / 2 + 1 / 3) / 3)
    assert metrics.paired_mrr(q[:1], np.array([[1.0, 0], [1.0, 0]]), gold=[1]) == 1.0  # a tie ranks the gold first
