"""Late chunking: one vector per chunk of a document, each chunk seeing the whole document as context.

The chunks are joined with `separator` into one text (the task's instruction prefix in front), tokenised
once and run through the encoder once; each chunk's vector is the mean of the final hidden states of the
tokens whose character span overlaps the chunk's span ("Late Chunking", Günther et al. 2024, and what
the Jina API's `late_chunking: true` does: it concatenates the inputs into a single string and returns
one vector per input; its separator is not documented, ours defaults to a space).
Special tokens, prefix tokens and tokens that cover only the separator belong to no chunk but still give
context. A token that straddles two chunks (possible with separator "") counts for both.

Documents longer than the window (the model's context) run as overlapping macro windows, every window
being `<s> prefix ... </s>`; each token takes its vector from the window where it sits farthest from a
cut edge (a window edge that is not the document's own start or end), so it has the most context.

`plan()` (tokenise, map spans, check) and `pooled()` (forward + pool) are split so that a server can
count tokens and reject bad input before queueing the forward pass; `late_chunk()` does both.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .embedder import Embedder

DEFAULT_SEPARATOR = " "
DEFAULT_WINDOW = 8192
DEFAULT_OVERLAP_FRACTION = 8  # overlap = window // 8


@dataclass
class LateChunkPlan:
    ids: list[int]  # the whole document: <s> prefix chunk0 sep chunk1 ... </s>
    chunk_tokens: list[list[int]]  # token positions (into ids) pooled for each chunk
    n_prefix: int  # tokens after <s> that belong to the task prefix only
    task_id: int  # adapter index, -1 = base weights

    @property
    def num_tokens(self) -> int:
        return len(self.ids)


def _task_id(emb: Embedder, task: str | None) -> int:
    if task is None:
        return -1
    if not isinstance(task, str) or task not in emb.tasks:
        raise ValueError(f"unknown task {task!r}; allowed tasks: {', '.join(emb.tasks)} (or None)")
    return emb.tasks.index(task)


def plan(
    emb: Embedder, chunks: Sequence[str], task: str | None = None, separator: str = DEFAULT_SEPARATOR
) -> LateChunkPlan:
    """Tokenise the joined document and find each chunk's tokens. Raises ValueError on bad input."""
    if isinstance(chunks, str):
        raise ValueError("chunks must be a list of strings (the chunks of one document), not one string")
    chunks = list(chunks)
    if not chunks:
        raise ValueError("no chunks: give at least one string")
    bad = [i for i, c in enumerate(chunks) if not isinstance(c, str)]
    if bad:
        raise ValueError(f"chunks must all be strings; item {bad[0]} is {type(chunks[bad[0]]).__name__}")
    if not isinstance(separator, str):
        raise ValueError("separator must be a string")
    task_id = _task_id(emb, task)
    prefix = emb.config.task_instructions.get(task, "") if task is not None else ""

    spans, pos = [], len(prefix)
    for i, c in enumerate(chunks):
        if i:
            pos += len(separator)
        spans.append((pos, pos + len(c)))
        pos += len(c)
    text = prefix + separator.join(chunks)
    # No truncation here: long documents are windowed, and the caller bounds the total.
    enc = emb.tokenizer.encode([text], max_length=len(text) + 1_000_000, truncate=False)
    ids, offsets = enc.ids[0], enc.offsets[0]

    n_prefix = 0
    for a, b in offsets[1:-1]:
        if b > len(prefix) or b <= a:
            break
        n_prefix += 1

    inner = range(1, len(ids) - 1)  # <s> and </s> have empty spans and belong to no chunk
    starts = [offsets[t][0] for t in inner]
    ends = [offsets[t][1] for t in inner]
    ordered = all(a <= b for a, b in zip(starts, starts[1:], strict=False)) and all(
        a <= b for a, b in zip(ends, ends[1:], strict=False)
    )
    chunk_tokens: list[list[int]] = []
    for i, (s, e) in enumerate(spans):
        # Sorted spans (the normal case) let bisection find the candidates; a long document with many
        # chunks would otherwise cost chunks x tokens.
        cand = range(bisect.bisect_right(ends, s), bisect.bisect_left(starts, e)) if ordered else range(len(starts))
        toks = [1 + k for k in cand if starts[k] < e and ends[k] > max(s, starts[k])]
        if not toks:
            raise ValueError(f"chunk {i} produces no tokens (empty or only whitespace): {chunks[i]!r}")
        chunk_tokens.append(toks)
    return LateChunkPlan(ids=ids, chunk_tokens=chunk_tokens, n_prefix=n_prefix, task_id=task_id)


