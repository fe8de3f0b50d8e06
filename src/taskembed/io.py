"""Reading and writing JSON Lines: training data, evaluation tasks, corpora, development files."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def parse_record(line: str | bytes, where: str) -> dict[str, Any]:
    """One JSONL line as its record, or a ValueError naming `where` (file:line or file and byte)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not a JSON record ({e.msg})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{where}: not a JSON record (a JSON object, {{...}})")
    return record


def iter_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """The records of a JSONL file, blank lines skipped; a bad line names the file and line number."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                yield parse_record(line, f"{path}:{n}")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    return list(iter_jsonl(path))


def write_jsonl(path: str | Path, records: Iterable[dict]) -> Path:
    """Write records one per line (UTF-8, not ASCII-escaped), creating the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path
