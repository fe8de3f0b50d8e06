"""Shared by the server tests: a gate that holds the batcher's worker inside a forward pass."""

from __future__ import annotations

import threading


class Gate:
    """Holds the batcher's worker thread inside its next forward pass until opened; records rows per pass."""

    def __init__(self, batcher) -> None:
        self.open, self.entered, self.rows = threading.Event(), threading.Event(), []
        original = batcher._forward

        def gated(ids, task_ids):
            self.entered.set()
            self.open.wait(10)
            self.rows.append(len(ids))
            return original(ids, task_ids)

        batcher._forward = gated
