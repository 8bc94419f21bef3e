"""What the ``astream`` command prints: progress bars, sizes, tables and JSON."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

__all__ = ["Progress", "format_bytes", "plural", "print_json", "print_table", "progress"]


class Progress:
    """A progress bar on stderr, or nothing when stderr is not a terminal or tqdm is missing.

    Thread-safe enough for counters updated from the IO loop thread (tqdm locks its writes).
    """

    def __init__(self, total: int | None, desc: str, unit: str = "it", bytes_: bool = False):
        self._bar: Any = None
        #: What :meth:`update` has added up so far (counted with or without a bar).
        self.count = 0
        self._drawn = 0.0
        if not sys.stderr.isatty():
            return
        try:
            from tqdm import tqdm
        except ImportError:  # the cli extra is not installed: no bars, everything else works
            return
        self._bar = tqdm(
            total=total,
            desc=desc,
            unit="B" if bytes_ else unit,
            unit_scale=bytes_,
            unit_divisor=1024 if bytes_ else 1000,
            leave=False,
            file=sys.stderr,
            dynamic_ncols=True,
        )

    def set_total(self, total: int) -> None:
        """Give the bar its total once it is known."""
        if self._bar is not None and self._bar.total != total:
            self._bar.total = total
            self._bar.refresh()

    def set_postfix(self, text: str) -> None:
        """Show ``text`` after the bar's counts."""
        if self._bar is not None:
            # Redrawn at most 5 times a second: a unit may be one small image.
            now = time.monotonic()
            redraw = now - self._drawn > 0.2
            if redraw:
                self._drawn = now
            self._bar.set_postfix_str(text, refresh=redraw)

    def update(self, count: int = 1) -> None:
        """Advance the bar by ``count``."""
        self.count += count
        if self._bar is not None:
            self._bar.update(count)

    def close(self) -> None:
        """Remove the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def progress(total: int | None, desc: str, *, unit: str = "it", bytes_: bool = False) -> Progress:
    """A :class:`Progress` bar (``bytes_``: count bytes, shown as KiB/MiB)."""
    return Progress(total, desc, unit, bytes_)


def plural(count: int, noun: str) -> str:
    """``plural(1, "shard")`` -> ``"1 shard"``; ``plural(2, "shard")`` -> ``"2 shards"``."""
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"


_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def format_bytes(size: float) -> str:
    """``1536`` -> ``"1.5 KiB"``; whole bytes below 1 KiB."""
    for unit in _UNITS:
        if abs(size) < 1024 or unit == _UNITS[-1]:
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def print_json(obj: Any) -> None:
    """Write ``obj`` to stdout as indented JSON."""
    json.dump(obj, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def print_table(rows: Sequence[Sequence[str]], *, right: Sequence[int] = ()) -> None:
    """Write rows as aligned columns (the columns in ``right`` aligned right)."""
    if not rows:
        return
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        sys.stdout.write("  ".join(cells).rstrip() + "\n")
