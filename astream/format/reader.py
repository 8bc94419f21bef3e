"""Reading samples: shard readers over local files, and pure helpers for ranged reads.

A reader maps its file once (``mmap``) and slices samples out of it; it never reopens a file per
sample. The header is checked when the reader opens, so a truncated or tampered shard fails
with :class:`~astream.errors.ShardCorruptError` naming the file, not with a wrong sample later.

For random access without the whole shard, the engine range-reads ``offsets_range(info)`` (the
header), hands the bytes to :func:`parse_offsets` (the header check of :func:`open_shard`),
range-reads ``[off[i], off[i+1])`` of ``payload_basename(info)`` and calls
:func:`decode_sample`.
"""

from __future__ import annotations

import functools
import json
import linecache
import mmap
import os
import struct
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from astream.errors import MissingDependencyError, ShardCorruptError, UnsafeTypeError
from astream.format.encodings import get_encoding, is_builtin_encoding
from astream.format.index import ShardInfo

__all__ = [
    "ShardReader",
    "decode_sample",
    "offsets_range",
    "open_shard",
    "parse_offsets",
    "payload_basename",
]

_U32 = np.dtype("<u4")
_Buffer = bytes | mmap.mmap

# Text column types of JSONL/CSV/TSV shards, as mosaicml-streaming reads them.
_TEXT_TYPES: dict[str, Callable[[str], Any]] = {"str": str, "int": int, "float": float}


def _meta_or_raw(info: ShardInfo) -> str:
    return info.raw.basename if info.format == "mds" else _raw_meta(info).basename


def _raw_meta(info: ShardInfo) -> Any:
    if info.raw_meta is None:
        raise ShardCorruptError(f"{info.raw.basename}: a {info.format} shard needs raw_meta")
    return info.raw_meta


def offsets_range(info: ShardInfo) -> tuple[str, int, int]:
    """Return ``(basename, start, end)``: where the shard's header lies (its sample count, then
    its ``samples + 1`` offsets), the bytes :func:`parse_offsets` takes.

    For MDS the header starts the raw shard file; for JSONL/CSV/TSV it starts the ``.meta``
    file. Both are the decompressed files.
    """
    return _meta_or_raw(info), 0, 4 + 4 * (info.samples + 1)


def payload_basename(info: ShardInfo) -> str:
    """Return the basename of the (decompressed) file that holds the sample bytes."""
    return info.raw.basename


def _check_offsets(
    info: ShardInfo, offsets: np.ndarray[Any, Any], source: str, data_size: int
) -> None:
    count = info.samples
    floor = 4 + 4 * (count + 1) if info.format == "mds" else 0
    if int(offsets[0]) < floor:
        raise ShardCorruptError(
            f"{source}: first sample offset {int(offsets[0])} lies inside the header"
        )
    if count and bool(np.any(offsets[1:] < offsets[:-1])):
        raise ShardCorruptError(f"{source}: sample offsets are not increasing")
    if int(offsets[-1]) > data_size:
        raise ShardCorruptError(
            f"{source}: samples end at byte {int(offsets[-1])} but the data is {data_size} bytes "
            "(truncated?)"
        )


def parse_offsets(info: ShardInfo, data: bytes | memoryview) -> np.ndarray[Any, Any]:
    """Return the ``samples + 1`` offsets of a shard's header bytes (from byte 0 on).

    The check :func:`open_shard` makes, by the same function: the header's sample count must be
    the index's, the offsets must lie past the header, increase, and end within the file's size
    in the index. Given bytes up to the first sample (MDS: ``data[:offsets[0]]``, or more), the
    writer's config recorded there is checked against the index too; given only
    :func:`offsets_range`, it is not.

    :raises ShardCorruptError: naming the file when any of that does not hold.
    """
    return _header_offsets(info, data, len(data), _meta_or_raw(info), info.raw.bytes)


