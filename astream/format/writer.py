"""Writing datasets into a local folder: MDS, JSONL, CSV/TSV/XSV shards and ``index.json``.

``LocalMDSWriter`` and friends write a local folder only; the public writers of
:mod:`astream.writers` (``astream.MDSWriter``, ...) build on them and also upload to a store.

The files written are byte for byte those mosaicml-streaming writes for the same samples and
arguments (gzip aside: astream's gzip has a zero timestamp). A writer that is interrupted
leaves no ``index.json`` naming a missing or partial shard: each file is written under a
temporary name and renamed when complete, and the index is written last, the same way.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

import numpy as np

from astream.errors import ConfigError, EncodingError
from astream.format.atomic import write_atomic
from astream.format.codecs import compress, compression_extension, is_compression
from astream.format.encodings import Encoding, get_encoding
from astream.format.hashing import hash_bytes, is_hash
from astream.format.index import INDEX_BASENAME
from astream.units import parse_bytes

__all__ = [
    "LocalCSVWriter",
    "LocalJSONLWriter",
    "LocalJSONWriter",
    "LocalMDSWriter",
    "LocalTSVWriter",
    "LocalXSVWriter",
    "ShardWriter",
]

_U32_MAX = 0xFFFFFFFF
# The samples of one shard are addressed with uint32 offsets.
_SIZE_LIMIT_CEILING = 1 << 32


def _remove_dataset(root: Path) -> None:
    """Delete a dataset folder, its index first.

    Without its index the folder is no dataset: a reader that starts now gets an error rather
    than the old index over a mix of old and new shards, and a writer killed at any later point
    leaves no index naming files it never wrote. The unlink is made durable before anything else
    goes, so a crash cannot bring the old index back over new shards.
    """
    index = root / INDEX_BASENAME
    if index.exists():
        index.unlink()
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    shutil.rmtree(root)


class ShardWriter(ABC):
    """Common machinery of the dataset writers (use :class:`LocalMDSWriter` and friends).

    :param out: local directory to write the dataset into.
    :param keep_local: accepted for mosaicml-streaming compatibility; a local ``out`` is kept.
    :param compression: ``None`` or a codec spelling (``"zstd"``, ``"zstd:7"``).
    :param hashes: hash algorithms to record for every file, unique and sorted.
    :param size_limit: start a new shard before one would exceed this many bytes (an int or
        ``"64mb"``); ``None`` or ``0`` puts every sample in one shard. Default 64 MiB.
    :param exist_ok: when ``out`` exists and is not empty, delete its contents (``True``;
        its ``index.json`` first, so that no reader ever takes old and new files for one
        dataset) or raise :class:`FileExistsError` (``False``, the default).
    :param progress_bar: accepted for compatibility (uploads only).
    :param max_workers: accepted for compatibility (uploads only).
    :param retry: accepted for compatibility (uploads only).

    Subclasses that upload override :meth:`_publish`, called once per finished file.
    """

    format: ClassVar[str] = ""
    #: Bytes per sample that the shard adds around the sample's own bytes (MDS: its offset).
    extra_bytes_per_sample: ClassVar[int] = 0

    def __init__(
        self,
        *,
        out: str | os.PathLike[str],
        keep_local: bool = False,
        compression: str | None = None,
        hashes: list[str] | None = None,
        size_limit: int | str | None = 1 << 26,
        exist_ok: bool = False,
        progress_bar: bool = False,
        max_workers: int | None = None,
        retry: int = 2,
    ) -> None:
        compression = compression or None
        if compression is not None and not is_compression(compression):
            raise ConfigError(f"unknown compression {compression!r}")
        hash_list = list(hashes or [])
        if hash_list != sorted(set(hash_list)):
            raise ConfigError(f"hashes must be unique and sorted, got {hash_list}")
        for algo in hash_list:
            if not is_hash(algo):
                raise ConfigError(f"unknown hash algorithm {algo!r}")
        limit = parse_bytes(size_limit) if size_limit else None
        if limit is not None and limit >= _SIZE_LIMIT_CEILING:
            raise ConfigError(f"size_limit must be under 2**32 (uint32 offsets), got {limit}")
        self.compression = compression
        self.hashes = hash_list
        self.size_limit = limit or None
        self.keep_local = keep_local
        self.progress_bar = progress_bar
        self.max_workers = max_workers
        self.retry = retry
        self.local = Path(out).expanduser()
        if self.local.exists() and any(self.local.iterdir()):
            if not exist_ok:
                raise FileExistsError(f"directory is not empty: {self.local} (pass exist_ok=True)")
            _remove_dataset(self.local)
        self.local.mkdir(parents=True, exist_ok=True)
        self.shards: list[dict[str, Any]] = []
        self._samples: list[bytes] = []
        self._shard_size = 0
        self._finished = False
        self._reset()

    # -- what each format supplies -------------------------------------------------------

    @property
    def extra_bytes_per_shard(self) -> int:
        """Bytes a shard holds besides its samples, for the size accounting."""
        return 0

    @abstractmethod
    def encode_sample(self, sample: Mapping[str, Any]) -> bytes:
        """Return one sample's bytes in this format.

        :raises EncodingError: naming the column when a value does not fit its encoding.
        """

    @abstractmethod
    def _encode_shard(self) -> list[tuple[str | None, bytes]]:
        """Return the shard's files as ``(extra extension or None, raw bytes)``, data first."""

    def get_config(self) -> dict[str, Any]:
        """Return the settings recorded in every shard's index entry."""
        return {
            "version": 2,
            "format": self.format,
            "compression": self.compression,
            "hashes": self.hashes,
            "size_limit": self.size_limit,
        }

    # -- hooks ---------------------------------------------------------------------------

    def _publish(self, basename: str, local_path: Path) -> None:  # noqa: B027 (a hook)
        """Called once per finished file (shard files, then ``index.json`` last).

        The file is complete at ``local_path`` when this is called. The base does nothing;
        an uploading subclass copies it to its remote here.
        """

    # -- the writing ---------------------------------------------------------------------

    def _reset(self) -> None:
        self._samples = []
        self._shard_size = self.extra_bytes_per_shard

    def write(self, sample: Mapping[str, Any]) -> None:
        """Add one sample, first finishing the current shard if the sample would overflow it.

        :raises EncodingError: naming the sample (its number in writing order, from 0) and
            the column when a value does not fit its encoding, including ``bytes`` that could
            never decode as it (text for a ``str`` column, non-image bytes for ``jpeg``/``png``,
            invalid JSON for ``json``); nothing of the sample is written and the writer stays
            usable.
        """
        if self._finished:
            raise RuntimeError(f"writer for {self.local} is already finished")
        try:
            encoded = self.encode_sample(sample)
        except EncodingError as exc:
            number = sum(shard["samples"] for shard in self.shards) + len(self._samples)
            raise EncodingError(f"sample {number}: {exc}") from exc.__cause__
        size = len(encoded) + self.extra_bytes_per_sample
        # As mosaicml-streaming accounts: a sample bigger than the limit on its own still
        # closes the current shard first (which may leave a shard of 0 samples).
        if self.size_limit and self.size_limit < self._shard_size + size:
            self._flush()
        self._samples.append(encoded)
        self._shard_size += size

    def _flush(self) -> None:
        number = len(self.shards)
        entry: dict[str, Any] = {"samples": len(self._samples)}
        keys = (("raw_data", "zip_data"), ("raw_meta", "zip_meta"))
        for (suffix, raw), (raw_key, zip_key) in zip(self._encode_shard(), keys, strict=False):
            raw_name = f"shard.{number:05}.{self.format}" + (f".{suffix}" if suffix else "")
            entry[raw_key] = self._file_info(raw_name, raw)
            if self.compression is None:
                entry[zip_key] = None
                self._emit(raw_name, raw)
            else:
                zip_name = f"{raw_name}.{compression_extension(self.compression)}"
                packed = compress(self.compression, raw)
                entry[zip_key] = self._file_info(zip_name, packed)
                self._emit(zip_name, packed)
        entry.update(self.get_config())
        self.shards.append(entry)
        self._reset()

    def _file_info(self, basename: str, data: bytes) -> dict[str, Any]:
        hashes = {algo: hash_bytes(algo, data) for algo in self.hashes}
        return {"basename": basename, "bytes": len(data), "hashes": hashes}

    def _emit(self, basename: str, data: bytes) -> None:
        path = self.local / basename
        write_atomic(path, data)
        self._publish(basename, path)

    def finish(self) -> None:
        """Write the last shard and then ``index.json``. Calling it again does nothing."""
        if self._finished:
            return
        if self._samples:
            self._flush()
        index = {"shards": self.shards, "version": 2}
        self._emit(INDEX_BASENAME, json.dumps(index, sort_keys=True).encode("utf-8"))
        self._finished = True

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.finish()
        else:
            # Unlike mosaicml-streaming, an exception does not write the index: the dataset is
            # incomplete, and a reader must not take it for a finished one.
            self._finished = True

    @staticmethod
    def _offsets(start: int, samples: list[bytes], what: str) -> bytes:
        offsets = np.cumsum([start] + [len(sample) for sample in samples], dtype=np.int64)
        if int(offsets[-1]) > _U32_MAX:
            raise ConfigError(f"{what} would pass 4 GiB; set a size_limit")
        return offsets.astype("<u4").tobytes()


