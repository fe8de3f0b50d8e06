"""Development pairs from the GIMP manual (a source none of our training or evaluation data comes from), for
adapter selection out of source (`taskembed train adapters --dev-data ...`). Development only, never training.

Per language: (page title, the page's opening text) pairs; with --cross, (title in LANG, the English page
of the same file) pairs; with --bitext, (title in LANG, the English title of the same page) pairs, for
text-matching's bitext mining (untranslated titles left out). Pages are shuffled with a fixed seed, so the
first N rows are a fair sample.

    apt-get download gimp-help-en gimp-help-de ...; dpkg -x each .deb into ROOT
    python scripts/gimp_dev_pairs.py ROOT OUT --langs en de ja --cross de ja --bitext de ja
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from long_dev_check import read_pages


def write(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{path}: {len(rows)} pairs", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", help="folder the gimp-help .debs were unpacked into")
    p.add_argument("out", type=Path)
    p.add_argument("--langs", nargs="*", default=["en", "de", "ja"])
    p.add_argument("--cross", nargs="*", default=[], help="languages whose titles also query the English pages")
    p.add_argument("--bitext", nargs="*", default=[], help="languages whose titles pair with the English titles")
    p.add_argument("--chars", type=int, default=1500, help="opening characters of a page kept as the passage")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    args.out.mkdir(parents=True, exist_ok=True)
    help_dir = Path(args.root) / "usr/share/gimp/2.0/help"
    pages = {lang: read_pages(help_dir / lang) for lang in {*args.langs, *args.cross, *args.bitext, "en"}}
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