class _Layout(ABC):
    """How one shard configuration turns a sample's bytes into a dict."""

    @abstractmethod
    def decode(self, buf: _Buffer, begin: int, end: int, source: str) -> dict[str, Any]: ...


class _MDSLayout(_Layout):
    def __init__(
        self,
        names: tuple[str, ...],
        encodings: tuple[str, ...],
        sizes: tuple[int | None, ...],
        allow_unsafe: bool,
    ) -> None:
        columns = []
        for name, spec, size in zip(names, encodings, sizes, strict=True):
            try:
                encoding = get_encoding(spec)
            except Exception as exc:
                raise ShardCorruptError(f"column {name!r}: {exc}") from exc
            if not encoding.safe and not allow_unsafe:
                raise UnsafeTypeError(
                    f"column {name!r} uses the unsafe encoding {spec!r} (reading it can run "
                    "code); pass allow_unsafe_types=True if you trust this dataset"
                )
            columns.append((name, spec, encoding.decode, size))
        self.columns = tuple(columns)
        self.plan = tuple((name, decode, size) for name, _spec, decode, size in columns)
        self.specs = dict(zip(names, encodings, strict=True))
        # Columns whose encoding the user registered: its errors are the user's to see.
        self.user_columns = frozenset(
            name for name, spec in self.specs.items() if not is_builtin_encoding(spec)
        )
        self.var_count = sum(size is None for size in sizes)
        # The body starts with one uint32 size per variable-size column, in column order.
        self.sizes = struct.Struct(f"<{self.var_count}I")
        self.decode = self._compile()  # type: ignore[method-assign,assignment]

    def _compile(self) -> Callable[[_Buffer, int, int, str], dict[str, Any]]:
        """A decoder for exactly these columns: straight-line code, no loop per column.

        The hot path of every read. Positions only grow, so one bound check on the last
        column's end covers them all; any failure (a bound, a decode error) goes to
        :meth:`decode_checked`, which finds the column at fault and raises the precise error.
        The generated source holds no name from the index: names and decoders are bound in
        its namespace, so a hostile index cannot inject code. The source is registered with
        :mod:`linecache` under a name that says what it is (it depends only on the encodings
        and sizes, which the name spells), so tracebacks through it show its lines.
        """
        namespace: dict[str, Any] = {
            "unpack_from": self.sizes.unpack_from,
            "from_bytes": int.from_bytes,
            "checked": self.decode_checked,
            "Bypass": (MissingDependencyError, ShardCorruptError),
        }
        lines = ["def decode(buf, begin, end, source):", "    try:"]
        if self.var_count:
            names = ", ".join(f"v{i}" for i in range(self.var_count))
            lines.append(f"        {names}, = unpack_from(buf, begin)")
        lines.append(f"        p0 = begin + {4 * self.var_count}")
        var = 0
        values = []
        for i, (name, spec, decode, fixed) in enumerate(self.columns):
            if fixed is None:
                lines.append(f"        p{i + 1} = p{i} + v{var}")
                var += 1
            else:
                lines.append(f"        p{i + 1} = p{i} + {int(fixed)}")
            namespace[f"k{i}"] = name
            namespace[f"d{i}"] = decode
            piece = f"buf[p{i}:p{i + 1}]"
            if spec == "bytes":
                values.append(f"k{i}: {piece}")  # a slice of bytes or mmap is bytes already
            elif spec == "int":
                values.append(f"k{i}: from_bytes({piece}, 'little', signed=True)")
            else:
                values.append(f"k{i}: d{i}({piece})")
        count = len(self.columns)
        lines += [
            f"        if p{count} > end:",
            "            return checked(buf, begin, end, source)",
            "        return {" + ", ".join(values) + "}",
            "    except Bypass:",
            "        raise",
            "    except Exception:",
            "        return checked(buf, begin, end, source)",
        ]
        source = "\n".join(lines) + "\n"
        layout = ", ".join(
            spec if size is None else f"{spec}[{size}]" for _name, spec, _d, size in self.columns
        )
        filename = f"<astream MDS decoder: {layout}>"
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        exec(compile(source, filename, "exec"), namespace)  # our own source, see above
        decoder: Callable[[_Buffer, int, int, str], dict[str, Any]] = namespace["decode"]
        return decoder

    def decode(self, buf: _Buffer, begin: int, end: int, source: str) -> dict[str, Any]:
        # Replaced per instance by the compiled decoder (see _compile).
        return self.decode_checked(buf, begin, end, source)

    def decode_checked(self, buf: _Buffer, begin: int, end: int, source: str) -> dict[str, Any]:
        """Decode column by column, naming the column at fault in any error."""
        sizes = self.sizes.unpack_from(buf, begin) if self.var_count else ()
        pos = begin + 4 * self.var_count
        var = 0
        sample: dict[str, Any] = {}
        name = ""
        try:
            for name, decode, fixed in self.plan:
                if fixed is None:
                    stop = pos + sizes[var]
                    var += 1
                else:
                    stop = pos + fixed
                if stop > end:
                    raise ShardCorruptError(f"{source}: column {name!r} runs past its sample's end")
                sample[name] = decode(buf[pos:stop])
                pos = stop
        except (MissingDependencyError, ShardCorruptError):
            raise
        except Exception as exc:
            if name in self.user_columns:
                # A registered encoding failed: maybe corrupt bytes, maybe a bug in it. Its own
                # error goes up, so the user sees where; a note names the column and shard.
                add_note = getattr(exc, "add_note", None)  # Python 3.11+
                if add_note is not None:
                    add_note(f"decoding column {name!r} ({self.specs[name]}) of {source}")
                raise
            raise ShardCorruptError(
                f"{source}: column {name!r} does not decode as {self.specs[name]}: {exc}"
            ) from exc
        return sample


