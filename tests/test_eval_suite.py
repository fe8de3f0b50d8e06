"""Validate the committed held-out evaluation suite (data/eval/) and the split rule (taskembed.eval.split).

The suite is built by data/build_suite.py from Debian/PyPI packages; these tests only read the committed
files, so they run offline.
"""

from __future__ import annotations

import json
import math
import unicodedata
from functools import cache
from pathlib import Path

import pytest

from taskembed import io
from taskembed.eval.split import (
    HELDOUT_FRACTION,
    HELDOUT_GETTEXT_DOMAINS,
    is_heldout,
    normalize_text,
    stable_unit,
    text_fingerprint,
)

EVAL_DIR = Path(__file__).resolve().parent.parent / "data" / "eval"
TASK_DIRS = sorted(p.parent for p in EVAL_DIR.glob("*/task.json"))
TASK_IDS = [p.name for p in TASK_DIRS]

TYPES = {
    "retrieval": ["corpus.jsonl", "queries.jsonl", "qrels.jsonl"],
    "bitext_mining": ["pairs.jsonl"],
    "classification": ["train.jsonl", "test.jsonl"],
    "clustering": ["items.jsonl"],
    "pair_classification": ["pairs.jsonl"],
    "sts": ["pairs.jsonl"],
    "reranking": ["samples.jsonl"],
}
# CI-time limits promised in data/eval/README.md.
MAX_BITEXT, MAX_QUERIES, MAX_DOCS, MAX_DOC_CHARS = 300, 200, 600, 600
MAX_TRAIN_PER_CLASS, MAX_TEST, MAX_CLUSTER = 64, 400, 600

# Language -> (script name, Unicode character-name prefixes that prove the script is really present).
NON_LATIN = {
    "ru": ("Cyrillic", ("CYRILLIC",)),
    "uk": ("Cyrillic", ("CYRILLIC",)),
    "el": ("Greek", ("GREEK",)),
    "ja": ("Japanese", ("HIRAGANA", "KATAKANA", "CJK")),
    "zh-CN": ("Han", ("CJK",)),
    "zh-TW": ("Han", ("CJK",)),
    "ko": ("Hangul", ("HANGUL",)),
    "ar": ("Arabic", ("ARABIC",)),
    "fa": ("Arabic", ("ARABIC",)),
    "he": ("Hebrew", ("HEBREW",)),
    "hi": ("Devanagari", ("DEVANAGARI",)),
    "th": ("Thai", ("THAI",)),
    "km": ("Khmer", ("KHMER",)),
    "dz": ("Tibetan", ("TIBETAN",)),
    "ka": ("Georgian", ("GEORGIAN",)),
    "ta": ("Tamil", ("TAMIL",)),
}


read_jsonl = cache(io.read_jsonl)  # the suite's files are read by several tests


@cache
def meta(task_dir: Path) -> dict:
    return json.loads((task_dir / "task.json").read_text(encoding="utf-8"))


def task_texts(task_dir: Path) -> list[str]:
    out: list[str] = []
    for fname in TYPES[meta(task_dir)["type"]]:
        for row in read_jsonl(task_dir / fname):
            for key in ("text", "text1", "text2", "source", "target", "query", "title"):
                if isinstance(row.get(key), str):
                    out.append(row[key])
            for key in ("positive", "negative"):
                out.extend(row.get(key, []))
    return out


def nonempty_str(value: object) -> bool:
    return isinstance(value, str) and value.strip() != ""


# --------------------------------------------------------------------------------------------------------
# Suite-level checks


def test_suite_exists_and_is_small() -> None:
    assert len(TASK_DIRS) >= 20
    total = sum(p.stat().st_size for p in EVAL_DIR.rglob("*") if p.is_file())
    assert total < 30 * 1024 * 1024, f"data/eval is {total / 2**20:.1f} MiB"
    assert (EVAL_DIR / "README.md").is_file()


def test_every_type_family_present() -> None:
    types = {meta(d)["type"] for d in TASK_DIRS}
    assert set(TYPES) == types


def test_language_coverage_claim() -> None:
    langs = {lang for d in TASK_DIRS for lang in meta(d)["languages"]}
    base = {lang.split("-")[0].lower() for lang in langs}
    assert len(base) >= 20, sorted(base)
    scripts = {NON_LATIN[lang][0] for lang in langs if lang in NON_LATIN}
    assert len(scripts) >= 5, scripts


