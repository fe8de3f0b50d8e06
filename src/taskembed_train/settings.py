"""The settings of one training phase, typed: what a config's [train] table, a [[phases]] entry and --set
may give. A misspelt key or a value of the wrong type stops training before anything loads, naming it."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Phase:
    name: str = ""
    data: list[str] = field(default_factory=list)
    # the optimiser and its schedule
    steps: int = 100
    lr: float = 1e-4
    warmup_steps: int = 0
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0  # 0: no clipping
    # > 0: after 15 steps the step count is cut to what fits (the LR still decays to 0); one process only,
    # since ranks would have to agree on the count
    max_seconds: float = 0.0
    seed: int = 0
    # batches
    batch_size: int = 32
    max_length: int = 512
    max_tokens: int = 0  # > 0: length-bucketed batches within this many padded tokens
    pool_batches: int = 16
    weights: list[float] | None = None  # one per data file; default by file size
    grad_cache_rows: int = 0  # contrastive: at most this many texts per forward pass (GradCache)
    micro_tokens: int = 0  # MLM and distillation: padded tokens per forward pass
    filter_overlap: bool = False
    num_negatives: int | None = None
    # the model while training
    bf16: bool = True  # autocast on CUDA only
    gradient_checkpointing: bool = False
    rotary_base: float = 10000.0
    dropout: float | None = None  # None keeps the checkpoint's
    freeze_word_embeddings: bool = False
    # the loss
    loss: list[str] | None = None  # contrastive losses by name (losses.LOSSES); pairs and adapters need one
    tau: float = 0.05
    matryoshka_dims: list[int] | None = None
    matryoshka_weights: list[float] | None = None
    anchor: float = 0.0
    mask_prob: float = 0.15
    # checkpoints, logs, evaluation
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    log_every: int = 10
    eval_every: int = 0
    eval_data: str | None = None
    dev_data: list[str] | None = None
    dev_size: int = 150
    dev_dims: list[int] | None = None
    dev_kind: str | None = None  # adapters: the kind whose task types dev_data checks; default the task's
    # a metric of the evaluations: the trained weights end where it was highest (the start included), so a
    # run that drifts below its start is undone
    keep_best: str = ""
    # distillation (taskembed_train/distill.py)
    min_chars: int = 20
    join_chars: int = 0
    pooled_weight: float = 1.0
    long_data: list[str] | None = None
    long_share: float = 0.0
    long_length: int = 4096
    long_tokens: int = 16384
    insert_weight: float = 0.0
    insert_data: list[str] | None = None
    detail_data: list[str] | None = None
    detail_share: float = 0.0
    detail_batch_size: int = 0
    fold_positions: int = 128
    fidelity_data: str | None = None
    fidelity_n: int = 256

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Phase:
        hints = typing.get_type_hints(cls)
        unknown = sorted(set(values) - set(hints))
        if unknown:  # a misspelt key would otherwise be ignored without a word
            raise ValueError(f"unknown training setting(s): {', '.join(unknown)}")
        return cls(**{k: _typed(k, v, hints[k]) for k, v in values.items()})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _typed(key: str, value: Any, hint: Any) -> Any:
    """value as the setting's type (an int where a float is asked is fine; a path string for a list of one),
    or a clear error."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise ValueError(f"setting {key} needs a value, got none")
    for t in options:
        if t is type(None):
            continue
        origin = typing.get_origin(t)
        if origin is list:
            (item,) = typing.get_args(t)
            items = [value] if isinstance(value, str) and item is str else value
            if isinstance(items, list | tuple) and all(_is(x, item) for x in items):
                return [float(x) if item is float else x for x in items]
        elif _is(value, t):
            return float(value) if t is float else value
    want = " or ".join("none" if t is type(None) else getattr(t, "__name__", str(t)) for t in options)
    raise ValueError(f"setting {key} must be {want}, got {value!r}")


def _is(value: Any, t: type) -> bool:
    if t is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if t is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, t)
