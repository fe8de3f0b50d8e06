"""The official format both ways: what we save is what the official loader reads, and what the official
repository ships (tokenizer config, special tokens map) is read the way the Hugging Face loader reads it.

The official code itself is not imported here (scripts/check_official_load.py does that, from a path the
user gives); the Hugging Face tokenizer loader (transformers, a dev dependency) is the reference for
tokenisation.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import taskembed
from taskembed.tokenizer import Tokenizer

FIXTURE = Path(__file__).parent / "fixtures" / "official_tiny"
MASK_TEXTS = [
    "Paris is the <mask> of France.",
    "a  <mask>",
    "<mask> at the start, <mask><mask> twice, one at the end <mask>",
    "Ça va? <mask> 素早い狐",
    "no mask here",
]
# The keys the official XLMRobertaFlashConfig / XLMRobertaLoRA read, with the value a checkpoint that
# carries trained adapters needs.
OFFICIAL_NEEDS = {"load_trained_adapters": True, "position_embedding_type": "rotary", "model_type": "xlm-roberta"}


def _read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _encode(emb, texts, **kw) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return emb.encode(texts, **kw)


def _with_mask_lstrip(src: Path, dst: Path, lstrip: bool, tokenizer_config: bool) -> Path:
    """A copy of `src` whose tokenizer.json says `lstrip` for <mask>, with or without tokenizer_config.json."""
    shutil.copytree(src, dst)
    tok = _read(dst / "tokenizer.json")
    for entry in tok["added_tokens"]:
        if entry["content"] == "<mask>":
            entry["lstrip"] = lstrip
    (dst / "tokenizer.json").write_text(json.dumps(tok), encoding="utf-8")
    if not tokenizer_config:
        (dst / "tokenizer_config.json").unlink(missing_ok=True)
        (dst / "special_tokens_map.json").unlink(missing_ok=True)
    return dst


# --- save(): the keys and files the official loader needs ----------------------------------------


def test_saved_config_has_the_keys_the_official_loader_needs(tiny_dir):
    cfg = _read(tiny_dir / "config.json")
    for key, value in OFFICIAL_NEEDS.items():
        assert cfg[key] == value, key
    assert cfg["auto_map"]["AutoModel"].endswith("modeling_lora.XLMRobertaLoRA")
    # read with getattr(config, key, default) by the official code: never written as null
    assert "rotary_emb_dim" not in cfg and "rotary_emb_scale_base" not in cfg


def test_saved_tokenizer_files_are_shaped_as_the_official_ones(tiny_dir):
    tc = _read(tiny_dir / "tokenizer_config.json")
    stm = _read(tiny_dir / "special_tokens_map.json")
    tok = _read(tiny_dir / "tokenizer.json")
    mask_id = next(e["id"] for e in tok["added_tokens"] if e["content"] == "<mask>")
    assert tc["model_max_length"] == 8194
    assert tc["tokenizer_class"] == "XLMRobertaTokenizer"
    assert tc["added_tokens_decoder"][str(mask_id)]["lstrip"] is True
    assert tc["added_tokens_decoder"]["0"] == {"content": "<s>", "lstrip": False, "rstrip": False,
                                               "normalized": False, "single_word": False, "special": True}
    assert {tc[k] for k in ("bos_token", "cls_token")} == {"<s>"} and tc["pad_token"] == "<pad>"
    assert stm["mask_token"] == {"content": "<mask>", "lstrip": True, "rstrip": False, "normalized": False,
                                 "single_word": False}
    assert set(stm) == {"bos_token", "cls_token", "eos_token", "mask_token", "pad_token", "sep_token", "unk_token"}
    # tokenizer.json agrees with the config: both are read by the Hugging Face loader
    assert next(e for e in tok["added_tokens"] if e["content"] == "<mask>")["lstrip"] is True


def test_bundled_model_ships_the_official_files():
    d = taskembed.default_model_dir()
    assert _read(d / "config.json")["load_trained_adapters"] is True
    tc = _read(d / "tokenizer_config.json")
    assert tc["model_max_length"] == 512  # one pass of its position table, as multilingual-e5-small's own
    assert _read(d / "special_tokens_map.json")["mask_token"]["lstrip"] is True


# --- load(): tokenisation as the Hugging Face loader does it --------------------------------------


@pytest.mark.parametrize("variant", ["official-fixture", "saved-by-us", "json-lstrip-false-no-config",
                                     "json-lstrip-false-with-config"])
def test_mask_texts_tokenise_as_the_hugging_face_loader(variant, tiny_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    src = {"official-fixture": FIXTURE, "saved-by-us": tiny_dir}.get(variant)
    if src is None:
        src = _with_mask_lstrip(FIXTURE, tmp_path / "m", False, tokenizer_config=variant.endswith("with-config"))
    hf = transformers.AutoTokenizer.from_pretrained(str(src))
    ours = Tokenizer.from_dir(src)
    for text in MASK_TEXTS:
        assert ours.encode([text], 8194).ids[0] == hf(text)["input_ids"], text


def test_the_mask_flag_changes_tokenisation():
    """Guard on the test above: with lstrip off, "a <mask>" keeps a separate piece for the space."""
    raw = Tokenizer.from_file(FIXTURE / "tokenizer.json")
    json_off = json.loads(raw.backend.to_str())
    for e in json_off["added_tokens"]:
        if e["content"] == "<mask>":
            e["lstrip"] = False
    from tokenizers import Tokenizer as HFTokenizer

    off = HFTokenizer.from_str(json.dumps(json_off))
    on = Tokenizer.from_dir(FIXTURE).backend
    assert len(off.encode("a  <mask>").ids) == len(on.encode("a  <mask>").ids) + 1


def test_tokenizer_config_flags_win_over_tokenizer_json(tmp_path):
    d = _with_mask_lstrip(FIXTURE, tmp_path / "m", True, tokenizer_config=True)
    tc = _read(d / "tokenizer_config.json")
    mask = next(k for k, v in tc["added_tokens_decoder"].items() if v["content"] == "<mask>")
    tc["added_tokens_decoder"][mask]["lstrip"] = False  # what transformers 4.x then applies
    (d / "tokenizer_config.json").write_text(json.dumps(tc))
    tok = Tokenizer.from_dir(d)
    assert tok.backend.get_added_tokens_decoder()[int(mask)].lstrip is False


def test_bad_tokenizer_config_is_a_clear_error(tmp_path):
    d = shutil.copytree(FIXTURE, tmp_path / "m")
    (d / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(taskembed.CheckpointError, match="tokenizer_config.json is not valid JSON"):
        taskembed.load(d)


# --- load(): truncation at the tokenizer's model_max_length ---------------------------------------


@pytest.fixture(scope="module")
def official():
    return taskembed.load(FIXTURE)


def _text_of_tokens(emb, n: int) -> str:
    words, text = [], ""
    while emb.count_tokens([text])[0] < n:
        words.extend(["Der", "schnelle", "braune", "Fuchs", "springt", "über", "den", "faulen", "Hund."])
        text = " ".join(words)
    return text


def test_default_truncation_is_the_tokenizer_model_max_length(official):
    assert official.tokenizer.model_max_length == 8194
    assert official.default_max_length == 8194
    text = _text_of_tokens(official, 8300)
    default = _encode(official, [text], task="text-matching")
    np.testing.assert_array_equal(default, _encode(official, [text], task="text-matching", max_length=8194))
    # the two extra tokens are seen: cutting at 8192 gives another vector
    assert np.abs(default - _encode(official, [text], task="text-matching", max_length=8192)).max() > 1e-7


@pytest.mark.parametrize("model_max_length,want", [(None, 8192), (10**30, 8192), (100, 100), (9000, 8194)])
def test_default_truncation_without_or_with_odd_model_max_length(tmp_path, model_max_length, want):
    d = shutil.copytree(FIXTURE, tmp_path / "m")
    tc = _read(d / "tokenizer_config.json")
    if model_max_length is None:
        del tc["model_max_length"]
    else:
        tc["model_max_length"] = model_max_length
    (d / "tokenizer_config.json").write_text(json.dumps(tc))
    # 8192 when the tokenizer sets no limit (as the official encode); never past max_position_embeddings
    assert taskembed.load(d).default_max_length == want


# --- the round trip: official files -> our load -> our save -> the same files ---------------------


def test_official_fixture_round_trips_through_load_and_save(official, tmp_path):
    out = tmp_path / "saved"
    official.save(out)
    a = load_file(str(FIXTURE / "model.safetensors"))
    b = load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k

    orig, saved = _read(FIXTURE / "config.json"), _read(out / "config.json")
    changed = {k: (v, saved.get(k, "<missing>")) for k, v in orig.items() if saved.get(k, "<missing>") != v}
    assert not changed, changed
    for key, value in OFFICIAL_NEEDS.items():
        assert saved[key] == value

    orig_tc, saved_tc = _read(FIXTURE / "tokenizer_config.json"), _read(out / "tokenizer_config.json")
    assert {k: v for k, v in saved_tc.items() if k in orig_tc} == orig_tc

    def flags(entry):  # special_tokens_map: a bare string means the default flags
        d = {"content": entry} if isinstance(entry, str) else dict(entry)
        return {"lstrip": False, "rstrip": False, "normalized": False, "single_word": False, **d}

    orig_stm, saved_stm = _read(FIXTURE / "special_tokens_map.json"), _read(out / "special_tokens_map.json")
    assert {k: flags(v) for k, v in orig_stm.items()} == {k: flags(v) for k, v in saved_stm.items()}

    orig_tok, saved_tok = _read(FIXTURE / "tokenizer.json"), _read(out / "tokenizer.json")
    for key in ("added_tokens", "normalizer", "pre_tokenizer", "post_processor", "decoder", "model"):
        assert orig_tok[key] == saved_tok[key], key

    again = taskembed.load(out)
    texts = [*MASK_TEXTS, "Der schnelle braune Fuchs"]
    np.testing.assert_array_equal(_encode(again, texts, task="retrieval.query"),
                                  _encode(official, texts, task="retrieval.query"))
