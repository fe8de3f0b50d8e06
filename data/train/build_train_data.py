#!/usr/bin/env python3
"""Build the default model's training data from the allowed Debian packages, training side only.

Usage::

    python data/train/build_train_data.py [--out /tmp/taskembed-train] [--cache /tmp/taskembed-train-cache]
        [--suite-cache /tmp/taskembed-suite-cache] [--only lohelp,manpage,gettext,wordnet,freedict,cldr]

Sources (nothing else; other documentation packages are reserved for evaluation):

* LibreOffice help **training pages** (``not is_heldout("lohelp", page)``): en->X paragraph pairs, title ->
  body pairs, index keyword -> page pairs, section heading -> a window of the page holding it, paragraphs
  labelled with their module, raw paragraphs.
* man pages, **training pages** (``not is_heldout("manpage", "ls.1")``): NAME summary -> DESCRIPTION pairs,
  DESCRIPTIONs labelled with their section.
* gettext catalogs (``.mo``) of Debian packages outside the held-out domains (``is_heldout("gettext",
  domain)``): LibreOffice l10n, Inkscape, Blender, Evolution, GIMP, GTK, Freeciv, GCC, iso-codes.
* WordNet glosses (``wordnet-base``), FreeDict dictionaries (``dict-freedict-*``), CLDR annotations
  (``unicode-cldr-core``).

Every record of every file passes :class:`LeakFilter`: any text whose ``text_fingerprint`` is in
``data/eval/fingerprints.txt`` drops the record (UI strings repeat across applications, paragraphs across
pages). Output: one JSONL file per source and language in the formats ``taskembed_train.data`` reads
(pairs ``{"query","positive"}``, labelled ``{"text","label"}``, raw ``{"text"}``), shuffled with a fixed
seed, plus ``manifest.json`` (package versions and sha256, per-file counts and sha256). Large outputs stay
outside the repository.
"""

from __future__ import annotations

import argparse
import gettext
import gzip
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "data")]

import build_suite as bs  # noqa: E402  (shared parsers: LibreOffice help, man pages, language filter)

from taskembed.eval.split import is_heldout, text_fingerprint  # noqa: E402

DEFAULT_OUT = Path(os.environ.get("TASKEMBED_TRAIN_DATA", "/tmp/taskembed-train"))
DEFAULT_CACHE = Path(os.environ.get("TASKEMBED_TRAIN_CACHE", "/tmp/taskembed-train-cache"))
FINGERPRINTS = ROOT / "data" / "eval" / "fingerprints.txt"

# gettext packages (bookworm). LibreOffice l10n packages are all those apt knows (about 93).
GETTEXT_PACKAGES = ["inkscape", "blender-data", "evolution-common", "gimp-data", "libgtk-3-common", "freeciv-data",
                    "gcc-12-locales", "iso-codes"]  # fmt: skip
LEXICAL_PACKAGES = ["wordnet-base", "unicode-cldr-core"]
SEED = 5
MIN_WORDS_GETTEXT = 3


# --- the leak filter ----------------------------------------------------------------------------------


TEXT_KEYS = ("text", "query", "positive", "text1", "text2")


def record_texts(record: dict) -> list[str]:
    out = [record[k] for k in TEXT_KEYS if isinstance(record.get(k), str)]
    return out + [t for t in record.get("negatives", []) if isinstance(t, str)]


class LeakFilter:
    """Drops records with any text whose fingerprint is in the evaluation suite (counts what it dropped)."""

    def __init__(self, fingerprints: Iterable[str] | None = None) -> None:
        if fingerprints is None:
            fingerprints = FINGERPRINTS.read_text(encoding="ascii").split()
        self.eval = frozenset(fingerprints)
        self.dropped = 0

    def leaks(self, text: str) -> bool:
        return text_fingerprint(text) in self.eval

    def keep(self, record: dict) -> bool:
        if any(self.leaks(t) for t in record_texts(record)):
            self.dropped += 1
            return False
        return True


def train_side(source: str, key: str) -> bool:
    """True when unit `key` of `source` may be trained on (the suite's split rule, imported)."""
    return not is_heldout(source, key)


# --- output -------------------------------------------------------------------------------------------


