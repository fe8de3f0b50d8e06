"""Inserted-sentence tuples: copies of one document that differ by one sentence, each the positive of its own
sentence and a hard negative for the others."""

from __future__ import annotations

import json
import random

import pytest

from taskembed_train.devtasks import build_dev_tasks
from taskembed_train.insertions import insertion_tuples, main, read_pairs


def _docs():
    return [[f"Paragraph {f}.{i} of file {f} says something plain." for i in range(12)] for f in range(3)]


def _pairs(n=10):
    return [(f"English sentence number {k} here.", f"Traduction numero {k} ici, en francais.") for k in range(n)]


def _strip(text, sentence):
    return " ".join(text.replace(sentence, " ").split())


def test_each_copy_holds_its_own_sentence_and_the_others_are_its_negatives():
    pairs = _pairs()
    rows = insertion_tuples(_docs(), pairs, n=12, rng=random.Random(0), variants=4, chars=200, translated=0.0)
    assert len(rows) == 12
    inserted = {s for s, _ in pairs}
    for g in range(0, 12, 4):
        group = rows[g : g + 4]
        copies = [r["positive"] for r in group]
        assert len(set(copies)) == 4
        # one document: each copy without its own sentence is the same text
        assert len({_strip(r["positive"], r["query"]) for r in group}) == 1
        for r in group:
            assert r["query"] in inserted and r["query"] in r["positive"]
            assert sorted(r["negatives"]) == sorted(c for c in copies if c != r["positive"])
            assert all(r["query"] not in n for n in r["negatives"])


def test_translated_queries_are_the_translation_of_the_inserted_sentence():
    pairs = _pairs()
    translation = dict(pairs)
    rows = insertion_tuples(_docs(), pairs, n=8, rng=random.Random(1), variants=2, chars=200, translated=1.0)
    for r in rows:
        (source,) = [s for s, t in pairs if t == r["query"]]
        assert translation[source] == r["query"] and source in r["positive"] and r["query"] not in r["positive"]
    mixed = insertion_tuples(_docs(), pairs, n=200, rng=random.Random(2), variants=2, chars=200, translated=0.5)
    share = sum(r["query"] in translation.values() for r in mixed) / len(mixed)
    assert 0.35 < share < 0.65


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="variants"):
        insertion_tuples(_docs(), _pairs(), n=4, rng=random.Random(0), variants=1)
    with pytest.raises(ValueError, match="sentence pairs"):
        insertion_tuples(_docs(), _pairs(2), n=4, rng=random.Random(0), variants=4)
    # enough pairs, but too few different sentences to fill the copies of one document
    with pytest.raises(ValueError, match="different sentence pairs"):
        insertion_tuples(_docs(), _pairs(2) * 5, n=4, rng=random.Random(0), variants=4)
    with pytest.raises(ValueError, match="no document"):
        insertion_tuples([[], []], _pairs(), n=4, rng=random.Random(0))


def test_read_pairs_takes_both_directions_within_the_length_bounds(tmp_path):
    f = tmp_path / "bitext.jsonl"
    rows = [{"query": "A sentence long enough.", "positive": "Une phrase assez longue."},
            {"query": "short", "positive": "Une phrase assez longue encore."},
            {"query": "x" * 300, "positive": "Une phrase assez longue, trois."}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert read_pairs([f]) == [("A sentence long enough.", "Une phrase assez longue."),
                               ("Une phrase assez longue.", "A sentence long enough.")]


def test_cli_writes_tuples_that_become_a_text_matching_dev_check(tmp_path):
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": t}) + "\n" for t in _docs()[0]), encoding="utf-8")
    bitext = tmp_path / "bitext.jsonl"
    bitext.write_text("".join(json.dumps({"query": s, "positive": t}) + "\n" for s, t in _pairs()), encoding="utf-8")
    out = tmp_path / "ins.jsonl"
    assert main(["--documents", str(docs), "--sentences", str(bitext), "--out", str(out), "--n", "8",
                 "--chars", "300"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 8 and all(len(r["negatives"]) == 3 for r in rows)

    # a tuple's query and positive make the pair of a bitext-mining check: each copy must find its sentence
    (task,) = build_dev_tasks([out], "text-matching", tmp_path / "dev", lambda texts: None, n=8)
    assert task.type == "bitext_mining"
    pairs = [json.loads(line) for line in (task.path / "pairs.jsonl").read_text().splitlines()]
    assert [(p["source"], p["target"]) for p in pairs] == [(r["positive"], r["query"]) for r in rows]
