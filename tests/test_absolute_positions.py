"""Learned absolute positions (XLM-R / BERT checkpoints) and the windows that read texts past the table.

The reference is Hugging Face transformers' own XLMRobertaModel / BertModel, an implementation written
independently of ours; adapters are folded into its weights by hand here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import taskembed
from support.tiny import make_tiny_embedder
from taskembed.embedder import windows
from taskembed.encoder import position_ids

transformers = pytest.importorskip("transformers")

MAX_POS = 66  # 64 tokens per pass: pad_token_id 1, positions from 2
TEXTS = ["Hello", "The quick brown fox jumps over the lazy dog.", "Ein kurzer deutscher Satz über Hunde.",
         "What is the capital of France and how many people live there?"]


@pytest.fixture(scope="module")
def absolute():
    emb = make_tiny_embedder(seed=3, position_embedding_type="absolute", max_position_embeddings=MAX_POS)
    with torch.no_grad():  # the position LoRA is never applied, by the official code nor by us
        emb.model.embeddings.position_embeddings.lora_A.normal_()
    return emb


def hf_reference(emb: taskembed.Embedder, task: int | None):
    """transformers' XLMRobertaModel with our weights, adapter `task` folded in (positions: base only)."""
    cfg = emb.config
    hf_cfg = transformers.XLMRobertaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings, type_vocab_size=cfg.type_vocab_size,
        layer_norm_eps=cfg.layer_norm_eps, pad_token_id=cfg.pad_token_id, hidden_act="gelu",
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    ref = transformers.XLMRobertaModel(hf_cfg, add_pooling_layer=False).eval()
    m = emb.model

    def w(module):
        return module.weight + (module.delta_weight(task) if task is not None else 0)

    h = cfg.hidden_size
    state = {
        "embeddings.word_embeddings.weight": w(m.embeddings.word_embeddings),
        "embeddings.position_embeddings.weight": m.embeddings.position_embeddings.weight,
        "embeddings.token_type_embeddings.weight": w(m.embeddings.token_type_embeddings),
        "embeddings.LayerNorm.weight": m.emb_ln.weight, "embeddings.LayerNorm.bias": m.emb_ln.bias,
    }
    for i, block in enumerate(m.encoder.layers):
        p = f"encoder.layer.{i}."
        qkv, qkv_b = w(block.mixer.Wqkv), block.mixer.Wqkv.bias
        for j, name in enumerate(("query", "key", "value")):
            state[p + f"attention.self.{name}.weight"] = qkv[j * h : (j + 1) * h]
            state[p + f"attention.self.{name}.bias"] = qkv_b[j * h : (j + 1) * h]
        for ours, theirs in ((block.mixer.out_proj, "attention.output.dense"), (block.mlp.fc1, "intermediate.dense"),
                             (block.mlp.fc2, "output.dense")):
            state[p + theirs + ".weight"], state[p + theirs + ".bias"] = w(ours), ours.bias
        for ours, theirs in ((block.norm1, "attention.output.LayerNorm"), (block.norm2, "output.LayerNorm")):
            state[p + theirs + ".weight"], state[p + theirs + ".bias"] = ours.weight, ours.bias
    missing, unexpected = ref.load_state_dict({k: v.detach() for k, v in state.items()}, strict=False)
    assert not unexpected and all("position_ids" in k or "token_type_ids" in k for k in missing), missing
    return ref


def ref_encode(emb: taskembed.Embedder, texts: list[str], task: str | None) -> np.ndarray:
    index = None if task is None else emb.tasks.index(task)
    prefixed, _ = emb.prepare(texts, task)
    ids = emb.tokenizer.encode(prefixed, max_length=10_000).ids
    n = max(map(len, ids))
    input_ids = torch.full((len(ids), n), emb.config.pad_token_id)
    mask = torch.zeros((len(ids), n), dtype=torch.long)
    for r, x in enumerate(ids):
        input_ids[r, : len(x)], mask[r, : len(x)] = torch.tensor(x), 1
    with torch.no_grad():
        hidden = hf_reference(emb, index)(input_ids=input_ids, attention_mask=mask).last_hidden_state
    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


@pytest.mark.parametrize("task", [None, "retrieval.query", "classification"])
@pytest.mark.parametrize("packed", [True, False])
def test_matches_transformers_xlm_roberta(absolute, task, packed):
    absolute.packed = packed
    absolute.clear_merged()
    try:
        ours = absolute.encode(TEXTS, task=task)
    finally:
        absolute.packed = True
    np.testing.assert_allclose(ours, ref_encode(absolute, TEXTS, task), atol=1e-5)


def test_mixed_tasks_route_per_row(absolute):
    tasks = ["retrieval.query", "text-matching", None, "separation"]
    ours = absolute.encode(TEXTS, task=tasks)
    for i, t in enumerate(tasks):
        np.testing.assert_allclose(ours[i], ref_encode(absolute, [TEXTS[i]], t)[0], atol=1e-5)


