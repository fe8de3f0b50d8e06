"""scripts/gimp_dev_pairs.py on a tiny manual tree: the development files its --clusters option writes."""

from __future__ import annotations

import json
from pathlib import Path

import gimp_dev_pairs


def _page(folder: Path, name: str, up: str, title: str, body: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(
        f'<html><head><link rel="up" href="{up}" title="x" /></head><body>'
        f'<div class="sect2"><h3 class="title">{title}</h3><p>{body}</p></div>'
        '<div class="navfooter">next page</div></body></html>', encoding="utf-8")


def test_clusters_label_pages_by_their_section(tmp_path):
    en = tmp_path / "root/usr/share/gimp/2.0/help/en"
    for i in range(12):
        _page(en, f"blur-{i}.html", "filters-blur.html", f"3.{i}. Blur number {i}", f"Blurs the image, way {i}.")
    for i in range(10):
        _page(en, f"layer-{i}.html", "gimp-layer-menu.html", f"A.{i}. Layer item {i}", f"Moves layers, way {i}.")
    for i in range(3):  # a section under 10 pages is too small to score
        _page(en, f"tiny-{i}.html", "tiny-section.html", f"Tiny {i}", "Something else.")
    _page(en, "top.html", "index.html", "Top", "The manual's top page.")
    assert gimp_dev_pairs.main([str(tmp_path / "root"), str(tmp_path / "out"), "--langs", "en",
                                "--clusters", "en", "--cluster-chars", "40"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "out/gimp-cluster-en.jsonl").open(encoding="utf-8")]
    assert sorted({r["label"] for r in rows}) == ["filters-blur", "gimp-layer-menu"]
    assert sum(r["label"] == "filters-blur" for r in rows) == 12 and len(rows) == 22
    blur7 = next(r for r in rows if r["text"].startswith("Blur number 7"))
    assert blur7["label"] == "filters-blur" and len(blur7["text"]) <= 40  # section number cut, then the cut
    assert all(not r["text"][0].isdigit() and not r["text"].startswith("A.") for r in rows)
    assert [r["text"] for r in rows] != sorted(r["text"] for r in rows)  # shuffled (fixed seed)
