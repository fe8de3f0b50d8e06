"""taskembed.io: JSONL round trip and the error a broken line gives."""

from __future__ import annotations

import pytest

from taskembed.io import iter_jsonl, read_jsonl, write_jsonl


def test_round_trip_keeps_unicode_and_skips_blank_lines(tmp_path):
    rows = [{"text": "Grüße, 世界", "label": 1}, {"query": "q", "positive": "p\nwith a newline"}]
    path = write_jsonl(tmp_path / "sub" / "a.jsonl", rows)
    raw = path.read_text(encoding="utf-8")
    assert "世界" in raw and raw.count("\n") == 2  # not ASCII-escaped; the inner newline is escaped
    path.write_text(raw + "\n  \n", encoding="utf-8")
    assert read_jsonl(path) == rows


def test_a_broken_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"text": "cut\n', encoding="utf-8")
    records = iter_jsonl(path)
    assert next(records) == {"text": "ok"}
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not a JSON record"):
        next(records)


def test_a_line_that_is_json_but_not_an_object_is_refused(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text('{"text": "ok"}\n\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"list\.jsonl:3: not a JSON record \(a JSON object"):
        read_jsonl(path)