def windows(n: int, n_prefix: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """Macro windows over the body tokens (positions 1+n_prefix .. n-2 of the document) as [start, end).

    Each window holds at most window - n_prefix - 2 body tokens (room for <s>, the prefix and </s>).
    """
    body = n - 2 - n_prefix
    size = window - n_prefix - 2
    if size < 1 or size <= overlap:
        raise ValueError(
            f"late chunking window={window} leaves {size} body tokens after the {n_prefix}-token prefix, "
            f"not more than overlap={overlap}; use a larger window or a smaller overlap"
        )
    starts, s = [0], 0
    while s + size < body:
        s += size - overlap
        starts.append(s)
    return [(s, min(s + size, body)) for s in starts]


def _pick_windows(body: int, wins: list[tuple[int, int]]) -> list[int]:
    """For each body token, the index of the window where it is farthest from a cut edge."""
    best = [-1] * body
    score = [-1.0] * body
    for w, (s, e) in enumerate(wins):
        for j in range(s, e):
            left = j - s if s > 0 else float("inf")
            right = e - 1 - j if e < body else float("inf")
            c = min(left, right)
            if c > score[j]:
                score[j], best[j] = c, w
    return best


def _forward(emb: Embedder, rows: list[list[int]], task_id: int) -> list[Tensor]:
    """Hidden states (L_i, H) per row, rows run in padded groups under the embedder's token budget."""
    device = emb.device
    out: list[Tensor] = []
    i = 0
    while i < len(rows):
        width = len(rows[i])
        group = 1
        while i + group < len(rows) and max(width, len(rows[i + group])) * (group + 1) <= emb.max_batch_tokens:
            width = max(width, len(rows[i + group]))
            group += 1
        batch = rows[i : i + group]
        ids = torch.full((len(batch), width), emb.config.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, x in enumerate(batch):
            ids[r, : len(x)] = torch.tensor(x, dtype=torch.long)
            mask[r, : len(x)] = 1
        tids = torch.full((len(batch),), task_id, dtype=torch.long, device=device)
        hidden = emb.model(ids.to(device), mask.to(device), tids).float().cpu()
        out.extend(hidden[r, : len(x)] for r, x in enumerate(batch))
        i += group
    return out


@torch.inference_mode()
def token_states(emb: Embedder, p: LateChunkPlan, window: int | None = None, overlap: int | None = None) -> Tensor:
    """Contextual hidden state (fp32, on CPU) of every document token, shape (len(ids), H).

    Rows for <s>, </s> and prefix tokens come from the first window; body tokens from their best window.
    """
    # A learned position table bounds one pass (512 tokens for multilingual-e5); rotary models read 8192.
    window = window or min(DEFAULT_WINDOW, emb.config.max_tokens)
    if not isinstance(window, int) or window > emb.config.max_tokens:
        raise ValueError(f"window={window!r} must be an int <= {emb.config.max_tokens} (the model's longest pass)")
    n = len(p.ids)
    if n <= window:
        return _forward(emb, [p.ids], p.task_id)[0]
    overlap = window // DEFAULT_OVERLAP_FRACTION if overlap is None else overlap
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0, got {overlap}")
    wins = windows(n, p.n_prefix, window, overlap)
    head = p.ids[: 1 + p.n_prefix]
    body_ids = p.ids[1 + p.n_prefix : -1]
    rows = [head + body_ids[s:e] + p.ids[-1:] for s, e in wins]
    states = _forward(emb, rows, p.task_id)
    out = torch.empty((n, states[0].shape[-1]), dtype=torch.float32)
    out[: 1 + p.n_prefix] = states[0][: 1 + p.n_prefix]
    out[-1] = states[-1][-1]
    best = _pick_windows(len(body_ids), wins)
    k = 1 + p.n_prefix
    j = 0
    while j < len(best):  # each window owns one contiguous run of body tokens: copy runs, not rows
        w, r = best[j], j
        while r < len(best) and best[r] == w:
            r += 1
        out[k + j : k + r] = states[w][k + j - wins[w][0] : k + r - wins[w][0]]
        j = r
    return out


def pooled(emb: Embedder, p: LateChunkPlan, window: int | None = None, overlap: int | None = None) -> Tensor:
    """Full-width, unnormalised chunk vectors (n_chunks, H) in fp32."""
    states = token_states(emb, p, window, overlap)
    return torch.stack([states[toks].mean(0) for toks in p.chunk_tokens])


def finish(vectors: Tensor, emb: Embedder, dimensions: int | None = None, normalize: bool = True) -> np.ndarray:
    """Matryoshka cut then L2 normalisation, as Embedder.encode does."""
    dim = (emb.config.truncate_dim or emb.config.hidden_size) if dimensions is None else dimensions
    if isinstance(dim, bool) or not isinstance(dim, int) or dim not in emb.dimensions:
        raise ValueError(f"dimensions={dim} not allowed; allowed: {emb.dimensions}")
    out = vectors[:, :dim]
    if normalize:
        out = torch.nn.functional.normalize(out, p=2, dim=-1)
    return out.numpy().astype(np.float32, copy=False)


def late_chunk(
    emb: Embedder,
    chunks: Sequence[str],
    task: str | None = None,
    dimensions: int | None = None,
    normalize: bool = True,
    separator: str = DEFAULT_SEPARATOR,
    window: int | None = None,
    overlap: int | None = None,
) -> np.ndarray:
    """Embed the chunks of one document with late chunking -> float32 array (n_chunks, dimensions).

    window: tokens per forward pass (default: the model's context, at most 8192); longer documents use
    overlapping windows with `overlap` tokens shared (default window // 8).
    """
    p = plan(emb, chunks, task, separator)
    return finish(pooled(emb, p, window, overlap), emb, dimensions, normalize)