class Writer:
    def __init__(self, out: Path, leak: LeakFilter) -> None:
        self.out, self.leak = out, leak
        self.files: dict[str, dict] = {}
        out.mkdir(parents=True, exist_ok=True)

    def write(self, name: str, records: Iterable[dict], source: str, min_records: int = 50) -> int:
        seen: set[str] = set()
        rows = []
        dropped_before = self.leak.dropped
        for r in records:
            key = json.dumps(r, sort_keys=True, ensure_ascii=False)
            if key in seen or not self.leak.keep(r):
                continue
            seen.add(key)
            rows.append(key)
        if len(rows) < min_records:
            return 0
        rows.sort()
        random.Random(f"{SEED}:{name}").shuffle(rows)  # files are read in order and cycled: shuffle once
        data = "".join(r + "\n" for r in rows).encode("utf-8")
        (self.out / f"{name}.jsonl").write_bytes(data)
        self.files[name] = {"source": source, "records": len(rows), "sha256": hashlib.sha256(data).hexdigest(),
                            "dropped_eval_overlap": self.leak.dropped - dropped_before}  # fmt: skip
        bs.log(f"  {name}: {len(rows)}")
        return len(rows)


# --- fetching -----------------------------------------------------------------------------------------


def apt_packages(cache: Path, names: list[str]) -> dict[str, dict[str, str]]:
    """apt-get download (candidate versions) + dpkg-deb -x into cache/x/NAME; returns version and sha256."""
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    missing = [n for n in names if not list(debs.glob(f"{n}_*.deb"))]
    if missing:
        bs.log(f"apt-get download {len(missing)} packages")
        subprocess.run(["apt-get", "download", *missing], cwd=debs, check=True, stdout=subprocess.DEVNULL)
    info = {}
    for n in names:
        deb = sorted(debs.glob(f"{n}_*.deb"))[-1]
        target = cache / "x" / n
        if not (target / ".done").exists():
            target.mkdir(parents=True, exist_ok=True)
            subprocess.run(["dpkg-deb", "-x", str(deb), str(target)], check=True)
            (target / ".done").write_text(deb.name)
        info[n] = {"version": deb.name.split("_")[1].replace("%3a", ":"),
                   "sha256": hashlib.sha256(deb.read_bytes()).hexdigest()}  # fmt: skip
    return info


def apt_names(prefix: str, pattern: str = "") -> list[str]:
    out = subprocess.run(["apt-cache", "pkgnames", prefix], check=True, capture_output=True, text=True).stdout
    return sorted(n for n in out.split() if re.fullmatch(pattern or re.escape(prefix) + r".*", n))


# --- LibreOffice help (training pages) ----------------------------------------------------------------


def build_lohelp(w: Writer, suite_cache: Path) -> None:
    bs.log("LibreOffice help (training pages)")
    en = bs.load_lo(suite_cache, "en")
    for lang in ["en", *bs.LO_LANGS]:
        xx = en if lang == "en" else bs.load_lo(suite_cache, lang)
        code = bs.lo_code(lang).lower()
        pages = sorted(p for p in xx.pages if train_side("lohelp", p))
        if bs.base_lang(lang) != "en":  # en-GB against en-US differs in spelling, not language
            pairs = []
            for page in pages:
                if page not in en.pages:
                    continue
                eu, xu = en.pages[page]["units"], xx.pages[page]["units"]
                for ident in en.pages[page]["order"]:
                    e, x = eu[ident], xu.get(ident)
                    if (x and x != e and bs.n_words(e) >= 3 and bs.digits_agree(e, x)
                            and bs.looks_like_language(x, lang)):
                        pairs.append({"query": e, "positive": x})
            w.write(f"lohelp-bitext-{code}-en", pairs, "lohelp")
        # Title -> body (retrieval-like) and paragraph -> module (classification), translated pages only.
        titles, labelled, raw = [], [], []
        for page in pages:
            info = xx.pages[page]
            if lang != "en" and (page not in en.pages or xx.doc_text(page) == en.doc_text(page)):
                continue
            body = xx.doc_text(page)
            if info["title"] and body and bs.n_words(body) >= 8:
                titles.append({"query": info["title"], "positive": body})
            module = bs.lo_module(page)
            for ident in info["order"]:
                t = info["units"][ident]
                if bs.n_words(t) >= 6 or (len(t) >= 20 and bs.base_lang(lang) in ("ja", "zh", "ko")):
                    raw.append({"text": t})
                    if module in bs.LO_MODULES:
                        labelled.append({"text": t, "label": module})
        w.write(f"lohelp-title-{code}", titles, "lohelp")
        w.write(f"lohelp-module-{code}", labelled, "lohelp")
        w.write(f"lohelp-text-{code}", raw, "lohelp")
        keywords = [{"query": kw, "positive": xx.doc_text(page)} for page, _, kw in xx.bookmarks
                    if page in xx.pages and train_side("lohelp", page) and xx.doc_text(page)]  # fmt: skip
        w.write(f"lohelp-index-{code}", keywords, "lohelp")
        w.write(f"lohelp-section-{code}", section_windows(xx, en, pages, lang), "lohelp")
        w.write(f"lohelp-sentence-{code}", sentence_windows(xx, en, pages, lang), "lohelp")


