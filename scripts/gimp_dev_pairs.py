"""Development pairs from the GIMP manual (a source none of our training or evaluation data comes from), for
adapter selection out of source (`taskembed train adapters --dev-data ...`). Development only, never training.

Per language: (page title, the page's opening text) pairs; with --cross, (title in LANG, the English page
of the same file) pairs; with --bitext, (title in LANG, the English title of the same page) pairs, for
text-matching's bitext mining (untranslated titles left out); with --clusters, (page opening, the section
it sits in) labelled records, for separation's clustering (sections of at least 10 pages). Pages are
shuffled with a fixed seed, so the first N rows are a fair sample.

    apt-get download gimp-help-en gimp-help-de ...; dpkg -x each .deb into ROOT
    python scripts/gimp_dev_pairs.py ROOT OUT --langs en de ja --cross de ja --bitext de ja --clusters en de ja
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import Counter
from pathlib import Path

from long_dev_check import SECTION_NUMBER, read_pages
from taskembed.io import write_jsonl


def write(path: Path, rows: list[dict]) -> None:
    write_jsonl(path, rows)
    print(f"{path}: {len(rows)} pairs", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", help="folder the gimp-help .debs were unpacked into")
    p.add_argument("out", type=Path)
    p.add_argument("--langs", nargs="*", default=["en", "de", "ja"])
    p.add_argument("--cross", nargs="*", default=[], help="languages whose titles also query the English pages")
    p.add_argument("--bitext", nargs="*", default=[], help="languages whose titles pair with the English titles")
    p.add_argument("--clusters", nargs="*", default=[], help="languages whose pages are labelled by section")
    p.add_argument("--cluster-chars", type=int, default=500, help="opening characters of a page to cluster")
    p.add_argument("--chars", type=int, default=1500, help="opening characters of a page kept as the passage")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    args.out.mkdir(parents=True, exist_ok=True)
    help_dir = Path(args.root) / "usr/share/gimp/2.0/help"
    langs = {*args.langs, *args.cross, *args.bitext, *args.clusters, "en"}
    pages = {lang: read_pages(help_dir / lang) for lang in langs}
    for lang in [*args.langs, *[f"{c}-en" for c in args.cross]]:
        q_lang = lang.split("-")[0]
        d_pages = {pg["id"]: pg for pg in pages["en" if lang.endswith("-en") else lang]}
        rows = [{"query": pg["title"], "positive": d_pages[pg["id"]]["text"][: args.chars]}
                for pg in pages[q_lang] if pg["id"] in d_pages and len(pg["title"].split()) >= 1]
        rows = list({r["query"]: r for r in rows}.values())  # a title naming two pages cannot be scored
        random.Random(f"{args.seed}-{lang}").shuffle(rows)
        write(args.out / f"gimp-title-{lang}.jsonl", rows)
    en_titles = {pg["id"]: pg["title"] for pg in pages["en"]}
    for lang in args.bitext:
        rows = [{"query": pg["title"], "positive": en_titles[pg["id"]]} for pg in pages[lang]
                if pg["id"] in en_titles and pg["title"] != en_titles[pg["id"]]]
        rows = list({r["positive"]: r for r in rows}.values())
        random.Random(f"{args.seed}-bitext-{lang}").shuffle(rows)
        write(args.out / f"gimp-bitext-{lang}-en.jsonl", rows)
    for lang in args.clusters:
        rows = []
        for pg in pages[lang]:  # the section is the page DocBook links as "up" (same file names in every language)
            if pg["up"] and pg["up"] != "index.html":
                text = SECTION_NUMBER.sub("", pg["text"])  # "3.2.1. Blur": the numbering would give the section away
                rows.append({"text": text[: args.cluster_chars], "label": pg["up"].removesuffix(".html")})
        sizes = Counter(r["label"] for r in rows)
        rows = [r for r in rows if sizes[r["label"]] >= 10]
        random.Random(f"{args.seed}-clusters-{lang}").shuffle(rows)
        write(args.out / f"gimp-cluster-{lang}.jsonl", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