class _JSONLayout(_Layout):
    def decode(self, buf: _Buffer, begin: int, end: int, source: str) -> dict[str, Any]:
        try:
            sample = json.loads(bytes(buf[begin:end]))
        except (ValueError, RecursionError) as exc:  # RecursionError: nested thousands deep
            raise ShardCorruptError(f"{source}: a sample is not valid JSON: {exc}") from exc
        if not isinstance(sample, dict):
            raise ShardCorruptError(f"{source}: a sample is a JSON {type(sample).__name__}")
        return sample


class _XSVLayout(_Layout):
    def __init__(
        self, names: tuple[str, ...], encodings: tuple[str, ...], separator: str, newline: str
    ) -> None:
        for name, spec in zip(names, encodings, strict=True):
            if spec not in _TEXT_TYPES:
                raise ShardCorruptError(f"column {name!r}: unknown text column type {spec!r}")
        self.columns = tuple(
            (name, _TEXT_TYPES[spec]) for name, spec in zip(names, encodings, strict=True)
        )
        self.separator = separator
        self.newline = newline

    def decode(self, buf: _Buffer, begin: int, end: int, source: str) -> dict[str, Any]:
        try:
            text = bytes(buf[begin:end]).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ShardCorruptError(f"{source}: a row is not UTF-8: {exc}") from exc
        if text.endswith(self.newline):
            text = text[: -len(self.newline)]
        parts = text.split(self.separator)
        if len(parts) != len(self.columns):
            raise ShardCorruptError(
                f"{source}: a row has {len(parts)} fields, the shard has {len(self.columns)} columns"
            )
        sample: dict[str, Any] = {}
        name = ""
        try:
            for (name, convert), part in zip(self.columns, parts, strict=True):
                sample[name] = convert(part)
        except ValueError as exc:
            raise ShardCorruptError(f"{source}: column {name!r}: {exc}") from exc
        return sample


@functools.lru_cache(maxsize=256)
def _layout(
    fmt: str,
    names: tuple[str, ...],
    encodings: tuple[str, ...],
    sizes: tuple[int | None, ...],
    separator: str,
    newline: str,
    allow_unsafe: bool,
) -> _Layout:
    if fmt == "mds":
        return _MDSLayout(names, encodings, sizes, allow_unsafe)
    if fmt == "json":
        return _JSONLayout()
    return _XSVLayout(names, encodings, separator, newline)


