"""The encoder, the LoRA routing and encode() against the naive reference in reference.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import taskembed
from reference import Reference
from taskembed.config import EncoderConfig
from taskembed.encoder import Encoder, Rotary

TEXTS = [
    "The cat sits on the warm windowsill.",
    "Wie ändere ich die Standardschriftgröße?",
    "如何更改电子表格中的默认字体大小？",
    "бит",
    "How do I change the default font size in a spreadsheet? " * 6,
]
ALL_TASKS = [*taskembed.TASKS, None]


@pytest.fixture(scope="module")
def ref(tiny_dir) -> Reference:
    return Reference(tiny_dir)


@pytest.mark.parametrize("task", ALL_TASKS)
def test_encode_matches_reference(tiny, ref, task):
    # One padded batch of different lengths through the package, one text at a time through the reference.
    got = tiny.encode(TEXTS, task=task)
    want = np.stack([ref.embed(t, task) for t in TEXTS])
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_adapters_differ_from_each_other_and_base(tiny):
    vecs = [tiny.encode(TEXTS[:2], task=t) for t in ALL_TASKS]
    for i in range(len(vecs)):
        for j in range(i + 1, len(vecs)):
            assert np.abs(vecs[i] - vecs[j]).max() > 1e-3, (ALL_TASKS[i], ALL_TASKS[j])


def test_mixed_tasks_equal_per_task_calls(tiny):
    tasks = ["retrieval.query", "retrieval.passage", "separation", None, "text-matching",
             "classification", "retrieval.query"]
    texts = [TEXTS[i % len(TEXTS)] for i in range(len(tasks))]
    mixed = tiny.encode(texts, task=tasks)
    for i, (text, task) in enumerate(zip(texts, tasks, strict=True)):
        np.testing.assert_allclose(mixed[i], tiny.encode([text], task=task)[0], atol=1e-5)


def test_mixed_forward_rows_match_single_task_forward(tiny):
    ids = torch.tensor([[0, 10, 11, 12, 2], [0, 20, 21, 2, 1], [0, 30, 2, 1, 1]])
    mask = (ids != 1).long()
    mask[:, 0] = 1
    tids = torch.tensor([0, -1, 4])
    with torch.no_grad():
        mixed = tiny.model(ids, mask, tids)
        for r in range(3):
            one = tiny.model(ids[r: r + 1], mask[r: r + 1], tids[r: r + 1])
            n = int(mask[r].sum())
            torch.testing.assert_close(mixed[r, :n], one[0, :n], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("task", range(5))
def test_merged_equals_unmerged(tiny, task):
    ids = torch.tensor([[0, 10, 11, 12, 2], [0, 20, 21, 2, 1]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    with torch.no_grad():
        unmerged = tiny.model(ids, mask, torch.tensor([task, task]))
        merged = tiny.model.merged(task)(ids, mask, None)
        base = tiny.model(ids, mask, None)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)
    assert (base - unmerged).abs().max() > 1e-3  # the adapter does something


def test_padding_does_not_change_results(tiny):
    alone = tiny.encode([TEXTS[0]], task="separation")
    with_long = tiny.encode([TEXTS[0], TEXTS[4]], task="separation")
    np.testing.assert_allclose(alone[0], with_long[0], atol=1e-5)


def test_token_budget_splits_batches(tiny):
    texts = [TEXTS[4]] * 3 + [TEXTS[3]] * 5
    lengths = tiny.count_tokens(texts)
    tiny.max_batch_tokens = max(lengths)  # forces the long texts into batches of one
    try:
        batches = tiny.batches(lengths, batch_size=32)
        assert all(max(lengths[i] for i in b) * len(b) <= max(lengths) for b in batches)
        small = tiny.encode(texts, task="text-matching")
    finally:
        tiny.max_batch_tokens = taskembed.embedder.DEFAULT_MAX_BATCH_TOKENS
    np.testing.assert_allclose(small, tiny.encode(texts, task="text-matching"), atol=1e-5)


def test_rotary_base_matters_and_is_settable(tiny):
    a = tiny.encode(TEXTS[:1], task="separation")
    tiny.model.rotary_emb_base = 10000.0
    try:
        b = tiny.encode(TEXTS[:1], task="separation")
    finally:
        tiny.model.rotary_emb_base = tiny.config.rotary_emb_base
    assert np.abs(a - b).max() > 1e-4
    np.testing.assert_allclose(a, tiny.encode(TEXTS[:1], task="separation"), atol=1e-6)


def test_truncation_keeps_closing_token(tiny):
    enc = tiny.tokenizer.encode([TEXTS[4]], max_length=10)
    assert len(enc.ids[0]) == 10
    assert enc.ids[0][0] == tiny.tokenizer.cls_id and enc.ids[0][-1] == tiny.tokenizer.sep_id
    full = tiny.tokenizer.encode([TEXTS[4]], max_length=10_000).ids[0]
    assert enc.ids[0][:9] == full[:9]


def test_full_size_parameter_counts():
    # The official 24-layer model, built on the meta device (no memory): the spec's 559,364,096 base
    # parameters (with pooler) and 2,589,260 per adapter.
    with torch.device("meta"):
        model = Encoder(EncoderConfig())
    counts = model.num_parameters()
    assert counts["base"] == 559_364_096
    assert counts["per_adapter"] == 2_589_260
    assert counts["total"] == 572_310_396


def test_add_task_keeps_other_adapters_and_round_trips(tiny_dir, tmp_path):
    emb = taskembed.load(tiny_dir)
    before = {t: emb.encode(TEXTS[:2], task=t) for t in ALL_TASKS}
    idx = emb.model.add_task("legal.query", "Represent the legal question: ")
    assert idx == 5 and emb.tasks[-1] == "legal.query"
    # A fresh slot is a no-op: same as the base weights, but with the instruction prefix.
    np.testing.assert_allclose(emb.encode(["x"], task="legal.query"),
                               emb.encode(["Represent the legal question: x"]), atol=1e-6)
    with torch.no_grad():  # pretend training changed it
        for m in emb.model.modules():
            if hasattr(m, "lora_A"):
                m.lora_A[idx].normal_()
                m.lora_B[idx].normal_()
    for t in ALL_TASKS:
        np.testing.assert_allclose(emb.encode(TEXTS[:2], task=t), before[t], atol=1e-6)
    emb.save(tmp_path / "six")
    again = taskembed.load(tmp_path / "six")
    assert again.tasks == [*taskembed.TASKS, "legal.query"]
    np.testing.assert_allclose(again.encode(TEXTS, task="legal.query"), emb.encode(TEXTS, task="legal.query"),
                               atol=1e-6)
    with pytest.raises(ValueError, match="already exists"):
        again.model.add_task("separation")


@pytest.mark.parametrize("tasks", [[0, 0, 0, 0], [0, 0, -1, 4], [-1, -1, -1, -1], [3, 1, 3, 2]])
def test_packed_forward_equals_padded(tiny, tasks):
    lens = [7, 3, 12, 5]
    gen = torch.Generator().manual_seed(1)
    ids = [torch.randint(5, 300, (n,), generator=gen) for n in lens]
    pad = torch.full((4, max(lens)), tiny.config.pad_token_id)
    mask = torch.zeros(4, max(lens), dtype=torch.long)
    for i, x in enumerate(ids):
        pad[i, : len(x)], mask[i, : len(x)] = x, 1
    with torch.no_grad():
        packed = tiny.model.forward_packed(torch.cat(ids), lens, tasks)
        padded = tiny.model(pad, mask, torch.tensor(tasks))
    start = 0
    for i, n in enumerate(lens):
        torch.testing.assert_close(packed[start: start + n], padded[i, :n], atol=1e-5, rtol=1e-5)
        start += n


def test_packed_forward_calls_back_between_layers_and_may_run_another_pass_there(tiny):
    lens, tasks = [9, 4], [0, 2]
    ids = torch.randint(5, 300, (sum(lens),), generator=torch.Generator().manual_seed(3))
    other = torch.randint(5, 300, (6,), generator=torch.Generator().manual_seed(4))
    calls = []

    def between():  # what a server does there: another request's whole pass
        calls.append(tiny.model.forward_packed(other, [6], [1]))

    with torch.no_grad():
        plain = tiny.model.forward_packed(ids, lens, tasks)
        paused = tiny.model.forward_packed(ids, lens, tasks, between)
        alone = tiny.model.forward_packed(other, [6], [1])
    assert len(calls) == tiny.config.num_hidden_layers - 1
    torch.testing.assert_close(paused, plain, atol=0, rtol=0)
    torch.testing.assert_close(calls[0], alone, atol=0, rtol=0)


def test_nested_tensor_attention_path_equals_loop(tiny, monkeypatch):
    # The CUDA path uses jagged nested tensors; force it on CPU and compare with the per-sequence loop.
    from taskembed.encoder import Attention

    lens, tasks = [6, 11, 2], [1, 1, 4]
    ids = torch.randint(5, 300, (sum(lens),), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        loop = tiny.model.forward_packed(ids, lens, tasks)
        monkeypatch.setattr(Attention, "nested_attention", True)
        nested = tiny.model.forward_packed(ids, lens, tasks)
    torch.testing.assert_close(nested, loop, atol=1e-5, rtol=1e-5)


def test_packed_and_padded_encode_agree(tiny_dir):
    emb = taskembed.load(tiny_dir)
    tasks = ["retrieval.query", None, "separation", "retrieval.query", "text-matching"]
    with pytest.warns(UserWarning):
        packed = emb.encode(TEXTS, task=tasks)
    emb.packed = False
    padded = emb.encode(TEXTS, task=tasks)
    np.testing.assert_allclose(packed, padded, atol=1e-5)


def test_permuting_hidden_channels_permutes_the_outputs_exactly(tiny_dir):
    # Matryoshka reordering (taskembed_train/reorder.py) relies on this being a pure reparametrisation.
    emb, moved = taskembed.load(tiny_dir), taskembed.load(tiny_dir)
    h = emb.config.hidden_size
    order = torch.randperm(h, generator=torch.Generator().manual_seed(3))
    moved.model.permute_hidden(order)
    assert not torch.equal(moved.model.encoder.layers[0].mlp.fc2.weight, emb.model.encoder.layers[0].mlp.fc2.weight)
    lens, tasks = [9, 4, 13], [0, -1, 4]
    ids = torch.randint(5, 300, (sum(lens),), generator=torch.Generator().manual_seed(4))
    pad = torch.full((3, max(lens)), emb.config.pad_token_id)
    mask = torch.zeros(3, max(lens), dtype=torch.long)
    for i, (s, n) in enumerate(zip([0, 9, 13], lens, strict=True)):
        pad[i, :n], mask[i, :n] = ids[s: s + n], 1
    with torch.no_grad():
        torch.testing.assert_close(moved.model.forward_packed(ids, lens, tasks),
                                   emb.model.forward_packed(ids, lens, tasks)[:, order], atol=1e-5, rtol=1e-5)
        a, b = moved.model(pad, mask, torch.tensor(tasks)), emb.model(pad, mask, torch.tensor(tasks))
        torch.testing.assert_close(a, b[..., order], atol=1e-5, rtol=1e-5)
        t = torch.tensor(tasks)
        torch.testing.assert_close(moved.model.pooler(a, t), emb.model.pooler(b, t), atol=1e-5, rtol=1e-5)
        # Mixed tasks in the pooler: each row as if alone.
        for r, task in enumerate(tasks):
            one = emb.model.pooler(b[r: r + 1], torch.tensor([task]))
            torch.testing.assert_close(emb.model.pooler(b, t)[r: r + 1], one, atol=1e-5, rtol=1e-5)
    for task in ("retrieval.query", "text-matching"):  # the merged copies too
        np.testing.assert_allclose(moved.encode(TEXTS, task=task, normalize=False),
                                   emb.encode(TEXTS, task=task, normalize=False)[:, order.numpy()], atol=1e-5)
    with pytest.raises(ValueError, match="permutation"):
        moved.model.permute_hidden(list(range(h - 1)) + [0])


def test_rotary_tables_made_in_inference_mode_still_train():
    # An encode() between training steps fills the rotary cache under inference_mode; a later training
    # step at that length must get tables autograd can use.
    rot = Rotary(8, base=10000.0)
    with torch.inference_mode():
        rot(torch.randn(2, 5, 8))
    x = torch.randn(2, 5, 8, requires_grad=True)
    rot(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
