"""Each training loss against a naive reference written here with explicit loops (float64, math module)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from support.tiny import make_tokenizer
from taskembed_train import losses

TAU = 0.07


def _cos(a, b) -> float:
    a, b = a.double(), b.double()
    return float(a @ b / (a.norm() * b.norm()))


def _neg_log_softmax(pos: float, all_terms: list[float]) -> float:
    return -(pos - math.log(sum(math.exp(t) for t in all_terms)))


def ref_nce(q, p, tau) -> float:
    n = q.shape[0]
    total = 0.0
    for i in range(n):
        total += _neg_log_softmax(_cos(q[i], p[i]) / tau, [_cos(q[i], p[j]) / tau for j in range(n)])
    return total / n


def ref_hard(q, p, negs, tau) -> float:
    n, m = negs.shape[0], negs.shape[1]
    fwd = rev = 0.0
    for i in range(n):
        den = []
        for j in range(n):
            den.append(_cos(q[i], p[j]) / tau)
            for k in range(m):
                den.append(_cos(q[i], negs[j, k]) / tau)
        fwd += _neg_log_softmax(_cos(q[i], p[i]) / tau, den)
        rev += _neg_log_softmax(_cos(p[i], q[i]) / tau, [_cos(p[i], q[j]) / tau for j in range(n)])
    return fwd / n + rev / n


def ref_cosent(a, b, scores, tau) -> float:
    n = a.shape[0]
    s = [_cos(a[i], b[i]) for i in range(n)]
    total = 0.0
    for i in range(n):
        for j in range(n):
            if scores[i] > scores[j]:
                total += math.exp((s[j] - s[i]) / tau)
    return math.log(1.0 + total)


def ref_sep(x, labels, tau) -> float:
    n = x.shape[0]
    pos, neg = [], []
    for i in range(n):
        for j in range(i + 1, n):
            (pos if labels[i] == labels[j] else neg).append(_cos(x[i], x[j]))
    total = sum(math.exp((sn - sp) / tau) for sp in pos for sn in neg)
    return math.log(1.0 + total)


@pytest.fixture
def emb():
    g = torch.Generator().manual_seed(0)
    return lambda *shape: torch.randn(*shape, generator=g)


def test_info_nce_bidirectional(emb):
    q, p = emb(6, 16), emb(6, 16)
    got = losses.info_nce(q, p, TAU)
    want = ref_nce(q, p, TAU) + ref_nce(p, q, TAU)
    assert float(got) == pytest.approx(want, rel=1e-5)
    assert float(losses.info_nce(q, p, TAU, bidirectional=False)) == pytest.approx(ref_nce(q, p, TAU), rel=1e-5)


def test_info_nce_hard_negatives(emb):
    q, p, negs = emb(5, 12), emb(5, 12), emb(5, 3, 12)
    assert float(losses.info_nce_hard(q, p, negs, TAU)) == pytest.approx(ref_hard(q, p, negs, TAU), rel=1e-5)
    # With no hard negatives the forward term is the plain in-batch loss.
    none = torch.zeros(5, 0, 12)
    assert float(losses.info_nce_hard(q, p, none, TAU)) == pytest.approx(
        ref_nce(q, p, TAU) + ref_nce(p, q, TAU), rel=1e-5)


def test_cosent(emb):
    a, b = emb(7, 10), emb(7, 10)
    scores = torch.tensor([0.0, 1.0, 2.5, 2.5, 4.0, 1.0, 5.0])
    assert float(losses.cosent(a, b, scores, TAU)) == pytest.approx(ref_cosent(a, b, scores, TAU), rel=1e-5)
    # Large tau keeps the exponentials in range for the sign test below.
    assert float(losses.cosent(a, a * 2, scores, 1.0)) == pytest.approx(
        math.log(1 + sum(1 for i in range(7) for j in range(7) if scores[i] > scores[j])), rel=1e-5)


def test_separation(emb):
    x = emb(8, 10)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 2, 3])
    assert float(losses.separation_loss(x, labels, 0.5)) == pytest.approx(ref_sep(x, labels, 0.5), rel=1e-5)
    assert float(losses.separation_loss(x, labels, TAU)) == pytest.approx(ref_sep(x, labels, TAU), rel=1e-5)


def test_matryoshka_cuts_then_normalises(emb):
    q, p = emb(4, 16), emb(4, 16)
    mrl = losses.Matryoshka(losses.info_nce, [4, 8, 16], weights=[0.5, 1.0, 2.0])
    want = sum(w * (ref_nce(q[:, :d], p[:, :d], TAU) + ref_nce(p[:, :d], q[:, :d], TAU))
               for d, w in [(4, 0.5), (8, 1.0), (16, 2.0)])
    assert float(mrl(q, p, tau=TAU)) == pytest.approx(want, rel=1e-5)
    scores = torch.tensor([1.0, 0.0, 3.0, 2.0])
    mrl2 = losses.Matryoshka(losses.cosent, [3, 16])
    want2 = ref_cosent(q[:, :3], p[:, :3], scores, TAU) + ref_cosent(q, p, scores, TAU)
    assert float(mrl2(q, p, scores=scores, tau=TAU)) == pytest.approx(want2, rel=1e-5)
    assert losses.matryoshka_dims([8, 32, 128], 64) == [8, 32, 64]


def test_mlm_loss_is_mean_over_masked(emb):
    logits = emb(2, 5, 11)
    labels = torch.tensor([[-100, 3, -100, 7, -100], [1, -100, -100, -100, 10]])
    total, n = 0.0, 0
    for b in range(2):
        for t in range(5):
            if labels[b, t] != -100:
                row = logits[b, t].double()
                total += -(float(row[labels[b, t]]) - math.log(float(row.exp().sum())))
                n += 1
    assert float(losses.mlm_loss(logits, labels)) == pytest.approx(total / n, rel=1e-5)
    assert float(losses.mlm_loss(logits, labels, num_targets=10)) == pytest.approx(total / 10, rel=1e-5)


def test_whole_word_masking_masks_whole_words():
    tok = make_tokenizer()
    texts = ["Die Katze sitzt auf der warmen Fensterbank und beobachtet die Vögel.",
             "How do I change the default font size in a spreadsheet?"] * 20
    enc = tok.encode(texts, max_length=64)
    n = max(len(x) for x in enc.ids)
    ids = torch.full((len(texts), n), tok.pad_id)
    mask = torch.zeros_like(ids)
    for r, x in enumerate(enc.ids):
        ids[r, : len(x)] = torch.tensor(x)
        mask[r, : len(x)] = 1
    vocab = tok.backend.get_vocab()
    starts = losses.word_starts(vocab, tok.vocab_size)
    g = torch.Generator().manual_seed(1)
    masked, labels = losses.whole_word_mask(ids, mask, starts, [tok.cls_id, tok.sep_id, tok.pad_id],
                                            tok.mask_id, tok.vocab_size, prob=0.3, generator=g)
    picked = labels != -100
    assert picked.any()
    specials = (ids == tok.cls_id) | (ids == tok.sep_id) | (ids == tok.pad_id)
    assert not (picked & specials).any()
    assert torch.equal(labels[picked], ids[picked])
    assert torch.equal(masked[~picked], ids[~picked])
    frac_mask = float((masked[picked] == tok.mask_id).float().mean())
    assert 0.6 < frac_mask < 0.95
    # Naive word split: a word is a "▁" token and the pieces after it; it is masked all or nothing.
    for r in range(len(texts)):
        words, cur = [], []
        for t in range(n):
            tid = int(ids[r, t])
            if not mask[r, t] or tid in (tok.cls_id, tok.sep_id):
                continue
            if tok.backend.id_to_token(tid).startswith("\u2581") and cur:
                words.append(cur)
                cur = []
            cur.append(t)
        words.append(cur)
        for w in words:
            flags = {bool(picked[r, t]) for t in w}
            assert len(flags) == 1, (r, w)


def _naive_anchor(reps: np.ndarray, base: np.ndarray, tau: float) -> float:
    x, y = reps.reshape(-1, reps.shape[-1]), base.reshape(-1, base.shape[-1])
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    y = y / np.linalg.norm(y, axis=1, keepdims=True)
    total = 0.0
    for i in range(len(x)):
        others = [j for j in range(len(x)) if j != i]
        pm = np.exp([x[i] @ x[j] / tau for j in others])
        pb = np.exp([y[i] @ y[j] / tau for j in others])
        pm, pb = pm / pm.sum(), pb / pb.sum()
        total += float(np.sum(pb * np.log(pb / pm)))
    return total / len(x)


def test_similarity_anchor_against_a_naive_kl():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(5, 2, 12, generator=g, dtype=torch.float64)
    reps = base + 0.5 * torch.randn(5, 2, 12, generator=g, dtype=torch.float64)
    got = float(losses.similarity_anchor(reps, base, tau=0.1))
    assert got == pytest.approx(_naive_anchor(reps.numpy(), base.numpy(), 0.1), rel=1e-5)
    assert got > 0.01


def test_similarity_anchor_is_blind_to_rotation_and_scale_only():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(6, 2, 8, generator=g)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g))  # orthogonal: every cosine unchanged
    assert float(losses.similarity_anchor(3.0 * base @ q, base)) == pytest.approx(0.0, abs=1e-4)
    shuffled = base[torch.randperm(6, generator=g)]  # other texts in the same slots: a different ranking
    assert float(losses.similarity_anchor(shuffled, base)) > 0.1
    reps = base.clone().requires_grad_(True)
    anchor_base = base.clone().requires_grad_(True)
    losses.similarity_anchor(reps + 0.1, anchor_base).backward()
    assert reps.grad is not None and anchor_base.grad is None  # the base side is a fixed target