def _layout_for(info: ShardInfo, allow_unsafe: bool, source: str) -> _Layout:
    try:
        return _layout(
            info.format,
            info.column_names,
            info.column_encodings,
            info.column_sizes,
            info.separator,
            info.newline,
            allow_unsafe,
        )
    except (ShardCorruptError, UnsafeTypeError) as exc:
        raise type(exc)(f"{source}: {exc}") from exc


def decode_sample(
    info: ShardInfo, payload: bytes | memoryview, *, allow_unsafe_types: bool = False
) -> dict[str, Any]:
    """Decode one sample's bytes (``[off[i], off[i+1])`` of the payload file) into a dict.

    :raises UnsafeTypeError: for a ``pkl`` column unless ``allow_unsafe_types``.
    :raises ShardCorruptError: when the bytes do not decode as the shard's columns.
    """
    source = payload_basename(info)
    # Decoders are handed bytes (custom encodings may rely on it): one copy of a view here.
    data = payload if isinstance(payload, bytes) else bytes(payload)
    return _layout_for(info, allow_unsafe_types, source).decode(data, 0, len(data), source)


def _map(path: Path) -> tuple[_Buffer, int]:
    """Map ``path`` read-only; an empty file (mmap refuses those) becomes ``b""``."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size == 0:
                return b"", 0
            # The map keeps its own reference to the file: the handle can close now.
            return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ), size
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"shard file {path} does not exist") from exc


class ShardReader:
    """Random access to the samples of one local, decompressed shard.

    Make one with :func:`open_shard`. ``reader[i]`` returns sample ``i`` as a dict; close the
    reader (or use it as a context manager) to unmap its files.
    """

    def __init__(
        self,
        info: ShardInfo,
        directory: Path,
        layout: _Layout,
        data: _Buffer,
        offsets: list[int],
        extra: _Buffer | None = None,
    ) -> None:
        self.info = info
        #: The file that holds the sample bytes.
        self.path = Path(directory) / info.raw.basename
        self._source = str(self.path)
        self._layout = layout
        self._decode = layout.decode
        self._data = data
        self._extra = extra
        # A Python list indexes several times faster than a numpy array.
        self._offsets = offsets
        self._count = len(offsets) - 1

    def __len__(self) -> int:
        return self._count

    def _index(self, index: int) -> int:
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError(f"{self._source}: sample {index} out of range 0..{self._count - 1}")
        return index

    def payload(self, index: int) -> bytes:
        """Return sample ``index``'s encoded bytes."""
        index = self._index(index)
        return bytes(self._data[self._offsets[index] : self._offsets[index + 1]])

    def __getitem__(self, index: int) -> dict[str, Any]:
        offsets = self._offsets
        if not 0 <= index < self._count:
            index = self._index(index)
        return self._decode(self._data, offsets[index], offsets[index + 1], self._source)

    def decoding(
        self,
    ) -> tuple[Callable[[_Buffer, int, int, str], dict[str, Any]], _Buffer, list[int], str]:
        """``(decode, buffer, offsets, source)``: sample ``i`` is
        ``decode(buffer, offsets[i], offsets[i + 1], source)``, which is what ``reader[i]``
        returns, without its bounds check (``0 <= i < len(reader)`` is the caller's to keep)
        and without a method call per sample, for a caller that reads many samples of the
        shard in a row. Valid until the reader closes."""
        return self._decode, self._data, self._offsets, self._source

    def close(self) -> None:
        """Unmap the shard's files. Idempotent."""
        for buf in (self._data, self._extra):
            if isinstance(buf, mmap.mmap):
                buf.close()
        self._data = b""
        self._extra = None
        self._offsets = [0]
        self._count = 0

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _header_offsets(
    info: ShardInfo, buf: _Buffer | bytes | memoryview, size: int, source: str, data_size: int
) -> np.ndarray[Any, Any]:
    """The checked offsets of the shard header in ``buf[:size]`` (a copy, never a view).

    The one header check, for a mapped shard (:func:`open_shard`) and for header bytes read by
    range or from a download in progress (:func:`parse_offsets`). The config is checked when
    ``buf`` reaches the first sample.
    """
    if size < 4:
        raise ShardCorruptError(f"{source}: {size} bytes is too short for a shard header")
    (count,) = struct.unpack_from("<I", buf, 0)
    if count != info.samples:
        raise ShardCorruptError(
            f"{source}: header says {count} samples, the index says {info.samples}"
        )
    if size < 4 + 4 * (count + 1):
        raise ShardCorruptError(
            f"{source}: {size} bytes cannot hold {count + 1} offsets (truncated?)"
        )
    # Copy the offsets out of the map: an array viewing the map would keep it from closing.
    offsets = np.frombuffer(bytes(buf[4 : 8 + 4 * count]), _U32)
    _check_offsets(info, offsets, source, data_size)
    # The writer's config follows the offsets: up to the first sample (MDS) or the end (meta).
    config_end = int(offsets[0]) if info.format == "mds" else size
    if config_end <= size:
        _check_config(info, bytes(buf[8 + 4 * count : config_end]), source)
    return offsets


