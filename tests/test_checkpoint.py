"""Checkpoint I/O in the official layout: round trips, dtypes, prefixes and clear errors."""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import taskembed
from support.tiny import make_tokenizer
from taskembed import CheckpointError

TEXTS = ["The cat sits on the warm windowsill.", "如何更改电子表格中的默认字体大小？"]


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_official_key_names(tiny_dir):
    keys = set(load_file(str(tiny_dir / "model.safetensors")))
    assert "roberta.embeddings.word_embeddings.parametrizations.weight.original" in keys
    assert "roberta.embeddings.word_embeddings.parametrizations.weight.0.lora_A" in keys
    assert "roberta.encoder.layers.1.mixer.Wqkv.parametrizations.weight.0.lora_B" in keys
    assert "roberta.encoder.layers.0.mixer.Wqkv.bias" in keys
    assert "roberta.emb_ln.weight" in keys and "roberta.pooler.dense.bias" in keys
    # 6 embedding + 2 emb_ln + 20 per layer + 4 pooler, as in the official file.
    assert len(keys) == 6 + 2 + 20 * 2 + 4
    key = "roberta.embeddings.word_embeddings.parametrizations.weight.0.lora_A"
    a = load_file(str(tiny_dir / "model.safetensors"))[key]
    assert a.shape[0] == 5 and a.shape[2] == 4  # (tasks, num, rank): the embedding's swapped order


def test_round_trip_is_exact(tiny, tiny_dir, tmp_path):
    tiny.save(tmp_path / "again")
    a = load_file(str(tiny_dir / "model.safetensors"))
    b = load_file(str(tmp_path / "again" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    again = taskembed.load(tmp_path / "again")
    np.testing.assert_array_equal(again.encode(TEXTS, task="separation"), tiny.encode(TEXTS, task="separation"))


def test_unknown_config_keys_are_kept(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoModel": "jinaai/xlm-roberta-flash-implementation--modeling_lora.XLMRobertaLoRA"}
    cfg["use_flash_attn"] = True
    (d / "config.json").write_text(json.dumps(cfg))
    taskembed.load(d).save(tmp_path / "out")
    out = json.loads((tmp_path / "out" / "config.json").read_text())
    assert out["auto_map"] == cfg["auto_map"] and out["use_flash_attn"] is True
    assert out["lora_adaptations"] == cfg["lora_adaptations"]


@pytest.mark.parametrize("dtype, atol", [(torch.float16, 0.0), (torch.bfloat16, 0.0)])
def test_half_precision_files_load(tiny, tmp_path, dtype, atol):
    tiny.save(tmp_path / "half", dtype=dtype)
    t = load_file(str(tmp_path / "half" / "model.safetensors"))
    assert all(v.dtype == dtype for v in t.values())
    half = taskembed.load(tmp_path / "half")
    assert half.dtype == torch.float32  # computed in fp32 on CPU by default
    # Same as the fp32 model with its weights rounded through that dtype.
    rounded = taskembed.Embedder(copy.deepcopy(tiny.model), tiny.tokenizer)
    with torch.no_grad():
        for p in rounded.model.parameters():
            p.copy_(p.to(dtype).float())
    np.testing.assert_allclose(half.encode(TEXTS, task="text-matching"),
                               rounded.encode(TEXTS, task="text-matching"), atol=1e-6)


def test_bf16_compute(tiny_dir):
    emb = taskembed.load(tiny_dir, dtype="bfloat16")
    assert emb.dtype == torch.bfloat16
    v = emb.encode(TEXTS, task="separation")
    assert v.dtype == np.float32
    ref = taskembed.load(tiny_dir).encode(TEXTS, task="separation")
    assert (v * ref).sum(1).min() > 0.99


def test_without_roberta_prefix(tiny, tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path / "m")
    t = load_file(str(d / "model.safetensors"))
    save_file({k.removeprefix("roberta."): v for k, v in t.items()}, str(d / "model.safetensors"))
    np.testing.assert_array_equal(taskembed.load(d).encode(TEXTS, task="classification"),
                                  tiny.encode(TEXTS, task="classification"))


def test_sharded_save_loads(tiny, tmp_path):
    tiny.save(tmp_path / "sh", max_shard_bytes=200_000)
    assert (tmp_path / "sh" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "sh").glob("model-*.safetensors"))) > 1
    np.testing.assert_array_equal(taskembed.load(tmp_path / "sh").encode(TEXTS, task="separation"),
                                  tiny.encode(TEXTS, task="separation"))


def test_backbone_without_adapters_gets_noop_adapters(tiny, tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path / "m")
    t = load_file(str(d / "model.safetensors"))
    save_file({k: v for k, v in t.items() if "lora_" not in k}, str(d / "model.safetensors"))
    emb = taskembed.load(d)
    with pytest.warns(UserWarning):
        base = emb.encode(TEXTS)
    np.testing.assert_allclose(emb.encode(TEXTS, task="separation"), base, atol=1e-6)


# --- errors ----------------------------------------------------------------------------------------


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="model directory not found"):
        taskembed.load(tmp_path / "nope")


