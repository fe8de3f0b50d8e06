#!/usr/bin/env python3
"""Build the held-out evaluation suite under ``data/eval/`` from Debian and PyPI packages.

Usage::

    python data/build_suite.py [--cache /tmp/taskembed-suite-cache] [--out data/eval]

Steps: ``apt-get download PKG=VERSION`` (pinned versions below) and ``pip download gensim==4.4.0`` into the
cache, ``dpkg-deb -x`` / ``zipfile`` to read them, parse, apply :mod:`taskembed.eval.split`, sample with
fixed per-task seeds and write one folder per task. The output is byte-identical between runs: every list
is sorted before sampling, seeds derive from task names, JSON uses ``sort_keys`` and nothing records a
time. Only the standard library is used (plus ``apt-get``, ``dpkg-deb`` and ``pip`` as programs).
The suite is committed, so this script is never needed at test or evaluation time.
"""

from __future__ import annotations

import argparse
import gettext
import gzip
import hashlib
import html
import json
import os
import random
import re
import shutil
import subprocess
import sys
import unicodedata
import zipfile
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from taskembed.eval.split import is_heldout, stable_unit, text_fingerprint  # noqa: E402

DEFAULT_CACHE = Path(os.environ.get("TASKEMBED_SUITE_CACHE", "/tmp/taskembed-suite-cache"))

# ------------------------------------------------------------------------------------------------------
# Pinned sources (Debian 12 bookworm versions at build time). A newer point release changes these; the
# builder refuses to silently use another version because the suite must be rebuildable bit for bit.
LO_VERSION = "4:7.4.7-1+deb12u14"
LO_LANGS = [
    "ca", "cs", "da", "de", "dz", "el", "en-gb", "es", "et", "eu", "fi", "fr", "gl", "hi", "hu", "id",
    "it", "ja", "km", "ko", "nl", "om", "pl", "pt", "pt-br", "ru", "sl", "sv", "tr", "vi",
    "zh-cn", "zh-tw",
]  # fmt: skip
MAN_PACKAGES = {
    "manpages": "6.03-2",
    "manpages-dev": "6.03-2",
    "manpages-de": "4.18.1-1",
    "manpages-de-dev": "4.18.1-1",
    "manpages-fr": "4.18.1-1",
    "manpages-fr-dev": "4.18.1-1",
    "manpages-es": "4.18.1-1",
    "manpages-es-dev": "4.18.1-1",
    "manpages-pl": "1:4.18.1-1",
    "manpages-pl-dev": "1:4.18.1-1",
    "manpages-ru": "4.18.1-1",
    "manpages-ru-dev": "4.18.1-1",
    "manpages-uk": "4.18.1-1",
    "manpages-uk-dev": "4.18.1-1",
    "manpages-ja": "0.5.0.0.20221215+dfsg-1",
    "manpages-ja-dev": "0.5.0.0.20221215+dfsg-1",
    "manpages-zh": "1.6.4.0-1",
}
DEBREF_LANGS = ["de", "en", "es", "fr", "id", "it", "ja", "pt", "zh-cn", "zh-tw"]
DEBREF_VERSION = "2.100"
GETTEXT_PACKAGES = {"vlc-l10n": "3.0.23-0+deb12u1", "gnucash-common": "1:4.13-1", "gramps": "5.1.5-1"}
GENSIM_VERSION = "4.4.0"

PACKAGES: dict[str, str] = {
    "libreoffice-help-en-us": LO_VERSION,
    **{f"libreoffice-help-{lang}": LO_VERSION for lang in LO_LANGS},
    **MAN_PACKAGES,
    **{f"debian-reference-{lang}": DEBREF_VERSION for lang in DEBREF_LANGS},
    **GETTEXT_PACKAGES,
}

LICENSES = {
    "lohelp": "MPL-2.0 (LibreOffice help content)",
    "manpage": "manpages: various free licences (mostly GPL/BSD/MIT-style per page, see copyright); "
    "manpages-l10n translations GPL-3+; manpages-ja: same as the originals; manpages-zh: GFDL/GPL",
    "debref": "GPL-2+ (Debian Reference)",
    "gettext": "GPL-2+ (VLC), GPL-2+ (GnuCash), GPL-2+ (Gramps)",
    "gensim": "LGPL-2.1 (gensim package); WordSim353 / SimLex-999 / Lee corpus are research data sets "
    "redistributed in gensim's test data",
}

# Size limits for CI-time evaluation on 2 CPU cores.
MAX_BITEXT = 300
MAX_QUERIES = 200
MAX_DOCS = 600
MAX_CHARS = 600
CLF_TRAIN_PER_CLASS = 64
CLF_TEST = 400
MAX_CLUSTER_ITEMS = 600
PAIRCLF_POS = 300
RERANK_LANGS = {"en", "de", "ja"}
RERANK_QUERIES = 100
RERANK_NEGATIVES = 7