def test_position_ids_match_the_official_rule():
    pad = 1
    ids = torch.tensor([[0, 5, 6, 2, 1, 1], [0, 7, 2, 1, 1, 1]])
    assert position_ids(ids, pad).tolist() == [[2, 3, 4, 5, 1, 1], [2, 3, 4, 1, 1, 1]]
    flat = torch.tensor([0, 5, 6, 2, 0, 7, 2])
    assert position_ids(flat, pad, [4, 3]).tolist() == [2, 3, 4, 5, 2, 3, 4]


def test_save_load_round_trip(absolute, tmp_path):
    absolute.save(tmp_path)
    again = taskembed.load(tmp_path)
    assert again.config.position_embedding_type == "absolute"
    np.testing.assert_array_equal(again.encode(TEXTS, task="separation"), absolute.encode(TEXTS, task="separation"))


def test_too_long_for_the_table_is_a_clear_error(absolute):
    ids = torch.full((1, MAX_POS), 5)
    with pytest.raises(ValueError, match="longer than the learned position table"):
        absolute.model(ids)


# --- windows --------------------------------------------------------------------------------------


@pytest.mark.parametrize("length, size, head, overlap", [(100, 20, 0, 0), (100, 20, 3, 5), (21, 20, 2, 4),
                                                         (500, 38, 4, 10)])
def test_windows_cover_the_text(length, size, head, overlap):
    ids = [0] + list(range(10, 10 + head)) + list(range(1000, 1000 + length)) + [2]
    parts = windows(ids, size, head, overlap)
    body = ids[1 + head : -1]
    seen = []
    for p in parts:
        assert len(p) <= size and p[0] == 0 and p[-1] == 2 and p[1 : 1 + head] == ids[1 : 1 + head]
        seen.append(p[1 + head : -1])
    assert sorted({t for s in seen for t in s}) == body  # every token read
    starts = [body.index(s[0]) for s in seen]
    for a, b, s in zip(starts, starts[1:], seen, strict=False):
        assert a + len(s) - b >= overlap  # consecutive chunks share at least `overlap` tokens
    assert seen[-1][-1] == body[-1]


def test_short_text_is_one_window():
    ids = [0, 5, 6, 2]
    assert windows(ids, 10, 1, 2) == [ids]


def test_bad_window_settings_are_refused():
    with pytest.raises(ValueError, match="leave no room"):
        windows([0] + [5] * 50 + [2], 8, 6, 0)
    with pytest.raises(ValueError, match="leave no room"):
        windows([0] + [5] * 50 + [2], 20, 0, 18)


def long_text(n_words: int) -> str:
    words = "alpha beta gamma delta Hund Katze Maus Haus Baum quick brown fox".split()
    return " ".join(words[(i * 7) % len(words)] for i in range(n_words))


@pytest.mark.parametrize("pooling", ["mean", "tokens", "first+mean"])
@pytest.mark.parametrize("task", [None, "retrieval.passage"])
def test_long_text_is_the_pooled_windows(absolute, pooling, task):
    absolute.window_pooling, absolute.window_overlap = pooling, 6
    text = long_text(200)
    try:
        got = absolute.encode([TEXTS[0], text], task=task)
        index = -1 if task is None else absolute.tasks.index(task)
        prefixed, _ = absolute.prepare([text], task)
        ids = absolute.tokenizer.encode(prefixed, max_length=10_000).ids[0]
        assert len(ids) > 2 * absolute.config.max_tokens
        head = len(absolute.tokenizer.backend.encode(prefixed[0][: len(prefixed[0]) - len(text)].rstrip(),
                                                     add_special_tokens=False).ids)
        assert ids[1 : 1 + head] == absolute.tokenizer.backend.encode(
            absolute.config.task_instructions.get(task or "", "").rstrip(), add_special_tokens=False).ids
        parts = windows(ids, absolute.config.max_tokens, head, 6)
        with torch.no_grad():
            vecs = [absolute.model(torch.tensor([p]), None, torch.tensor([index]))[0].mean(0) for p in parts]
        weights = [len(p) - 2 - head if pooling == "tokens" else 1 for p in parts]
        expected = sum(w * v for w, v in zip(weights, vecs, strict=True)) / sum(weights)
        if pooling == "first+mean":
            expected = vecs[0] / vecs[0].norm() + expected / expected.norm()
        expected = torch.nn.functional.normalize(expected, dim=0).numpy()
        np.testing.assert_allclose(got[1], expected, atol=1e-5)
        np.testing.assert_allclose(got[0], absolute.encode([TEXTS[0]], task=task)[0], atol=1e-6)
        raw = absolute.encode([TEXTS[0], text], task=task, normalize=False)
        alone = absolute.encode([TEXTS[0]], task=task, normalize=False)  # no window in this call
        np.testing.assert_allclose(raw[0], alone[0], rtol=1e-5, atol=1e-6)
    finally:
        absolute.window_pooling, absolute.window_overlap = "mean", 0


