"""The dataset index (``index.json``, version 2): its model, validation and merging.

:func:`load_index` treats the index as hostile input: every field is checked, and a basename
that could name a file outside the dataset (absolute, ``..``, backslash) is refused, since the
engine turns basenames into paths in its cache.
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from astream.errors import ConfigError, IndexFormatError
from astream.format.atomic import write_atomic
from astream.format.codecs import is_compression
from astream.format.hashing import is_hash

__all__ = [
    "INDEX_BASENAME",
    "SHARD_FORMATS",
    "DatasetIndex",
    "FileInfo",
    "ShardInfo",
    "check_basename",
    "load_index",
    "merge_index",
    "merged_index_json",
]

INDEX_BASENAME = "index.json"
#: Shard formats an index may name.
SHARD_FORMATS = frozenset({"mds", "json", "csv", "tsv", "xsv"})
_SEPARATORS = {"csv": ",", "tsv": "\t"}
# A shard header stores its sample count as a uint32.
_MAX_SAMPLES = 0xFFFFFFFF - 1
# A file size past the largest file offset (off_t) is no file's size.
_MAX_FILE_BYTES = (1 << 63) - 1


@dataclass(frozen=True)
class FileInfo:
    """One file of a shard as the index records it.

    :param basename: path relative to the dataset root (``"shard.00000.mds"``).
    :param bytes: the file's size.
    :param hashes: algorithm name -> hex digest.
    """

    basename: str
    bytes: int
    hashes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ShardInfo:
    """One shard's entry in the index.

    ``entry`` is the entry exactly as read (or written), so that :meth:`DatasetIndex.to_json`
    re-dumps an index byte for byte.
    """

    format: str
    samples: int
    raw: FileInfo
    zip: FileInfo | None
    compression: str | None
    hashes: tuple[str, ...]
    size_limit: int | None
    column_names: tuple[str, ...] = ()
    column_encodings: tuple[str, ...] = ()
    column_sizes: tuple[int | None, ...] = ()
    raw_meta: FileInfo | None = None
    zip_meta: FileInfo | None = None
    newline: str = "\n"
    separator: str = ","
    entry: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def basenames(self) -> tuple[str, ...]:
        """Every file this entry names (raw, compressed, meta)."""
        infos = (self.raw, self.zip, self.raw_meta, self.zip_meta)
        return tuple(info.basename for info in infos if info is not None)


@dataclass(frozen=True)
class DatasetIndex:
    """A dataset's shards, in order."""

    shards: tuple[ShardInfo, ...]

    @property
    def samples(self) -> int:
        """The total number of samples over every shard."""
        return sum(shard.samples for shard in self.shards)

    def to_json(self) -> bytes:
        """Return the index as mosaicml-streaming writes it (``json.dump``, sorted keys)."""
        obj = {"shards": [dict(shard.entry) for shard in self.shards], "version": 2}
        return json.dumps(obj, sort_keys=True).encode("utf-8")


#: The folder of astream's own bookkeeping in a cache (locks, LRU stamps): no basename enters it.
META_DIR = ".astream"
#: The key of the placeholder an uploading writer puts in place of an old ``index.json`` before
#: it writes over a dataset: :func:`load_index` refuses it with a message saying so.
INCOMPLETE_KEY = "astream_incomplete"
#: The longest basename (percent-quoted, as a cache names its lock files) an index may hold.
MAX_BASENAME_CHARS = 200
# Temporary names: the cache's (".name.astream-tmp-PID-TOKEN") and write_atomic's (".name.PID.tmp").
_TEMP_NAME = re.compile(r"\..*(\.astream-tmp-|\.\d+\.tmp$)")
# Path components of safe characters that do not start with a dot: see _plain_basename.
_PLAIN_BASENAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*(/[A-Za-z0-9_-][A-Za-z0-9_.-]*)*")


