"""Late chunking against a naive reimplementation written from the description, not from the module."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from taskembed import late_chunking
from taskembed.late_chunking import late_chunk, plan

CHUNKS = [
    "The cat sits on the warm windowsill and watches the birds outside.",
    "It does not move for hours.",
    "Die Katze sitzt auf der warmen Fensterbank.",
    "猫は暖かい窓辺に座って外の鳥を見ています。",
]


def naive(emb, chunks, task=None, sep=" ", window=None, overlap=None, dims=None):
    """Straight from the definition: one loop per token, one forward pass per window, no batching."""
    prefix = emb.config.task_instructions.get(task, "") if task else ""
    text = prefix + sep.join(chunks)
    enc = emb.tokenizer.backend.encode(text, add_special_tokens=True)
    ids, offs = enc.ids, enc.offsets
    tid = emb.tasks.index(task) if task else -1

    def run(seq):
        with torch.no_grad():
            t = torch.tensor([seq])
            return emb.model(t, torch.ones_like(t), torch.tensor([tid]))[0].float()

    n = len(ids)
    window = window or 8192
    vec = {}
    if n <= window:
        out = run(ids)
        vec = {i: out[i] for i in range(n)}
    else:
        overlap = window // 8 if overlap is None else overlap
        n_prefix = 0
        while 0 < offs[1 + n_prefix][1] <= len(prefix):
            n_prefix += 1
        body = ids[1 + n_prefix : -1]
        size = window - n_prefix - 2
        best = {}
        start = 0
        while True:
            end = min(start + size, len(body))
            out = run(ids[: 1 + n_prefix] + body[start:end] + ids[-1:])
            for j in range(start, end):
                left = j - start if start > 0 else 10**9
                right = end - 1 - j if end < len(body) else 10**9
                if j not in best or min(left, right) > best[j]:
                    best[j] = min(left, right)
                    vec[1 + n_prefix + j] = out[1 + n_prefix + j - start]
            if end >= len(body):
                break
            start += size - overlap
    result = []
    pos = len(prefix)
    for c in chunks:
        lo, hi = pos, pos + len(c)
        toks = [t for t in range(1, n - 1) if offs[t][1] > offs[t][0] and offs[t][0] < hi and offs[t][1] > lo]
        result.append(torch.stack([vec[t] for t in toks]).mean(0))
        pos = hi + len(sep)
    out = torch.stack(result)[:, : dims or emb.config.hidden_size]
    return torch.nn.functional.normalize(out, dim=-1).numpy()


@pytest.mark.parametrize("task", [None, "retrieval.passage", "text-matching"])
@pytest.mark.parametrize("sep", [" ", "", "\n"])
def test_matches_naive_one_window(tiny, task, sep):
    got = late_chunk(tiny, CHUNKS, task=task, separator=sep, dimensions=32)
    want = naive(tiny, CHUNKS, task=task, sep=sep, dims=32)
    assert got.shape == (len(CHUNKS), 32)
    np.testing.assert_allclose(got, want, atol=2e-5)


@pytest.mark.parametrize("window,overlap", [(24, 4), (40, 5), (33, 0), (64, None)])
@pytest.mark.parametrize("task", [None, "retrieval.passage"])
def test_matches_naive_macro_windows(tiny, window, overlap, task):
    chunks = CHUNKS * 2
    assert plan(tiny, chunks, task).num_tokens > window  # the windowed path really runs
    got = late_chunk(tiny, chunks, task=task, window=window, overlap=overlap)
    want = naive(tiny, chunks, task=task, window=window, overlap=overlap)
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_window_larger_than_document_is_one_pass(tiny):
    p = plan(tiny, CHUNKS, "retrieval.passage")
    a = late_chunk(tiny, CHUNKS, task="retrieval.passage")
    b = late_chunk(tiny, CHUNKS, task="retrieval.passage", window=p.num_tokens)
    np.testing.assert_array_equal(a, b)


def test_chunk_tokens_spell_the_chunks(tiny):
    for sep in (" ", "\n", " | "):
        p = plan(tiny, CHUNKS, "retrieval.query", separator=sep)
        decoded = [tiny.tokenizer.backend.decode([p.ids[t] for t in toks]).strip() for toks in p.chunk_tokens]
        assert decoded == [c.strip() for c in CHUNKS]
        assert p.n_prefix > 0 and all(t > p.n_prefix for toks in p.chunk_tokens for t in toks)


def test_context_changes_the_vectors(tiny):
    together = late_chunk(tiny, CHUNKS, task="retrieval.passage")
    alone = np.concatenate([late_chunk(tiny, [c], task="retrieval.passage") for c in CHUNKS])
    assert not np.allclose(together, alone, atol=1e-3)  # each chunk saw the others
    assert np.allclose(np.linalg.norm(together, axis=1), 1, atol=1e-5)


def test_dimensions_and_no_normalisation(tiny):
    raw = late_chunk(tiny, CHUNKS, task="separation", normalize=False)
    cut = late_chunk(tiny, CHUNKS, task="separation", dimensions=8)
    want = raw[:, :8] / np.linalg.norm(raw[:, :8], axis=1, keepdims=True)
    np.testing.assert_allclose(cut, want, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(chunks="one string"), "list of strings"),
        (dict(chunks=[]), "no chunks"),
        (dict(chunks=["a", 3]), "item 1"),
        (dict(chunks=["a", ""]), "chunk 1 produces no tokens"),
        (dict(chunks=["a"], task="nope"), "unknown task"),
        (dict(chunks=["a"], dimensions=7), "not allowed"),
        (dict(chunks=CHUNKS * 3, window=10, overlap=8, task="retrieval.query"), "window=10"),
        (dict(chunks=["a"], window=100_000), "longest pass"),
    ],
)
def test_errors(tiny, kwargs, match):
    chunks = kwargs.pop("chunks")
    with pytest.raises(ValueError, match=match):
        late_chunk(tiny, chunks, **kwargs)


def test_windows_cover_the_body():
    wins = late_chunking.windows(n=200, n_prefix=5, window=40, overlap=6)
    assert wins[0][0] == 0 and wins[-1][1] == 200 - 2 - 5
    assert all(b[0] == a[1] - 6 for a, b in zip(wins, wins[1:], strict=False))