def _encoding_error(column: str, spec: str, value: Any, reason: object) -> EncodingError:
    return EncodingError(
        f"column {column!r} (encoding {spec!r}) cannot hold a value of type "
        f"{type(value).__name__}: {reason}"
    )


def _column(sample: Mapping[str, Any], name: str) -> Any:
    try:
        return sample[name]
    except KeyError:
        raise EncodingError(f"sample has no value for column {name!r}") from None


class LocalMDSWriter(ShardWriter):
    """Write an MDS dataset (``shard.NNNNN.mds`` files and ``index.json``).

    :param columns: column name -> encoding name (``{"x": "ndarray:float32", "y": "int"}``).

    The other keyword arguments are :class:`ShardWriter`'s::

        with LocalMDSWriter(out="data/", columns={"text": "str"}, compression="zstd") as writer:
            for text in texts:
                writer.write({"text": text})
    """

    format = "mds"
    extra_bytes_per_sample = 4

    def __init__(
        self, *, columns: Mapping[str, str], out: str | os.PathLike[str], **kwargs: Any
    ) -> None:
        self.columns = dict(columns)
        self.column_names: list[str] = []
        self.column_encodings: list[str] = []
        self.column_sizes: list[int | None] = []
        self._coders: list[tuple[str, str, Encoding, int | None]] = []
        for name in sorted(self.columns):
            spec = self.columns[name]
            try:
                encoding = get_encoding(spec)
            except EncodingError as exc:
                raise EncodingError(f"column {name!r}: {exc}") from None  # exc said all
            self.column_names.append(name)
            self.column_encodings.append(spec)
            self.column_sizes.append(encoding.size)
            self._coders.append((name, spec, encoding, encoding.size))
        self._var_sizes = struct.Struct(f"<{self.column_sizes.count(None)}I")
        self._config_data = b""
        super().__init__(out=out, **kwargs)
        self._config_data = json.dumps(self.get_config(), sort_keys=True).encode("utf-8")
        self._reset()

    @property
    def extra_bytes_per_shard(self) -> int:
        # The sample count, the final offset and the config JSON.
        return 4 + 4 + len(self._config_data)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            column_names=self.column_names,
            column_encodings=self.column_encodings,
            column_sizes=self.column_sizes,
        )
        return config

    def encode_sample(self, sample: Mapping[str, Any]) -> bytes:
        sizes: list[int] = []
        parts: list[bytes] = []
        for name, spec, encoding, size in self._coders:
            value = _column(sample, name)
            try:
                if isinstance(value, bytes):
                    # Written as-is, whatever the encoding (as the reference does), once a
                    # cheap check says it can decode (a str column refuses bytes; an image
                    # column wants its file's magic number).
                    encoding.check_encoded(value)
                    datum = value
                else:
                    datum = encoding.encode(value)
            except (TypeError, ValueError, OverflowError, AttributeError) as exc:
                raise _encoding_error(name, spec, value, exc) from exc
            if size is None:
                if len(datum) > _U32_MAX:
                    raise _encoding_error(name, spec, value, "more than 4 GiB")
                sizes.append(len(datum))
            elif len(datum) != size:
                raise _encoding_error(
                    name, spec, value, f"{len(datum)} bytes, the column holds {size}"
                )
            parts.append(datum)
        return self._var_sizes.pack(*sizes) + b"".join(parts)

    def _encode_shard(self) -> list[tuple[str | None, bytes]]:
        start = 4 + 4 * (len(self._samples) + 1) + len(self._config_data)
        head = struct.pack("<I", len(self._samples)) + self._offsets(
            start, self._samples, "an MDS shard"
        )
        return [(None, b"".join([head, self._config_data, *self._samples]))]