def check_basename(basename: str, where: str) -> None:
    """Refuse a basename that is not a plain relative path inside the dataset.

    A cache keeps the dataset's files at their basenames beside its own bookkeeping, so a
    basename may not name that either: a file of ``.astream/`` (locks and the LRU stamps that
    eviction trusts), a temporary file's name, or the index itself.

    :raises IndexFormatError: naming ``where`` for an absolute path, ``..``, ``.``, an empty
        component, a backslash, a drive letter, a NUL, a path into ``.astream/``, a temporary
        file's name, ``index.json``, or more than :data:`MAX_BASENAME_CHARS` characters.
    """
    if _plain_basename(basename):
        return
    problem = _basename_problem(basename)
    if problem is not None:
        raise IndexFormatError(
            f"{where}: basename {basename!r} {problem}; it must stay inside the dataset"
        )


def _plain_basename(basename: str) -> bool:
    """Whether ``basename`` passes every check at a glance (the names writers give): path
    components of safe characters that do not start with a dot (so no ``.``, ``..``,
    ``.astream`` nor temporary name), not the index, and short enough once quoted (quoting
    leaves these characters alone and turns each ``/`` into three). ``False`` only means that
    the full check (:func:`_basename_problem`) decides."""
    return (
        len(basename) + 2 * basename.count("/") <= MAX_BASENAME_CHARS
        and _PLAIN_BASENAME.fullmatch(basename) is not None
        and basename != INDEX_BASENAME
    )


def _basename_problem(basename: str) -> str | None:
    """What is wrong with ``basename`` (see :func:`check_basename`), or ``None``."""
    if not basename:
        return "is empty"
    if basename.startswith("/"):
        return "is an absolute path"
    if "\\" in basename:
        return "contains a backslash"
    if "\0" in basename:
        return "contains a NUL byte"
    if len(basename) >= 2 and basename[1] == ":":
        return "starts with a drive letter"
    parts = basename.split("/")
    if ".." in parts:
        return "contains '..'"
    if "." in parts or "" in parts:
        return "contains an empty or '.' component"
    if any(part.lower() == META_DIR for part in parts):
        return f"enters {META_DIR}/, astream's own folder in a cache"
    if any(_TEMP_NAME.match(part) for part in parts):
        return "is a temporary file's name"
    if basename == INDEX_BASENAME:
        return "is the index's own name"
    if len(urllib.parse.quote(basename, safe="")) > MAX_BASENAME_CHARS:
        # A cache names a shard's lock and LRU stamp after the whole (quoted) basename, and
        # its temporary files add about 30 characters: each must stay a valid name.
        return f"is too long (more than {MAX_BASENAME_CHARS} characters once quoted)"
    return None