NON_LATIN = {"ru", "uk", "el", "ja", "ko", "zh", "hi", "km", "dz", "ar", "he", "th", "fa", "bg", "sr", "mk",
             "be", "ka", "hy", "ta", "te", "bn", "gu", "pa", "kn", "ml", "mr", "ne", "si", "my", "lo", "am",
             "kk", "ky", "mn", "tg", "ug", "ur", "or", "as", "bo", "ps", "tt", "ckb", "sa", "yi", "iu",
             "ti", "dv", "sd", "ks", "ba", "cv", "os", "ab"}  # fmt: skip


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def seed_of(name: str) -> int:
    """Per-task seed: independent of task build order and of Python's hash randomisation."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")


def clean(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).split())


def truncate(text: str, limit: int = MAX_CHARS) -> str:
    """Cut at a word boundary when there is one (CJK text has none, then cut hard)."""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    space = cut.rfind(" ")
    return cut[:space] if space > limit // 2 else cut


def base_lang(code: str) -> str:
    return re.split(r"[-_@]", code)[0].lower()


def looks_like_language(text: str, lang: str) -> bool:
    """Cheap language-ID filter against untranslated leftovers (py3langid is not a dependency).

    Non-Latin-script languages must be mostly non-ASCII letters; other languages must not look like
    English by stopword density.
    """
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return False
    if base_lang(lang) in NON_LATIN:
        return sum(c.isascii() for c in letters) / len(letters) < 0.5
    if base_lang(lang) == "en":
        return True
    words = re.findall(r"[a-z]+", text.lower())
    if len(words) < 4:
        return True
    english = {"the", "and", "of", "to", "is", "in", "that", "for", "are", "with", "this", "you", "be",
               "by", "or", "on", "it", "can", "which", "from"}  # fmt: skip
    return sum(w in english for w in words) / len(words) < 0.15


def digits_agree(en: str, xx: str) -> bool:
    """Reject misaligned pairs such as "451 ..." vs "285 ..." (seen in the Oromo help).

    Only ASCII digits are compared: a translation written with native numerals (Tibetan, Devanagari) or
    spelled-out numbers has none and is kept.
    """
    dx = sorted(re.findall(r"[0-9]+", xx))
    return not dx or dx == sorted(re.findall(r"[0-9]+", en))


# ------------------------------------------------------------------------------------------------------
# Fetching


def fetch_debs(cache: Path) -> dict[str, dict[str, str]]:
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    info: dict[str, dict[str, str]] = {}
    for name, version in sorted(PACKAGES.items()):
        files = [p for p in debs.glob(f"{name}_*.deb") if p.name.split("_")[1].replace("%3a", ":") == version]
        if not files:
            log(f"apt-get download {name}={version}")
            subprocess.run(
                ["apt-get", "download", f"{name}={version}"], cwd=debs, check=True, stdout=subprocess.DEVNULL
            )
            files = [p for p in debs.glob(f"{name}_*.deb") if p.name.split("_")[1].replace("%3a", ":") == version]
        deb = files[0]
        target = cache / "x" / name
        if not (target / ".done").exists():
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            subprocess.run(["dpkg-deb", "-x", str(deb), str(target)], check=True)
            (target / ".done").write_text(version)
        info[name] = {"version": version, "sha256": hashlib.sha256(deb.read_bytes()).hexdigest()}
    return info


def fetch_gensim(cache: Path) -> Path:
    pypi = cache / "pypi"
    pypi.mkdir(parents=True, exist_ok=True)
    wheels = sorted(pypi.glob(f"gensim-{GENSIM_VERSION}-*.whl"))
    if not wheels:
        log(f"pip download gensim=={GENSIM_VERSION}")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                f"gensim=={GENSIM_VERSION}",
                "--no-deps",
                "--only-binary=:all:",
                "-d",
                str(pypi),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        wheels = sorted(pypi.glob(f"gensim-{GENSIM_VERSION}-*.whl"))
    return wheels[0]


# ------------------------------------------------------------------------------------------------------
# Writing


def dump_jsonl(path: Path, rows: Iterable[dict]) -> int:
    lines = [json.dumps(r, sort_keys=True, ensure_ascii=False) for r in rows]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return len(lines)


class Suite:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.tasks: dict[str, dict] = {}
        self.texts: set[str] = set()

    def write(self, meta: dict, files: dict[str, list[dict]]) -> None:
        name = meta["name"]
        folder = self.out / name
        folder.mkdir(parents=True, exist_ok=True)
        sizes = {}
        for fname, rows in sorted(files.items()):
            sizes[fname] = dump_jsonl(folder / fname, rows)
            for row in rows:
                for key in ("text", "text1", "text2", "source", "target", "query", "title"):
                    if isinstance(row.get(key), str):
                        self.texts.add(row[key])
                for key in ("positive", "negative"):
                    self.texts.update(row.get(key, []))
        (folder / "task.json").write_text(
            json.dumps(meta, sort_keys=True, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )
        self.tasks[name] = {"meta": meta, "sizes": sizes}
        log(f"  {name}: {sizes}")


# ------------------------------------------------------------------------------------------------------
# LibreOffice help


_LO_UNIT = re.compile(r'<(p|h[1-6])\s[^>]*?\bid="((?:par|hd)_id[^"]*)"[^>]*>(.*?)</\1\s*>', re.S)
_TAG = re.compile(r"<[^>]+>")


def lo_units(raw: str) -> list[tuple[str, str, str]]:
    """``<p|h1..h6 id="par_id…|hd_id…">`` units in document order as (id, tag, text).

    A regex rather than html.parser: the help is generated, regular XHTML without nested p/h elements, and
    the regex is about ten times faster on the 88k pages of all languages.
    """
    out = []
    for tag, ident, inner in _LO_UNIT.findall(raw):
        text = clean(html.unescape(_TAG.sub("", inner)))
        if text:
            out.append((ident, tag, text))
    return out


class LOLang:
    def __init__(self, root: Path) -> None:
        self.pages: dict[str, dict] = {}  # page path -> {"title", "units": {id: text}, "order": [ids]}
        for path in sorted((root / "text").rglob("*.html")):
            raw = path.read_text(encoding="utf-8", errors="replace")
            units: dict[str, str] = {}
            order: list[str] = []
            h1 = ""
            for ident, tag, text in lo_units(raw):
                if ident in units:
                    continue
                units[ident] = text
                order.append(ident)
                if tag == "h1" and not h1:
                    h1 = text
            key = path.relative_to(root).as_posix()
            m = re.search(r"<title>(.*?)</title>", raw, re.S)
            title = clean(html.unescape(m.group(1))) if m else ""
            self.pages[key] = {"title": h1 or title, "units": units, "order": order}
        self.bookmarks: list[tuple[str, str, str]] = []  # (page, app, keyword)
        js = (root / "bookmarks.js").read_text(encoding="utf-8")
        for m in re.finditer(r'\{url:"([^"]*)",\s*app:"([^"]*)",\s*text:"((?:[^"\\]|\\.)*)"\}', js):
            url, app, text = m.groups()
            page = re.sub(r"^[^/]+/", "", url.split("?")[0].split("#")[0])
            self.bookmarks.append((page, app, clean(html.unescape(text.replace('\\"', '"')))))

    def doc_text(self, page: str) -> str:
        info = self.pages[page]
        body = [info["units"][i] for i in info["order"] if info["units"][i] != info["title"]]
        return truncate(" ".join(body))


LO_MODULES = ["sbasic", "scalc", "sdatabase", "simpress", "smath", "swriter"]
LO_DIR = {"en": "en-US", "en-gb": "en-GB", "pt-br": "pt-BR", "zh-cn": "zh-CN", "zh-tw": "zh-TW"}


def lo_code(lang: str) -> str:
    """Package suffix -> BCP-47 code used in task.json (plain "en" for English across all sources)."""
    return "en" if lang == "en" else LO_DIR.get(lang, lang)


def load_lo(cache: Path, lang: str) -> LOLang:
    pkg = "libreoffice-help-en-us" if lang == "en" else f"libreoffice-help-{lang}"
    return LOLang(cache / "x" / pkg / "usr/share/libreoffice/help" / LO_DIR.get(lang, lang))


def lo_module(page: str) -> str:
    return page.split("/")[1]


def n_words(text: str) -> int:
    return len(text.split())


def lo_aligned(en: LOLang, xx: LOLang, lang: str, min_words: int = 6) -> list[tuple[str, str, str, str]]:
    """(page, unit id, en text, xx text) on held-out pages, translated and passing the language filter."""
    out = []
    for page in sorted(en.pages):
        if not is_heldout("lohelp", page) or page not in xx.pages:
            continue
        eu, xu = en.pages[page]["units"], xx.pages[page]["units"]
        for ident in en.pages[page]["order"]:
            e, x = eu[ident], xu.get(ident)
            if not x or x == e or n_words(e) < min_words or len(e) > 500 or not digits_agree(e, x):
                continue
            if not looks_like_language(x, lang):
                continue
            out.append((page, ident, e, x))
    return out


def dedupe(rows: list, key) -> list:
    seen: set = set()
    out = []
    for r in rows:
        k = key(r)
        if k not in seen:
            seen.add(k)
            out.append(r)
    return out


def build_lohelp(suite: Suite, cache: Path, version_note: str) -> None:
    log("LibreOffice help")
    en = load_lo(cache, "en")
    src = f"libreoffice-help-* {LO_VERSION}"
    retrieval_langs = {"en", "de", "fr", "es", "ja", "zh-cn", "ru", "ko", "el", "tr"}
    xling_langs = {"de", "ja", "ru", "zh-cn"}
    clf_langs = {"en", "de", "fr", "es", "it", "ja", "zh-cn", "ru", "ko", "pt-br"}
    cluster_langs = {"en", "de", "ja", "ru", "fi"}
    pairclf_langs = {"de", "ru", "ja", "zh-cn", "el"}
    en_keywords = {kw for _, _, kw in en.bookmarks}
    for lang in ["en", *LO_LANGS]:
        xx = en if lang == "en" else load_lo(cache, lang)
        code = lo_code(lang)
        if lang not in ("en", "en-gb"):
            pairs = dedupe(lo_aligned(en, xx, lang), key=lambda r: r[2])
            pairs = dedupe(pairs, key=lambda r: r[3])
            name = f"lohelp-bitext-{lang}-en"
            rng = random.Random(seed_of(name))
            sample = sorted(rng.sample(pairs, min(MAX_BITEXT, len(pairs))), key=lambda r: (r[0], r[1]))
            if len(sample) >= 100:
                suite.write(
                    {
                        "name": name,
                        "type": "bitext_mining",
                        "languages": [code, "en"],
                        "source": src,
                        "source_lang": code,
                        "target_lang": "en",
                        "main_score": "accuracy",
                        "description": "LibreOffice help paragraphs (>=6 English words) from held-out pages, "
                        "aligned by paragraph id; find the English translation among all targets.",
                    },
                    {"pairs.jsonl": [{"source": x, "target": e} for _, _, e, x in sample]},
                )
            if lang in pairclf_langs:
                build_lo_pairclf(suite, lang, code, src, pairs, xx)
        if lang in retrieval_langs:
            build_lo_retrieval(suite, en, xx, lang, code, src, en_keywords, cross=False)
        if lang in xling_langs:
            build_lo_retrieval(suite, en, xx, lang, code, src, en_keywords, cross=True)
        if lang in clf_langs or lang in cluster_langs:
            build_lo_modules(suite, en, xx, lang, code, src, clf=lang in clf_langs, cluster=lang in cluster_langs)


def build_lo_retrieval(
    suite: Suite, en: LOLang, xx: LOLang, lang: str, code: str, src: str, en_keywords: set[str], cross: bool
) -> None:
    corpus_lang = en if cross else xx
    name = f"lohelp-index-retrieval-{lang}-en" if cross else f"lohelp-index-retrieval-{lang}"
    docs = {}
    for p in sorted(corpus_lang.pages):
        text = corpus_lang.doc_text(p)
        if not is_heldout("lohelp", p) or not text:
            continue
        # Pages left untranslated would turn part of a monolingual corpus into English.
        if corpus_lang is not en and (
            p not in en.pages or text == en.doc_text(p) or not looks_like_language(text, lang)
        ):
            continue
        docs[p] = text
    kw_pages: dict[str, set[str]] = defaultdict(set)
    for page, _, kw in xx.bookmarks:
        if page not in docs or len(kw) < 2:
            continue
        # Untranslated keywords in a partly translated language would make this an English task.
        if lang != "en" and (kw in en_keywords or not looks_like_language(kw, lang)):
            continue
        kw_pages[kw].add(page)
    rng = random.Random(seed_of(name))
    queries = sorted(rng.sample(sorted(kw_pages), min(MAX_QUERIES, len(kw_pages))))
    relevant = sorted({p for q in queries for p in kw_pages[q]})
    others = sorted(set(docs) - set(relevant))
    fill = rng.sample(others, max(0, min(len(others), MAX_DOCS - len(relevant))))
    corpus_ids = sorted(set(relevant) | set(fill))
    qid = {q: f"q{i:04d}" for i, q in enumerate(queries)}
    if len(queries) < 50:
        log(f"  skip {name}: {len(queries)} queries")
        return
    desc = (
        "Query = LibreOffice help index keyword (bookmarks.js, written by the help authors; "
        "'keyword -- subkeyword'); relevant = the held-out help page(s) it links to. "
        "Docs = page title + start of page text (<=600 chars)."
    )
    if cross:
        desc += " Cross-lingual: queries in " + code + ", corpus in English."
    suite.write(
        {
            "name": name,
            "type": "retrieval",
            "languages": sorted({code, "en"}) if cross else [code],
            "source": src,
            "main_score": "ndcg_at_10",
            "description": desc,
        },
        {
            "corpus.jsonl": [{"id": p, "title": corpus_lang.pages[p]["title"], "text": docs[p]} for p in corpus_ids],
            "queries.jsonl": [{"id": qid[q], "text": q} for q in queries],
            "qrels.jsonl": [
                {"query_id": qid[q], "doc_id": p, "score": 1} for q in queries for p in sorted(kw_pages[q])
            ],
        },
    )
    if not cross and lang in RERANK_LANGS:
        build_lo_reranking(suite, corpus_lang, lang, code, src, docs, kw_pages)


def build_lo_reranking(
    suite: Suite, xx: LOLang, lang: str, code: str, src: str, docs: dict[str, str], kw_pages: dict[str, set[str]]
) -> None:
    """Index keyword -> its page(s) vs. held-out pages of the *same module* (hard negatives)."""
    name = f"lohelp-index-reranking-{lang}"
    rng = random.Random(seed_of(name))
    by_module: dict[str, list[str]] = defaultdict(list)
    for p in sorted(docs):
        by_module[lo_module(p)].append(p)

    def render(p: str) -> str:
        return truncate(xx.pages[p]["title"] + "\n" + docs[p])

    samples = []
    for q in sorted(rng.sample(sorted(kw_pages), min(RERANK_QUERIES, len(kw_pages)))):
        pos = sorted(kw_pages[q])
        pool = sorted({n for p in pos for n in by_module[lo_module(p)]} - set(pos))
        if len(pool) < RERANK_NEGATIVES:
            continue
        neg = sorted(rng.sample(pool, RERANK_NEGATIVES))
        samples.append({"query": q, "positive": [render(p) for p in pos], "negative": [render(p) for p in neg]})
    suite.write(
        {
            "name": name,
            "type": "reranking",
            "languages": [code],
            "source": src,
            "main_score": "map",
            "description": "Rerank held-out LibreOffice help pages (title + start of text, <=600 chars) for a "
            f"help-index keyword: positives = linked page(s), {RERANK_NEGATIVES} negatives = other held-out "
            "pages of the same application module.",
        },
        {"samples.jsonl": samples},
    )


def build_lo_modules(
    suite: Suite, en: LOLang, xx: LOLang, lang: str, code: str, src: str, clf: bool, cluster: bool
) -> None:
    by_label: dict[str, list[tuple[str, str]]] = defaultdict(list)  # module -> [(page, text)]
    for page in sorted(xx.pages):
        module = lo_module(page)
        if module not in LO_MODULES or not is_heldout("lohelp", page) or page not in en.pages:
            continue
        for ident in xx.pages[page]["order"]:
            text = xx.pages[page]["units"][ident]
            e = en.pages[page]["units"].get(ident, "")
            if n_words(e) < 5 or (lang != "en" and (text == e or not looks_like_language(text, lang))):
                continue
            by_label[module].append((page, text))
    # Boilerplate sentences shared by several modules have no single label, and could otherwise land in
    # both train and test through different pages: keep each text once, and only if its module is unique.
    modules_of: dict[str, set[str]] = defaultdict(set)
    for module, rows in by_label.items():
        for _, text in rows:
            modules_of[text].add(module)
    for module in by_label:
        rows = [r for r in by_label[module] if len(modules_of[r[1]]) == 1]
        by_label[module] = dedupe(rows, key=lambda r: r[1])
    labels = sorted(m for m in by_label if len(by_label[m]) >= 40)
    if clf:
        name = f"lohelp-classification-{lang}"
        rng = random.Random(seed_of(name))
        train, test = [], []
        per_test = CLF_TEST // len(labels)
        for m in labels:
            # Page-disjoint train/test: all paragraphs of one page fall on the same side.
            tr = [t for p, t in by_label[m] if stable_unit("lohelp-clf-train", p) < 0.5]
            te = [t for p, t in by_label[m] if stable_unit("lohelp-clf-train", p) >= 0.5]
            train += [{"text": t, "label": m} for t in rng.sample(tr, min(CLF_TRAIN_PER_CLASS, len(tr)))]
            test += [{"text": t, "label": m} for t in rng.sample(te, min(per_test, len(te)))]
        suite.write(
            {
                "name": name,
                "type": "classification",
                "languages": [code],
                "source": src,
                "main_score": "accuracy",
                "labels": labels,
                "description": "LibreOffice help paragraph -> application module (path text/<module>/), "
                "held-out pages only, train/test disjoint by page.",
            },
            {
                "train.jsonl": sorted(train, key=lambda r: (r["label"], r["text"])),
                "test.jsonl": sorted(test, key=lambda r: (r["label"], r["text"])),
            },
        )
    if cluster:
        name = f"lohelp-clustering-{lang}"
        rng = random.Random(seed_of(name))
        per = MAX_CLUSTER_ITEMS // len(labels)
        items = [
            {"text": t, "label": m} for m in labels for _, t in rng.sample(by_label[m], min(per, len(by_label[m])))
        ]
        suite.write(
            {
                "name": name,
                "type": "clustering",
                "languages": [code],
                "source": src,
                "main_score": "v_measure",
                "n_clusters": len(labels),
                "description": "Cluster LibreOffice help paragraphs (held-out pages) by application module.",
            },
            {"items.jsonl": sorted(items, key=lambda r: (r["label"], r["text"]))},
        )


def build_lo_pairclf(suite: Suite, lang: str, code: str, src: str, pairs: list, xx: LOLang) -> None:
    """Positives: (xx, en) translations. Negatives: xx paragraph from the *same page* but another id."""
    name = f"lohelp-pairclf-{lang}-en"
    rng = random.Random(seed_of(name))
    by_page: dict[str, list[tuple[str, str, str, str]]] = defaultdict(list)
    for r in pairs:
        by_page[r[0]].append(r)
    usable = [r for r in pairs if len(by_page[r[0]]) >= 2]
    chosen = rng.sample(usable, min(2 * PAIRCLF_POS, len(usable)))
    rows = []
    for i, (page, ident, e, x) in enumerate(sorted(chosen, key=lambda r: (r[0], r[1]))):
        if i % 2 == 0:
            rows.append({"text1": x, "text2": e, "label": 1})
        else:
            other = rng.choice([r for r in by_page[page] if r[1] != ident])
            rows.append({"text1": other[3], "text2": e, "label": 0})
    suite.write(
        {
            "name": name,
            "type": "pair_classification",
            "languages": [code, "en"],
            "source": src,
            "main_score": "ap",
            "description": "Is text1 (" + code + ") the translation of text2 (English)? Negatives are other "
            "paragraphs of the same held-out help page (hard negatives).",
        },
        {"pairs.jsonl": rows},
    )


# ------------------------------------------------------------------------------------------------------
# man pages

# Localized section headers of DESCRIPTION (NAME is always the first .SH of a page).
MAN_DESC = {"DESCRIPTION", "BESCHREIBUNG", "DESCRIPCIÓN", "説明", "解説", "描述", "说明", "說明", "OPIS",
            "ОПИСАНИЕ", "ОПИС"}  # fmt: skip
MAN_LANG_DIRS = {"en": ["manpages", "manpages-dev"], "de": ["manpages-de", "manpages-de-dev"],
                 "fr": ["manpages-fr", "manpages-fr-dev"], "es": ["manpages-es", "manpages-es-dev"],
                 "pl": ["manpages-pl", "manpages-pl-dev"], "ru": ["manpages-ru", "manpages-ru-dev"],
                 "uk": ["manpages-uk", "manpages-uk-dev"], "ja": ["manpages-ja", "manpages-ja-dev"],
                 "zh-CN": ["manpages-zh"]}  # fmt: skip
ROFF_SPECIAL = {"em": "—", "en": "–", "aq": "'", "dq": '"', "lq": "“", "rq": "”", "oq": "‘", "cq": "’",
                "bu": "•", "co": "©", "rg": "®", "tm": "™", "mi": "-", "hy": "-", "ti": "~", "ha": "^",
                "lh": "<=", "rh": "=>", "<=": "<=", ">=": ">=", "!=": "!=", "mu": "×", "de": "°",
                "Fo": "«", "Fc": "»", "fo": "‹", "fc": "›", "rs": "\\", "ga": "`", "sl": "/", "pl": "+",
                "eq": "=", "ra": "→", "la": "←", "ua": "↑", "da": "↓", "ba": "|", "br": "|", "sq": "□"}  # fmt: skip
_ROFF_ESC = re.compile(
    r"\\(?:f(?:\[[^\]]*\]|\(..|.)|\((..)|\[([^\]]*)\]|\*(?:\((..)|\[([^\]]*)\]|(.))"
    r"|s[+-]?\d+|[kn](?:\(..|\[[^\]]*\]|.)|[hvwoxlL]'[^']*'|(.))"
)


def _roff_escape(m: re.Match) -> str:
    special = m.group(1) or m.group(2)
    if special is not None:
        return ROFF_SPECIAL.get(special, "")
    string = m.group(3) or m.group(4) or m.group(5)
    if string is not None:
        return {"lq": "“", "rq": "”", "R": "®", "Tm": "™"}.get(string, "")
    ch = m.group(6)
    if ch is None:
        return ""
    return {"-": "-", "e": "\\", " ": " ", "~": " ", "0": " ", "'": "'", "`": "`", ".": ".", "\\": "\\", "t": " "}.get(
        ch, ""
    )


def roff_text(s: str) -> str:
    return _ROFF_ESC.sub(_roff_escape, s)


def _macro_args(rest: str) -> list[str]:
    return [a if a is not None and a != "" else b for a, b in re.findall(r'"([^"]*)"|(\S+)', rest)]


def parse_man(raw: str) -> list[tuple[str, str]]:
    """Roff (man or mdoc) -> [(section header, plain text)]; crude but adequate for NAME/DESCRIPTION."""
    sections: list[tuple[str, list[str]]] = []
    for line in raw.splitlines():
        if line.startswith(('.\\"', "'\\\"", ".\\}", '\\"')) or line.strip() in (".", "'"):
            continue
        if line.startswith((".", "'")):
            parts = line[1:].strip().split(None, 1)
            if not parts:
                continue
            macro, rest = parts[0], (parts[1] if len(parts) > 1 else "")
            if macro in ("SH", "Sh"):
                sections.append((roff_text(" ".join(_macro_args(rest))).strip(), []))
                continue
            if not sections:
                continue
            args = _macro_args(rest)
            if macro in ("B", "I", "SM", "SB"):
                sections[-1][1].append(roff_text(" ".join(args)))
            elif macro in ("BR", "BI", "IB", "IR", "RB", "RI"):
                sections[-1][1].append(roff_text("".join(args)))
            elif macro == "Nd":
                sections[-1][1].append("- " + roff_text(" ".join(args)))
            elif macro == "Xr" and args:
                sections[-1][1].append(roff_text(args[0]) + (f"({args[1]})" if len(args) > 1 else ""))
            elif macro == "Fl":
                sections[-1][1].append("-" + roff_text(" ".join(args)))
            elif macro in ("TP", "PP", "P", "LP", "IP", "HP", "sp", "br", "Pp", "Bl", "El", "It", "SS", "Ss"):
                if macro in ("IP", "It", "SS", "Ss") and args:
                    sections[-1][1].append(roff_text(" ".join(args)))
            elif macro[:1].isupper() and args:
                # Unknown mdoc/man macro with arguments: keep the words, drop the markup.
                sections[-1][1].append(roff_text(" ".join(a for a in args if a not in ("Ns", "Ar", "Pa"))))
            continue
        if sections:
            sections[-1][1].append(roff_text(line))
    return [(h, clean(" ".join(t))) for h, t in sections]


def load_man(cache: Path, lang: str) -> dict[str, tuple[str, str]]:
    """page key (``ls.1``) -> (NAME summary, DESCRIPTION) for one language."""
    out: dict[str, tuple[str, str]] = {}
    for pkg in MAN_LANG_DIRS[lang]:
        base = cache / "x" / pkg / "usr/share/man"
        if lang != "en":
            base = base / lang.replace("-", "_")
        for path in sorted(base.glob("man*/*.gz")):
            if path.is_symlink():
                continue
            raw_bytes = gzip.decompress(path.read_bytes())
            try:
                raw = raw_bytes.decode("utf-8")
            except UnicodeDecodeError:
                continue  # legacy-encoded pages (old zh/ja) are not worth guessing the encoding of
            if raw.lstrip().startswith(".so "):
                continue
            secs = parse_man(raw)
            if not secs:
                continue
            name_text = secs[0][1]
            m = re.search(r"\s[-–—−]+\s|\\-", name_text) or re.search(r"[-–—]\s", name_text)
            if not m:
                continue
            summary = name_text[m.end() :].strip()
            # zh pages often carry bilingual headers such as "描述 DESCRIPTION" or "描述 SUMMARY".
            desc = next((t for h, t in secs[1:] if h.strip('"').upper() in MAN_DESC), "") or next(
                (t for h, t in secs[1:] if any(w.strip('"').upper() in MAN_DESC for w in h.split()[1:])), ""
            )
            if len(summary) < 2 or (n_words(desc) < 10 and len(desc) < 40):
                continue
            if lang != "en" and not (looks_like_language(desc, lang) and looks_like_language(summary, lang)):
                continue
            key = path.name[:-3]
            out.setdefault(key, (summary, truncate(desc)))
    return out


def build_manpages(suite: Suite, cache: Path) -> None:
    log("man pages")
    src = (
        "manpages 6.03-2 (en), manpages-l10n 4.18.1 (de fr es pl ru uk), manpages-ja 0.5.0.0.20221215, "
        "manpages-zh 1.6.4.0"
    )
    heldout = {
        lang: {k: v for k, v in load_man(cache, lang).items() if is_heldout("manpage", k)}
        for lang in sorted(MAN_LANG_DIRS)
    }
    for lang in sorted(MAN_LANG_DIRS):
        pages = heldout[lang]
        # Duplicate NAME summaries (e.g. shared by a family of pages) have no single right answer.
        counts = Counter(q for q, _ in pages.values())
        qpages = sorted(k for k, (q, _) in pages.items() if counts[q] == 1)
        name = f"manpage-retrieval-{lang.lower()}"
        rng = random.Random(seed_of(name))
        corpus = sorted(rng.sample(sorted(pages), min(MAX_DOCS, len(pages))))
        queries = sorted(
            rng.sample(
                [k for k in qpages if k in set(corpus)], min(MAX_QUERIES, len([k for k in qpages if k in set(corpus)]))
            )
        )
        if len(queries) < 50:
            log(f"  skip {name}: {len(queries)} queries")
            continue
        suite.write(
            {
                "name": name,
                "type": "retrieval",
                "languages": [lang],
                "source": src,
                "main_score": "ndcg_at_10",
                "description": "Query = the NAME line summary of a held-out man page (text after ' - '); "
                "relevant = that page's DESCRIPTION section (<=600 chars). Corpus = held-out pages of the "
                "same language.",
            },
            {
                "corpus.jsonl": [{"id": k, "text": pages[k][1]} for k in corpus],
                "queries.jsonl": [{"id": f"q:{k}", "text": pages[k][0]} for k in queries],
                "qrels.jsonl": [{"query_id": f"q:{k}", "doc_id": k, "score": 1} for k in queries],
            },
        )
        by_sec: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for k in sorted(pages):
            by_sec[k.rsplit(".", 1)[1][:1]].append((k, pages[k][1]))
        name = f"manpage-classification-{lang.lower()}"
        rng = random.Random(seed_of(name))
        splits: dict[str, tuple[list[str], list[str]]] = {}
        for sec, rows in sorted(by_sec.items()):
            tr = [t for k, t in rows if stable_unit("manpage-clf-train", k) < 0.5]
            te = [t for k, t in rows if stable_unit("manpage-clf-train", k) >= 0.5]
            if len(tr) >= 8 and len(te) >= 8:
                splits[sec] = (tr, te)
        if len(splits) < 2:
            log(f"  skip {name}: classes {sorted(splits)}")
            continue
        per_test = CLF_TEST // len(splits)
        train = [
            {"text": t, "label": s}
            for s, (tr, _) in splits.items()
            for t in rng.sample(tr, min(CLF_TRAIN_PER_CLASS, len(tr)))
        ]
        test = [
            {"text": t, "label": s} for s, (_, te) in splits.items() for t in rng.sample(te, min(per_test, len(te)))
        ]
        suite.write(
            {
                "name": name,
                "type": "classification",
                "languages": [lang],
                "source": src,
                "main_score": "accuracy",
                "labels": sorted(splits),
                "description": "Man page DESCRIPTION (<=600 chars) -> manual section (1 commands, 2 system "
                "calls, 3 library, 4 devices, 5 file formats, 7 overviews, 8 administration). Held-out pages; "
                "train/test split by page. Classes are imbalanced (as found).",
            },
            {
                "train.jsonl": sorted(train, key=lambda r: (r["label"], r["text"])),
                "test.jsonl": sorted(test, key=lambda r: (r["label"], r["text"])),
            },
        )
    build_manpage_xling(suite, heldout, src)


def build_manpage_xling(suite: Suite, heldout: dict[str, dict[str, tuple[str, str]]], src: str) -> None:
    """Query = NAME summary in language X; corpus = English DESCRIPTIONs of all held-out English pages."""
    en = heldout["en"]
    for lang in sorted(heldout):
        if lang == "en":
            continue
        counts = Counter(q for q, _ in heldout[lang].values())
        cand = sorted(k for k, (q, _) in heldout[lang].items() if k in en and counts[q] == 1)
        name = f"manpage-retrieval-{lang.lower()}-en"
        rng = random.Random(seed_of(name))
        queries = sorted(rng.sample(cand, min(MAX_QUERIES, len(cand))))
        if len(queries) < 50:
            log(f"  skip {name}: {len(queries)} queries")
            continue
        others = sorted(set(en) - set(queries))
        corpus = sorted(set(queries) | set(rng.sample(others, min(len(others), MAX_DOCS - len(queries)))))
        suite.write(
            {
                "name": name,
                "type": "retrieval",
                "languages": [lang, "en"],
                "source": src,
                "main_score": "ndcg_at_10",
                "description": f"Cross-lingual: query = NAME summary of a held-out man page in {lang}; relevant "
                "= the English original's DESCRIPTION (<=600 chars); corpus = held-out English pages.",
            },
            {
                "corpus.jsonl": [{"id": k, "text": en[k][1]} for k in corpus],
                "queries.jsonl": [{"id": f"q:{k}", "text": heldout[lang][k][0]} for k in queries],
                "qrels.jsonl": [{"query_id": f"q:{k}", "doc_id": k, "score": 1} for k in queries],
            },
        )


# ------------------------------------------------------------------------------------------------------
# Debian Reference


def load_debref(cache: Path, lang: str) -> dict[str, list[str]]:
    """chapter id (``ch01``) -> paragraphs in document order (order is identical across languages)."""
    base = cache / "x" / f"debian-reference-{lang}" / "usr/share/debian-reference"
    out = {}
    for path in sorted(base.glob(f"ch*.{lang}.html")):
        raw = path.read_text(encoding="utf-8")
        paras = [clean(html.unescape(re.sub(r"<[^>]+>", "", p))) for p in re.findall(r"<p\b[^>]*>(.*?)</p>", raw, re.S)]
        out[path.name.split(".")[0]] = paras
    return out


def build_debref(suite: Suite, cache: Path) -> None:
    log("Debian Reference")
    en = load_debref(cache, "en")
    src = f"debian-reference-* {DEBREF_VERSION}"
    for lang in DEBREF_LANGS:
        xx = en if lang == "en" else load_debref(cache, lang)
        code = lo_code(lang)
        by_ch: dict[str, list[str]] = defaultdict(list)
        for ch in sorted(en):
            if len(xx.get(ch, [])) != len(en[ch]):
                continue  # misaligned chapter: the key would not name the same paragraph in all languages
            for i, (e, x) in enumerate(zip(en[ch], xx[ch], strict=True)):
                if not is_heldout("debref", f"{ch}#{i}") or n_words(e) < 8:
                    continue
                if lang != "en" and (x == e or not looks_like_language(x, lang)):
                    continue
                by_ch[ch].append(truncate(x))
        labels = sorted(ch for ch in by_ch if len(set(by_ch[ch])) >= 10)
        name = f"debref-clustering-{lang}"
        rng = random.Random(seed_of(name))
        per = MAX_CLUSTER_ITEMS // max(1, len(labels))
        items = []
        for ch in labels:
            pool = sorted(set(by_ch[ch]))
            items += [{"text": t, "label": ch} for t in rng.sample(pool, min(per, len(pool)))]
        if len(labels) < 2:
            log(f"  skip {name}")
            continue
        suite.write(
            {
                "name": name,
                "type": "clustering",
                "languages": [code],
                "source": src,
                "main_score": "v_measure",
                "n_clusters": len(labels),
                "description": "Cluster Debian Reference paragraphs (>=8 English words, held-out paragraphs) by "
                "chapter (ch01 GNU/Linux tutorials ... ch12 programming).",
            },
            {"items.jsonl": sorted(items, key=lambda r: (r["label"], r["text"]))},
        )


# ------------------------------------------------------------------------------------------------------
# gettext catalogs (held-out domains only)

_FORMAT = re.compile(r"%|\{\w*\}|<[^>]+>|\$\{|\\n|\n")


def gettext_code(locale: str) -> str:
    """Locale directory name -> BCP-47-ish code: pt_BR -> pt-BR, sr@latin -> sr-Latn."""
    code, _, variant = locale.partition("@")
    code = code.replace("_", "-")
    if variant in ("latin", "bengali"):
        code += {"latin": "-Latn", "bengali": "-Beng"}[variant]
    elif variant:
        code += "-" + variant
    return code


def load_gettext(cache: Path) -> dict[str, dict[str, str]]:
    """locale -> {English: translation} over the held-out domains (string entries only, no plurals)."""
    out: dict[str, dict[str, str]] = defaultdict(dict)
    for pkg in sorted(GETTEXT_PACKAGES):
        for mo in sorted((cache / "x" / pkg).rglob("LC_MESSAGES/*.mo")):
            domain = mo.stem
            if not is_heldout("gettext", domain):
                continue
            locale = mo.parent.parent.name
            with mo.open("rb") as fh:
                catalog = gettext.GNUTranslations(fh)._catalog  # noqa: SLF001 - only way to enumerate
            for key, value in sorted((k, v) for k, v in catalog.items() if isinstance(k, str)):
                if not key or not value:
                    continue
                msgid = key.split("\x04", 1)[-1]  # drop msgctxt
                if _FORMAT.search(msgid) or _FORMAT.search(value):
                    continue
                e = clean(re.sub(r"[_&~](?=\w)", "", msgid))
                x = clean(re.sub(r"[_&~](?=\w)|\(_\w\)|\(&\w\)", "", value))
                if n_words(e) < 5 or e == x or not x:
                    continue
                out[locale].setdefault(e, x)  # first domain (sorted) wins for repeated strings
    return out


def build_gettext(suite: Suite, cache: Path) -> None:
    log("gettext")
    src = "gettext catalogs of held-out domains: " + ", ".join(f"{k} {v}" for k, v in sorted(GETTEXT_PACKAGES.items()))
    for locale, pairs in sorted(load_gettext(cache).items()):
        code = gettext_code(locale)
        if base_lang(code) == "en":
            continue
        rows = sorted((e, x) for e, x in pairs.items() if looks_like_language(x, code) and digits_agree(e, x))
        rows = dedupe(rows, key=lambda r: r[1])
        name = f"gettext-bitext-{code.lower()}-en"
        if len(rows) < 150:
            continue
        rng = random.Random(seed_of(name))
        sample = sorted(rng.sample(rows, min(MAX_BITEXT, len(rows))))
        suite.write(
            {
                "name": name,
                "type": "bitext_mining",
                "languages": [code, "en"],
                "source": src,
                "source_lang": code,
                "target_lang": "en",
                "main_score": "accuracy",
                "description": "UI strings (>=5 English words, no placeholders/markup) from the held-out gettext "
                "domains vlc, gnucash and gramps; translation -> English.",
            },
            {"pairs.jsonl": [{"source": x, "target": e} for e, x in sample]},
        )


# ------------------------------------------------------------------------------------------------------
# gensim (English STS)


def build_gensim(suite: Suite, wheel: Path) -> dict[str, str]:
    log("gensim")
    base = "gensim/test/test_data/"
    with zipfile.ZipFile(wheel) as z:
        raw = {
            # lee.cor is Latin-1 (it contains a raw 0xA3 pound sign); the other files are ASCII/UTF-8.
            n: z.read(base + n).decode("latin-1" if n == "lee.cor" else "utf-8")
            for n in ("wordsim353.tsv", "simlex999.txt", "lee.cor", "similarities0-1.txt")
        }
    src = f"PyPI gensim {GENSIM_VERSION} (gensim/test/test_data)"
    for fname, name, label in (
        ("wordsim353.tsv", "wordsim353-sts", "WordSim353 (353 word pairs, 0-10)"),
        ("simlex999.txt", "simlex999-sts", "SimLex-999 (999 word pairs, 0-10)"),
    ):
        rows = []
        for line in raw[fname].splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            w1, w2, score = line.split("\t")[:3]
            rows.append({"text1": w1.strip(), "text2": w2.strip(), "score": float(score)})
        suite.write(
            {
                "name": name,
                "type": "sts",
                "languages": ["en"],
                "source": src + "/" + fname,
                "main_score": "spearman",
                "min_score": 0.0,
                "max_score": 10.0,
                "description": label + ": human word-similarity ratings. Small, English-only, word level; "
                "the only human similarity scores available offline.",
            },
            {"pairs.jsonl": rows},
        )
    docs = [clean(d) for d in raw["lee.cor"].splitlines() if d.strip()]
    matrix = [[float(v) for v in line.split()] for line in raw["similarities0-1.txt"].splitlines() if line.strip()]
    assert len(docs) == len(matrix) == 50, (len(docs), len(matrix))
    rows = []
    for i in range(50):
        for j in range(i + 1, 50):
            # The file stores the upper triangle; the lower triangle is zero-filled.
            rows.append({"text1": docs[i], "text2": docs[j], "score": matrix[i][j]})
    suite.write(
        {
            "name": "gensim-sts-lee",
            "type": "sts",
            "languages": ["en"],
            "source": src + "/lee.cor",
            "main_score": "spearman",
            "min_score": 0.0,
            "max_score": 1.0,
            "description": "Lee et al. (2005) 50 news documents, 1,225 pairs with mean human similarity "
            "(0-1). Small and English-only.",
        },
        {"pairs.jsonl": rows},
    )
    with zipfile.ZipFile(wheel) as z:
        return {n: hashlib.sha256(z.read(base + n)).hexdigest() for n in sorted(raw)}


# ------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="download/extract cache (not in repo)")
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "eval")
    ap.add_argument("--only", default="", help="comma list of sources to build (debugging)")
    args = ap.parse_args(argv)
    only = set(filter(None, args.only.split(",")))
    debs = fetch_debs(args.cache)
    wheel = fetch_gensim(args.cache)
    out: Path = args.out
    # Remove previously built task folders so deleted tasks do not linger; keep README.md.
    if out.exists():
        for child in sorted(out.iterdir()):
            if child.is_dir():
                shutil.rmtree(child)
    out.mkdir(parents=True, exist_ok=True)
    suite = Suite(out)
    gensim_files: dict[str, str] = {}
    if not only or "lohelp" in only:
        build_lohelp(suite, args.cache, LO_VERSION)
    if not only or "manpage" in only:
        build_manpages(suite, args.cache)
    if not only or "debref" in only:
        build_debref(suite, args.cache)
    if not only or "gettext" in only:
        build_gettext(suite, args.cache)
    if not only or "gensim" in only:
        gensim_files = build_gensim(suite, wheel)
    write_index(suite, out, debs, wheel.name, gensim_files)
    return 0


def write_index(suite: Suite, out: Path, debs: dict, wheel: str, gensim_files: dict[str, str]) -> None:
    tasks = {}
    for name, t in sorted(suite.tasks.items()):
        m = t["meta"]
        tasks[name] = {"type": m["type"], "languages": m["languages"], "sizes": t["sizes"]}
    index = {
        "packages": debs,
        "pypi": {"gensim": {"version": GENSIM_VERSION, "files_sha256": gensim_files}},
        "licenses": LICENSES,
        "tasks": tasks,
    }
    (out / "sources.json").write_text(
        json.dumps(index, sort_keys=True, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    fps = sorted({text_fingerprint(t) for t in suite.texts})
    (out / "fingerprints.txt").write_text("".join(f + "\n" for f in fps), encoding="ascii")
    write_readme(suite, out, debs)
    log(f"{len(tasks)} tasks, {len(fps)} text fingerprints")


README_HEAD = """\
# Held-out multilingual evaluation suite

