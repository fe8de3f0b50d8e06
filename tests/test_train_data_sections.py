"""Section heading -> window pairs of the training data builder, on hand-made help pages."""

from __future__ import annotations

import build_train_data as btd

bs = btd.bs  # data/build_suite.py, imported by the builder


def _lang(pages: dict[str, list[tuple[str, str]]]) -> bs.LOLang:
    lo = object.__new__(bs.LOLang)  # the pages by hand instead of parsed from a help package
    lo.pages = {}
    for key, units in pages.items():
        lo.pages[key] = {"title": units[0][1], "units": dict(units), "order": [i for i, _ in units]}
    lo.bookmarks = []
    return lo


def _page(title: str, heading: str, filler: int) -> list[tuple[str, str]]:
    body = [(f"par_id{i}", f"Paragraph {i} of {title} says something rather long about it.") for i in range(filler)]
    return [("hd_id0", title), *body, ("hd_id9", heading), ("par_id99", f"What {heading} does.")]


def test_unique_headings_get_a_window_that_holds_them_after_its_start():
    en = _lang({"a.xhp": _page("Page A", "Borders of tables", 20),
                "b.xhp": _page("Page B", "Example", 3), "c.xhp": _page("Page C", "Example", 3)})
    pairs = list(btd.section_windows(en, en, sorted(en.pages), "en"))
    assert [p["query"] for p in pairs] == ["Borders of tables"]  # "Example" names two pages
    window = pairs[0]["positive"]
    start = window.index("Borders of tables")
    assert btd.SECTION_BEFORE <= start < btd.SECTION_BEFORE + 80  # the section inside, not at the start
    assert window.endswith("What Borders of tables does.") and window.startswith("Paragraph ")
    assert len(window) <= btd.SECTION_WINDOW


def test_a_heading_first_on_its_page_or_left_untranslated_is_skipped():
    en = _lang({"a.xhp": [("hd_id0", "Title"), ("hd_id1", "Opening heading"), ("par_id1", "Text here."),
                          ("hd_id2", "Second heading"), ("par_id2", "More text.")]})
    de = _lang({"a.xhp": [("hd_id0", "Titel"), ("hd_id1", "Erste Überschrift"), ("par_id1", "Text hier."),
                          ("hd_id2", "Second heading"), ("par_id2", "Mehr Text.")]})
    assert [p["query"] for p in btd.section_windows(en, en, ["a.xhp"], "en")] == ["Second heading"]
    assert list(btd.section_windows(de, en, ["a.xhp"], "de")) == []


def _long_page(title: str, n: int) -> list[tuple[str, str]]:
    sents = [(f"par_id{i}", f"In {title} sentence number {i} tells the reader one particular thing.") for i in range(n)]
    return [("hd_id0", title), *sents]


def test_sentences_of_long_pages_get_a_holding_window_and_a_same_page_negative():
    en = _lang({f"{c}.xhp": _long_page(f"Page {c}", 120) for c in "abc"} | {"short.xhp": _long_page("Short", 10)})
    pairs = list(btd.sentence_windows(en, en, sorted(en.pages), "en"))
    assert len(pairs) == 3 * btd.SENTENCES_PER_PAGE  # the short page (one window) gives none
    depths = []
    for p in pairs:
        page = p["query"].split(" sentence")[0]  # "In Page a"
        (neg,) = p["negatives"]
        assert p["query"] in p["positive"] and p["query"] not in neg
        assert p["positive"].startswith(page) and neg.startswith(page)  # both windows of the sentence's page
        assert len(p["positive"]) <= btd.SECTION_WINDOW and len(neg) <= btd.SECTION_WINDOW
        assert len(neg) > btd.SECTION_WINDOW // 2  # a full window, not a stub of the page's end
        depths.append(p["positive"].index(p["query"]))
    assert max(depths) > 3 * min(depths) + 200  # the sentence sits at different depths of its window
    assert pairs == list(btd.sentence_windows(en, en, sorted(en.pages), "en"))  # seeded per page


def test_untranslated_sentences_are_not_sentence_queries():
    en = _lang({"a.xhp": _long_page("Page", 120)})
    de = _lang({"a.xhp": [("hd_id0", "Seite"), *[(i, t.replace("tells", "sagt") if int(i[6:]) % 2 else t)
                                                  for i, t in _long_page("Page", 120)[1:]]]})
    pairs = list(btd.sentence_windows(de, en, ["a.xhp"], "de"))
    assert pairs and all("sagt" in p["query"] for p in pairs)
