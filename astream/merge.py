"""Joining datasets written in parts into one, on a local folder or any store.

A job that writes in parallel (``astream convert --workers``, Spark, Ray) gives each writer its
own prefix of ``out`` (``out/part-00000/``, ...), each a complete dataset with its own
``index.json``; one ``index.json`` at ``out`` then names every part's shards, prefixed with the
part's path. :func:`merge_index` finds or takes the parts' indexes and writes that merged index,
as mosaicml-streaming's ``merge_index`` does, on a local folder or a store URL (``s3://``,
``gs://``, ...). :func:`write_merged_index` writes it from indexes already in hand (a job's
driver has them from its tasks' results and reads nothing back).

The merged index is written last and in one piece (atomically on a local folder; one object
write on a store): a reader sees either no ``index.json`` or the complete one.
"""

from __future__ import annotations

import functools
import os
import posixpath
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from astream.convert.copy import run_limited
from astream.engine.loop import io_loop
from astream.errors import IndexFormatError, ObjectNotFoundError
from astream.format import INDEX_BASENAME, DatasetIndex, load_index
from astream.format import merge_index as merge_local_index
from astream.format.atomic import write_atomic
from astream.format.index import merged_index_json
from astream.storage import Store, open_store
from astream.storage.registry import url_scheme

__all__ = ["merge_index", "write_merged_index"]

#: Part indexes read at once from a store.
READ_CONCURRENCY = 16

PathLike = str | os.PathLike[str]


def _local(out: PathLike) -> Path | None:
    """The local folder ``out`` names, or ``None`` for a store URL."""
    text = os.fspath(out)
    scheme = url_scheme(text)
    if scheme != "file":
        return None
    if text.startswith("file://"):
        return Path(urllib.parse.unquote(urllib.parse.urlsplit(text).path))
    return Path(text).expanduser()


def _sort_key(key: str) -> list[str]:
    # Path components, as a local merge sorts its subfolders ("a/" before "a-b/").
    return key.split("/")


def _relative_key(url: str, index_file: PathLike) -> str:
    """``index_file`` as a key under the store rooted at ``url``."""
    text = os.fspath(index_file)
    if "://" in text:
        root = url.rstrip("/") + "/"
        if not text.startswith(root):
            raise IndexFormatError(f"{text}: merge_index needs index files under {url}")
        text = text[len(root) :]
    key = posixpath.normpath(text.lstrip("/"))
    if key.startswith("../") or key in ("..", "."):
        raise IndexFormatError(f"{index_file}: merge_index needs index files under {url}")
    return key


async def _merge_remote(store: Store, index_files: Sequence[PathLike] | None) -> DatasetIndex:
    if index_files is None:
        keys = [key for key in await store.list() if key.endswith("/" + INDEX_BASENAME)]
        keys.sort(key=_sort_key)
    else:
        keys = list(dict.fromkeys(_relative_key(store.url, path) for path in index_files))

    async def read_part(key: str) -> tuple[str, DatasetIndex]:
        try:
            data = await store.read(key)
        except ObjectNotFoundError as exc:
            raise ObjectNotFoundError(f"merge_index: {store.join(key)} does not exist") from exc
        return posixpath.dirname(key), load_index(data, source=store.join(key))

    jobs = [functools.partial(read_part, key) for key in keys]
    parts = await run_limited(jobs, READ_CONCURRENCY)
    return await _write_remote(store, parts)


async def _write_remote(store: Store, parts: Sequence[tuple[str, DatasetIndex]]) -> DatasetIndex:
    data = merged_index_json(parts)
    index = load_index(data, source=store.join(INDEX_BASENAME))
    await store.write(INDEX_BASENAME, data)
    return index


def merge_index(
    out: PathLike | Sequence[PathLike],
    index_files: Sequence[PathLike] | PathLike | None = None,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> DatasetIndex:
    """Merge the indexes of the parts under ``out`` into ``out/index.json``; return it.

    ``out`` is a local folder or a store URL (``s3://bucket/dataset``). Without
    ``index_files``, every ``index.json`` below ``out`` (not ``out``'s own) is a part, taken in
    sorted path order; ``index_files`` names the parts' index files instead (paths, URLs, or
    keys relative to ``out``; each must lie under ``out``), in the order given. Each part's
    shards keep their order, and their basenames get the part's path as a prefix
    (``part-00000/shard.00000.mds``). mosaicml-streaming's call form
    ``merge_index(index_files, out)`` (the list first) is accepted too.

    :param storage_options: options for :func:`~astream.storage.open_store` (``endpoint_url``,
        credentials, ...) when ``out`` is a URL.
    :raises IndexFormatError: a part's index is malformed or lies outside ``out``, or two parts
        name the same file.
    :raises FileNotFoundError: ``out`` (a local folder) or a named index file does not exist.
    """
    if not isinstance(out, str | os.PathLike):
        # merge_index([index files], out), as mosaicml-streaming spells it.
        if not isinstance(index_files, str | os.PathLike):
            raise TypeError("merge_index(index_files, out) needs out as a path or URL")
        listed: list[PathLike] = list(out)
        out, index_files = index_files, listed
    elif index_files is not None and isinstance(index_files, str | os.PathLike):
        raise TypeError("merge_index(out, index_files): index_files must be a list of paths")
    local = _local(out)
    if local is not None:
        files = None if index_files is None else [_local(path) or path for path in index_files]
        return merge_local_index(local, files)
    url = os.fspath(out)
    store = open_store(url, **dict(storage_options or {}))

    async def run() -> DatasetIndex:
        try:
            return await _merge_remote(store, index_files)
        finally:
            await store.aclose()

    return io_loop().run(run())


def write_merged_index(
    out: PathLike,
    parts: Sequence[tuple[str, DatasetIndex]],
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> DatasetIndex:
    """Write ``out/index.json`` joining ``parts``, each ``(prefix under out, its index)``.

    What :func:`merge_index` does once it has read the parts' indexes: for a job whose driver
    already holds them (from its tasks' results), so nothing is listed or read back.

    :raises IndexFormatError: a prefix is not a plain relative path, or two parts name the
        same file.
    """
    local = _local(out)
    if local is not None:
        data = merged_index_json(parts)
        index = load_index(data, source=str(local / INDEX_BASENAME))
        local.mkdir(parents=True, exist_ok=True)
        write_atomic(local / INDEX_BASENAME, data)
        return index
    store = open_store(os.fspath(out), **dict(storage_options or {}))

    async def run() -> DatasetIndex:
        try:
            return await _write_remote(store, parts)
        finally:
            await store.aclose()

    return io_loop().run(run())