SECTION_BEFORE = 400  # characters of the page before the heading: the section sits inside the window
SECTION_WINDOW = 1500  # about one 512-token window of Latin-script text


def section_windows(xx: bs.LOLang, en: bs.LOLang, pages: list[str], lang: str) -> Iterator[dict]:
    """Section heading -> a window of its page that holds the section, not at the window's start.

    A long page is read in windows, and a query about one of its later sections has to find the window that
    holds it; title -> page pairs only teach the page's start. Only headings that occur in no other page (a
    generic "Example" names no page) and, outside English, are translated.
    """
    count: dict[str, int] = {}
    for page in pages:
        for ident in xx.pages[page]["order"]:
            if ident.startswith("hd_id"):
                t = xx.pages[page]["units"][ident]
                count[t] = count.get(t, 0) + 1
    for page in pages:
        info = xx.pages[page]
        order = [i for i in info["order"] if info["units"][i] != info["title"]]
        en_units = en.pages[page]["units"] if page in en.pages else {}
        for k, ident in enumerate(order):
            head = info["units"][ident]
            if (not ident.startswith("hd_id") or count[head] != 1 or k == 0
                    or (lang != "en" and en_units.get(ident) == head)):
                continue
            start, before = k, 0
            while start > 0 and before < SECTION_BEFORE:
                start -= 1
                before += len(info["units"][order[start]]) + 1
            window = " ".join(info["units"][i] for i in order[start:])
            yield {"query": head, "positive": bs.truncate(window, SECTION_WINDOW)}


SENTENCES_PER_PAGE = 2


def sentence_windows(xx: bs.LOLang, en: bs.LOLang, pages: list[str], lang: str) -> Iterator[dict]:
    """A sentence of a long page -> a window of the page that holds it at a random depth, with a window of
    the same page that does not as the hard negative.

    Pages over two windows long only. Every window shares the page's topic, so only the sentence itself
    tells the two apart: a long text's vector has to keep what one of its sentences says, which topic-level
    pairs (title -> page) never ask for. Outside English, translated pages and sentences only.
    """
    for page in pages:
        info = xx.pages[page]
        if lang != "en" and (page not in en.pages or xx.doc_text(page) == en.doc_text(page)):
            continue
        order = [i for i in info["order"] if info["units"][i] != info["title"]]
        units = [info["units"][i] for i in order]
        starts, at = [], 0
        for u in units:
            starts.append(at)
            at += len(u) + 1
        if at < 2 * SECTION_WINDOW:
            continue
        en_units = en.pages[page]["units"] if page in en.pages else {}
        seen: dict[str, int] = {}
        for u in units:
            seen[u] = seen.get(u, 0) + 1
        cjk = bs.base_lang(lang) in ("ja", "zh", "ko")
        candidates = [k for k, (ident, u) in enumerate(zip(order, units, strict=True))
                      if not ident.startswith("hd_id") and seen[u] == 1 and len(u) < SECTION_WINDOW // 3
                      and (bs.n_words(u) >= 8 or (cjk and len(u) >= 30))
                      and (lang == "en" or en_units.get(ident) != u)]  # fmt: skip
        rng = random.Random(f"{SEED}:{lang}:{page}")
        for k in rng.sample(candidates, min(SENTENCES_PER_PAGE, len(candidates))):
            end = starts[k] + len(units[k])
            holds = [j for j in range(k + 1) if end - starts[j] <= SECTION_WINDOW - 100]  # truncate cuts at a space
            # a window that ends before the sentence, or starts after it and still reads a full window
            apart = [j for j in range(len(units)) if (j < k and starts[k] - starts[j] >= SECTION_WINDOW)
                     or (j > k and at - starts[j] >= SECTION_WINDOW)]  # fmt: skip
            if not holds or not apart:
                continue
            window = [bs.truncate(" ".join(units[j:]), SECTION_WINDOW) for j in (rng.choice(holds), rng.choice(apart))]
            yield {"query": units[k], "positive": window[0], "negatives": [window[1]]}


# --- man pages (training pages) -----------------------------------------------------------------------


