"""What every converter shares: the :class:`Source` interface and column inference.

A source is a dataset in a layout users bring (an image folder, JSONL files, tar shards). It
splits itself into *units* (a file, a byte range of a file, a row group) that can be read on
their own, in order, so that :func:`astream.convert.write_dataset` can hand contiguous runs of
units to worker processes. Sources are plain data (paths and settings) and pickle.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from astream.errors import EncodingError

__all__ = ["TEXT_FORMATS", "Source", "coerce_text", "infer_columns", "sniff_image"]

#: Output formats whose columns hold only ``str``, ``int`` and ``float``.
TEXT_FORMATS = frozenset({"jsonl", "csv", "tsv"})

#: Samples looked at to infer the columns.
INFER_SAMPLES = 64

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Source(ABC):
    """A dataset read as samples (dicts of column name to value), unit by unit."""

    #: Whether values arrive as text to be converted to the inferred types (CSV, TSV).
    text_values: bool = False

    @abstractmethod
    def units(self) -> list[Any]:
        """The source's pieces, in order; each is picklable and read by :meth:`read`."""

    @abstractmethod
    def read(self, unit: Any) -> Iterator[dict[str, Any]]:
        """Yield the samples of one unit, in order."""

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for unit in self.units():
            yield from self.read(unit)

    def peek(self, count: int = INFER_SAMPLES) -> list[dict[str, Any]]:
        """The first ``count`` samples (fewer when the source is smaller)."""
        return list(itertools.islice(iter(self), count))


def sniff_image(data: bytes) -> str | None:
    """``"jpeg"`` or ``"png"`` when ``data`` starts like one, else ``None``."""
    if data.startswith(_JPEG_MAGIC):
        return "jpeg"
    if data.startswith(_PNG_MAGIC):
        return "png"
    return None


def _text_kind(values: list[str]) -> str:
    # A column is a number only when every value reads back as itself ("007" stays a str).
    def all_parse(kind: type[int] | type[float]) -> bool:
        try:
            return all(str(kind(value)) == value for value in values)
        except ValueError:
            return False

    if values and all_parse(int):
        return "int"
    if values and all_parse(float):
        return "float"
    return "str"


def _mds_kind(name: str, values: list[Any]) -> str:
    kinds = {type(value) for value in values}
    if kinds == {bool}:
        return "json"  # an "int" column would read back 0/1, not the booleans
    if kinds == {int}:
        return "int"
    if kinds <= {int, float} and float in kinds:
        return "float64"
    if kinds == {str}:
        return "str"
    if kinds == {bytes}:
        images = {sniff_image(value) for value in values}
        image = images.pop() if len(images) == 1 else None
        return image or "bytes"
    if kinds == {np.ndarray}:
        dtypes = {value.dtype.name for value in values}
        shapes = {value.shape for value in values}
        if len(dtypes) == 1 and len(shapes) == 1:
            dtype, shape = dtypes.pop(), shapes.pop()
            if shape and min(shape) > 0:
                return f"ndarray:{dtype}:{','.join(map(str, shape))}"
            return f"ndarray:{dtype}"
        return "ndarray"
    if kinds <= {list, dict, type(None), str, int, float, bool}:
        return "json"
    raise EncodingError(
        f"column {name!r}: cannot infer an encoding for values of type "
        f"{', '.join(sorted(kind.__name__ for kind in kinds))}; name one with --columns"
    )


def infer_columns(
    samples: Iterable[Mapping[str, Any]],
    fmt: str = "mds",
    *,
    text_values: bool = False,
    overrides: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Infer column name -> encoding from samples, then apply ``overrides``.

    MDS columns: ``int``, ``float64``, ``str``, ``jpeg``/``png`` (bytes that all start like
    one), ``bytes``, ``ndarray:DTYPE:SHAPE`` (one dtype and shape) or ``ndarray``, and ``json``
    for booleans, lists, dicts and mixed JSON values. JSONL/CSV/TSV columns: ``str``, ``int``
    or ``float``.

    :param text_values: the values are text to be read as numbers where they all are (CSV).
    :param overrides: encodings that replace inferred ones (or name columns not seen).
    :raises EncodingError: naming the column whose values fit no encoding of ``fmt``.
    """
    values: dict[str, list[Any]] = {}
    for sample in samples:
        for name, value in sample.items():
            values.setdefault(name, []).append(value)
    overrides = dict(overrides or {})
    columns: dict[str, str] = {}
    for name, seen in values.items():
        if name in overrides:
            continue
        if text_values and all(isinstance(value, str) for value in seen):
            kind = _text_kind(seen)
            columns[name] = kind if fmt in TEXT_FORMATS else {"float": "float64"}.get(kind, kind)
        elif fmt in TEXT_FORMATS:
            kinds = {type(value) for value in seen}
            if kinds == {int}:
                columns[name] = "int"
            elif kinds <= {int, float}:
                columns[name] = "float"
            elif kinds == {str}:
                columns[name] = "str"
            else:
                names = ", ".join(sorted(kind.__name__ for kind in kinds))
                raise EncodingError(
                    f"column {name!r} holds {names} values, which {fmt} shards cannot store "
                    "(only str, int and float); write --format mds, or keep only the other fields "
                    "with --select"
                )
        else:
            columns[name] = _mds_kind(name, seen)
    columns.update(overrides)
    return columns


_INT_SPECS = frozenset(
    {"int", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}
)
_FLOAT_SPECS = frozenset({"float", "float16", "float32", "float64"})


def coerce_text(sample: Mapping[str, Any], columns: Mapping[str, str]) -> dict[str, Any]:
    """Turn text values into the numbers their columns hold (``"3"`` -> 3 for ``int``).

    :raises EncodingError: naming the column when a value does not read as its type.
    """
    out = dict(sample)
    for name, spec in columns.items():
        value = out.get(name)
        if not isinstance(value, str) or not (spec in _INT_SPECS or spec in _FLOAT_SPECS):
            continue
        try:
            out[name] = int(value) if spec in _INT_SPECS else float(value)
        except ValueError as exc:
            raise EncodingError(f"column {name!r} ({spec}): cannot read {value!r}") from exc
    return out
