"""No evaluation-suite text may reach the training data, checked by hashing.

Offline parts: the leak filter rejects every text of the committed suite (and case/punctuation/accelerator
variants of it), the writer drops such records, and the split rule is the suite's. When the built training
data is named by ``TASKEMBED_TRAIN_DATA`` (made by ``data/train/build_train_data.py``), every record of it
is scanned as well; CI without it skips that part.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import build_train_data as btd
from taskembed.eval.split import HELDOUT_GETTEXT_DOMAINS, is_heldout, text_fingerprint

ROOT = Path(__file__).resolve().parent.parent

EVAL = ROOT / "data" / "eval"


def eval_texts() -> list[str]:
    out = []
    for path in sorted(EVAL.glob("*/*.jsonl")):
        for line in path.open(encoding="utf-8"):
            r = json.loads(line)
            for k in ("text", "text1", "text2", "source", "target", "query", "title"):
                if isinstance(r.get(k), str):
                    out.append(r[k])
            for k in ("positive", "negative"):
                if isinstance(r.get(k), list):
                    out.extend(r[k])
    return out


@pytest.fixture(scope="module")
def leak() -> btd.LeakFilter:
    return btd.LeakFilter()


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return eval_texts()


def test_fingerprint_file_covers_the_suite(leak, texts):
    assert len(texts) > 10_000
    missing = [t for t in texts[::7] if not leak.leaks(t)]  # a fixed seventh: the whole set takes ~10 s
    assert not missing, f"{len(missing)} suite texts lack a fingerprint, e.g. {missing[:3]}"


def test_filter_rejects_suite_texts_and_variants(leak, texts):
    sample = texts[:: max(1, len(texts) // 500)]
    for t in sample:
        # upper() is not undone by casefold() for Turkish dotless i, so that variant only where it round-trips.
        upper = [t.upper()] if t.upper().casefold() == t.casefold() else []
        for variant in (t, *upper, f"  {t}!! ", t.replace(" ", "  ")):
            assert not leak.keep({"query": "harmless words here", "positive": variant}), variant
            assert not leak.keep({"text": variant, "label": "x"})
    assert not leak.keep({"query": "a b c", "positive": "d e f", "negatives": [sample[0]]})
    assert leak.keep({"query": "A sentence nobody wrote for the suite 1234567", "positive": "Another one 7654321"})


def test_writer_drops_leaks_and_records_hashes(tmp_path, texts):
    leak = btd.LeakFilter()
    w = btd.Writer(tmp_path, leak)
    clean = [{"query": f"training query number {i}", "positive": f"training passage number {i}"} for i in range(60)]
    leaked = [{"query": "training query", "positive": t} for t in texts[:25]]
    assert w.write("mix", clean + leaked, "test") == 60
    rows = [json.loads(line) for line in (tmp_path / "mix.jsonl").open(encoding="utf-8")]
    assert sorted(r["query"] for r in rows) == sorted(r["query"] for r in clean)
    assert leak.dropped == 25 and w.files["mix"]["records"] == 60 and len(w.files["mix"]["sha256"]) == 64


def test_split_rule_is_the_suites():
    for domain in HELDOUT_GETTEXT_DOMAINS:
        assert not btd.train_side("gettext", domain)
    assert btd.train_side("gettext", "inkscape") and btd.train_side("gettext", "sc")
    pages = [f"text/swriter/guide/page{i}.xhp" for i in range(200)]
    assert [btd.train_side("lohelp", p) for p in pages] == [not is_heldout("lohelp", p) for p in pages]
    assert 0.55 < sum(btd.train_side("lohelp", p) for p in pages) / len(pages) < 0.85
    with pytest.raises(KeyError):
        btd.train_side("wikipedia", "x")


TRAIN = Path(os.environ.get("TASKEMBED_TRAIN_DATA", "/nonexistent"))


# Opt-in, about a minute: TASKEMBED_TRAIN_DATA=/tmp/taskembed-train pytest tests/test_train_data_leak.py
@pytest.mark.skipif(not (TRAIN / "manifest.json").is_file(), reason="set TASKEMBED_TRAIN_DATA to a built training set")
def test_built_training_data_has_no_eval_text(leak):
    manifest = json.loads((TRAIN / "manifest.json").read_text())
    bad = 0
    for name in manifest["files"]:
        for line in (TRAIN / f"{name}.jsonl").open(encoding="utf-8"):
            bad += any(text_fingerprint(t) in leak.eval for t in btd.record_texts(json.loads(line)))
    assert bad == 0
