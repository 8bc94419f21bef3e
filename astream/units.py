"""Human spellings of byte sizes (``"64mb"``) and counts (``"100k"``), as mosaicml-streaming reads them."""

from __future__ import annotations

import re

from astream.errors import ConfigError

__all__ = ["parse_bytes", "parse_count"]

# Byte units are powers of 1024, as in mosaicml-streaming (``"64mb"`` is 64 MiB).
_BYTE_UNITS = {
    "b": 1,
    "kb": 1 << 10,
    "mb": 1 << 20,
    "gb": 1 << 30,
    "tb": 1 << 40,
    "pb": 1 << 50,
    "eb": 1 << 60,
    "zb": 1 << 70,
    "yb": 1 << 80,
}
# Count suffixes are powers of 1000 (``"100k"`` is 100_000; ``"2b"`` is two billion).
_COUNT_UNITS = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "t": 10**12}

_NUMBER_UNIT = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def _split(text: str, what: str) -> tuple[float, str]:
    match = _NUMBER_UNIT.match(text)
    if match is None:
        raise ConfigError(f"cannot read {text!r} as {what}")
    return float(match.group(1)), match.group(2).lower()


def parse_bytes(value: int | str) -> int:
    """Return a byte count from an int or a string such as ``"64mb"``, ``"1.5gb"`` or ``"4096"``.

    :raises ConfigError: for a negative value or an unknown unit.
    """
    if isinstance(value, bool):
        raise TypeError("a byte size must be an int or a string, not a bool")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"a byte size cannot be negative: {value}")
        return value
    number, unit = _split(value, "a byte size")
    if unit == "":
        unit = "b"
    if unit not in _BYTE_UNITS:
        raise ConfigError(
            f"unknown byte unit {unit!r} in {value!r}; use one of {', '.join(_BYTE_UNITS)}"
        )
    result = number * _BYTE_UNITS[unit]
    if result != int(result):
        raise ConfigError(f"{value!r} is not a whole number of bytes")
    return int(result)


def parse_count(value: int | str) -> int:
    """Return a count from an int or a string such as ``"100k"``, ``"64M"`` or ``"2b"``.

    :raises ConfigError: for a negative value or an unknown suffix.
    """
    if isinstance(value, bool):
        raise TypeError("a count must be an int or a string, not a bool")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"a count cannot be negative: {value}")
        return value
    number, unit = _split(value, "a count")
    if unit not in _COUNT_UNITS:
        raise ConfigError(f"unknown count suffix {unit!r} in {value!r}; use k, m, b or t")
    result = number * _COUNT_UNITS[unit]
    if result != int(result):
        raise ConfigError(f"{value!r} is not a whole number")
    return int(result)
