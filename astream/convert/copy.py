"""Moving whole datasets between stores: the files an index names, then ``index.json`` last.

Writing the index last means a reader that finds an index finds every file it names, so a
copy that is interrupted never looks like a finished dataset.
"""

from __future__ import annotations

import asyncio
import functools
import tempfile
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TypeVar

from astream.engine.loop import io_loop
from astream.errors import DatasetNotFoundError, ObjectNotFoundError, StorageError
from astream.format import INDEX_BASENAME, DatasetIndex, FileInfo, load_index
from astream.storage import Store, open_store
from astream.storage.local import LocalStore

__all__ = ["copy_dataset", "read_index", "run_limited", "stored_files"]

T = TypeVar("T")

#: Files copied (or checked) at once.
DEFAULT_CONCURRENCY = 8


def stored_files(index: DatasetIndex) -> list[FileInfo]:
    """The files a dataset keeps in its store, in index order (not ``index.json``).

    A compressed shard is stored as its compressed files only (as the writers leave it).
    """
    files: list[FileInfo] = []
    for shard in index.shards:
        files.append(shard.zip or shard.raw)
        meta = shard.zip_meta or shard.raw_meta
        if meta is not None:
            files.append(meta)
    return files


async def run_limited(jobs: Iterable[Callable[[], Awaitable[T]]], limit: int) -> list[T]:
    """Run the jobs with at most ``limit`` at once; results in job order.

    The first failure cancels the jobs still running and is raised as it is (not wrapped in
    an exception group), so a caller sees the error that stopped the work.
    """
    semaphore = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Awaitable[T]]) -> T:
        async with semaphore:
            return await job()

    tasks = [asyncio.ensure_future(one(job)) for job in jobs]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def read_index(store: Store) -> tuple[bytes, DatasetIndex]:
    """The raw bytes and parsed form of the store's ``index.json``.

    :raises DatasetNotFoundError: naming the URL when there is no index there.
    :raises IndexFormatError: when the index is malformed.
    """
    try:
        data = await store.read(INDEX_BASENAME)
    except ObjectNotFoundError as exc:
        raise DatasetNotFoundError(
            f"no dataset at {store.url}: {store.join(INDEX_BASENAME)} does not exist"
        ) from exc
    return data, load_index(data, source=store.join(INDEX_BASENAME))


async def _copy_file(
    src: Store, dst: Store, info: FileInfo, scratch: Path, on_bytes: Callable[[int], None] | None
) -> None:
    if isinstance(src, LocalStore):
        # A local source uploads straight from its file: no scratch copy.
        path = src.path(info.basename)
        size = path.stat().st_size if path.is_file() else -1
        if size != info.bytes:
            raise StorageError(
                f"{src.join(info.basename)} is {size} bytes, the index says {info.bytes}"
                if size >= 0
                else f"{src.join(info.basename)} is missing"
            )
    else:
        path = scratch / info.basename.replace("/", "__")
        await src.download(info.basename, path, size=info.bytes)
    try:
        await dst.upload(path, info.basename)
    finally:
        if path.parent == scratch:
            path.unlink(missing_ok=True)
    if on_bytes is not None:
        on_bytes(info.bytes)


async def _copy(
    src_url: str,
    dst_url: str,
    *,
    overwrite: bool,
    concurrency: int,
    on_bytes: Callable[[int], None] | None,
    on_total: Callable[[int], None] | None,
) -> DatasetIndex:
    src = open_store(src_url)
    dst = open_store(dst_url)
    try:
        data, index = await read_index(src)
        if on_total is not None:
            on_total(sum(info.bytes for info in stored_files(index)))
        if not overwrite and await dst.exists(INDEX_BASENAME):
            raise FileExistsError(
                f"{dst.join(INDEX_BASENAME)} already exists (pass --overwrite to replace it)"
            )
        with tempfile.TemporaryDirectory(prefix="astream-cp-") as scratch:
            jobs = [
                functools.partial(_copy_file, src, dst, info, Path(scratch), on_bytes)
                for info in stored_files(index)
            ]
            await run_limited(jobs, concurrency)
        await dst.write(INDEX_BASENAME, data)
        return index
    finally:
        await src.aclose()
        await dst.aclose()


def copy_dataset(
    src: str,
    dst: str,
    *,
    overwrite: bool = False,
    concurrency: int = DEFAULT_CONCURRENCY,
    on_bytes: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> DatasetIndex:
    """Copy the dataset at ``src`` to ``dst`` (any store URLs or local paths).

    Files are copied ``concurrency`` at a time on the process's IO loop, each checked against
    the size the index gives; ``index.json`` is written last, byte for byte as at ``src``.

    :param overwrite: replace a dataset already at ``dst`` (else refuse).
    :param on_bytes: called with each copied file's size (for progress).
    :param on_total: called once with the bytes to copy, when the index has been read.
    :raises DatasetNotFoundError: when ``src`` holds no ``index.json``.
    :raises FileExistsError: when ``dst`` holds one and ``overwrite`` is false.
    :raises StorageError: when a file is missing or its size differs from the index.
    """
    return io_loop().run(
        _copy(
            src,
            dst,
            overwrite=overwrite,
            concurrency=concurrency,
            on_bytes=on_bytes,
            on_total=on_total,
        )
    )
