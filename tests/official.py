"""Shared check for the fixtures written by the official code (tests/fixtures/official_*)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch


def official_diffs(emb, fixture: Path) -> tuple[float, float]:
    """Max |diff| of our encode (every task and cut of the fixture) and of the per-row forward."""
    meta = json.loads((fixture / "expected.json").read_text(encoding="utf-8"))
    with np.load(fixture / "expected.npz") as want:
        worst = 0.0
        for task in [None, *meta["tasks"]]:
            for dim in meta["truncate_dims"]:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    got = emb.encode(meta["texts"], task=task, dimensions=dim)
                worst = max(worst, float(np.abs(got - want[f"{task or 'none'}|{dim or 'none'}"]).max()))
        ids, mask = (torch.from_numpy(want[f"forward/{k}"]).long() for k in ("input_ids", "attention_mask"))
        with torch.inference_mode():
            hidden = emb.model(ids, mask, torch.from_numpy(want["forward/task_ids"]).long()).numpy()
        real = want["forward/attention_mask"].astype(bool)
        return worst, float(np.abs(hidden - want["forward/last_hidden_state"])[real].max())