_TEXT_KINDS: dict[str, type | tuple[type, ...]] = {"str": str, "int": int, "float": float}


def _check_text_kinds(columns: Mapping[str, str]) -> None:
    for name, kind in columns.items():
        if kind not in _TEXT_KINDS:
            raise EncodingError(f"column {name!r}: unknown type {kind!r}; use str, int or float")


def _text_value(name: str, kind: str, value: Any) -> Any:
    if not isinstance(value, _TEXT_KINDS[kind]):
        raise _encoding_error(name, kind, value, f"expected {kind}")
    return value


class _SplitWriter(ShardWriter):
    """Shards of two files: the data, and a ``.meta`` file of offsets and config."""

    newline: str

    def _data_start(self) -> bytes:
        return b""

    def _encode_shard(self) -> list[tuple[str | None, bytes]]:
        head = self._data_start()
        data = b"".join([head, *self._samples])
        meta = b"".join(
            [
                struct.pack("<I", len(self._samples)),
                self._offsets(len(head), self._samples, f"a {self.format} shard"),
                json.dumps(self.get_config(), sort_keys=True).encode("utf-8"),
            ]
        )
        return [(None, data), ("meta", meta)]


class LocalJSONLWriter(_SplitWriter):
    """Write a JSONL dataset: one ``json.dumps(sample, sort_keys=True)`` per line.

    :param columns: column name -> ``"str"``, ``"int"`` or ``"float"``.
    :param newline: the line terminator (default ``"\\n"``).
    """

    format = "json"

    def __init__(
        self,
        *,
        columns: Mapping[str, str],
        out: str | os.PathLike[str],
        newline: str = "\n",
        **kwargs: Any,
    ) -> None:
        _check_text_kinds(columns)
        self.columns = dict(columns)
        self.newline = newline
        super().__init__(out=out, **kwargs)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(columns=self.columns, newline=self.newline)
        return config

    def encode_sample(self, sample: Mapping[str, Any]) -> bytes:
        obj = {
            name: _text_value(name, kind, _column(sample, name))
            for name, kind in self.columns.items()
        }
        try:
            text = json.dumps(obj, sort_keys=True)
        except ValueError as exc:
            raise EncodingError(f"sample cannot be written as JSON: {exc}") from exc
        return (text + self.newline).encode("utf-8")


