"""The one batching rule (batching.py), against the rule written out here: sorted rows, a new pass exactly
when the next row would break the row cap or the token budget."""

from __future__ import annotations

import random

import pytest

from taskembed.batching import TokenBudget, plan_batches


def _cost(rows: list[int], packed: bool) -> int:
    return sum(rows) if packed else max(rows) * len(rows)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("longest_first", [True, False])
def test_plan_batches_is_the_greedy_rule(packed, longest_first):
    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.randint(1, 300) for _ in range(rng.randint(1, 60))]
        max_tokens, max_rows = rng.choice([None, 64, 256, 1024]), rng.choice([None, 1, 3, 16])
        batches = plan_batches(lengths, max_tokens, max_rows, packed, longest_first)
        flat = [i for b in batches for i in b]
        assert flat == sorted(range(len(lengths)), key=lambda i: -lengths[i] if longest_first else lengths[i])
        for k, b in enumerate(batches):
            rows = [lengths[i] for i in b]
            assert max_rows is None or len(b) <= max_rows
            assert len(b) == 1 or max_tokens is None or _cost(rows, packed) <= max_tokens
            if k + 1 < len(batches):  # the next pass's first row did not fit this one
                nxt = rows + [lengths[batches[k + 1][0]]]
                assert (max_rows is not None and len(b) >= max_rows) or \
                    (max_tokens is not None and _cost(nxt, packed) > max_tokens)


def test_a_row_over_the_budget_gets_a_pass_of_its_own_and_limits_can_change_per_row():
    assert plan_batches([500, 10, 10], 100) == [[0], [1, 2]]
    b = TokenBudget(100, max_rows=4)
    assert b.fits(90)
    b.add(90)
    assert not b.fits(10)  # padded: 2 rows x 90 > 100
    assert b.fits(10, max_tokens=180) and not b.fits(10, max_tokens=179)
    p = TokenBudget(100, packed=True)
    p.add(90)
    assert p.fits(10) and not p.fits(11)  # packed: real tokens
