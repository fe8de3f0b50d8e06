"""Matryoshka channel reordering (taskembed_train/reorder.py): the score, and an exact reparametrisation end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

import taskembed
from taskembed_train.reorder import channel_scores, main, read_pairs


def test_channel_scores_are_the_positive_pair_covariance():
    rng = np.random.default_rng(0)
    q, d = rng.normal(size=(50, 12)), rng.normal(size=(50, 12))
    shared = rng.normal(size=50) * 3
    q[:, 5] += shared  # channel 5 carries what the pairs have in common
    d[:, 5] += shared
    q[:, 2] += 4.0  # a large constant offset carries nothing
    d[:, 2] += 4.0
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    dn = d / np.linalg.norm(d, axis=1, keepdims=True)
    want = [np.cov(qn[:, c], dn[:, c], bias=True)[0, 1] for c in range(12)]
    got = channel_scores(q, d)
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert int(np.argmax(got)) == 5
    with pytest.raises(ValueError, match="matching rows"):
        channel_scores(q, d[:10])


def test_reorder_cli_moves_channels_and_keeps_full_size_scores(tiny_dir, tmp_path):
    words = ["cat", "river", "bread", "moon", "train", "garden", "rain", "font", "sleep", "tea"]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"query": w, "positive": f"a short text about the {w} and more {w}"}) + "\n"
                            for w in words))
    assert len(read_pairs([data], 6)) == 6
    assert main([str(tiny_dir), str(tmp_path / "out"), "--data", str(data), "--pairs", "10"]) == 0
    before, after = taskembed.load(tiny_dir), taskembed.load(tmp_path / "out")
    texts = words[:4] + ["Wie ändere ich die Schriftgröße?"]
    a = before.encode(texts, task="retrieval.passage", normalize=False)
    b = after.encode(texts, task="retrieval.passage", normalize=False)
    assert not np.allclose(a, b, atol=1e-3)  # really moved
    order = [int(np.argmin(np.abs(a[0] - x))) for x in b[0]]  # where each new channel came from
    np.testing.assert_allclose(b, a[:, order], atol=1e-5)
    assert sorted(order) == list(range(a.shape[1]))
    assert json.loads((tmp_path / "out" / "channel_order.json").read_text())["order"] == order
    # Reordering the reordered model again: the recorded order still maps back to the original channels.
    assert main([str(tmp_path / "out"), str(tmp_path / "out2"), "--data", str(data), "--pairs", "6",
                 "--seed", "3"]) == 0
    c = taskembed.load(tmp_path / "out2").encode(texts, task="retrieval.passage", normalize=False)
    np.testing.assert_allclose(c, a[:, json.loads((tmp_path / "out2" / "channel_order.json").read_text())["order"]],
                               atol=1e-5)
    # Full-size cosines are unchanged; the leading channels are the best-scoring ones.
    ua, ub = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (a, b))
    np.testing.assert_allclose(ua @ ua.T, ub @ ub.T, atol=1e-5)
    q = before.encode(words, task="retrieval.query", normalize=False)
    d = before.encode([f"a short text about the {w} and more {w}" for w in words], task="retrieval.passage",
                      normalize=False)
    scores = channel_scores(q, d)
    assert np.all(np.diff(scores[order]) <= 1e-9)
