"""The default model's build tools: the teacher's exact 4-bit packing, the trip back from a GPU machine
without the frozen vocabulary table, and vocabulary pruning of an HF teacher directory."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file as save_np
from safetensors.torch import load_file

import taskembed
from support.tiny import make_tiny_embedder

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _q4(rng, rows: int, cols: int) -> np.ndarray:
    """Values as Q4_0 dequantises them: per 32-block, fp16 scale d times a code in -8..7, -8 in each block."""
    d = rng.uniform(0.001, 0.1, rows * cols // 32).astype(np.float16).astype(np.float32)
    q = rng.integers(-8, 8, (rows * cols // 32, 32))
    q[:, rng.integers(0, 32)] = -8
    return (q * d[:, None]).astype(np.float32).reshape(rows, cols)


def test_q4_pack_is_exact_and_leaves_other_tensors_alone(tmp_path):
    q4pack = _script("q4pack")
    rng = np.random.default_rng(0)
    w = _q4(rng, 6, 64)
    codes, scales = q4pack.pack_tensor(w)
    assert codes.nbytes + scales.nbytes == w.size // 2 + w.size // 32 * 2
    np.testing.assert_array_equal(q4pack.unpack_tensor(codes, scales, list(w.shape)), w)
    assert q4pack.pack_tensor(rng.normal(size=(4, 64)).astype(np.float32)) is None  # not 16 levels per block
    src = tmp_path / "hf"
    src.mkdir()
    state = {"a.weight": w, "a.bias": rng.normal(size=64).astype(np.float32),
             "pos.weight": rng.normal(size=(8, 64)).astype(np.float32)}
    save_np(state, str(src / "model.safetensors"))
    (src / "config.json").write_text('{"model_type": "bert"}')
    (src / "tokenizer.json").write_text('{"tokenizer": "ü"}', encoding="utf-8")
    q4pack.pack(src, tmp_path / "b.safetensors")
    q4pack.unpack(tmp_path / "b.safetensors", tmp_path / "out")
    back = load_file(str(tmp_path / "out" / "model.safetensors"))
    for k, v in state.items():
        np.testing.assert_array_equal(back[k].numpy(), v)
    assert (tmp_path / "out" / "tokenizer.json").read_text(encoding="utf-8") == '{"tokenizer": "ü"}'


def test_remote_export_and_assemble_round_trip_without_the_table(tmp_path):
    remote = _script("remote_model")
    init = make_tiny_embedder(seed=0)
    init.save(tmp_path / "init")
    trained = make_tiny_embedder(seed=0)
    with torch.no_grad():  # "training": everything but the vocabulary table moves
        for name, p in trained.model.named_parameters():
            if name != "embeddings.word_embeddings.weight":
                p.add_(0.01 * torch.randn_like(p))
    trained.save(tmp_path / "trained")
    remote.SHARD_BYTES = 40_000  # several shards even for a tiny model
    remote.export(tmp_path / "trained", tmp_path / "init", tmp_path / "out", "final")
    shards = sorted((tmp_path / "out").glob("final-*.safetensors"))
    assert len(shards) > 1
    assert all(remote.TABLE not in load_file(str(f)) for f in shards)
    remote.assemble(tmp_path / "out", tmp_path / "init", tmp_path / "back", "final")
    texts = ["a small cat", "the model reads text"]
    want = taskembed.load(tmp_path / "trained").encode(texts, task="retrieval.query")
    got = taskembed.load(tmp_path / "back").encode(texts, task="retrieval.query")
    np.testing.assert_allclose(got, want, atol=2e-3)  # fp16 shards
    # A changed table cannot be left behind, and a different local table is refused.
    with torch.no_grad():
        trained.model.embeddings.word_embeddings.weight[5] += 1
    trained.save(tmp_path / "trained2")
    with pytest.raises(SystemExit, match="changed"):
        remote.export(tmp_path / "trained2", tmp_path / "init", tmp_path / "out2", "final")
    other = make_tiny_embedder(seed=1)
    other.save(tmp_path / "other")
    with pytest.raises(SystemExit, match="not the one"):
        remote.assemble(tmp_path / "out", tmp_path / "other", tmp_path / "back2", "final")


def test_pruning_an_hf_teacher_dir_matches_pruning_the_student(tmp_path):
    from collections import Counter

    from taskembed.tokenizer import Tokenizer
    from taskembed_train import vocab

    emb = make_tiny_embedder(seed=0)
    tok_json = emb.tokenizer.backend.to_str()
    counts = vocab.count_pieces(emb.tokenizer, ["the cat sat on the mat"])
    n_single = len(vocab.choose_pieces(tok_json, Counter(), max_pieces=10**9))
    keep = vocab.choose_pieces(tok_json, counts, max_pieces=n_single + 5)
    src = tmp_path / "hf"
    src.mkdir()
    table = emb.model.embeddings.word_embeddings.weight.detach().clone()
    from safetensors.torch import save_file

    save_file({"embeddings.word_embeddings.weight": table, "x.bias": torch.ones(3)}, str(src / "model.safetensors"))
    (src / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": table.shape[0]}))
    (src / "tokenizer.json").write_text(tok_json, encoding="utf-8")
    vocab.prune_hf_dir(src, tmp_path / "pruned", keep, vocab.prune_tokenizer_json(tok_json, keep))
    out = load_file(str(tmp_path / "pruned" / "model.safetensors"))
    torch.testing.assert_close(out["embeddings.word_embeddings.weight"], table[keep])
    assert json.loads((tmp_path / "pruned" / "config.json").read_text())["vocab_size"] == len(keep)
    new_tok = Tokenizer.from_file(tmp_path / "pruned" / "tokenizer.json")
    assert new_tok.backend.get_vocab_size() == len(keep)
    # --keep-from reproduces the same selection from a pruned tokenizer.json
    kept = str(tmp_path / "pruned" / "tokenizer.json")
    assert vocab.main([str(src), str(tmp_path / "again"), "--keep-from", kept]) == 0
    again = load_file(str(tmp_path / "again" / "model.safetensors"))
    torch.testing.assert_close(again["embeddings.word_embeddings.weight"], table[keep])