def test_sources_index_matches_folders() -> None:
    index = json.loads((EVAL_DIR / "sources.json").read_text(encoding="utf-8"))
    assert sorted(index["tasks"]) == TASK_IDS
    for name, info in index["tasks"].items():
        for fname, n in info["sizes"].items():
            assert len(read_jsonl(EVAL_DIR / name / fname)) == n
    assert index["packages"], "pinned package versions must be recorded"
    for pkg in index["packages"].values():
        assert pkg["version"] and len(pkg["sha256"]) == 64


def test_fingerprints_cover_suite_texts() -> None:
    fps = set((EVAL_DIR / "fingerprints.txt").read_text(encoding="ascii").split())
    for d in TASK_DIRS[:: max(1, len(TASK_DIRS) // 15)]:
        for text in task_texts(d)[:50]:
            assert text_fingerprint(text) in fps, (d.name, text)


# --------------------------------------------------------------------------------------------------------
# Per-task format checks


@pytest.mark.parametrize("task_dir", TASK_DIRS, ids=TASK_IDS)
def test_task_format(task_dir: Path) -> None:
    m = meta(task_dir)
    for key in ("name", "type", "languages", "source", "description", "main_score"):
        assert key in m, key
    assert m["name"] == task_dir.name
    assert m["type"] in TYPES
    assert isinstance(m["languages"], list) and m["languages"]
    assert all(nonempty_str(x) for x in m["languages"])
    for fname in TYPES[m["type"]]:
        assert (task_dir / fname).is_file(), fname
        rows = read_jsonl(task_dir / fname)
        assert rows, f"{fname} is empty"
    CHECKS[m["type"]](task_dir, m)


def check_retrieval(task_dir: Path, m: dict) -> None:
    corpus = read_jsonl(task_dir / "corpus.jsonl")
    queries = read_jsonl(task_dir / "queries.jsonl")
    qrels = read_jsonl(task_dir / "qrels.jsonl")
    doc_ids = [d["id"] for d in corpus]
    query_ids = [q["id"] for q in queries]
    assert len(set(doc_ids)) == len(doc_ids) and len(set(query_ids)) == len(query_ids)
    assert len(queries) <= MAX_QUERIES and len(corpus) <= MAX_DOCS
    for d in corpus:
        assert nonempty_str(d["id"]) and nonempty_str(d["text"]) and len(d["text"]) <= MAX_DOC_CHARS
        assert "title" not in d or isinstance(d["title"], str)
    for q in queries:
        assert nonempty_str(q["id"]) and nonempty_str(q["text"])
    docs, qs = set(doc_ids), set(query_ids)
    for r in qrels:
        assert r["query_id"] in qs and r["doc_id"] in docs
        assert isinstance(r["score"], int) and r["score"] > 0
    assert {r["query_id"] for r in qrels} == qs, "every query needs at least one relevant doc"


def check_bitext(task_dir: Path, m: dict) -> None:
    pairs = read_jsonl(task_dir / "pairs.jsonl")
    assert nonempty_str(m["source_lang"]) and nonempty_str(m["target_lang"])
    assert 2 <= len(pairs) <= MAX_BITEXT
    for p in pairs:
        assert nonempty_str(p["source"]) and nonempty_str(p["target"]) and p["source"] != p["target"]
    # Duplicate targets would make nearest-neighbour accuracy ambiguous.
    assert len({p["target"] for p in pairs}) == len(pairs)


def check_classification(task_dir: Path, m: dict) -> None:
    train = read_jsonl(task_dir / "train.jsonl")
    test = read_jsonl(task_dir / "test.jsonl")
    for row in train + test:
        assert nonempty_str(row["text"]) and nonempty_str(row["label"])
    train_labels = {r["label"] for r in train}
    assert len(train_labels) >= 2
    assert {r["label"] for r in test} <= train_labels
    counts: dict[str, int] = {}
    for r in train:
        counts[r["label"]] = counts.get(r["label"], 0) + 1
    assert max(counts.values()) <= MAX_TRAIN_PER_CLASS and len(test) <= MAX_TEST
    assert not {r["text"] for r in train} & {r["text"] for r in test}, "train/test overlap"


def check_clustering(task_dir: Path, m: dict) -> None:
    items = read_jsonl(task_dir / "items.jsonl")
    assert len(items) <= MAX_CLUSTER
    for row in items:
        assert nonempty_str(row["text"]) and nonempty_str(row["label"])
    assert len({r["label"] for r in items}) >= 2


def check_pair_classification(task_dir: Path, m: dict) -> None:
    pairs = read_jsonl(task_dir / "pairs.jsonl")
    for p in pairs:
        assert nonempty_str(p["text1"]) and nonempty_str(p["text2"])
        assert p["label"] in (0, 1) and isinstance(p["label"], int)
    assert {p["label"] for p in pairs} == {0, 1}


def check_sts(task_dir: Path, m: dict) -> None:
    pairs = read_jsonl(task_dir / "pairs.jsonl")
    for p in pairs:
        assert nonempty_str(p["text1"]) and nonempty_str(p["text2"])
        assert isinstance(p["score"], float) and math.isfinite(p["score"])
    assert len({p["score"] for p in pairs}) > 2


def check_reranking(task_dir: Path, m: dict) -> None:
    for s in read_jsonl(task_dir / "samples.jsonl"):
        assert nonempty_str(s["query"]) and s["positive"] and s["negative"]
        assert all(nonempty_str(t) for t in s["positive"] + s["negative"])


CHECKS = {
    "retrieval": check_retrieval,
    "bitext_mining": check_bitext,
    "classification": check_classification,
    "clustering": check_clustering,
    "pair_classification": check_pair_classification,
    "sts": check_sts,
    "reranking": check_reranking,
}


@pytest.mark.parametrize("task_dir", TASK_DIRS, ids=TASK_IDS)
def test_declared_scripts_are_really_present(task_dir: Path) -> None:
    """A task that claims e.g. Greek must contain mostly-Greek text, not untranslated English."""
    m = meta(task_dir)
    for lang in m["languages"]:
        if lang not in NON_LATIN:
            continue
        prefixes = NON_LATIN[lang][1]
        best = 0.0
        # Cross-lingual tasks hold the script in one file (queries) or one side of each pair (about half).
        for fname in TYPES[m["type"]]:
            texts = [
                v
                for row in read_jsonl(task_dir / fname)
                for k, v in row.items()
                if k in ("text", "text1", "text2", "source", "target", "query") and isinstance(v, str)
            ]
            if texts:
                hits = sum(any(unicodedata.name(c, "").startswith(prefixes) for c in t) for t in texts)
                best = max(best, hits / len(texts))
        assert best >= 0.4, (lang, best)


def test_heldout_units_only() -> None:
    """Retrieval corpora are keyed by page; every page must be on the held-out side of the split."""
    for d in TASK_DIRS:
        if meta(d)["type"] != "retrieval":
            continue
        source = {"lohelp": "lohelp", "manpage": "manpage"}.get(d.name.split("-")[0])
        if source is None:
            continue
        for doc in read_jsonl(d / "corpus.jsonl"):
            assert is_heldout(source, doc["id"]), (d.name, doc["id"])


# --------------------------------------------------------------------------------------------------------
# Split rule


def test_split_is_stable_across_processes() -> None:
    # Literal expectations: if these change, the split moved and the committed suite (and any training
    # data filtered with it) is stale.
    assert stable_unit("lohelp", "text/swriter/guide/auto_numbering.html") == pytest.approx(0.3386063946288921)
    keys = ["ls.1", "open.2", "printf.3", "passwd.5", "mount.8", "bash.1", "grep.1", "malloc.3", "socket.7",
            "fstab.5", "cron.8", "kill.1"]  # fmt: skip
    assert [k for k in keys if is_heldout("manpage", k)] == ["mount.8", "fstab.5", "cron.8"]
    assert text_fingerprint("Open file") == "97e9c6a77e0bf277b4d75ee793dee7f0"
    assert is_heldout("gensim", "anything")


def test_split_fraction_close_to_configured() -> None:
    for source, frac in HELDOUT_FRACTION.items():
        n = 20000
        got = sum(is_heldout(source, f"page-{i}") for i in range(n)) / n
        assert abs(got - frac) < 0.02, (source, got, frac)


def test_split_sources_are_independent() -> None:
    keys = [f"k{i}" for i in range(2000)]
    a = [is_heldout("lohelp", k) for k in keys]
    b = [is_heldout("manpage", k) for k in keys]
    assert a != b


def test_gettext_domains() -> None:
    for domain in HELDOUT_GETTEXT_DOMAINS:
        assert is_heldout("gettext", domain)
    assert not is_heldout("gettext", "inkscape")
    assert not is_heldout("gettext", "sc")  # LibreOffice Calc UI stays free for training


def test_unknown_source_rejected() -> None:
    with pytest.raises(KeyError):
        is_heldout("wikipedia", "x")


def test_text_fingerprint() -> None:
    assert text_fingerprint("Open  _File...") == text_fingerprint("open file")
    assert text_fingerprint("Ｏｐｅｎ File") == text_fingerprint("open file")  # NFKC full-width
    assert text_fingerprint("open file") != text_fingerprint("open files")
    assert len(text_fingerprint("x")) == 32
    assert normalize_text("  Hello,   World! ") == "hello world"
    assert text_fingerprint("Привет, мир") == text_fingerprint("привет мир")
