"""Parity against outputs written by the official jina-embeddings-v3 remote code.

The fixture in ``tests/fixtures/official_tiny`` (see its README.md) is a tiny random model saved by the
official ``XLMRobertaLoRA.save_pretrained`` together with the official ``encode`` / ``forward`` outputs,
made by ``scripts/make_official_fixture.py``. Nothing here imports the official code.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import taskembed

FIXTURE = Path(__file__).parent / "fixtures" / "official_tiny"
ATOL = 1e-4

def _meta() -> dict:
    with open(FIXTURE / "expected.json", encoding="utf-8") as f:
        return json.load(f)


META = _meta()
CASES = [(task, dim) for task in [None, *META["tasks"]] for dim in META["truncate_dims"]]


def _key(task: str | None, dim: int | None) -> str:
    return f"{task or 'none'}|{dim or 'none'}"


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    with np.load(FIXTURE / "expected.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def emb():
    return taskembed.load(FIXTURE)


def _encode(emb, texts, task, dim) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # task=None warns that no adapter is active
        return np.asarray(emb.encode(texts, task=task, dimensions=dim), dtype=np.float32)


def test_fixture_adapters_are_distinct(expected):
    """Guard on the fixture itself: every adapter changes the output, and differently."""
    full = [expected[_key(t, None)] for t in [None, *META["tasks"]]]
    for i in range(len(full)):
        for j in range(i):
            assert np.abs(full[i] - full[j]).max() > 1e-2, (i, j)


@pytest.mark.parametrize("task,dim", CASES, ids=[_key(t, d) for t, d in CASES])
def test_encode_matches_official(emb, expected, task, dim):
    want = expected[_key(task, dim)]
    got = _encode(emb, META["texts"], task, dim)
    assert got.shape == want.shape
    err = np.abs(got - want).max(axis=1)
    bad = {i: float(e) for i, e in enumerate(err) if e > ATOL}
    assert not bad, f"max abs error per text index above {ATOL}: {bad}"


def test_encode_mixed_tasks_per_text(emb, expected):
    """One call with a task per text; each row must equal the official single-task result."""
    texts = META["texts"]
    tasks = [None, *META["tasks"]]
    per_text = [tasks[i % len(tasks)] for i in range(len(texts))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = np.asarray(emb.encode(texts, task=per_text, dimensions=32), dtype=np.float32)
    want = np.stack([expected[_key(t, 32)][i] for i, t in enumerate(per_text)])
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


def test_forward_per_row_adapters(emb, expected):
    """Direct forward with a different adapter per row (-1 = none) against the official forward."""
    input_ids = torch.from_numpy(expected["forward/input_ids"]).long()
    attention_mask = torch.from_numpy(expected["forward/attention_mask"]).long()
    task_ids = torch.from_numpy(expected["forward/task_ids"]).long()
    with torch.inference_mode():
        hidden = emb.model(input_ids, attention_mask, task_ids).float().numpy()
    want = expected["forward/last_hidden_state"]
    assert hidden.shape == want.shape
    real = expected["forward/attention_mask"].astype(bool)
    err = np.where(real[..., None], np.abs(hidden - want), 0.0).max(axis=(1, 2))
    bad = {f"row {r} (task {int(task_ids[r])})": float(e) for r, e in enumerate(err) if e > ATOL}
    assert not bad, f"max abs error on real tokens above {ATOL}: {bad}"


def test_forward_without_adapters(emb, expected):
    input_ids = torch.from_numpy(expected["forward/input_ids"]).long()
    attention_mask = torch.from_numpy(expected["forward/attention_mask"]).long()
    no_task = torch.full((input_ids.shape[0],), -1, dtype=torch.long)
    with torch.inference_mode():
        hidden = emb.model(input_ids, attention_mask, no_task).float().numpy()
    real = expected["forward/attention_mask"].astype(bool)
    err = np.abs(hidden - expected["forward/base_last_hidden_state"])[real].max()
    assert err <= ATOL, err


def test_token_counts_match_official_tokenizer(emb):
    """Token counts (with <s> and </s>) of the raw texts, as the official tokenizer produced them."""
    want = [len(ids) for ids in META["token_ids"]]
    assert list(emb.count_tokens(META["texts"])) == want