def build_manpages(w: Writer, suite_cache: Path) -> None:
    bs.log("man pages (training pages)")
    for lang in sorted(bs.MAN_LANG_DIRS):
        pages = {k: v for k, v in bs.load_man(suite_cache, lang).items() if train_side("manpage", k)}
        code = lang.lower()
        w.write(f"manpage-retrieval-{code}", [{"query": q, "positive": d} for q, d in pages.values()], "manpage")
        w.write(f"manpage-section-{code}", [{"text": d, "label": "man" + k.rsplit(".", 1)[1][:1]}
                                            for k, (_, d) in pages.items()], "manpage")  # fmt: skip


# --- gettext ------------------------------------------------------------------------------------------


_ACCEL = re.compile(r"[_&~](?=\w)|\(_\w\)|\(&\w\)")


def gettext_pairs(roots: list[Path]) -> Iterator[tuple[str, str, str, str]]:
    """(domain, locale, English, translation) from every .mo under roots, held-out domains skipped."""
    for root in roots:
        for mo in sorted(root.rglob("LC_MESSAGES/*.mo")):
            domain = mo.stem
            if not train_side("gettext", domain):
                continue
            locale = mo.parent.parent.name
            try:
                with mo.open("rb") as fh:
                    catalog = gettext.GNUTranslations(fh)._catalog  # noqa: SLF001 - only way to enumerate
            except Exception:  # a broken or foreign .mo file: skip it, never stop the build
                continue
            for key, value in catalog.items():
                if not isinstance(key, str) or not key or not value:
                    continue
                msgid = key.split("\x04", 1)[-1]
                if bs._FORMAT.search(msgid) or bs._FORMAT.search(value):  # noqa: SLF001
                    continue
                yield domain, locale, bs.clean(_ACCEL.sub("", msgid)), bs.clean(_ACCEL.sub("", value))


def build_gettext(w: Writer, cache: Path) -> None:
    bs.log("gettext (training domains)")
    roots = [cache / "x" / n for n in sorted(os.listdir(cache / "x"))
             if n.startswith("libreoffice-l10n-") or n in GETTEXT_PACKAGES]  # fmt: skip
    by_lang: dict[str, dict[str, str]] = {}
    for domain, locale, e, x in gettext_pairs(roots):
        code = bs.gettext_code(locale)
        if bs.base_lang(code) == "en" or e == x or not x:
            continue
        if bs.n_words(e) < MIN_WORDS_GETTEXT and not domain.startswith("iso_"):
            continue
        by_lang.setdefault(code.lower(), {}).setdefault(e, x)
    for code, pairs in sorted(by_lang.items()):
        rows = [{"query": e, "positive": x} for e, x in sorted(pairs.items())
                if bs.looks_like_language(x, code) and bs.digits_agree(e, x)]  # fmt: skip
        w.write(f"gettext-{code}-en", rows, "gettext")


# --- lexical sources ----------------------------------------------------------------------------------


def build_wordnet(w: Writer, cache: Path) -> None:
    bs.log("WordNet glosses")
    rows = []
    for pos in ("noun", "verb", "adj", "adv"):
        path = cache / "x" / "wordnet-base" / "usr/share/wordnet" / f"data.{pos}"
        if not path.exists():
            continue
        for line in path.read_text(encoding="latin-1").splitlines():
            if line.startswith("  ") or "|" not in line:
                continue
            head, gloss = line.split("|", 1)
            f = head.split()
            words = [f[4 + 2 * i].replace("_", " ") for i in range(int(f[3], 16))]
            definition = gloss.split(";")[0].strip()
            if words and bs.n_words(definition) >= 3:
                rows.append({"query": words[0], "positive": definition})
    w.write("wordnet-gloss-en", rows, "wordnet")


_TAGS = re.compile(r"\s*(<[^>]*>|\[[^\]]*\])")  # grammar <n> and usage [Br.] marks of FreeDict senses


_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _dictd_number(text: str) -> int:
    n = 0
    for ch in text:
        n = n * 64 + _B64.index(ch)
    return n


def freedict_entries(index: str, data: bytes) -> Iterator[tuple[str, str]]:
    """(headword, translations) from a dictd .index (headword, base64 offset, base64 length) and its .dict."""
    for line in index.splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or parts[0].startswith("00-database") or parts[0].startswith("00database"):
            continue
        start, size = _dictd_number(parts[1]), _dictd_number(parts[2])
        lines = data[start : start + size].decode("utf-8", errors="replace").splitlines()
        # Line 1 repeats the headword (with IPA); indented lines are notes (Synonyms: ...) and lines with
        # /IPA/ are inflected forms, not translations; "1. " numbering is dropped.
        senses = [re.sub(r"^\d+\.\s*", "", _TAGS.sub("", ln)).strip() for ln in lines[1:]
                  if ln.strip() and not ln[:1].isspace() and "/" not in ln]  # fmt: skip
        sense = "; ".join(x for x in senses[:3] if x)
        head = parts[0].strip()
        if head and sense and head != sense and "http" not in sense:
            yield head, sense[:300]


