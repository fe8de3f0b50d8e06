"""Training data: one source per file, read lazily, and a stream of one-source batches.

Record kinds (detected from the first record's keys):
  pairs     {"query", "positive"}
  tuples    {"query", "positive", "negatives": [...]}
  scored    {"text1", "text2", "score"}
  labelled  {"text", "label"}
  raw       {"text"}

Every batch comes from a single source (the paper's one-dataset, one-language batches); sources are drawn
by size or by given weights from a seeded RNG. Files are read in order and cycled, so large files should be
shuffled once beforehand. The stream's whole position (RNG, file offsets, queued batches) is a small state
dict, which is what makes checkpoint resume exact.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from taskembed.batching import plan_batches
from taskembed.io import parse_record

KINDS = ("pairs", "tuples", "scored", "labelled", "raw")
_WORD = re.compile(r"\w+", re.UNICODE)


class DataError(ValueError):
    """A data file that cannot be used, with the reason."""


def detect_kind(record: dict) -> str:
    keys = set(record)
    if {"query", "positive", "negatives"} <= keys:
        return "tuples"
    if {"query", "positive"} <= keys:
        return "pairs"
    if {"text1", "text2", "score"} <= keys:
        return "scored"
    if {"text", "label"} <= keys:
        return "labelled"
    if "text" in keys:
        return "raw"
    raise DataError(f"unknown record with keys {sorted(keys)}; expected one of: query+positive(+negatives), "
                    "text1+text2+score, text+label, text")


def too_much_overlap(a: str, b: str, ratio: float = 0.8, min_words: int = 4) -> bool:
    """The paper's filter: True when >= `ratio` of the shorter text's words, and >= `min_words` of them,
    occur in the longer text (as substrings, case-folded). Such pairs teach surface matching only."""
    short, long_ = (a, b) if len(a) <= len(b) else (b, a)
    words = _WORD.findall(short.casefold())
    if not words:
        return False
    hay = long_.casefold()
    hits = sum(1 for w in words if w in hay)
    return hits >= min_words and hits >= ratio * len(words)


# --- readers: one record at a time, position = a small dict ---------------------------------------


class _JsonlReader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.epoch = 0
        self._fh = None

    def size(self) -> int:
        n = 0
        with open(self.path, "rb") as fh:
            for line in fh:
                n += bool(line.strip())
        return n

    def first(self) -> dict:
        with open(self.path, "rb") as fh:
            for line in fh:
                if line.strip():
                    return self._parse(line, 0)
        raise DataError(f"{self.path} holds no records")

    def _parse(self, line: bytes, offset: int) -> dict:
        try:
            return parse_record(line, f"{self.path} (the line ending at byte {offset})" if offset else str(self.path))
        except ValueError as e:
            raise DataError(str(e)) from None

    def next(self) -> dict:
        if self._fh is None:
            self._fh = open(self.path, "rb")  # noqa: SIM115 - kept open across calls, closed in close()
            self._fh.seek(self.offset)
        for _ in range(2):
            line = self._fh.readline()
            while line and not line.strip():
                line = self._fh.readline()
            if line:
                self.offset = self._fh.tell()
                return self._parse(line, self.offset)
            self._fh.seek(0)
            self.offset, self.epoch = 0, self.epoch + 1
        raise DataError(f"{self.path} holds no records")

    def state_dict(self) -> dict:
        return {"offset": self.offset, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.close()
        self.offset, self.epoch = int(state["offset"]), int(state["epoch"])

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class _ParquetReader:
    """Reads one row group at a time (pyarrow), so a big file never sits in memory whole."""

    def __init__(self, path: Path) -> None:
        try:
            import pyarrow.parquet as pq
        except ModuleNotFoundError:
            raise DataError(f"{path}: reading Parquet needs pyarrow (pip install 'taskembed[train]')") from None
        self.path = path
        self.file = pq.ParquetFile(str(path))
        self.group, self.row, self.epoch = 0, 0, 0
        self._rows: list[dict] | None = None

    def size(self) -> int:
        return self.file.metadata.num_rows

    def first(self) -> dict:
        if self.file.metadata.num_rows == 0:
            raise DataError(f"{self.path} holds no records")
        return self.file.read_row_group(0).slice(0, 1).to_pylist()[0]

    def next(self) -> dict:
        if self.file.metadata.num_rows == 0:
            raise DataError(f"{self.path} holds no records")
        while True:
            if self._rows is None:
                self._rows = self.file.read_row_group(self.group).to_pylist()
            if self.row < len(self._rows):
                self.row += 1
                return self._rows[self.row - 1]
            self._rows, self.row = None, 0
            self.group += 1
            if self.group >= self.file.num_row_groups:
                self.group, self.epoch = 0, self.epoch + 1

    def state_dict(self) -> dict:
        return {"group": self.group, "row": self.row, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.group, self.row, self.epoch = int(state["group"]), int(state["row"]), int(state["epoch"])
        self._rows = None

    def close(self) -> None:
        self._rows = None


# --- sources -------------------------------------------------------------------------------------


class Source:
    """One file = one dataset. next() returns a normalised record of the source's kind, forever (cycling).

    filter_overlap drops pairs/tuples/scored pairs whose texts overlap too much (see too_much_overlap).
    num_negatives fixes the hard negatives per tuple (first ones kept, short lists cycled) so a batch
    stacks into one tensor.
    """

    def __init__(self, path: str | Path, kind: str | None = None, name: str | None = None,
                 filter_overlap: bool = False, num_negatives: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"data file not found: {self.path}")
        suffix = self.path.suffix.lower()
        self.reader = _ParquetReader(self.path) if suffix in (".parquet", ".pq") else _JsonlReader(self.path)
        self.name = name or self.path.stem
        self.kind = kind or detect_kind(self.reader.first())
        if self.kind not in KINDS:
            raise DataError(f"unknown data kind {self.kind!r}; kinds: {', '.join(KINDS)}")
        self.filter_overlap = filter_overlap
        self.num_negatives = num_negatives
        self._size: int | None = None

    @property
    def size(self) -> int:
        if self._size is None:
            self._size = self.reader.size()
        return self._size

    def _normalise(self, r: dict) -> dict | None:
        k = self.kind
        try:
            if k == "pairs":
                out = {"query": str(r["query"]), "positive": str(r["positive"])}
            elif k == "tuples":
                negs = [str(n) for n in r["negatives"]]
                if self.num_negatives is not None:
                    if not negs:
                        return None if self.num_negatives else {"query": str(r["query"]),
                                                                "positive": str(r["positive"]), "negatives": []}
                    negs = [negs[i % len(negs)] for i in range(self.num_negatives)]
                out = {"query": str(r["query"]), "positive": str(r["positive"]), "negatives": negs}
            elif k == "scored":
                out = {"text1": str(r["text1"]), "text2": str(r["text2"]), "score": float(r["score"])}
            elif k == "labelled":
                out = {"text": str(r["text"]), "label": r["label"]}
            else:
                out = {"text": str(r["text"])}
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{self.path}: record does not fit kind {k!r}: {e!r}") from None
        if self.filter_overlap:
            if k in ("pairs", "tuples") and too_much_overlap(out["query"], out["positive"]):
                return None
            if k == "scored" and too_much_overlap(out["text1"], out["text2"]):
                return None
        return out

    def next(self) -> dict:
        dropped = 0
        while True:
            rec = self._normalise(self.reader.next())
            if rec is not None:
                return rec
            dropped += 1
            # A file where the filter drops everything would spin forever; the size (a full scan) is only
            # looked at once many records in a row were dropped.
            if dropped > 1000 and dropped > self.size:
                raise DataError(f"{self.path}: every record was filtered out")

    def state_dict(self) -> dict:
        return {"reader": self.reader.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.reader.load_state_dict(state["reader"])


class Drawn:
    """A source whose records are drawn at random rather than read in order: its own seeded RNG, which the
    stream checkpoints. Subclasses set `kind` and `size` and draw in next()."""

    kind = "raw"
    batch_size: int | None = None  # rows per batch, when not the stream's

    def __init__(self, name: str, seed: int = 0) -> None:
        self.name = name
        self.rng = random.Random(seed)

    def state_dict(self) -> dict:
        return {"rng": self.rng.getstate()}

    def load_state_dict(self, state: dict) -> None:
        self.rng.setstate(_as_rng_state(state["rng"]))


def _as_rng_state(state):
    # random.Random states survive torch.save as nested tuples, but JSON would give lists.
    return (state[0], tuple(state[1]), state[2])


class ClassificationTuples(Drawn):
    """Labelled texts -> tuples (query, positive of the same class, `num_negatives` from other classes),
    with a unique tuple ID appended to every text of the tuple (the Gecko trick): same-class texts of other
    tuples in the batch then differ from this tuple's positive, so they stop acting as false negatives.

    Classification sets are small, so the whole file is read once and grouped by label.
    """

    kind = "tuples"

    def __init__(self, source: Source, num_negatives: int = 7, seed: int = 0) -> None:
        if source.kind != "labelled":
            raise DataError(f"{source.path}: classification tuples need labelled data, got {source.kind}")
        super().__init__(source.name, seed)
        self.path, self.num_negatives = source.path, num_negatives
        self.by_label: dict[str, list[str]] = {}
        for _ in range(source.size):
            r = source.next()
            self.by_label.setdefault(str(r["label"]), []).append(r["text"])
        self.labels = sorted(self.by_label)
        if len(self.labels) < 2:
            raise DataError(f"{source.path}: classification needs at least two labels")
        if not any(len(v) >= 2 for v in self.by_label.values()):
            raise DataError(f"{source.path}: no label has two texts to pair")
        self.size = source.size
        self.counter = 0

    def next(self) -> dict:
        rng = self.rng
        label = rng.choice([lab for lab in self.labels if len(self.by_label[lab]) >= 2])
        q, p = rng.sample(self.by_label[label], 2)
        others = [lab for lab in self.labels if lab != label]
        negs = [rng.choice(self.by_label[rng.choice(others)]) for _ in range(self.num_negatives)]
        self.counter += 1
        q, p, negs = f"{q} [{self.counter}]", f"{p} [{self.counter}]", [f"{n} [{self.counter}]" for n in negs]
        return {"query": q, "positive": p, "negatives": negs}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "counter": self.counter}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.counter = int(state["counter"])


# --- the batch stream ------------------------------------------------------------------------------


@dataclass
class Batch:
    source: str
    kind: str
    records: list[dict]


def record_texts(record: dict) -> list[str]:
    """All texts of a record, in a fixed order (query, positive, negatives / text1, text2 / text)."""
    if "query" in record:
        return [record["query"], record["positive"], *record.get("negatives", [])]
    if "text1" in record:
        return [record["text1"], record["text2"]]
    return [record["text"]]


class BatchStream:
    """An endless stream of one-source batches.

    weights: None = proportional to source size; else one weight per source. A source with a `batch_size`
    of its own gets batches of that many rows. With max_tokens (and a
    length_fn giving a record's longest text in tokens), a pool of pool_batches * batch_size records is
    read, sorted by length and cut into batches whose padded size (rows x longest) stays within the
    budget: length-bucketed batches, queued per source and served in shuffled order.
    """

    def __init__(self, sources: Sequence[Source | ClassificationTuples], batch_size: int,
                 weights: Sequence[float] | None = None, seed: int = 0, max_tokens: int | None = None,
                 length_fn: Callable[[dict], int] | None = None, pool_batches: int = 16) -> None:
        if not sources:
            raise DataError("no data sources given")
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise DataError(f"two sources share a name: {names}; rename a file")
        self.sources = list(sources)
        self.batch_size = batch_size
        if weights is None:
            weights = [float(s.size) for s in self.sources]
        if len(weights) != len(self.sources) or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise DataError(f"need one non-negative weight per source ({len(self.sources)}), got {list(weights)}")
        self.weights = [float(w) for w in weights]
        self.rng = random.Random(seed)
        self.max_tokens = max_tokens
        self.length_fn = length_fn
        self.pool_batches = pool_batches
        self.pending: dict[str, list[list[dict]]] = {s.name: [] for s in self.sources}
        self.batches_served = 0

    def __iter__(self) -> BatchStream:
        return self

    def _fill(self, src) -> None:
        size = getattr(src, "batch_size", None) or self.batch_size  # a source may set its own
        if self.max_tokens is None or self.length_fn is None:
            self.pending[src.name].append([src.next() for _ in range(size)])
            return
        pool = [src.next() for _ in range(size * self.pool_batches)]
        cuts = plan_batches([self.length_fn(r) for r in pool], self.max_tokens, size, longest_first=False)
        batches = [[pool[i] for i in cut] for cut in cuts]
        self.rng.shuffle(batches)
        self.pending[src.name].extend(batches)

    def __next__(self) -> Batch:
        src = self.rng.choices(self.sources, weights=self.weights)[0]
        if not self.pending[src.name]:
            self._fill(src)
        records = self.pending[src.name].pop(0)
        self.batches_served += 1
        return Batch(src.name, src.kind, records)

    def state_dict(self) -> dict:
        return {
            "rng": self.rng.getstate(),
            "pending": {k: [list(b) for b in v] for k, v in self.pending.items()},
            "sources": {s.name: s.state_dict() for s in self.sources},
            "batches_served": self.batches_served,
        }

    def load_state_dict(self, state: dict) -> None:
        self.rng.setstate(_as_rng_state(state["rng"]))
        self.pending = {k: [list(b) for b in v] for k, v in state["pending"].items()}
        for s in self.sources:
            s.load_state_dict(state["sources"][s.name])
        self.batches_served = int(state["batches_served"])
