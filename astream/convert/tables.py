"""Row-shaped datasets: JSONL (text corpora such as C4, the Pile, EnWiki), CSV/TSV, Parquet.

Plain JSONL files split into byte ranges that start and end on line boundaries, so one large
file still spreads over worker processes; compressed files (``.gz``, ``.zst``, ``.bz2``,
``.xz``) are one unit each. Parquet files split into row groups.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import zstandard

from astream.convert.base import Source
from astream.errors import FormatError, MissingDependencyError

__all__ = ["DelimitedFiles", "JSONLFiles", "ParquetFiles", "text_corpus"]

#: Bytes of a plain JSONL file per unit.
JSONL_CHUNK = 32 << 20


def _open_zstd(path: Path, mode: str) -> Any:
    return zstandard.ZstdDecompressor().stream_reader(open(path, mode), closefd=True)


# Readers of compressed text by suffix; each returns a binary file object the caller closes.
_OPENERS: dict[str, Callable[[Path, str], Any]] = {
    ".gz": gzip.open,
    ".bz2": bz2.open,
    ".xz": lzma.open,
    ".zst": _open_zstd,
    ".zstd": _open_zstd,
}


def _open_text_bytes(path: Path) -> IO[bytes]:
    opener = _OPENERS.get(path.suffix.lower(), open)
    stream: IO[bytes] = opener(path, "rb")
    return stream


def _compressed(path: Path) -> bool:
    return path.suffix.lower() in _OPENERS


@dataclass(frozen=True)
class JSONLFiles(Source):
    """JSON Lines files: one JSON object per line, blank lines skipped.

    :param paths: the files, in order (``.jsonl``, ``.json``, compressed ones as well).
    :param fields: keep only these fields, each of which every line must hold; ``None``
        keeps every field.
    :param chunk_size: bytes of a plain file per unit.
    """

    paths: Sequence[Path]
    fields: Sequence[str] | None = None
    chunk_size: int = JSONL_CHUNK

    def units(self) -> list[Any]:
        units: list[tuple[str, int, int | None]] = []
        for path in map(Path, self.paths):
            if not path.is_file():
                raise FileNotFoundError(f"no such file: {path}")
            if _compressed(path):
                units.append((str(path), 0, None))
                continue
            size = path.stat().st_size
            units.extend(
                (str(path), start, min(start + self.chunk_size, size))
                for start in range(0, max(size, 1), self.chunk_size)
            )
        return units

    def _lines(self, path: Path, start: int, end: int | None) -> Iterator[tuple[int, bytes]]:
        """Lines that *start* in ``[start, end)``, with their byte offsets (for messages)."""
        with _open_text_bytes(path) as handle:
            position = 0
            if start:
                # A line that starts before ``start`` belongs to the previous unit.
                handle.seek(start - 1)
                handle.readline()
                position = handle.tell()
            while end is None or position < end:
                line = handle.readline()
                if not line:
                    break
                yield position, line
                position += len(line)

    def read(self, unit: Any) -> Iterator[dict[str, Any]]:
        name, start, end = unit
        path = Path(name)
        for offset, line in self._lines(path, start, end):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise FormatError(f"{path}: line at byte {offset} is not JSON: {exc}") from exc
            if not isinstance(obj, dict):
                raise FormatError(f"{path}: line at byte {offset} is not a JSON object")
            if self.fields is not None:
                missing = [field for field in self.fields if field not in obj]
                if missing:
                    raise FormatError(f"{path}: line at byte {offset} has no field {missing[0]!r}")
                obj = {field: obj[field] for field in self.fields}
            yield obj


def text_corpus(
    paths: Sequence[Path], *, text_field: str = "text", keep: Sequence[str] = ()
) -> JSONLFiles:
    """A text corpus in JSONL (C4, the Pile, EnWiki dumps): the text and chosen fields.

    :param paths: the JSONL files (``c4/en/c4-train.00000-of-01024.json.gz`` and so on).
    :param text_field: the field holding each document's text.
    :param keep: other fields to keep (``url``, ``timestamp``, ``meta``, ``title``).
    """
    return JSONLFiles(paths, fields=(text_field, *keep))


@dataclass(frozen=True)
class DelimitedFiles(Source):
    """CSV or TSV files with a header line; values are text, read as numbers where all are.

    :param paths: the files, in order; each starts with the same header.
    :param separator: ``","`` for CSV, ``"\\t"`` for TSV.
    """

    paths: Sequence[Path]
    separator: str = ","
    text_values = True

    def units(self) -> list[Any]:
        for path in map(Path, self.paths):
            if not path.is_file():
                raise FileNotFoundError(f"no such file: {path}")
        return [str(path) for path in self.paths]

    def read(self, unit: Any) -> Iterator[dict[str, Any]]:
        with _open_text_bytes(Path(unit)) as raw, io.TextIOWrapper(raw, "utf-8", newline="") as f:
            reader = csv.reader(f, delimiter=self.separator)
            header = next(reader, None)
            if header is None:
                return
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise FormatError(
                        f"{unit}: line {reader.line_num} has {len(row)} fields, the header "
                        f"{len(header)}"
                    )
                yield dict(zip(header, row, strict=True))


def _pyarrow_parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise MissingDependencyError(
            "reading Parquet needs pyarrow: pip install 'astream[parquet]'"
        ) from exc
    return pq


@dataclass(frozen=True)
class ParquetFiles(Source):
    """Parquet files, one unit per row group; values as ``pyarrow``'s ``to_pylist`` gives them.

    :param paths: the files, in order.
    :param columns: read only these columns; ``None`` reads all.
    """

    paths: Sequence[Path]
    columns: Sequence[str] | None = None

    def units(self) -> list[Any]:
        pq = _pyarrow_parquet()
        units: list[tuple[str, int]] = []
        for path in map(Path, self.paths):
            if not path.is_file():
                raise FileNotFoundError(f"no such file: {path}")
            with pq.ParquetFile(path) as parquet:
                units.extend((str(path), group) for group in range(parquet.num_row_groups))
        return units

    def read(self, unit: Any) -> Iterator[dict[str, Any]]:
        pq = _pyarrow_parquet()
        path, group = unit
        with pq.ParquetFile(path) as parquet:
            table = parquet.read_row_group(group, columns=self.columns)
        rows: list[dict[str, Any]] = table.to_pylist()
        yield from rows
