"""Downloads as concurrent range requests written in place, shared by every backend.

:func:`ranged_download` preallocates the destination file to the object's size, splits the
object into :attr:`~astream.storage.base.TransferConfig.part_size` ranges, fetches them with at
most :attr:`~astream.storage.base.TransferConfig.concurrency` requests in flight and ``pwrite``\\ s
each at its offset. Each part is retried by the store's own retry loop; a part that still fails
fails the whole download (the caller discards the file). A file is never left looking complete
when it is not: every part is checked for its exact length before it is written.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from astream.errors import StorageError

if TYPE_CHECKING:
    from astream.storage.base import ProgressCallback, Store

__all__ = ["part_ranges", "pwrite_all", "ranged_download", "write_part"]

# Writes smaller than this are done on the loop thread: a thread hop costs more than a
# page-cache copy of a few hundred kilobytes.
_INLINE_WRITE = 256 << 10


def part_ranges(size: int, part_size: int) -> list[tuple[int, int]]:
    """``[start, end)`` ranges of at most ``part_size`` bytes covering ``[0, size)`` in order."""
    if part_size < 1:
        raise ValueError(f"part_size must be >= 1, got {part_size}")
    return [(start, min(start + part_size, size)) for start in range(0, size, part_size)]


class LocalWriteError(OSError):
    """Writing downloaded bytes into the local file failed (a full disk, a quota).

    Not a storage failure: the retry loop lets it through untouched, and the caller (the
    cache) reports it as a local error naming the file, not as an error of the remote URL.
    """


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset`` of ``fd`` (``os.pwrite`` may write less).

    :raises LocalWriteError: the write failed (its ``errno`` and ``strerror`` are the OS's).
    """
    view = memoryview(data)
    while view:
        try:
            written = os.pwrite(fd, view, offset)
        except OSError as exc:
            raise LocalWriteError(exc.errno, exc.strerror) from exc
        view = view[written:]
        offset += written


async def write_part(fd: int, data: bytes, offset: int) -> None:
    """``pwrite`` a fetched part: inline when small, else in a worker thread."""
    if len(data) <= _INLINE_WRITE:
        pwrite_all(fd, data, offset)
    else:
        await asyncio.to_thread(pwrite_all, fd, data, offset)


async def ranged_download(
    store: Store,
    key: str,
    dest: Path,
    *,
    size: int | None = None,
    on_progress: ProgressCallback | None = None,
) -> int:
    """Download ``key`` of ``store`` into ``dest`` with concurrent ranges; return its size.

    :param size: the object's size when the caller knows it (from an index); saves a ``stat``.
        A wrong size is detected: a range past the end raises, and when the object is longer
        the extra bytes are not fetched, so callers that pass a size get exactly that many
        bytes or an error.
    :param on_progress: called as ``on_progress(start, end)`` on the loop thread for each part
        on disk; parts land in any order, and together they cover ``[0, size)`` exactly once.
    :raises StorageError: a part failed after its retries, or came back with the wrong length.
    """
    if size is None:
        size = (await store.stat(key)).size
    if size < 0:
        raise StorageError(f"negative size {size} for {store.join(key)}")
    url = store.join(key)
    transfer = store.transfer
    head = transfer.head_part_size if on_progress is not None else 0
    head = head if 0 < head < size else 0
    ranges = [(head + a, head + b) for a, b in part_ranges(size - head, transfer.part_size)]
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        # Preallocate: each part's pwrite then lands in place whatever order parts finish in.
        os.ftruncate(fd, size)
        if head and on_progress is not None:
            # A reader waits on the first bytes (header, offsets, first samples): fetch them
            # alone so they do not share the link with every other part.
            await store.fetch_range_into(key, 0, head, fd)
            on_progress(0, head)
        pending: Iterator[tuple[int, int]] = iter(ranges)

        async def worker() -> None:
            # Workers share one iterator: the number of workers bounds the requests in flight
            # (and so the bytes held in memory: concurrency * part_size) without a semaphore.
            for start, end in pending:
                await store.fetch_range_into(key, start, end, fd)
                if on_progress is not None:
                    on_progress(start, end)

        workers = [
            asyncio.ensure_future(worker()) for _ in range(min(transfer.concurrency, len(ranges)))
        ]
        try:
            # The first failure propagates as itself (callers catch astream errors, not
            # exception groups); the other workers are cancelled and awaited before the file
            # descriptor closes, so no late pwrite can hit a reused descriptor.
            await asyncio.gather(*workers)
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        if os.fstat(fd).st_size != size:
            raise StorageError(f"{url}: downloaded file {dest} is not {size} bytes long")
    finally:
        os.close(fd)
    return size