class _IndexFields:
    """Reads an index's JSON fields with their types checked, naming the field's path
    (``shards[3].raw_data.bytes``) in every :class:`IndexFormatError`. Not a shard reader."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, problem: str) -> IndexFormatError:
        return IndexFormatError(f"{self.source}: {path}: {problem}")

    # The field paths of errors are only formatted once a check fails: an index of thousands
    # of shards is checked field by field, and that is most of the time it takes to load.

    def get(
        self, obj: Mapping[str, Any], key: str, path: str, kind: type | tuple[type, ...]
    ) -> Any:
        if key not in obj:
            raise self.fail(f"{path}.{key}" if path else key, "missing")
        value = obj[key]
        if isinstance(value, kind) and not isinstance(value, bool):
            return value
        return self.check(value, f"{path}.{key}" if path else key, kind)

    def check(self, value: Any, path: str, kind: type | tuple[type, ...]) -> Any:
        # bool is an int subclass; a size or count of `true` is a malformed index.
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise self.fail(path, "expected a number, got a boolean")
        if not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise self.fail(path, f"expected {_json_name(names)}, got {type(value).__name__}")
        return value

    def count(self, obj: Mapping[str, Any], key: str, path: str) -> int:
        value: int = self.get(obj, key, path, int)
        if value < 0:
            raise self.fail(f"{path}.{key}", f"cannot be negative ({value})")
        return value

    def strings(self, obj: Mapping[str, Any], key: str, path: str) -> tuple[str, ...]:
        items = self.get(obj, key, path, list)
        if all(type(item) is str for item in items):
            return tuple(items)
        return tuple(self.check(item, f"{path}.{key}[{i}]", str) for i, item in enumerate(items))

    def file_info(
        self, obj: Mapping[str, Any], key: str, path: str, optional: bool
    ) -> FileInfo | None:
        value = obj.get(key)
        if value is None:
            if optional:
                return None
            raise self.fail(f"{path}.{key}", "missing")
        where = f"{path}.{key}"
        if type(value) is not dict:
            self.check(value, where, dict)
        basename: str = self.get(value, "basename", where, str)
        check_basename(basename, f"{self.source}: {where}.basename")
        size = self.count(value, "bytes", where)
        if size > _MAX_FILE_BYTES:
            raise self.fail(f"{where}.bytes", f"{size} is larger than any file can be")
        hashes = self.get(value, "hashes", where, dict) if "hashes" in value else {}
        for algo, digest in hashes.items():
            if type(digest) is not str:
                self.check(digest, f"{where}.hashes.{algo}", str)
        return FileInfo(basename, size, dict(hashes))


def _json_name(names: str) -> str:
    return (
        names.replace("dict", "object")
        .replace("list", "array")
        .replace("str", "string")
        .replace("NoneType", "null")
    )


def _check_room(fields: _IndexFields, path: str, samples: int, info: FileInfo, key: str) -> None:
    """Refuse a sample count that the file holding its offsets is too small for.

    Checked before anything is sized from the count: each sample has at least its uint32
    offset in the header (a count, then ``samples + 1`` offsets), so a small shard cannot
    claim billions of samples and make a reader allocate for them.
    """
    header = 4 + 4 * (samples + 1)
    if header > info.bytes:
        raise fields.fail(
            f"{path}.samples",
            f"{samples} samples need a {header}-byte header, but {key} "
            f"({info.basename}) is {info.bytes} bytes",
        )


def _shard(fields: _IndexFields, obj: Any, path: str) -> ShardInfo:
    if type(obj) is not dict:
        fields.check(obj, path, dict)
    fmt: str = fields.get(obj, "format", path, str)
    if fmt not in SHARD_FORMATS:
        raise fields.fail(f"{path}.format", f"unknown shard format {fmt!r}")
    version = fields.get(obj, "version", path, int) if "version" in obj else 2
    if version != 2:
        raise fields.fail(f"{path}.version", f"unsupported shard version {version}; expected 2")
    samples = fields.count(obj, "samples", path)
    compression = (
        fields.get(obj, "compression", path, (str, type(None))) if "compression" in obj else None
    )
    compression = compression or None
    if compression is not None and not is_compression(compression):
        raise fields.fail(f"{path}.compression", f"unknown compression {compression!r}")
    hashes = fields.strings(obj, "hashes", path) if "hashes" in obj else ()
    for i, algo in enumerate(hashes):
        if not is_hash(algo):
            raise fields.fail(f"{path}.hashes[{i}]", f"unknown hash algorithm {algo!r}")
    size_limit = obj.get("size_limit")
    if size_limit is not None:
        size_limit = fields.count(obj, "size_limit", path)
    if samples > _MAX_SAMPLES:
        raise fields.fail(f"{path}.samples", f"{samples} does not fit a shard's uint32 count")
    raw = fields.file_info(obj, "raw_data", path, optional=False)
    assert raw is not None
    zip_ = fields.file_info(obj, "zip_data", path, optional=True)
    if (zip_ is None) != (compression is None):
        raise fields.fail(f"{path}.zip_data", "must be present exactly when compression is set")
    common: dict[str, Any] = {
        "format": fmt,
        "samples": samples,
        "raw": raw,
        "zip": zip_,
        "compression": compression,
        "hashes": hashes,
        "size_limit": size_limit,
        "entry": obj,
    }
    if fmt == "mds":
        names = fields.strings(obj, "column_names", path)
        encodings = fields.strings(obj, "column_encodings", path)
        sizes_raw = fields.get(obj, "column_sizes", path, list)
        if all(size is None or type(size) is int for size in sizes_raw):
            sizes = tuple(sizes_raw)
        else:
            sizes = tuple(
                None if size is None else fields.check(size, f"{path}.column_sizes[{i}]", int)
                for i, size in enumerate(sizes_raw)
            )
        if any(size is not None and size < 0 for size in sizes):
            raise fields.fail(f"{path}.column_sizes", "cannot hold negative sizes")
        if not len(names) == len(encodings) == len(sizes):
            raise fields.fail(
                path, "column_names, column_encodings and column_sizes differ in length"
            )
        _check_room(fields, path, samples, raw, "raw_data")
        return ShardInfo(
            **common, column_names=names, column_encodings=encodings, column_sizes=sizes
        )
    raw_meta = fields.file_info(obj, "raw_meta", path, optional=False)
    assert raw_meta is not None
    _check_room(fields, path, samples, raw_meta, "raw_meta")
    if samples > raw.bytes:  # every row or line ends with a non-empty newline
        raise fields.fail(
            f"{path}.samples",
            f"{samples} samples cannot fit raw_data of {raw.bytes} bytes (one byte or more each)",
        )
    zip_meta = fields.file_info(obj, "zip_meta", path, optional=True)
    if (zip_meta is None) != (compression is None):
        raise fields.fail(f"{path}.zip_meta", "must be present exactly when compression is set")
    newline: str = fields.get(obj, "newline", path, str) if "newline" in obj else "\n"
    if not newline:
        raise fields.fail(f"{path}.newline", "cannot be empty")
    if fmt == "json":
        columns = fields.get(obj, "columns", path, dict)
        for name, kind in columns.items():
            fields.check(kind, f"{path}.columns.{name}", str)
        return ShardInfo(
            **common,
            column_names=tuple(columns),
            column_encodings=tuple(columns.values()),
            raw_meta=raw_meta,
            zip_meta=zip_meta,
            newline=newline,
        )
    names = fields.strings(obj, "column_names", path)
    encodings = fields.strings(obj, "column_encodings", path)
    if len(names) != len(encodings):
        raise fields.fail(path, "column_names and column_encodings differ in length")
    separator = _SEPARATORS.get(fmt)
    if separator is None:
        separator = fields.get(obj, "separator", path, str)
    if not separator:
        raise fields.fail(f"{path}.separator", "cannot be empty")
    return ShardInfo(
        **common,
        column_names=names,
        column_encodings=encodings,
        raw_meta=raw_meta,
        zip_meta=zip_meta,
        newline=newline,
        separator=separator,
    )


def load_index(data: bytes | str, *, source: str) -> DatasetIndex:
    """Parse and validate an ``index.json``.

    :param data: the file's contents.
    :param source: the file or URL it came from, named in every error.
    :raises IndexFormatError: naming ``source`` and the offending field path
        (``shards[3].raw_data.basename``) for malformed JSON, a version other than 2, a wrong
        type, a negative size, an unsafe or duplicate basename.
    """
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        # RecursionError: arrays or objects nested thousands deep.
        raise IndexFormatError(f"{source}: not valid JSON: {exc}") from exc
    fields = _IndexFields(source)
    fields.check(obj, "index", dict)
    if INCOMPLETE_KEY in obj:
        raise IndexFormatError(
            f"{source}: this dataset is being written over, or its writer stopped before it "
            f"finished ({obj[INCOMPLETE_KEY]!s:.200}); no index names its shards yet"
        )
    version = fields.get(obj, "version", "", int)
    if version != 2:
        raise fields.fail("version", f"unsupported index version {version}; expected 2")
    entries = fields.get(obj, "shards", "", list)
    shards = tuple(_shard(fields, entry, f"shards[{i}]") for i, entry in enumerate(entries))
    seen: dict[str, int] = {}
    for i, shard in enumerate(shards):
        for basename in shard.basenames:
            if basename in seen:
                raise fields.fail(
                    f"shards[{i}]",
                    f"basename {basename!r} is also used by shards[{seen[basename]}]",
                )
            seen[basename] = i
    for basename, i in seen.items():
        # "a/b" beside a file "a": the file would have to be a folder too.
        parts = basename.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if folder in seen:
                raise fields.fail(
                    f"shards[{i}]",
                    f"basename {basename!r} uses {folder!r}, a file of shards[{seen[folder]}], "
                    "as a folder",
                )
    return DatasetIndex(shards)


def merged_index_json(parts: Sequence[tuple[str, DatasetIndex]]) -> bytes:
    """The ``index.json`` that joins ``parts``, each ``(prefix, its index)``, in that order.

    Every basename of a part gets its prefix (``part0/shard.00000.mds``); a prefix of ``""``
    or ``"."`` leaves its basenames as they are. Keys and spacing as mosaicml-streaming
    writes a merged index (no key sorting). Pure: no file is read or written.

    :raises IndexFormatError: when a prefix is not a plain relative path, or two parts name
        the same file.
    """
    merged: list[dict[str, Any]] = []
    for prefix, part in parts:
        prefix = prefix.strip("/")
        if prefix not in ("", "."):
            check_basename(prefix, "merge_index: part prefix")
        for shard in part.shards:
            entry = json.loads(json.dumps(shard.entry))
            for key in ("raw_data", "zip_data", "raw_meta", "zip_meta"):
                if entry.get(key) and prefix not in ("", "."):
                    entry[key]["basename"] = f"{prefix}/{entry[key]['basename']}"
            merged.append(entry)
    data = json.dumps({"version": 2, "shards": merged}).encode("utf-8")
    load_index(data, source="merged index")  # refuses two parts naming one file
    return data


def merge_index(
    out: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    index_files: Sequence[str | os.PathLike[str]] | str | os.PathLike[str] | None = None,
) -> DatasetIndex:
    """Merge the indexes of datasets written into subfolders of ``out`` into ``out/index.json``.

    As mosaicml-streaming's ``merge_index`` for local folders: each subfolder's shards keep
    their order, their basenames get the subfolder's path as a prefix (``part0/shard.00000.mds``)
    and subfolders are taken in sorted path order. ``index_files`` picks the index files
    instead of searching ``out`` (each must lie under ``out``). The merged index is written
    atomically and returned.

    mosaicml-streaming's call form ``merge_index(index_files, out)`` (the list first) is
    accepted too. :func:`astream.merge_index` does the same on store URLs.

    :raises IndexFormatError: when a part's index is malformed or lies outside ``out``.
    :raises FileNotFoundError: when ``out`` or a named index file does not exist.
    """
    if not isinstance(out, str | os.PathLike):
        # merge_index([index files], out), as mosaicml-streaming spells it.
        if not isinstance(index_files, str | os.PathLike):
            raise TypeError("merge_index(index_files, out) needs out as a path")
        listed: list[str | os.PathLike[str]] = list(out)
        out, index_files = index_files, listed
    elif index_files is not None and isinstance(index_files, str | os.PathLike):
        raise TypeError("merge_index(out, index_files): index_files must be a list of paths")
    if "://" in os.fspath(out):
        raise ConfigError(
            f"merge_index: {os.fspath(out)} is a URL; astream.merge_index merges on stores "
            "(this one merges local folders only)"
        )
    root = Path(out)
    if not root.is_dir():
        raise FileNotFoundError(f"merge_index: {root} is not a directory")
    if index_files is None:
        paths = sorted(
            (Path(dirpath) / INDEX_BASENAME)
            for dirpath, _dirs, files in os.walk(root)
            if INDEX_BASENAME in files and Path(dirpath) != root
        )
    else:
        paths = list(dict.fromkeys(Path(path) for path in index_files))
    parts: list[tuple[str, DatasetIndex]] = []
    for path in paths:
        try:
            prefix = path.resolve().parent.relative_to(root.resolve()).as_posix()
        except ValueError as exc:
            raise IndexFormatError(f"{path}: merge_index needs index files under {root}") from exc
        parts.append((prefix, load_index(path.read_bytes(), source=str(path))))
    data = merged_index_json(parts)
    result = load_index(data, source=str(root / INDEX_BASENAME))
    write_atomic(root / INDEX_BASENAME, data)
    return result