def build_freedict(w: Writer, cache: Path) -> None:
    bs.log("FreeDict")
    for pkg in sorted(p for p in os.listdir(cache / "x") if p.startswith("dict-freedict-")):
        pair = pkg[len("dict-freedict-") :]
        for dz in sorted((cache / "x" / pkg / "usr/share/dictd").glob("*.dict.dz")):
            index = dz.with_name(dz.name[: -len(".dict.dz")] + ".index").read_text(encoding="utf-8", errors="replace")
            rows = [{"query": h, "positive": t} for h, t in freedict_entries(index, gzip.decompress(dz.read_bytes()))]
            w.write(f"freedict-{pair}", rows, "freedict")


def build_cldr(w: Writer, cache: Path) -> None:
    bs.log("CLDR annotations")
    base = cache / "x" / "unicode-cldr-core" / "usr/share/unicode/cldr/common/annotations"
    for xml in sorted(base.glob("*.xml")):
        locale = xml.stem
        rows = []
        names, keywords = {}, {}
        for a in ET.parse(xml).getroot().iter("annotation"):
            cp, text = a.get("cp"), (a.text or "").strip()
            if not cp or not text or text == "↑↑↑":
                continue
            if a.get("type") == "tts":
                names[cp] = text
            else:
                keywords[cp] = text.replace(" | ", ", ")
        rows = [{"query": names[cp], "positive": keywords[cp]} for cp in sorted(names)
                if cp in keywords and keywords[cp] != names[cp]]  # fmt: skip
        w.write(f"cldr-annotations-{locale.lower().replace('_', '-')}", rows, "cldr", min_records=200)


# --- main ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="download/extract cache (not in the repo)")
    ap.add_argument("--suite-cache", type=Path, default=bs.DEFAULT_CACHE,
                    help="data/build_suite.py's cache (LibreOffice help and man pages, same pinned versions)")
    ap.add_argument("--only", default="", help="comma list: lohelp,manpage,gettext,wordnet,freedict,cldr")
    args = ap.parse_args(argv)
    only = set(filter(None, args.only.split(","))) or {"lohelp", "manpage", "gettext", "wordnet", "freedict", "cldr"}
    leak = LeakFilter()
    w = Writer(args.out, leak)
    packages: dict[str, dict[str, str]] = {}
    if only & {"lohelp", "manpage"}:
        bs.fetch_debs(args.suite_cache)  # the suite's pinned help/man packages; training uses the other pages
    if "lohelp" in only:
        build_lohelp(w, args.suite_cache)
    if "manpage" in only:
        build_manpages(w, args.suite_cache)
    if "gettext" in only:
        packages |= apt_packages(args.cache, apt_names("libreoffice-l10n-") + GETTEXT_PACKAGES)
        build_gettext(w, args.cache)
    if "wordnet" in only:
        packages |= apt_packages(args.cache, ["wordnet-base"])
        build_wordnet(w, args.cache)
    if "freedict" in only:
        names = apt_names("dict-freedict-", r"dict-freedict-(eng-[a-z]{3}|[a-z]{3}-eng)")
        packages |= apt_packages(args.cache, names)
        build_freedict(w, args.cache)
    if "cldr" in only:
        packages |= apt_packages(args.cache, ["unicode-cldr-core"])
        build_cldr(w, args.cache)
    old = json.loads((args.out / "manifest.json").read_text()) if (args.out / "manifest.json").is_file() else {}
    # --only runs add to what an earlier run built in the same directory.
    packages = old.get("packages", {}) | packages
    w.files = old.get("files", {}) | w.files
    manifest = {
        "packages": dict(sorted(packages.items())), "files": dict(sorted(w.files.items())),
        "dropped_eval_overlap": sum(f.get("dropped_eval_overlap", 0) for f in w.files.values()),
        "records": sum(f["records"] for f in w.files.values()),
    }  # fmt: skip
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    bs.log(f"{manifest['records']} records in {len(w.files)} files; "
           f"{manifest['dropped_eval_overlap']} dropped as eval overlap")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
