"""taskembed_train.merge: weight averages of two models of one lineage, channel-order aware."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import taskembed
from support.tiny import make_tiny_embedder
from taskembed_train import merge

TEXTS = ["The cat sits on the warm windowsill.", "Wie ändere ich die Schriftgröße?", "猫坐在温暖的窗台上。"]


def _save(emb, d: Path, order: list[int] | None = None) -> Path:
    if order is not None:
        emb.model.permute_hidden(torch.tensor(order))
        emb.clear_merged()
    emb.save(d)
    if order is not None:
        (d / "channel_order.json").write_text(json.dumps({"order": order}))
    return d


@pytest.fixture
def pair(tmp_path):
    h = make_tiny_embedder(seed=1).config.hidden_size
    order = torch.randperm(h, generator=torch.Generator().manual_seed(5)).tolist()
    a = _save(make_tiny_embedder(seed=1), tmp_path / "a", order)  # reordered, as the bundled model is
    b = _save(make_tiny_embedder(seed=2), tmp_path / "b")  # the teacher's order, as a fresh rebuild is
    return a, b, order


def test_merge_averages_base_weights_in_the_teachers_order_and_keeps_one_side_adapters(tmp_path, pair):
    a, b, order = pair
    merge.merge(a, b, tmp_path / "m", 0.5)
    m = taskembed.load(tmp_path / "m", dtype=torch.float32)
    assert json.loads((tmp_path / "m" / "channel_order.json").read_text())["order"] == order
    m.model.permute_hidden(torch.argsort(torch.tensor(order)))
    ref_a, ref_b = make_tiny_embedder(seed=1).model.state_dict(), make_tiny_embedder(seed=2).model.state_dict()
    got = m.model.state_dict()
    lora = [k for k in got if "lora_" in k]
    assert lora and len(lora) < len(got)
    for k, v in got.items():
        want = ref_a[k] if "lora_" in k else 0.5 * (ref_a[k] + ref_b[k])
        torch.testing.assert_close(v, want, rtol=1e-5, atol=1e-6, msg=k)


def test_merge_at_the_ends_gives_either_model_in_as_channel_order(tmp_path, pair):
    a, b, order = pair
    emb_a, emb_b = taskembed.load(a), taskembed.load(b)
    merge.merge(a, b, tmp_path / "m0", 0.0)
    merge.merge(a, b, tmp_path / "m1", 1.0, adapters="b")
    m0, m1 = taskembed.load(tmp_path / "m0"), taskembed.load(tmp_path / "m1")
    for task in ("retrieval.query", "classification"):
        np.testing.assert_allclose(m0.encode(TEXTS, task=task), emb_a.encode(TEXTS, task=task), atol=1e-5)
        # B's embeddings, channel j being B's channel order[j]
        np.testing.assert_allclose(m1.encode(TEXTS, task=task), emb_b.encode(TEXTS, task=task)[:, order],
                                   atol=1e-5)
    assert not np.allclose(m0.encode(TEXTS, task="classification"), m1.encode(TEXTS, task="classification"),
                           atol=1e-3)


def test_merge_refuses_models_of_different_shapes(tmp_path, pair):
    a, _, _ = pair
    other = _save(make_tiny_embedder(seed=3, intermediate_size=48), tmp_path / "c")
    with pytest.raises(SystemExit, match="not one lineage"):
        merge.merge(a, other, tmp_path / "m", 0.5)