def test_max_length_still_caps_tokens_read(absolute):
    text = long_text(200)
    cut = absolute.encode([text], task="separation", max_length=30)  # fits one pass: no windows
    prefixed, _ = absolute.prepare([text], "separation")
    ids = absolute.tokenizer.encode(prefixed, max_length=30).ids[0]
    with torch.no_grad():
        v = absolute.model(torch.tensor([ids]), None, torch.tensor([absolute.tasks.index("separation")]))[0].mean(0)
    np.testing.assert_allclose(cut[0], torch.nn.functional.normalize(v, dim=0).numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="truncation is off"):
        absolute.encode([text], task="separation", max_length=100, truncate=False)


def test_bert_checkpoint_converts_exactly(tmp_path):
    """A BERT table (positions from 0) gets pad_token_id + 1 leading rows; outputs equal BertModel's."""
    from safetensors.torch import save_file

    from support.tiny import make_tokenizer
    from taskembed.convert import convert

    tok = make_tokenizer()
    torch.manual_seed(5)
    cfg = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64, max_position_embeddings=48,
                                  type_vocab_size=2, pad_token_id=tok.pad_id)
    bert = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    src = tmp_path / "bert"
    src.mkdir()
    cfg.to_json_file(src / "config.json")
    save_file({k: v.contiguous() for k, v in bert.state_dict().items() if "position_ids" not in k},
              str(src / "model.safetensors"))
    tok.save(src / "tokenizer.json")
    emb = taskembed.load(convert(src, tmp_path / "ours", positions="absolute"))
    assert emb.config.max_tokens == 48
    ids = tok.encode(TEXTS, max_length=48).ids
    ours = emb.encode(TEXTS)
    for text_ids, vec in zip(ids, ours, strict=True):
        with torch.no_grad():
            h = bert(input_ids=torch.tensor([text_ids])).last_hidden_state[0].mean(0)
        np.testing.assert_allclose(vec, torch.nn.functional.normalize(h, dim=0).numpy(), atol=1e-5)


def test_late_chunking_windows_a_document_past_the_table(absolute):
    """A document longer than the table is read in windows that fit it (the position table would refuse a
    longer pass), with the same result as naming that window explicitly."""
    from taskembed.late_chunking import late_chunk

    chunks = [long_text(30), long_text(200), long_text(25)]
    vecs = late_chunk(absolute, chunks, task="separation")
    assert vecs.shape == (3, absolute.config.hidden_size) and np.isfinite(vecs).all()
    explicit = late_chunk(absolute, chunks, task="separation", window=absolute.config.max_tokens)
    np.testing.assert_array_equal(vecs, explicit)
    with pytest.raises(ValueError, match="longest pass"):
        late_chunk(absolute, chunks, task="separation", window=absolute.config.max_tokens + 1)


def test_server_reads_long_texts_in_windows_like_encode(absolute):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from taskembed.serve import ServerSettings, create_app

    absolute.window_overlap = 6
    texts = [long_text(200), TEXTS[1]]
    try:
        with TestClient(create_app(absolute, ServerSettings(model_names=["tiny"]))) as c:
            r = c.post("/v1/embeddings", json={"input": texts, "task": "retrieval.passage"})
            assert r.status_code == 200, r.text
            got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
            assert r.json()["usage"]["total_tokens"] == sum(absolute.count_tokens(texts, "retrieval.passage"))
        np.testing.assert_allclose(got, absolute.encode(texts, task="retrieval.passage"), atol=1e-6)
    finally:
        absolute.window_overlap = 0


OFFICIAL = Path(__file__).parent / "fixtures" / "official_absolute"


def test_matches_the_official_code_with_learned_positions():
    """tests/fixtures/official_absolute: encode for every task and cut, and the per-row forward."""
    from official import official_diffs

    emb = taskembed.load(OFFICIAL)
    assert emb.config.position_embedding_type == "absolute"
    assert float(emb.model.embeddings.position_embeddings.lora_A.abs().max()) > 0  # there, and never applied
    encode, forward = official_diffs(emb, OFFICIAL)
    assert encode <= 1e-5 and forward <= 1e-5, (encode, forward)


def test_official_absolute_checkpoint_round_trips(tmp_path):
    from safetensors.numpy import load_file

    taskembed.load(OFFICIAL).save(tmp_path)
    before, after = load_file(str(OFFICIAL / "model.safetensors")), load_file(str(tmp_path / "model.safetensors"))
    assert set(after) >= set(before)
    for k, v in before.items():
        np.testing.assert_array_equal(after[k], v, err_msg=k)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["position_embedding_type"] == "absolute" and saved["max_position_embeddings"] == 1026


@pytest.mark.parametrize("attr, value", [("window_pooling", "median"), ("window_prefix", "twice")])
def test_unknown_window_settings_are_refused_on_every_path(absolute, attr, value):
    before = getattr(absolute, attr)
    setattr(absolute, attr, value)
    try:
        with pytest.raises(ValueError, match=f"{attr} {value!r} unknown"):
            absolute.encode(["short"], task="separation")
        with pytest.raises(ValueError, match=f"{attr} {value!r} unknown"):  # the server's path
            absolute.split_windows([[0, 5, 2]], [absolute.tasks.index("separation")])
    finally:
        setattr(absolute, attr, before)
