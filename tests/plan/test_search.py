"""last_at_or_below: the bucketed search gives np.searchsorted's answer for every value."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import astream.plan._search as search
from astream.plan._search import last_at_or_below


@pytest.fixture(autouse=True)
def _always_bucketed(monkeypatch: pytest.MonkeyPatch) -> None:
    # The plain search serves small inputs: take the bucketed path for every input here.
    monkeypatch.setattr(search, "_DIRECT", 0)
    monkeypatch.setattr(search, "_FEW_STARTS", 0)


def _expected(starts: np.ndarray, values: np.ndarray) -> np.ndarray:
    return np.searchsorted(starts, values, side="right").astype(np.int64) - 1


@given(
    sizes=st.lists(st.integers(0, 300), min_size=1, max_size=400),
    seed=st.integers(0, 2**32 - 1),
    base=st.integers(-50, 50),
)
@settings(max_examples=300, deadline=None)
def test_the_same_answer_as_searchsorted(sizes: list[int], seed: int, base: int) -> None:
    # Shards of any size, empty ones (repeated starts) among them, and values on every side of
    # them: below the first start, past the last, on each start.
    starts = base + np.concatenate([[0], np.cumsum(sizes)])
    rng = np.random.default_rng(seed)
    lo, hi = int(starts[0]) - 20, int(starts[-1]) + 20
    values = np.concatenate([rng.integers(lo, hi + 1, 600), starts, starts - 1])
    rng.shuffle(values)
    assert np.array_equal(last_at_or_below(starts, values), _expected(starts, values))


def test_many_shards_and_ids() -> None:
    rng = np.random.default_rng(7)
    starts = np.concatenate([[0], np.cumsum(rng.integers(0, 80, 5000))])
    values = rng.permutation(int(starts[-1]))
    got = last_at_or_below(starts, values)
    assert got.dtype == np.int64
    assert np.array_equal(got, _expected(starts, values))