#: mosaicml-streaming's name for :class:`LocalJSONLWriter`.
LocalJSONWriter = LocalJSONLWriter


class LocalXSVWriter(_SplitWriter):
    """Write delimited text shards with a header line.

    :param columns: column name -> ``"str"``, ``"int"`` or ``"float"``.
    :param separator: the field separator; no column name or value may contain it.
    :param newline: the line terminator (default ``"\\n"``).
    """

    format = "xsv"

    def __init__(
        self,
        *,
        columns: Mapping[str, str],
        separator: str,
        out: str | os.PathLike[str],
        newline: str = "\n",
        **kwargs: Any,
    ) -> None:
        _check_text_kinds(columns)
        if not separator or not newline:
            raise ConfigError("separator and newline must not be empty")
        for name in columns:
            if separator in name or newline in name:
                raise ConfigError(f"column name {name!r} contains the separator or newline")
        self.columns = dict(columns)
        self.column_names = sorted(self.columns)
        self.column_encodings = [self.columns[name] for name in self.column_names]
        self.separator = separator
        self.newline = newline
        super().__init__(out=out, **kwargs)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            column_names=self.column_names,
            column_encodings=self.column_encodings,
            separator=self.separator,
            newline=self.newline,
        )
        return config

    def encode_sample(self, sample: Mapping[str, Any]) -> bytes:
        fields = []
        for name, kind in zip(self.column_names, self.column_encodings, strict=True):
            value = _text_value(name, kind, _column(sample, name))
            text = str(value)
            if self.separator in text or self.newline in text:
                raise _encoding_error(name, kind, value, "contains the separator or newline")
            fields.append(text)
        return (self.separator.join(fields) + self.newline).encode("utf-8")

    def _data_start(self) -> bytes:
        return (self.separator.join(self.column_names) + self.newline).encode("utf-8")


class _LocalFixedSeparatorWriter(LocalXSVWriter):
    """An XSV writer whose format implies the separator (not recorded in the index)."""

    fixed_separator: ClassVar[str] = ","

    def __init__(
        self,
        *,
        columns: Mapping[str, str],
        out: str | os.PathLike[str],
        newline: str = "\n",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            columns=columns, separator=self.fixed_separator, out=out, newline=newline, **kwargs
        )

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        del config["separator"]
        return config


class LocalCSVWriter(_LocalFixedSeparatorWriter):
    """Write CSV shards (separator ``,``); see :class:`LocalXSVWriter`."""

    format = "csv"
    fixed_separator = ","


class LocalTSVWriter(_LocalFixedSeparatorWriter):
    """Write TSV shards (separator tab); see :class:`LocalXSVWriter`."""

    format = "tsv"
    fixed_separator = "\t"
