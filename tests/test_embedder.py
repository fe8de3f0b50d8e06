"""encode(): Matryoshka cut, normalisation, precisions, input validation, warnings."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from support.tiny import make_tiny_embedder

TEXTS = ["The cat sits on the warm windowsill.", "如何更改电子表格中的默认字体大小？", "Кошка сидит."]


@pytest.mark.parametrize("dim", [8, 16, 32, 64])
def test_matryoshka_cut_then_normalise(tiny, dim):
    raw = tiny.encode(TEXTS, task="retrieval.query", normalize=False)
    cut = tiny.encode(TEXTS, task="retrieval.query", dimensions=dim)
    assert cut.shape == (3, dim)
    want = raw[:, :dim] / np.linalg.norm(raw[:, :dim], axis=1, keepdims=True)
    np.testing.assert_allclose(cut, want, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(cut, axis=1), 1.0, atol=1e-6)


def test_unnormalised_is_the_mean_of_hidden_states(tiny):
    import torch

    tiny.merge_cache_size = 0  # compare pooling on the very same computation (no merged copy)
    try:
        raw = tiny.encode(TEXTS[:1], task="separation", normalize=False)
    finally:
        tiny.merge_cache_size = 1
    ids = torch.tensor([tiny.tokenizer.encode(TEXTS[:1], 100).ids[0]])
    with torch.no_grad():
        hidden = tiny.model(ids, torch.ones_like(ids), torch.tensor([2]))
    np.testing.assert_allclose(raw[0], hidden[0].mean(0).numpy(), atol=1e-6)


def test_binary_precisions_pack_sign_bits(tiny):
    f = tiny.encode(TEXTS, task="classification")
    ub = tiny.encode(TEXTS, task="classification", precision="ubinary")
    b = tiny.encode(TEXTS, task="classification", precision="binary")
    assert ub.dtype == np.uint8 and ub.shape == (3, 8)
    assert b.dtype == np.int8 and b.shape == (3, 8)
    for r in range(3):
        for byte in range(8):
            # Big-endian bit order inside each byte, as np.packbits and sentence-transformers use.
            want = sum(1 << (7 - k) for k in range(8) if f[r, byte * 8 + k] > 0)
            assert ub[r, byte] == want
            assert b[r, byte] == want - 128


def test_int8_and_uint8_fixed_scale(tiny):
    f = tiny.encode(TEXTS, task="text-matching", dimensions=32)
    i8 = tiny.encode(TEXTS, task="text-matching", dimensions=32, precision="int8")
    u8 = tiny.encode(TEXTS, task="text-matching", dimensions=32, precision="uint8")
    assert i8.dtype == np.int8 and u8.dtype == np.uint8
    assert np.abs(i8 / 127.0 - f).max() <= 0.5 / 127 + 1e-6
    assert np.abs(u8 / 127.5 - 1.0 - f).max() <= 0.5 / 127.5 + 1e-6
    # Same text, same code, whatever else is in the call.
    np.testing.assert_array_equal(tiny.encode(TEXTS[:1], task="text-matching", dimensions=32, precision="int8")[0],
                                  i8[0])


def test_float16_precision(tiny):
    f = tiny.encode(TEXTS, task="text-matching")
    h = tiny.encode(TEXTS, task="text-matching", precision="float16")
    assert h.dtype == np.float16
    np.testing.assert_allclose(h.astype(np.float32), f, atol=1e-3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(texts=[], task="separation"), "empty"),
        (dict(texts="one string", task="separation"), "not one string"),
        (dict(texts=["ok", 3], task="separation"), "item 1 is int"),
        (dict(texts=["ok", None], task="separation"), "item 1 is NoneType"),
        (dict(texts=["ok"], task="retrieval"), "unknown task 'retrieval'; allowed tasks: retrieval.query"),
        (dict(texts=["ok"], task=["separation", "separation"]), "2 tasks for 1 texts"),
        (dict(texts=["ok"], task="separation", dimensions=10), r"dimensions=10 not allowed; allowed: \[8, 16"),
        (dict(texts=["ok"], task="separation", dimensions=0), "not allowed"),
        (dict(texts=["ok"], task="separation", dimensions="32"), "must be an int"),
        (dict(texts=["ok"], task="separation", precision="int4"), "unknown precision 'int4'"),
        (dict(texts=["ok"], task="separation", precision="int8", normalize=False), "needs normalize=True"),
        (dict(texts=["ok"], task="separation", batch_size=0), "batch_size"),
        (dict(texts=["ok"], task="separation", max_length=100_000), "max_position_embeddings"),
        (dict(texts=["ok " * 50], task="separation", max_length=10, truncate=False), "truncation is off"),
    ],
)
def test_bad_input_raises_clear_value_error(tiny, kwargs, message):
    texts = kwargs.pop("texts")
    with pytest.raises(ValueError, match=message):
        tiny.encode(texts, **kwargs)


def test_no_task_warns_once():
    emb = make_tiny_embedder(seed=3)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        emb.encode(["a"])
        emb.encode(["b"])
        emb.encode(["c"], task="separation")
    msgs = [str(x.message) for x in w if "no adapter is active" in str(x.message)]
    assert len(msgs) == 1


def test_instruction_prefix_is_prepended(tiny):
    q = tiny.encode(["cat"], task="retrieval.query")
    manual = tiny.encode(["Represent the query for retrieving evidence documents: cat"], task=None)
    assert np.abs(q - manual).max() > 1e-3  # adapter differs from base...
    # ...but the tokens are the prefixed ones:
    assert tiny.count_tokens(["cat"], task="retrieval.query") == tiny.count_tokens(
        ["Represent the query for retrieving evidence documents: cat"]
    )


def test_output_in_input_order(tiny):
    texts = ["a", "a much longer text than the first one " * 3, "mid length text"]
    together = tiny.encode(texts, task="separation")
    for i, t in enumerate(texts):
        np.testing.assert_allclose(together[i], tiny.encode([t], task="separation")[0], atol=1e-5)


def test_int8_model_close_to_float_and_routes_tasks(tiny_dir):
    import taskembed

    f = taskembed.load(tiny_dir)
    q = taskembed.load(tiny_dir, int8=True)
    assert q.quantized and any(getattr(m, "int8", None) is not None for m in q.model.modules())
    texts = TEXTS * 2
    tasks = ["retrieval.query", "separation", "text-matching", "classification", "retrieval.passage", None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vf, vq = f.encode(texts, task=tasks), q.encode(texts, task=tasks)
        assert np.abs(vf - vq).max() > 0  # really a different computation
        assert (vf * vq).sum(1).min() > 0.99
        # Dynamic int8 scales activations per forward pass (as ONNX Runtime's dynamic int8 does), so a text's
        # vector depends slightly on its batch; each row still gets its own adapter.
        for i, (t, task) in enumerate(zip(texts, tasks, strict=True)):
            alone = q.encode([t], task=task)[0]
            assert float(alone @ vq[i]) > 0.999
            assert float(alone @ vf[i]) > 0.99
    with pytest.raises(ValueError, match="int8"):
        q.save("/tmp/never")


def test_int8_linear_keeps_calibrated_outlier_channels_in_float():
    import torch.nn.functional as F

    from taskembed.lora import Int8Linear

    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(64, 128, generator=g) * 0.05, torch.randn(64, generator=g) * 0.1
    x = torch.randn(300, 128, generator=g)
    x[:, 7] *= 60  # one channel far above the rest, as GELU outputs have in trained encoders
    ref = F.linear(x, w, b)
    plain, split = Int8Linear(w, b, None), Int8Linear(w, b, x.abs().amax(0))
    assert plain.outliers is None and split.outliers.tolist() == [7]
    err_plain = float((plain(x) - ref).norm() / ref.norm())
    err_split = float((split(x) - ref).norm() / ref.norm())
    assert err_split < 0.01 and err_split < err_plain / 4, (err_plain, err_split)
    # Without an outlier no channel is singled out.
    assert Int8Linear(w, b, torch.randn(300, 128, generator=g).abs().amax(0)).outliers is None


def test_record_input_absmax_is_the_per_channel_maximum_over_all_calls():
    from taskembed.lora import LoRALinear, record_input_absmax

    lin = LoRALinear(6, 4, num_tasks=2, rank=2, alpha=2.0)
    xs = [torch.randn(3, 5, 6), torch.randn(7, 6) * 3]
    record_input_absmax(torch.nn.Sequential(lin), lambda: [lin(x) for x in xs])
    want = torch.maximum(xs[0].abs().reshape(-1, 6).amax(0), xs[1].abs().amax(0))
    torch.testing.assert_close(lin.act_absmax, want)
    assert "act_absmax" not in lin.state_dict()


def test_merged_task_cache_gives_the_lora_numbers(tiny_dir):
    import taskembed

    emb = taskembed.load(tiny_dir)
    plain = taskembed.load(tiny_dir)
    plain.merge_cache_size = 0
    for task in ["retrieval.query", "separation", "retrieval.query", "text-matching"]:
        np.testing.assert_allclose(emb.encode(TEXTS, task=task), plain.encode(TEXTS, task=task), atol=1e-5)
    assert list(emb._merged) == [4]  # one copy kept, the most recent task
    assert not plain._merged
    # The merged copy really has the adapter in its weights and no LoRA routing at run time.
    merged = emb._merged[4]
    assert merged.embeddings is emb.model.embeddings  # the big table is shared, not copied
    w = emb.model.encoder.layers[0].mlp.fc1
    expected = w.weight + w.delta_weight(4)
    assert torch.allclose(merged.encoder.layers[0].mlp.fc1.weight, expected, atol=1e-6)


def test_int8_merged_copy_is_requantized(tiny_dir):
    import taskembed

    q = taskembed.load(tiny_dir, int8=True)
    f = taskembed.load(tiny_dir)
    v = q.encode(TEXTS, task="classification")  # one task: the int8 merged copy
    assert 3 in q._merged
    assert (v * f.encode(TEXTS, task="classification")).sum(1).min() > 0.99
    q.merge_cache_size = 0
    assert (v * q.encode(TEXTS, task="classification")).sum(1).min() > 0.999


def test_merged_cache_follows_weight_updates(tiny_dir):
    import taskembed

    emb = taskembed.load(tiny_dir)
    before = emb.encode(TEXTS, task="separation")
    with torch.no_grad():  # what an optimizer step does: in place
        emb.model.encoder.layers[1].mlp.fc2.lora_B[2].add_(0.3)
        emb.model.emb_ln.bias.add_(0.1)
    after = emb.encode(TEXTS, task="separation")
    emb.merge_cache_size = 0
    np.testing.assert_allclose(after, emb.encode(TEXTS, task="separation"), atol=1e-5)
    assert np.abs(after - before).max() > 1e-3