Generated by `data/build_suite.py` -- do not edit by hand (this file is regenerated too).
Everything here is **real text shipped in Debian 12 (bookworm) and PyPI packages**, written by humans
(help authors, translators, man-page authors, psychologists for the similarity ratings); nothing is
machine-translated or synthesised by us. The suite is committed so tests and evaluation run offline.

## Rebuild

```
python data/build_suite.py            # cache in /tmp/taskembed-suite-cache (override: --cache DIR)
```

Needs `apt-get` (bookworm sources), `dpkg-deb` and `pip` with network access to the Debian archive and
PyPI; no root install. Package versions are pinned in the script (and recorded with sha256 in
`sources.json`); when bookworm publishes a newer point release the old `.deb` must come from
snapshot.debian.org. Two runs produce byte-identical files (sorted inputs, seeds derived from task names,
`json.dumps(sort_keys=True, ensure_ascii=False)`, no timestamps).

## Format

One folder per task. `task.json`: `{"name", "type", "languages": [...], "source", "description",
"main_score", ...type-specific keys}`. Files per type (JSON Lines, UTF-8):

| type | files | row keys |
|---|---|---|
| `retrieval` | `corpus.jsonl` | `{"id","text"}` (+ optional `"title"`) |
| | `queries.jsonl` | `{"id","text"}` |
| | `qrels.jsonl` | `{"query_id","doc_id","score"}` (score int > 0) |
| `bitext_mining` | `pairs.jsonl` | `{"source","target"}`; task.json has `"source_lang"`, `"target_lang"` |
| `classification` | `train.jsonl`, `test.jsonl` | `{"text","label"}`; task.json has `"labels"` |
| `clustering` | `items.jsonl` | `{"text","label"}`; task.json has `"n_clusters"` |
| `pair_classification` | `pairs.jsonl` | `{"text1","text2","label"}` (label 0/1) |
| `sts` | `pairs.jsonl` | `{"text1","text2","score"}` (float); task.json has `"min_score"`, `"max_score"` |
| `reranking` | `samples.jsonl` | `{"query","positive":[...],"negative":[...]}` |