def _read_header(
    info: ShardInfo, buf: _Buffer, size: int, source: str, data_size: int
) -> list[int]:
    result: list[int] = _header_offsets(info, buf, size, source, data_size).tolist()
    return result


# Keys of the config a writer records in each shard that decide how its bytes decode.
_DECODING_KEYS = (
    "format",
    "column_names",
    "column_encodings",
    "column_sizes",
    "columns",
    "separator",
    "newline",
)


def _check_config(info: ShardInfo, data: bytes, source: str) -> None:
    """Refuse a shard whose own config disagrees with its index entry on how to decode it.

    The index alone names the columns; a shard carries the config it was written with, so an
    index edited (or damaged) to rename, retype or resize a column is caught here instead of
    yielding samples under the wrong names or types. A header with no parsable config (written
    by another tool) is not checked.
    """
    try:
        config = json.loads(data)
    except (ValueError, RecursionError):
        return
    if not isinstance(config, dict):
        return
    for key in _DECODING_KEYS:
        if key in config and key in info.entry and config[key] != info.entry[key]:
            raise ShardCorruptError(
                f"{source}: the shard records {key}={config[key]!r}, the index says "
                f"{info.entry[key]!r}"
            )


def open_shard(
    info: ShardInfo, directory: Path | str, *, allow_unsafe_types: bool = False
) -> ShardReader:
    """Open the local decompressed files of shard ``info`` found under ``directory``.

    :raises ShardCorruptError: naming the file when its header disagrees with the index or
        its offsets are out of order or past the end (truncated or tampered file).
    :raises UnsafeTypeError: for a ``pkl`` column unless ``allow_unsafe_types``.
    :raises FileNotFoundError: when a file of the shard is missing.
    """
    directory = Path(directory)
    data_path = directory / info.raw.basename
    layout = _layout_for(info, allow_unsafe_types, str(data_path))
    data, data_size = _map(data_path)
    try:
        if info.format == "mds":
            offsets = _read_header(info, data, data_size, str(data_path), data_size)
            return ShardReader(info, directory, layout, data, offsets)
        meta_path = directory / _raw_meta(info).basename
        meta, meta_size = _map(meta_path)
        try:
            offsets = _read_header(info, meta, meta_size, str(meta_path), data_size)
        except BaseException:
            if isinstance(meta, mmap.mmap):
                meta.close()
            raise
        # The offsets are copied into a list: the meta map is not needed past this point.
        if isinstance(meta, mmap.mmap):
            meta.close()
        return ShardReader(info, directory, layout, data, offsets)
    except BaseException:
        if isinstance(data, mmap.mmap):
            data.close()
        raise