@pytest.mark.parametrize("name, message", [
    ("config.json", "missing config.json"),
    ("model.safetensors", "missing model.safetensors"),
    ("tokenizer.json", "tokenizer file not found"),
])
def test_missing_file(tiny_dir, tmp_path, name, message):
    d = _copy(tiny_dir, tmp_path / "m")
    (d / name).unlink()
    with pytest.raises(CheckpointError, match=message):
        taskembed.load(d)


def test_corrupt_safetensors(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path / "m")
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="corrupt safetensors file|cannot read"):
        taskembed.load(d)
    (d / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError):
        taskembed.load(d)


def test_corrupt_config(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path / "m")
    (d / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        taskembed.load(d)


def test_missing_and_unknown_keys_are_named(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path / "m")
    t = load_file(str(d / "model.safetensors"))
    del t["roberta.encoder.layers.1.mlp.fc2.bias"]
    t["roberta.encoder.layers.9.extra.weight"] = torch.zeros(2)
    save_file(t, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"1 missing keys: encoder\.layers\.1\.mlp\.fc2\.bias.*"
                                              r"1 unknown keys: encoder\.layers\.9\.extra\.weight"):
        taskembed.load(d)


def test_wrong_shape_is_named(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (d / "config.json").write_text(json.dumps(cfg))
    message = r"wrong shape: encoder\.layers\.0\.mlp\.fc1\.weight: expected \(96, 64\), got \(128, 64\)"
    with pytest.raises(CheckpointError, match=message):
        taskembed.load(d)


@pytest.mark.parametrize("change, message", [
    ({"position_embedding_type": "alibi"}, "unsupported architecture"),
    ({"architectures": ["GPT2LMHeadModel"]}, "unsupported architecture"),
    ({"hidden_act": "swish"}, "unsupported hidden_act"),
    ({"num_attention_heads": 5}, "not divisible"),
])
def test_unsupported_config(tiny_dir, tmp_path, change, message):
    d = _copy(tiny_dir, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(change)
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=message):
        taskembed.load(d)


def test_wrong_tokenizer(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path / "m")
    make_tokenizer(vocab_size=2000, texts=[f"word{i} token{i * 7} thing{i * 13}" for i in range(3000)]).save(
        d / "tokenizer.json")
    with pytest.raises(CheckpointError, match="wrong tokenizer: .* tokens but the model's embedding has only"):
        taskembed.load(d)
    (d / "tokenizer.json").write_text("{}")
    with pytest.raises(CheckpointError, match="cannot read tokenizer"):
        taskembed.load(d)


def test_pytorch_bin_only_is_explained(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path / "m")
    (d / "model.safetensors").rename(d / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="reads safetensors"):
        taskembed.load(d)