Also here: `sources.json` (packages, versions, sha256, licences, per-task sizes) and `fingerprints.txt`
(one `taskembed.eval.split.text_fingerprint` per line for every text in the suite).

Size limits, chosen so the whole suite runs on 2 CPU cores in CI with a small model: bitext <= 300 pairs,
retrieval <= 200 queries x <= 600 docs (doc text <= 600 chars), classification <= 64 train per class and
<= 400 test, clustering <= 600 items, reranking 100 queries x (positives + 7 negatives).

## Held-out split rule (code: `src/taskembed/eval/split.py`)

`is_heldout(source, key)` hashes `f"{source}:{key}"` with sha256 and holds the unit out when the first
64 bits, read as a fraction of 2**64, are below the source's fraction:

* **LibreOffice help** (`lohelp`): key = language-independent page path (`text/swriter/guide/x.html`),
  30 % of pages held out; all languages and all paragraphs of a held-out page go to evaluation.
* **man pages** (`manpage`): key = page file name with section (`ls.1`), 30 % held out, in every language.
* **Debian Reference** (`debref`): key = `chNN#<paragraph index>` (paragraph order is identical in all
  languages), 40 % held out. Whole chapters cannot be held out because the chapter is the label.
* **gettext** (`gettext`): whole domains `vlc`, `gnucash`, `gramps` are held out; every other domain
  is free for training. UI strings recur across applications, so training code must also drop pairs whose
  English text's `text_fingerprint` is in `fingerprints.txt`.
