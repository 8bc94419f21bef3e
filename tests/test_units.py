from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from astream.units import parse_bytes, parse_count


@pytest.mark.parametrize(
    ("text", "expected"),
    [("64mb", 64 << 20), ("1kb", 1024), ("1.5kb", 1536), ("100", 100), ("2GB", 2 << 30), ("7b", 7)],
)
def test_parse_bytes(text: str, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("100k", 100_000), ("64M", 64_000_000), ("2b", 2_000_000_000), ("12", 12), ("1.5k", 1500)],
)
def test_parse_count(text: str, expected: int) -> None:
    assert parse_count(text) == expected


@pytest.mark.parametrize("bad", ["", "mb", "12 parsecs", "-3", "1.2.3kb", "0.5b"])
def test_parse_bytes_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="byte"):
        parse_bytes(bad)


@given(st.integers(min_value=0, max_value=1 << 50))
def test_ints_pass_through(n: int) -> None:
    assert parse_bytes(n) == n
    assert parse_count(n) == n
