"""One dataset written by many tasks: each attempt writes a part, the driver commits.

The protocol, shared by the Spark and Ray writers:

1. On the driver, before any task runs: ``out`` must be empty (or ``exist_ok``), the columns
   are fixed from the engine's schema, and the writer's options are checked, so a bad option
   fails before any work.
2. Every task *attempt* writes its rows as a complete dataset under its own prefix,
   ``out/part-NNNNN-ATTEMPT/`` (``NNNNN``: the partition or task index; ``ATTEMPT``: unique to
   the attempt, Spark's task attempt id or a random token on Ray), with
   :class:`astream.writers.MDSWriter` (so straight to any store astream writes to). No
   attempt writes into another's prefix: a retried, re-run or speculative attempt can never
   overwrite or add to the files of another one.
3. The attempt returns its part's index entries as its *result*. The engine hands the driver
   one result per partition: that of the attempt it committed (Spark keeps the first
   successful attempt of each partition of the action and drops the results of the others;
   Ray passes the return values of the write tasks that succeeded to ``on_write_complete``).
4. The driver writes ``out/index.json`` last, naming the shards of the committed attempts
   only, in partition order, with :func:`astream.merge.write_merged_index`. A job that fails
   never reaches this step, so it leaves no ``index.json``.
5. What attempts that were not committed wrote (a failed attempt's first shards, the loser of a
   speculative race) is named by no index. On a local ``out`` the driver removes it; on a
   store it stays, invisible to readers, until removed with the store's own tools
   (``astream ls --store URL`` lists it).

With ``merge_index=False`` step 4 writes nothing at ``out``: the committed parts keep their own
``index.json`` (a part's writer writes it) and ``astream merge OUT PARTS...`` joins them later.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from astream.engine.loop import io_loop
from astream.errors import EncodingError, ObjectNotFoundError
from astream.format import DatasetIndex, LocalMDSWriter, get_encoding, load_index
from astream.merge import write_merged_index
from astream.storage import open_store
from astream.storage.registry import url_scheme

__all__ = [
    "WRITER_OPTIONS",
    "PartResult",
    "PartWriter",
    "arrow_columns",
    "arrow_rows",
    "attempt_prefix",
    "commit",
    "random_attempt",
]

#: The :class:`~astream.writers.MDSWriter` keyword arguments a part's writer takes.
WRITER_OPTIONS = frozenset(
    {"compression", "hashes", "size_limit", "keep_local", "max_workers", "retry"}
)
#: mosaicml-streaming's writer arguments that mean nothing for a part (accepted, ignored).
_IGNORED_OPTIONS = frozenset({"progress_bar"})

_ATTEMPT = re.compile(r"^part-\d{5,}-[0-9A-Za-z]+$")

#: ``out`` as the writers take it: a local folder, a store URL, or ``(local_dir, remote_url)``.
Out = str | os.PathLike[str] | tuple[str | os.PathLike[str], str]


def attempt_prefix(order: int, attempt: str | int) -> str:
    """The prefix of ``out`` that one attempt writes: ``part-00003-17``."""
    return f"part-{order:05}-{attempt}"


def random_attempt() -> str:
    """An attempt token no other attempt draws (for engines without attempt ids)."""
    return secrets.token_hex(6)


@dataclass(frozen=True)
class PartResult:
    """What an attempt hands back to the driver: where its part lies and its index."""

    #: The partition (Spark) or task index (Ray): the part's place in the dataset.
    order: int
    #: The part's prefix under ``out``.
    prefix: str
    #: The part's ``index.json`` contents.
    index: str

    @property
    def samples(self) -> int:
        """Samples in the part."""
        return load_index(self.index, source=self.prefix).samples


def _join(base: str | os.PathLike[str], prefix: str) -> str:
    return f"{os.fspath(base).rstrip('/')}/{prefix}"


def _is_local(url: str | os.PathLike[str]) -> bool:
    return url_scheme(os.fspath(url)) == "file"


def _local_path(url: str | os.PathLike[str]) -> Path:
    text = os.fspath(url)
    return Path(text[len("file://") :] if text.startswith("file://") else text).expanduser()


@dataclass(frozen=True)
class PartWriter:
    """How every attempt writes its part: plain data, pickled to the engine's workers.

    :param out: a local folder (one every worker sees: local mode or a shared filesystem),
        a store URL, or ``(local_dir, remote_url)``.
    :param columns: column name -> MDS encoding, fixed on the driver.
    :param options: :data:`WRITER_OPTIONS` for each part's :class:`~astream.writers.MDSWriter`.
    :param storage_options: options for :func:`~astream.storage.open_store`.
    """

    out: Out
    columns: Mapping[str, str]
    options: Mapping[str, Any] = field(default_factory=dict)
    storage_options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def checked(
        cls,
        out: Out,
        columns: Mapping[str, str],
        options: Mapping[str, Any],
        storage_options: Mapping[str, Any] | None,
    ) -> PartWriter:
        """A writer whose options were checked here, on the driver (before any task runs).

        :raises TypeError: an option that :class:`~astream.writers.MDSWriter` does not take.
        :raises ConfigError: a bad compression, hash, size limit (the writer's own messages).
        :raises EncodingError: an unknown column encoding.
        """
        kept: dict[str, Any] = {}
        for name, value in options.items():
            if name in _IGNORED_OPTIONS:
                continue
            if name not in WRITER_OPTIONS:
                known = ", ".join(sorted(WRITER_OPTIONS | {"out", "columns", "exist_ok"}))
                raise TypeError(f"unknown writer option {name!r}; known: {known}")
            kept[name] = value
        if "hashes" in kept:
            kept["hashes"] = sorted(set(kept["hashes"] or ()))
        local = {k: v for k, v in kept.items() if k in ("compression", "hashes", "size_limit")}
        # The local writer checks columns, codec, hashes and size limit with its own messages
        # (with columns still to come from each task's data, the options alone).
        with tempfile.TemporaryDirectory(prefix="astream-check-") as scratch:
            LocalMDSWriter(out=scratch, columns=columns or {"_": "int"}, **local)
        return cls(out, dict(columns), kept, dict(storage_options or {}))

    @property
    def root(self) -> str | os.PathLike[str]:
        """Where the merged index goes: the remote of a ``(local, remote)`` out."""
        return self.out[1] if isinstance(self.out, tuple) else self.out

    def _part_out(self, prefix: str) -> Out:
        if isinstance(self.out, tuple):
            return (_join(self.out[0], prefix), _join(self.out[1], prefix))
        return _join(self.out, prefix)

    def write(
        self, order: int, attempt: str | int, samples: Iterable[Mapping[str, Any]]
    ) -> PartResult:
        """Write ``samples`` as the part of this attempt; return its :class:`PartResult`.

        A part with no samples writes nothing. An exception from ``samples`` or the writer
        leaves the part without an index (and the driver never names it).
        """
        from astream.writers import MDSWriter

        prefix = attempt_prefix(order, attempt)
        coerce = _coercer(self.columns)
        writer: MDSWriter | None = None
        try:
            for sample in samples:
                if writer is None:
                    writer = MDSWriter(
                        out=self._part_out(prefix),
                        columns=self.columns,
                        # The prefix is this attempt's own: nothing to list or refuse.
                        exist_ok=True,
                        storage_options=dict(self.storage_options),
                        **self.options,
                    )
                writer.write(coerce(sample))
        except BaseException as exc:
            if writer is not None:
                writer.__exit__(type(exc), exc, exc.__traceback__)
            raise
        if writer is None:
            return PartResult(order, prefix, json.dumps({"shards": [], "version": 2}))
        writer.finish()
        return PartResult(order, prefix, json.dumps({"shards": writer.shards, "version": 2}))


def arrow_rows(batch: Any) -> Iterator[dict[str, Any]]:
    """The rows of an Arrow record batch (or table) as dicts, column by column.

    Lists of numbers without nulls become numpy arrays (views of one flat buffer: no Python
    float per element); every other column converts with ``to_pylist``. About twice as fast as
    ``batch.to_pylist()`` with one small float array per row, and the arrays need no second
    conversion before they are written.
    """
    import pyarrow as pa

    t = pa.types
    names = list(batch.schema.names)
    columns: list[Any] = []
    for i in range(batch.num_columns):
        column = batch.column(i)
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        typ = column.type
        listed = t.is_list(typ) or t.is_large_list(typ) or t.is_fixed_size_list(typ)
        if listed and _numeric(typ.value_type) is not None and column.null_count == 0:
            flat = column.flatten()
            if flat.null_count == 0:
                values = flat.to_numpy(zero_copy_only=False)
                if t.is_fixed_size_list(typ):
                    columns.append(list(values.reshape(len(column), typ.list_size)))
                    continue
                offsets = column.offsets.to_numpy() - column.offsets[0].as_py()
                lengths = np.diff(offsets)
                if len(lengths) and (lengths == lengths[0]).all() and lengths[0] > 0:
                    columns.append(list(values.reshape(len(column), int(lengths[0]))))
                else:
                    columns.append(np.split(values, offsets[1:-1]))
                continue
        columns.append(column.to_pylist())
    for values in zip(*columns, strict=True):
        yield dict(zip(names, values, strict=True))


def _coercer(columns: Mapping[str, str]) -> Any:
    """Turn list values of ``ndarray`` columns into arrays (engines hand arrays as lists)."""
    arrays: dict[str, tuple[np.dtype[Any] | None, tuple[int, ...] | None]] = {}
    for name, spec in columns.items():
        encoding = get_encoding(spec)
        if spec.split(":")[0] == "ndarray":
            dtype = getattr(encoding, "dtype", None)
            arrays[name] = (
                None if dtype is None else np.dtype(dtype),
                getattr(encoding, "shape", None),
            )

    def coerce(sample: Mapping[str, Any]) -> Mapping[str, Any]:
        out: dict[str, Any] | None = None
        for name, (dtype, shape) in arrays.items():
            value = sample.get(name)
            if (
                isinstance(value, np.ndarray)
                and (dtype is None or value.dtype == dtype)
                and (shape is None or value.shape == shape)
            ):
                continue
            if isinstance(value, list | tuple | np.ndarray):
                array = np.asarray(value, dtype=dtype)
                if out is None:
                    out = dict(sample)
                out[name] = array.reshape(shape) if shape is not None else array
        return sample if out is None else out

    return coerce


def prepare_out(out: Out, *, exist_ok: bool, storage_options: Mapping[str, Any] | None) -> None:
    """Refuse an ``out`` that holds anything, unless ``exist_ok`` (then a local one is emptied).

    :raises FileExistsError: ``out`` is not empty and ``exist_ok`` is false.
    """
    root = out[1] if isinstance(out, tuple) else out
    if _is_local(root):
        path = _local_path(root)
        if path.exists() and any(path.iterdir()):
            if not exist_ok:
                raise FileExistsError(f"{path} is not empty (pass exist_ok=True to replace it)")
            shutil.rmtree(path)
        return
    if exist_ok:
        return
    store = open_store(os.fspath(root), **dict(storage_options or {}))

    async def first_key() -> list[str]:
        try:
            try:
                return await store.list(limit=1)
            except ObjectNotFoundError:
                return []
        finally:
            await store.aclose()

    found = io_loop().run(first_key())
    if found:
        raise FileExistsError(
            f"{os.fspath(root)} is not empty: it holds {found[0]!r} (pass exist_ok=True to "
            "write over it)"
        )


def commit(writer: PartWriter, results: Sequence[PartResult], *, merge: bool) -> DatasetIndex:
    """Step 4 and 5 of the protocol: the merged index of the committed ``results``.

    :param merge: write ``index.json`` at the root (else only return the merged index).
    :raises IndexFormatError: two results for one partition (an engine that broke its promise).
    """
    ordered = sorted(results, key=lambda result: result.order)
    for before, after in itertools.pairwise(ordered):
        if before.order == after.order:
            raise RuntimeError(
                f"two committed attempts for part {before.order}: {before.prefix}, {after.prefix}"
            )
    parts = [(result.prefix, load_index(result.index, source=result.prefix)) for result in ordered]
    parts = [(prefix, index) for prefix, index in parts if index.shards]
    _check_same_columns(parts)
    committed = {prefix for prefix, _index in parts}
    for base in writer.out if isinstance(writer.out, tuple) else (writer.out,):
        if _is_local(base):
            _remove_uncommitted(_local_path(base), committed)
    if not merge:
        from astream.format.index import merged_index_json

        data = merged_index_json(parts)
        return load_index(data, source=os.fspath(writer.root))
    return write_merged_index(writer.root, parts, storage_options=writer.storage_options)


def _check_same_columns(parts: Sequence[tuple[str, DatasetIndex]]) -> None:
    """Refuse parts whose columns differ (tasks that inferred them from different schemas)."""
    seen: dict[tuple[tuple[str, ...], tuple[str, ...]], str] = {}
    for prefix, index in parts:
        first = index.shards[0]
        seen.setdefault((first.column_names, first.column_encodings), prefix)
    if len(seen) > 1:
        described = "; ".join(
            f"{prefix}: {dict(zip(*key, strict=True))}" for key, prefix in seen.items()
        )
        raise EncodingError(
            f"the parts were written with different columns ({described}); name every "
            "column's encoding with columns="
        )


def _remove_uncommitted(root: Path, committed: set[str]) -> None:
    if not root.is_dir():
        return
    for child in root.iterdir():
        if child.is_dir() and _ATTEMPT.match(child.name) and child.name not in committed:
            shutil.rmtree(child, ignore_errors=True)


# -- columns from an Arrow schema --------------------------------------------------------------


def _leaf_json(typ: Any) -> bool:
    import pyarrow as pa

    t = pa.types
    if t.is_struct(typ):
        return all(_leaf_json(typ.field(i).type) for i in range(typ.num_fields))
    if t.is_list(typ) or t.is_large_list(typ) or t.is_fixed_size_list(typ):
        return _leaf_json(typ.value_type)
    return bool(
        t.is_string(typ)
        or t.is_large_string(typ)
        or t.is_integer(typ)
        or t.is_floating(typ)
        or t.is_boolean(typ)
        or t.is_null(typ)
    )


def _numeric(typ: Any) -> str | None:
    import pyarrow as pa

    if pa.types.is_integer(typ) or pa.types.is_floating(typ):
        return str(np.dtype(typ.to_pandas_dtype()).name)
    return None


def arrow_encoding(name: str, typ: Any) -> str:
    """The MDS encoding for a column of Arrow type ``typ``.

    Integers and floats keep their width (``int32``, ``float32``); strings ``str``; binary
    ``bytes``; decimals ``str_decimal``; booleans ``json``; lists of numbers ``ndarray:DTYPE``
    (``ndarray:DTYPE:SHAPE`` when every level has a fixed size; Ray's tensor columns too);
    structs and lists of strings, numbers and booleans ``json``.

    :raises EncodingError: naming the column for a type no encoding holds (dates, timestamps,
        maps, ...).
    """
    import pyarrow as pa

    t = pa.types
    scalar = _numeric(typ)
    if scalar is not None:
        return scalar
    if t.is_boolean(typ):
        return "json"  # an integer column would read back 0/1, not the booleans
    if t.is_string(typ) or t.is_large_string(typ):
        return "str"
    if t.is_binary(typ) or t.is_large_binary(typ) or t.is_fixed_size_binary(typ):
        return "bytes"
    if t.is_decimal(typ):
        return "str_decimal"
    if isinstance(typ, pa.ExtensionType) and "tensor" in typ.extension_name.lower():
        # Ray's tensor columns (fixed or variable shape), with their element type.
        element = getattr(typ, "value_type", None) or getattr(typ, "scalar_type", None)
        dtype = None if element is None else _numeric(element)
        shape = getattr(typ, "shape", None)
        if dtype is not None:
            if shape and all(isinstance(dim, int) and dim > 0 for dim in shape):
                return f"ndarray:{dtype}:{','.join(map(str, shape))}"
            return f"ndarray:{dtype}"
    if t.is_list(typ) or t.is_large_list(typ) or t.is_fixed_size_list(typ):
        dims: list[int | None] = []
        leaf = typ
        while t.is_list(leaf) or t.is_large_list(leaf) or t.is_fixed_size_list(leaf):
            dims.append(leaf.list_size if t.is_fixed_size_list(leaf) else None)
            leaf = leaf.value_type
        dtype = _numeric(leaf)
        if dtype is not None:
            if all(dim is not None for dim in dims):
                return f"ndarray:{dtype}:{','.join(str(dim) for dim in dims)}"
            return f"ndarray:{dtype}"
    if _leaf_json(typ) and not t.is_null(typ):
        return "json"
    raise EncodingError(
        f"column {name!r}: no MDS encoding holds values of type {typ}; cast the column "
        "(to a string, say) or name its encoding in columns="
    )


def arrow_columns(schema: Any, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """Column name -> encoding for every field of the Arrow ``schema``, then ``overrides``.

    :raises EncodingError: a column of a type no encoding holds (and no override), or an
        override naming a column the schema lacks.
    """
    overrides = dict(overrides or {})
    names = list(schema.names)
    missing = sorted(set(overrides) - set(names))
    if missing:
        raise EncodingError(f"columns= names {missing}, which the data does not have: {names}")
    return {
        name: overrides[name]
        if name in overrides
        else arrow_encoding(name, schema.field(name).type)
        for name in names
    }