* **gensim**: evaluation only.

Within the held-out part, classification train/test are split by page (sha256 of
`lohelp-clf-train:<page>` / `manpage-clf-train:<page>`), so no page contributes to both.

Filters: LibreOffice paragraphs must differ from the English original and pass a script / English-stopword
check (`looks_like_language`), so untranslated leftovers do not count as translations; same for man pages
(NAME summary and DESCRIPTION), help-index keywords, Debian Reference paragraphs and gettext strings.
Gettext strings with placeholders (`%s`, `{0}`), markup or newlines are dropped; accelerators (`_ & ~`)
are stripped.

Known issues found while building: `libreoffice-help-sk` is only a symlink to the Czech help (excluded);
`manpages-zh`'s zh_TW pages are a script conversion of zh_CN (only zh-CN used); Dzongkha and Oromo help
contain some misaligned or partial translations (kept as found); man pages in legacy (non-UTF-8) encodings
are skipped. No human-scored multilingual STS exists in any package: the STS tasks are English only and
small (word pairs and 50 news documents) -- do not read them as a multilingual STS score.
"""


def write_readme(suite: Suite, out: Path, debs: dict[str, dict[str, str]]) -> None:
    groups = [
        ("LibreOffice help", "libreoffice-help-", "lohelp"),
        ("man pages", "manpages", "manpage"),
        ("Debian Reference", "debian-reference-", "debref"),
        ("gettext catalogs", "", "gettext"),
    ]
    lines = [README_HEAD, "## Sources\n", "| source | packages (version) | licence |", "|---|---|---|"]
    for title, prefix, key in groups:
        if key == "gettext":
            names = sorted(GETTEXT_PACKAGES)
        else:
            names = sorted(n for n in debs if n.startswith(prefix))
        versions = sorted({debs[n]["version"] for n in names if n in debs})
        lines.append(f"| {title} | {', '.join(names)} ({'; '.join(versions)}) | {LICENSES[key]} |")
    lines.append(f"| English similarity | PyPI `gensim` {GENSIM_VERSION} test data | {LICENSES['gensim']} |")
    lines += ["", "## Tasks\n"]
    langs = sorted({lang for t in suite.tasks.values() for lang in t["meta"]["languages"]})
    lines.append(f"{len(suite.tasks)} tasks, {len(langs)} language codes: {', '.join(langs)}.\n")
    lines += ["| task | type | languages | files (rows) |", "|---|---|---|---|"]
    for name, t in sorted(suite.tasks.items()):
        sizes = ", ".join(f"{f} {n}" for f, n in sorted(t["sizes"].items()))
        lines.append(f"| {name} | {t['meta']['type']} | {', '.join(t['meta']['languages'])} | {sizes} |")
    (out / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
