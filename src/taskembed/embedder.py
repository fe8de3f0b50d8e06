"""Embedder: texts in, embeddings out. Every user path (Python API, CLI, server, eval) goes through here.

encode() = task prefix -> tokenise -> sort by length -> token-budget batches -> encoder with one task id
per row -> masked mean pooling in fp32 -> Matryoshka cut -> L2 normalise -> quantise -> input order.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .allocator import tune_cpu_allocator
from .batching import plan_batches
from .config import EncoderConfig
from .encoder import Encoder
from .inputs import check_dimensions, check_tasks, check_texts
from .io import read_jsonl
from .lora import NO_TASK, quantize_int8, record_input_absmax
from .tokenizer import Tokenizer, TokenizerError

SAMPLE_CORPUS = Path(__file__).parent / "data" / "sample_corpus.jsonl"
PRECISIONS = ("float32", "float16", "int8", "uint8", "binary", "ubinary")
# How the windows of a text longer than a learned position table become one vector: "mean" averages the
# windows' mean-pooled vectors, "tokens" weights each window by its token count, "first+mean" adds the
# first window's unit vector to the unit mean (the opening weighs as much as the whole text).
WINDOW_POOLING = ("mean", "tokens", "first+mean")
# "repeat": the task prefix opens every window; "once": it is read once, at the text's start.
WINDOW_PREFIX = ("repeat", "once")
DEFAULT_MAX_LENGTH = 8192
# Upper bound on padded tokens per forward pass; one 8192-token text still runs alone.
DEFAULT_MAX_BATCH_TOKENS = 16384


def mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """Masked mean over tokens, in fp32 whatever the compute dtype."""
    hidden = hidden.float()
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def windows(ids: list[int], size: int, head: int = 0, overlap: int = 0) -> list[list[int]]:
    """Cut one tokenised text, `<s> head body </s>`, into windows of at most `size` tokens.

    Every window is `<s> head chunk </s>`: the `head` tokens (e.g. the task's instruction prefix) open
    each one (head=0: the prefix is read once, as the start of the body). Consecutive chunks share
    `overlap` tokens; the last chunk holds what is left.
    """
    if len(ids) <= size:
        return [ids]
    cls, sep, prefix, body = ids[0], ids[-1], ids[1 : 1 + head], ids[1 + head : -1]
    span = size - 2 - head
    if span < 1 or not 0 <= overlap < span:
        raise ValueError(f"windows of {size} tokens leave no room for a body after a {head}-token prefix "
                         f"with overlap {overlap}")
    starts = [0]
    while starts[-1] + span < len(body):
        starts.append(starts[-1] + span - overlap)
    return [[cls, *prefix, *body[s : s + span], sep] for s in starts]


def sample_texts() -> list[str]:
    """The multilingual sample passages that ship with the package (30 texts, 14 languages)."""
    return [r["text"] for r in read_jsonl(SAMPLE_CORPUS)]


def quantize(emb: np.ndarray, precision: str) -> np.ndarray:
    """float32 -> the requested precision.

    binary/ubinary are sentence-transformers' packed sign bits (bit = value > 0, 8 dims per byte, binary
    offset by -128 into int8). int8/uint8 use a fixed scale for unit vectors (components in [-1, 1]), so the
    same text always gets the same code whatever else is in the batch.
    """
    if precision == "float32":
        return emb.astype(np.float32, copy=False)
    if precision == "float16":
        return emb.astype(np.float16)
    if precision == "int8":
        return np.clip(np.rint(emb * 127.0), -127, 127).astype(np.int8)
    if precision == "uint8":
        return np.clip(np.rint((emb + 1.0) * 127.5), 0, 255).astype(np.uint8)
    bits = np.packbits(emb > 0, axis=-1)
    if precision == "ubinary":
        return bits
    return (bits.astype(np.int16) - 128).astype(np.int8)


class Embedder:
    """One loaded model: encoder + tokenizer + config. Build it with `taskembed.load(path)`."""

    def __init__(self, model: Encoder, tokenizer: Tokenizer, path: str | Path | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config: EncoderConfig = model.config
        self.path = Path(path) if path is not None else None
        tokenizer.check_model(self.config.vocab_size, self.config.pad_token_id)
        self.max_batch_tokens = DEFAULT_MAX_BATCH_TOKENS
        # Packed (unpadded) forward passes by default; False runs padded batches as the official code does.
        self.packed = os.environ.get("TASKEMBED_PACKED", "1") != "0"
        # Batches of a single task run on a copy with that adapter folded into the weights (no LoRA side
        # path); this many copies are kept, least recently used first out. 0 turns it off (saves memory).
        self.merge_cache_size = 1
        self._merged: OrderedDict[int, Encoder] = OrderedDict()
        self._merged_key: tuple = ()
        self.quantized = False
        self._warned_no_task = False
        # Texts longer than a learned position table are read in windows (see windows()); the settings
        # come from config.json when the model ships them (chosen on long-document dev checks).
        self.window_overlap = int(self.config.extra.get("window_overlap", 0))
        self.window_pooling = str(self.config.extra.get("window_pooling", "mean"))
        self.window_prefix = str(self.config.extra.get("window_prefix", "repeat"))
        self._prefix_ids: dict[int, list[int]] = {}
        if self.device.type == "cpu":
            tune_cpu_allocator()

    # --- facts -------------------------------------------------------------------------------------

    @property
    def tasks(self) -> list[str]:
        return list(self.config.lora_adaptations)

    @property
    def dimensions(self) -> list[int]:
        """Allowed output sizes: the Matryoshka dims and the full width."""
        return sorted(set(self.config.matryoshka_dimensions) | {self.config.hidden_size})

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Embedder:
        self.clear_merged()
        self.model.to(device=device, dtype=dtype)
        return self

    def to_int8(self, calibration_texts: Sequence[str] | None = None) -> Embedder:
        """Dynamic int8 for the Linear layers on CPU (adapters stay float, any task mix still works).

        First the float model embeds `calibration_texts` (default: the multilingual sample passages that
        ship with the package) under every task, to find the few input channels with outlier magnitudes;
        those stay in float (Int8Linear). An empty list skips calibration: every channel in int8. Activation
        scales are per forward pass, so a vector depends slightly on the other texts in its batch. Speed and
        cosine to float: benchmarks/encode_speed.py, benchmarks/int8_quality.py.
        """
        if self.device.type != "cpu":
            raise ValueError("int8 inference runs on CPU; on GPU use bfloat16 (load(..., dtype='bfloat16'))")
        if self.dtype != torch.float32:
            raise ValueError("int8 quantisation starts from float32 weights; load with dtype='float32'")
        if self.quantized:
            return self
        if calibration_texts is None or len(calibration_texts):
            self.calibrate_int8(calibration_texts)
        quantize_int8(self.model)
        self.clear_merged()
        self.quantized = True
        return self

    def calibrate_int8(self, texts: Sequence[str] | None = None) -> None:
        """Record each Linear's largest input per channel over `texts` (default: the package's sample
        passages) under every task; int8 (to_int8, export --int8) keeps the outlier channels in float."""
        texts = sample_texts() if texts is None else list(texts)
        prefixed, task_ids = self.prepare([x for x in texts for _ in self.tasks], self.tasks * len(texts))
        enc = self.tokenizer.encode(prefixed, max_length=512, truncate=True)

        def run() -> None:
            with torch.inference_mode():
                for batch in self.batches([len(x) for x in enc.ids], 32):
                    # The float model itself (not a merged copy), so the hooks see every layer.
                    forward = self._forward_packed_pooled if self.packed else self._forward_padded_pooled
                    forward(self.model, [enc.ids[i] for i in batch], [task_ids[i] for i in batch])

        record_input_absmax(self.model, run)

    @property
    def default_max_length(self) -> int:
        """Truncation length when encode() is given none. Rotary: the tokenizer config's model_max_length
        (8194 in the official files, as the official encode uses), else 8192; never past
        max_position_embeddings. A learned position table: 8192 tokens, read in windows of the table."""
        if self.config.position_embedding_type == "absolute":
            return DEFAULT_MAX_LENGTH
        limit = self.tokenizer.model_max_length or DEFAULT_MAX_LENGTH
        return min(limit, self.config.max_position_embeddings)

    def count_tokens(self, texts: Sequence[str], task: str | Sequence[str | None] | None = None) -> list[int]:
        texts, _ = self.prepare(texts, task)
        return self.tokenizer.count_tokens(texts)

    def save(self, path: str | Path, dtype: torch.dtype | None = None, max_shard_bytes: int | None = None) -> None:
        """Write the official layout (config.json, model.safetensors, tokenizer files) to `path`."""
        from .checkpoint import MAX_SHARD_BYTES, save

        if self.quantized:
            raise ValueError("this Embedder runs int8 weights; save the float model (load it again without int8)")
        save(self, path, dtype=dtype, max_shard_bytes=max_shard_bytes or MAX_SHARD_BYTES)

    # --- validation --------------------------------------------------------------------------------

    def task_index(self, task: str | None) -> int:
        """The adapter index of a task (NO_TASK for None: the base weights); inputs.py checks the name."""
        (task,) = check_tasks(task, 1, self.tasks)
        return NO_TASK if task is None else self.config.lora_adaptations.index(task)

    def check_dimensions(self, dimensions: int | None) -> int:
        """A Matryoshka size this model makes (None: its full size)."""
        return check_dimensions(dimensions, self.dimensions, self.config.truncate_dim or self.config.hidden_size)

    def prepare(
        self, texts: Sequence[str], task: str | Sequence[str | None] | None
    ) -> tuple[list[str], list[int]]:
        """Validate texts and tasks (inputs.py); return the texts with their task prefixes and one task index
        per text."""
        texts = check_texts(texts)
        tasks = check_tasks(task, len(texts), self.tasks)
        instr = self.config.task_instructions
        prefixed = [(instr.get(t, "") + x) if t is not None else x for t, x in zip(tasks, texts, strict=True)]
        return prefixed, [self.task_index(t) for t in tasks]

    # --- long texts --------------------------------------------------------------------------------

    def split_windows(
        self, ids: list[list[int]], task_ids: list[int]
    ) -> tuple[list[list[int]], list[int], list[float]]:
        """Texts longer than the model reads in one pass -> windows (sequences, owning text, weight).

        Only models with a learned position table have such a limit; a rotary model reads whole texts.
        """
        # Checked here, where encode() and the server both come through, not per caller.
        if self.window_pooling not in WINDOW_POOLING:
            raise ValueError(f"window_pooling {self.window_pooling!r} unknown; allowed: {', '.join(WINDOW_POOLING)}")
        if self.window_prefix not in WINDOW_PREFIX:
            raise ValueError(f"window_prefix {self.window_prefix!r} unknown; allowed: {', '.join(WINDOW_PREFIX)}")
        size = self.config.max_tokens
        if self.config.position_embedding_type != "absolute" or all(len(x) <= size for x in ids):
            return ids, list(range(len(ids))), [1.0] * len(ids)
        seqs, owner, weight = [], [], []
        for i, (x, t) in enumerate(zip(ids, task_ids, strict=True)):
            head = self._prefix_length(t, x) if self.window_prefix == "repeat" else 0
            parts = windows(x, size, head, self.window_overlap) if len(x) > size else [x]
            for part in parts:
                seqs.append(part)
                owner.append(i)
                # "tokens": each window counts by the text tokens it reads (not <s>, </s>, a repeated prefix)
                weight.append(float(len(part) - 2 - head) if self.window_pooling == "tokens" else 1.0)
        return seqs, owner, weight

    def pool_windows(self, vectors: Tensor, owner: list[int], weight: list[float], n: int) -> Tensor:
        """Pooled vectors of split_windows' sequences -> one vector per text (weighted mean of its windows)."""
        if len(owner) == n:
            return vectors
        w = torch.tensor(weight, dtype=vectors.dtype, device=vectors.device).unsqueeze(1)
        idx = torch.tensor(owner, device=vectors.device)
        out = torch.zeros((n, vectors.shape[1]), dtype=vectors.dtype, device=vectors.device)
        out.index_add_(0, idx, vectors * w)
        out /= torch.zeros(n, dtype=vectors.dtype, device=vectors.device).index_add_(0, idx, w[:, 0])[:, None]
        if self.window_pooling == "first+mean":
            first: dict[int, int] = {}
            for j, i in enumerate(owner):  # split_windows keeps each text's windows in order
                first.setdefault(i, j)
            unit = torch.nn.functional.normalize
            both = unit(vectors[[first[i] for i in range(n)]], dim=-1) + unit(out, dim=-1)
            # The direction of the sum at the mean's length: a one-window text keeps its own vector, so
            # unnormalised outputs stay comparable.
            out = unit(both, dim=-1) * out.norm(dim=-1, keepdim=True)
        return out

    def _prefix_length(self, task: int, ids: list[int]) -> int:
        """Tokens of the task's instruction prefix at the start of `ids` (0 when it does not tokenise
        apart from the text, which then is not repeated in each window)."""
        if task == NO_TASK:
            return 0
        if task not in self._prefix_ids:
            # Without its trailing space: SentencePiece joins that space to the text's first word.
            prefix = self.config.task_instructions.get(self.config.lora_adaptations[task], "").rstrip()
            self._prefix_ids[task] = self.tokenizer.backend.encode(prefix, add_special_tokens=False).ids
        expected = self._prefix_ids[task]
        return len(expected) if ids[1 : 1 + len(expected)] == expected else 0

    # --- batching ----------------------------------------------------------------------------------

    def batches(self, lengths: list[int], batch_size: int) -> list[list[int]]:
        """Indices sorted by length (longest first), cut into batches within the token budget
        (batching.py: padded tokens for padded batches, real tokens when packed)."""
        return plan_batches(lengths, self.max_batch_tokens, batch_size, self.packed)

    def forward_pooled(self, ids: list[list[int]], task_ids: list[int],
                       between: Callable[[], None] | None = None) -> Tensor:
        """One forward pass over a batch; returns fp32 pooled vectors (B, H) in the batch's order.

        `between` (packed passes only) is called between layers: see Encoder.forward_packed."""
        model, task_ids = self._model_for(task_ids)
        if self.packed:
            return self._forward_packed_pooled(model, ids, task_ids, between)
        return self._forward_padded_pooled(model, ids, task_ids)

    def _model_for(self, task_ids: list[int]) -> tuple[Encoder, list[int]]:
        """The merged copy for a one-task batch (cached), else the model with its LoRA routing."""
        first = task_ids[0]
        if self.merge_cache_size <= 0 or first == NO_TASK or any(t != first for t in task_ids):
            return self.model, task_ids
        # Any in-place update (an optimizer step, load_state_dict) bumps a tensor's version counter, and a
        # replaced tensor has a new id: then the merged copies are stale, e.g. when a trainer evaluates
        # through encode() between steps.
        key = tuple((id(p), p._version) for p in self.model.parameters())
        if key != self._merged_key:
            self._merged.clear()
            self._merged_key = key
        merged = self._merged.pop(first, None)
        if merged is None:
            while len(self._merged) >= self.merge_cache_size:
                self._merged.popitem(last=False)
            merged = self.model.merged(first)
        self._merged[first] = merged
        return merged, [NO_TASK] * len(task_ids)

    def clear_merged(self) -> None:
        """Drop merged copies, e.g. after the model's weights changed."""
        self._merged.clear()

    def _forward_packed_pooled(self, model: Encoder, ids: list[list[int]], task_ids: list[int],
                               between: Callable[[], None] | None = None) -> Tensor:
        device = self.device
        # Rows of one task side by side, so each adapter covers one contiguous token range.
        order = sorted(range(len(ids)), key=lambda r: task_ids[r])
        seqlens = [len(ids[r]) for r in order]
        flat = torch.tensor([tok for r in order for tok in ids[r]], dtype=torch.long, device=device)
        hidden = model.forward_packed(flat, seqlens, [task_ids[r] for r in order], between).float()
        lens = torch.tensor(seqlens, device=device)
        if self.config.emb_pooler == "cls":
            starts = torch.cumsum(lens, 0) - lens
            pooled = hidden[starts]
        else:
            seg = torch.repeat_interleave(torch.arange(len(ids), device=device), lens)
            pooled = torch.zeros((len(ids), hidden.shape[1]), device=device).index_add_(0, seg, hidden)
            pooled = pooled / lens.unsqueeze(1).float()
        out = torch.empty_like(pooled)
        out[torch.tensor(order, device=device)] = pooled
        return out

    def _forward_padded_pooled(self, model: Encoder, ids: list[list[int]], task_ids: list[int]) -> Tensor:
        device = self.device
        n = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), n), self.config.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(ids), n), dtype=torch.long)
        for r, x in enumerate(ids):
            input_ids[r, : len(x)] = torch.tensor(x, dtype=torch.long)
            mask[r, : len(x)] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)
        tids = torch.tensor(task_ids, dtype=torch.long, device=device)
        hidden = model(input_ids, mask, tids)
        if self.config.emb_pooler == "cls":
            return hidden[:, 0].float()
        return mean_pool(hidden, mask)

    # --- the public call ---------------------------------------------------------------------------

    @torch.inference_mode()
    def encode(
        self,
        texts: Sequence[str],
        task: str | Sequence[str | None] | None = None,
        dimensions: int | None = None,
        batch_size: int = 32,
        max_length: int | None = None,
        normalize: bool = True,
        precision: str = "float32",
        show_progress: bool = False,
        truncate: bool = True,
    ) -> np.ndarray:
        """Embed `texts` (in input order) -> array (n, dimensions).

        task: one task name for all texts, one per text (mixed tasks share forward passes), or None for
        the base weights (warns once). The task's instruction prefix is prepended. max_length: tokens per
        text, specials included (default: `default_max_length`). dimensions: one of
        `self.dimensions` (Matryoshka cut, then L2 normalisation). precision: float32, float16, int8,
        uint8, binary or ubinary (packed bits: dimensions / 8 bytes per vector).
        """
        prefixed, task_ids = self.prepare(texts, task)
        dim = self.check_dimensions(dimensions)
        if max_length is None:
            max_length = self.default_max_length
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; allowed: {', '.join(PRECISIONS)}")
        if precision in ("int8", "uint8") and not normalize:
            raise ValueError(f"precision={precision} uses a fixed scale for unit vectors; needs normalize=True")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(max_length, int) or max_length < self.tokenizer.num_special + 1:
            raise ValueError(f"max_length must be an int >= {self.tokenizer.num_special + 1}, got {max_length!r}")
        if self.config.position_embedding_type == "rotary" and max_length > self.config.max_position_embeddings:
            raise ValueError(
                f"max_length={max_length} exceeds the model's max_position_embeddings="
                f"{self.config.max_position_embeddings}"
            )
        if NO_TASK in task_ids and not self._warned_no_task:
            self._warned_no_task = True
            warnings.warn(
                f"no task given: the base weights are used and no adapter is active; pass task= one of "
                f"{self.tasks} for task-tuned embeddings",
                stacklevel=3,
            )
        try:
            enc = self.tokenizer.encode(prefixed, max_length=max_length, truncate=truncate)
        except TokenizerError as e:
            raise ValueError(str(e)) from None

        seqs, owner, weight = self.split_windows(enc.ids, task_ids)
        seq_tasks = [task_ids[i] for i in owner]
        pooled_seqs = torch.empty((len(seqs), self.config.hidden_size), dtype=torch.float32)
        batches = self.batches([len(x) for x in seqs], batch_size)
        for bi, batch in enumerate(batches):
            pooled = self.forward_pooled([seqs[i] for i in batch], [seq_tasks[i] for i in batch])
            pooled_seqs[torch.tensor(batch)] = pooled.cpu()
            if show_progress:
                print(f"\rencode: batch {bi + 1}/{len(batches)}", end="", file=sys.stderr, flush=True)
        if show_progress:
            print(file=sys.stderr)
        out = self.pool_windows(pooled_seqs, owner, weight, len(prefixed))[:, :dim]
        if normalize:
            out = torch.nn.functional.normalize(out, p=2, dim=-1)
        return quantize(out.numpy(), precision)
