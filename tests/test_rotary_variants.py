"""Partial rotary (`rotary_emb_dim`) and GPT-J interleaved rotary (`rotary_emb_interleaved`).

Checked against a naive reference written here: a 2x2 rotation per (pair, position) with angles from
float64 math, then softmax attention by hand. Config values we cannot honour must be refused.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import taskembed
from support.tiny import tiny_config
from taskembed import ConfigError, EncoderConfig
from taskembed.encoder import Encoder, Packed, Rotary

BASE = 10000.0
# (rotary_dim, interleaved) for a head dim of 16; None = the whole head.
VARIANTS = [(None, False), (None, True), (8, False), (8, True), (2, True), (0, False)]


def naive_rotate(x: torch.Tensor, rotary_dim: int, interleaved: bool, base: float = BASE) -> torch.Tensor:
    """x (L, D) at positions 0..L-1. Pair i of the first rotary_dim dims turns by p * base^(-2i/rotary_dim).

    NeoX pairs dim i with dim i + rotary_dim/2; GPT-J pairs dims 2i and 2i+1. The rest is unchanged.
    """
    x = x.detach()
    out = x.double().clone()
    half = rotary_dim // 2
    for p in range(x.shape[0]):
        for i in range(half):
            a, b = (2 * i, 2 * i + 1) if interleaved else (i, i + half)
            angle = p * base ** (-2.0 * i / rotary_dim)
            c, s = math.cos(angle), math.sin(angle)
            xa, xb = float(x[p, a]), float(x[p, b])
            out[p, a] = xa * c - xb * s
            out[p, b] = xb * c + xa * s
    return out


def _ids(variants):
    return [f"dim{d}-{'interleaved' if i else 'neox'}" for d, i in variants]


@pytest.mark.parametrize("rotary_dim,interleaved", VARIANTS, ids=_ids(VARIANTS))
def test_rotary_matches_naive_rotation(rotary_dim, interleaved):
    head_dim, length = 16, 24
    rot = Rotary(head_dim, BASE, rotary_dim, interleaved)
    x = torch.randn(2, 3, length, head_dim, generator=torch.Generator().manual_seed(0))
    got = rot(x)
    dim = head_dim if rotary_dim is None else rotary_dim
    for b in range(2):
        for h in range(3):
            want = naive_rotate(x[b, h], dim, interleaved)
            torch.testing.assert_close(got[b, h].double(), want, atol=1e-5, rtol=0)
    if dim < head_dim:  # the dims past rotary_dim pass through bit for bit
        assert torch.equal(got[..., dim:], x[..., dim:])


@pytest.mark.parametrize("rotary_dim,interleaved", VARIANTS, ids=_ids(VARIANTS))
def test_rotary_packed_positions_restart_per_sequence(rotary_dim, interleaved):
    head_dim, seqlens = 16, [5, 9, 1]
    rot = Rotary(head_dim, BASE, rotary_dim, interleaved)
    packed = Packed.build(seqlens, [0, 0, 0], torch.device("cpu"))
    x = torch.randn(sum(seqlens), 2, head_dim, generator=torch.Generator().manual_seed(1))
    got = rot(x, packed)
    dim = head_dim if rotary_dim is None else rotary_dim
    start = 0
    for n in seqlens:
        for h in range(2):
            want = naive_rotate(x[start:start + n, h], dim, interleaved)
            torch.testing.assert_close(got[start:start + n, h].double(), want, atol=1e-5, rtol=0)
        start += n


def naive_attention(attn, x: torch.Tensor, mask: torch.Tensor, rotary_dim: int, interleaved: bool, base: float):
    """One attention layer (base weights) by hand: x (B, L, H), mask (B, L) of 0/1."""
    heads, hd = attn.num_heads, attn.head_dim
    w, bias = attn.Wqkv.weight.double(), attn.Wqkv.bias.double()
    out = torch.zeros(x.shape[0], x.shape[1], heads * hd, dtype=torch.float64)
    for b in range(x.shape[0]):
        n = int(mask[b].sum())
        qkv = (x[b, :n].double() @ w.T + bias).view(n, 3, heads, hd)
        for h in range(heads):
            q = naive_rotate(qkv[:, 0, h], rotary_dim, interleaved, base)
            k = naive_rotate(qkv[:, 1, h], rotary_dim, interleaved, base)
            p = torch.softmax(q @ k.T / math.sqrt(hd), dim=-1)
            out[b, :n, h * hd:(h + 1) * hd] = p @ qkv[:, 2, h]
    return out @ attn.out_proj.weight.double().T + attn.out_proj.bias.double()


@pytest.mark.parametrize("rotary_dim,interleaved", VARIANTS, ids=_ids(VARIANTS))
def test_attention_layer_matches_naive(rotary_dim, interleaved):
    torch.manual_seed(0)
    cfg = tiny_config(50, rotary_emb_dim=rotary_dim, rotary_emb_interleaved=interleaved, rotary_emb_base=BASE)
    model = Encoder(cfg).eval()
    attn = model.encoder.layers[0].mixer
    dim = cfg.head_dim if rotary_dim is None else rotary_dim
    lengths = [11, 7]
    x = torch.randn(2, 11, cfg.hidden_size)
    mask = torch.tensor([[1] * n + [0] * (11 - n) for n in lengths])
    want = naive_attention(attn, x, mask, dim, interleaved, BASE)
    with torch.no_grad():
        padded = attn(x, mask.bool()[:, None, None, :], None)
        flat = torch.cat([x[b, :n] for b, n in enumerate(lengths)])
        packed = attn(flat, Packed.build(lengths, [-1, -1], torch.device("cpu")), [])
    start = 0
    for b, n in enumerate(lengths):
        torch.testing.assert_close(padded[b, :n].double(), want[b, :n], atol=1e-5, rtol=0)
        torch.testing.assert_close(packed[start:start + n].double(), want[b, :n], atol=1e-5, rtol=0)
        start += n


def test_interleaved_model_is_neox_model_with_permuted_qk():
    """Interleaved rotary on Q/K rows (2i, 2i+1) equals NeoX rotary on rows (i, i+R/2): permuting the Q and
    K rows of each head that way (an exact reparametrisation of q.k) maps one model onto the other."""
    torch.manual_seed(0)
    cfg = tiny_config(50, rotary_emb_interleaved=True)
    inter = Encoder(cfg).eval()
    neox = Encoder(tiny_config(50)).eval()
    neox.load_state_dict(inter.state_dict())
    hd, heads, hidden = cfg.head_dim, cfg.num_attention_heads, cfg.hidden_size
    # NeoX slot j takes interleaved row order[j]: slots 0..hd/2-1 the even rows, the rest the odd rows.
    order = torch.cat((torch.arange(0, hd, 2), torch.arange(1, hd, 2)))
    rows = torch.arange(3 * hidden)
    for block in range(2):  # Q and K blocks; V keeps its order
        for h in range(heads):
            start = block * hidden + h * hd
            rows[start:start + hd] = start + order
    with torch.no_grad():
        for layer in neox.encoder.layers:
            wqkv = layer.mixer.Wqkv
            wqkv.weight.copy_(wqkv.weight[rows])
            wqkv.bias.copy_(wqkv.bias[rows])
            wqkv.lora_B.copy_(wqkv.lora_B[:, rows])
    ids = torch.randint(4, 50, (2, 13))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    with torch.no_grad():
        a = inter(ids, mask, torch.tensor([0, 2]))
        b = neox(ids, mask, torch.tensor([0, 2]))
    torch.testing.assert_close(a[mask.bool()], b[mask.bool()], atol=1e-5, rtol=0)
    # and the variant matters: the unpermuted NeoX model disagrees
    plain = Encoder(tiny_config(50)).eval()
    plain.load_state_dict(inter.state_dict())
    with torch.no_grad():
        c = plain(ids, mask, torch.tensor([0, 2]))
    assert (a[mask.bool()] - c[mask.bool()]).abs().max() > 1e-2


def test_rotary_config_round_trips_and_defaults_stay_out():
    cfg = tiny_config(50, rotary_emb_dim=8, rotary_emb_interleaved=True)
    d = cfg.to_dict()
    assert d["rotary_emb_dim"] == 8 and d["rotary_emb_interleaved"] is True
    again = EncoderConfig.from_dict(d)
    assert again.rotary_dim == 8 and again.rotary_emb_interleaved
    plain = tiny_config(50).to_dict()
    # The official code reads both with getattr defaults; a null rotary_emb_dim would break it.
    assert "rotary_emb_dim" not in plain and "rotary_emb_interleaved" not in plain
    # the official default is hidden_size / num_heads, a float
    assert EncoderConfig.from_dict({**plain, "rotary_emb_dim": 16.0}).rotary_dim == 16


@pytest.mark.parametrize("key,value,match", [
    ("rotary_emb_dim", 5, "even"),
    ("rotary_emb_dim", 18, "head_dim=16"),
    ("rotary_emb_dim", -2, "even and within"),
    ("rotary_emb_dim", 7.5, "whole number"),
    ("rotary_emb_dim", "16", "whole number"),
    ("rotary_emb_interleaved", "yes", "true or false"),
    ("rotary_emb_scale_base", 512, "xPos"),
    ("pad_vocab_size_multiple", 0, "positive int"),
])
def test_unsupported_rotary_values_are_refused(key, value, match):
    with pytest.raises(ConfigError, match=match):
        EncoderConfig.from_dict({**tiny_config(50).to_dict(), key: value})


def test_pad_vocab_size_multiple_rounds_up_like_the_official_model():
    cfg = EncoderConfig.from_dict({**tiny_config(50).to_dict(), "pad_vocab_size_multiple": 8})
    assert cfg.vocab_size == 56
    assert EncoderConfig.from_dict({**tiny_config(56).to_dict(), "pad_vocab_size_multiple": 8}).vocab_size == 56


# Every key the official configuration class takes or its modelling code reads with getattr (read from
# configuration_xlm_roberta.py, modeling_xlm_roberta.py, modeling_lora.py), and where it goes here.
OFFICIAL_CONFIG_KEYS = {
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
    "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings", "type_vocab_size",
    "initializer_range", "layer_norm_eps", "pad_token_id", "bos_token_id", "eos_token_id",
    "position_embedding_type", "rotary_emb_base", "use_cache", "use_reentrant", "classifier_dropout",
    "lora_adaptations", "task_instructions", "lora_rank", "lora_dropout_p", "lora_alpha",
    "lora_main_params_trainable", "load_trained_adapters", "use_flash_attn", "torch_dtype", "emb_pooler",
    "matryoshka_dimensions", "truncate_dim",
    # read through getattr
    "rotary_emb_dim", "rotary_emb_scale_base", "rotary_emb_interleaved", "fused_bias_fc", "fused_mlp",
    "fused_dropout_add_ln", "mlp_checkpoint_lvl", "last_layer_subset", "pad_vocab_size_multiple",
}
# Handled outside the dataclass fields: refused when set, honoured in from_dict, or written by save().
HANDLED_ELSEWHERE = {"rotary_emb_scale_base", "pad_vocab_size_multiple", "torch_dtype", "load_trained_adapters"}


def test_every_official_config_key_is_modelled_or_known_not_to_matter():
    import dataclasses

    from taskembed.config import KERNEL_ONLY_KEYS

    fields = {f.name for f in dataclasses.fields(EncoderConfig)}
    unaccounted = OFFICIAL_CONFIG_KEYS - fields - set(KERNEL_ONLY_KEYS) - HANDLED_ELSEWHERE
    assert not unaccounted, unaccounted


@pytest.mark.parametrize("key,value,match", [
    ("position_embedding_type", "alibi", "position_embedding_type"),
    ("hidden_act", "gelu_fast", "unsupported hidden_act"),
    ("emb_pooler", "max", "unsupported emb_pooler"),
])
def test_other_official_values_we_cannot_run_are_refused(key, value, match):
    with pytest.raises(ConfigError, match=match):
        EncoderConfig.from_dict({**tiny_config(50).to_dict(), key: value})


OFFICIAL_ROTARY = Path(__file__).parent / "fixtures" / "official_rotary"
OFFICIAL_NEOX = Path(__file__).parent / "fixtures" / "official_tiny"


def test_matches_the_official_code_on_partial_interleaved_rotary():
    """tests/fixtures/official_rotary: the official code's outputs for rotary_emb_dim 8 of 16, interleaved
    (same weights as official_tiny, which rotates whole heads in NeoX halves)."""
    meta = json.loads((OFFICIAL_ROTARY / "expected.json").read_text(encoding="utf-8"))
    assert meta["rotary"] == {"rotary_emb_interleaved": True, "rotary_emb_dim": 8}
    emb = taskembed.load(OFFICIAL_ROTARY)
    assert emb.config.rotary_dim == 8 and emb.config.rotary_emb_interleaved
    from official import official_diffs

    with np.load(OFFICIAL_ROTARY / "expected.npz") as want, np.load(OFFICIAL_NEOX / "expected.npz") as neox:
        for key in want.files:
            if "|" in key:
                assert np.abs(want[key] - neox[key]).max() > 1e-2, key  # the rotary variant shows
    encode, forward = official_diffs(emb, OFFICIAL_ROTARY)
    assert encode <= 1e-5 and forward <= 1e-5, (encode, forward)
