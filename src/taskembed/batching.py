"""The one batching rule: rows go into a forward pass while the pass stays within a token budget.

A padded pass costs rows x its longest row; a packed one (rows end to end, no padding) its real tokens. A row
that alone exceeds the budget still gets a pass of its own. `encode`, the server's batcher, the training
stream's length buckets and the trainer's micro-batches all cut their rows with it.
"""

from __future__ import annotations

from collections.abc import Sequence


class TokenBudget:
    """One pass being filled: `fits(n)` says whether a row of n tokens may join it, `add(n)` adds it."""

    def __init__(self, max_tokens: int | None, max_rows: int | None = None, packed: bool = False) -> None:
        self.max_tokens, self.max_rows, self.packed = max_tokens, max_rows, packed
        self.rows = self.longest = self.tokens = 0

    def cost(self, n: int) -> int:
        """The pass's cost with one more row of n tokens."""
        return self.tokens + n if self.packed else max(self.longest, n) * (self.rows + 1)

    def fits(self, n: int, max_tokens: int | None = None) -> bool:
        if self.rows == 0:
            return True
        if self.max_rows is not None and self.rows >= self.max_rows:
            return False
        budget = self.max_tokens if max_tokens is None else max_tokens
        return budget is None or self.cost(n) <= budget

    def add(self, n: int) -> None:
        self.rows, self.longest, self.tokens = self.rows + 1, max(self.longest, n), self.tokens + n


def plan_batches(lengths: Sequence[int], max_tokens: int | None, max_rows: int | None = None,
                 packed: bool = False, longest_first: bool = True) -> list[list[int]]:
    """Indices of `lengths` sorted by length (longest first, or shortest first), cut into passes within
    the budget (max_tokens None: rows only)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i] if longest_first else lengths[i])
    batches: list[list[int]] = []
    cur, budget = [], TokenBudget(max_tokens, max_rows, packed)
    for i in order:
        if not budget.fits(lengths[i]):
            batches.append(cur)
            cur, budget = [], TokenBudget(max_tokens, max_rows, packed)
        cur.append(i)
        budget.add(lengths[i])
    if cur:
        batches.append(cur)
    return batches
