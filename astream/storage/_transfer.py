"""Downloads as range requests written in place, shared by every backend.

:func:`ranged_download` preallocates the destination file to the object's size and fills it
with ``pwrite``\\ s at each byte's offset, in one of two ways:

- **Adaptive** (:attr:`~astream.storage.base.TransferConfig.adaptive`, for stores whose
  :meth:`~astream.storage.base.Store.streams_into` is true): one streaming GET of the whole
  object starts first, and its bytes are reported as they land. Once it has run for about half a
  part, one range request for the object's last part is sent beside it (a probe); when the two
  together moved at least :data:`PAYS` times the stream's own rate, up to ``concurrency - 1``
  range requests take parts from the tail, and the stream stops where they begin. Otherwise the
  stream does the rest alone. Servers that copy the whole object for every range (moto) are
  then read at one GET's speed, servers that serve ranges in parallel at the ranges' speed; the
  verdict is kept per store and probed again every :data:`REPROBE_EVERY` downloads.
- **Parts**: the object is split into :attr:`~astream.storage.base.TransferConfig.part_size`
  ranges, fetched with at most :attr:`~astream.storage.base.TransferConfig.concurrency`
  requests in flight.

Each request is retried by the store's own retry loop; one that still fails fails the whole
download (the caller discards the file). A file is never left looking complete when it is not:
every part is checked for its exact length, and progress is reported only for bytes on disk.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from astream.errors import ConfigError, StorageError

if TYPE_CHECKING:
    from astream.storage.base import ProgressCallback, Store

__all__ = ["PAYS", "REPROBE_EVERY", "part_ranges", "pwrite_all", "ranged_download", "write_part"]

# Writes smaller than this are done on the loop thread: a thread hop costs more than a
# page-cache copy of a few hundred kilobytes.
_INLINE_WRITE = 256 << 10

#: Ranges beside the stream are kept when the probe made the two together at least this much
#: faster than the stream alone.
PAYS = 1.25
#: A store whose ranges did not pay is probed again after this many downloads.
REPROBE_EVERY = 16
# A streaming download reports landed bytes in steps of at least this many (and at its end).
_REPORT_STEP = 256 << 10
# The stream's rate is measured from this many bytes past its first write.
_MEASURE_FROM = 1 << 20
# How often the adaptive controller looks at the stream's progress, in seconds.
_POLL = 0.004

# Callbacks told of every pwrite_all into a watched descriptor, as (start, end): how an
# adaptive download sees its stream's bytes land whatever client the store uses. A descriptor
# number is unique among open files, and an entry lives only while its descriptor is open.
_WATCHERS: dict[int, Callable[[int, int], None]] = {}


def part_ranges(size: int, part_size: int) -> list[tuple[int, int]]:
    """``[start, end)`` ranges of at most ``part_size`` bytes covering ``[0, size)`` in order."""
    if part_size < 1:
        raise ConfigError(f"part_size must be >= 1, got {part_size}")
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
    start = offset
    while view:
        try:
            written = os.pwrite(fd, view, offset)
        except OSError as exc:
            raise LocalWriteError(exc.errno, exc.strerror) from exc
        view = view[written:]
        offset += written
    watcher = _WATCHERS.get(fd)
    if watcher is not None and offset > start:
        watcher(start, offset)


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
    if transfer.adaptive and size > 0 and await store.streams_into():
        await _AdaptiveDownload(store, key, dest, size, on_progress).run()
        return size
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


@dataclasses.dataclass
class _Verdict:
    """What the probes of one store found: whether ranges beside a stream pay."""

    pays: bool | None = None
    #: Downloads since the last probe.
    since: int = 0

    def should_probe(self) -> bool:
        if self.pays is None:
            return True
        self.since += 1
        return self.since >= REPROBE_EVERY


_VERDICTS: weakref.WeakKeyDictionary[Store, _Verdict] = weakref.WeakKeyDictionary()


class _AdaptiveDownload:
    """One streaming GET from the front, and range requests from the tail where they pay.

    Invariants (every field changes on the loop thread only):

    - the stream owns ``[0, boundary)`` and range parts own ``[boundary, size)``; a part is
      claimed only while the stream is at least two parts before ``boundary``, so the stream
      never passed a byte that a range already owns when it is claimed;
    - ``landed``: the stream's bytes ``[0, landed)`` are on disk; the stream is stopped
      (cancelled) as soon as ``landed >= boundary``;
    - ``on_progress`` is told of ``[0, boundary)`` by the stream in order and of each part by
      its range, so together they cover ``[0, size)`` exactly once, and never after this
      download returned.
    """

    def __init__(
        self,
        store: Store,
        key: str,
        dest: Path,
        size: int,
        on_progress: ProgressCallback | None,
    ) -> None:
        self.store = store
        self.key = key
        self.dest = dest
        self.size = size
        self.on_progress = on_progress
        self.part = store.transfer.part_size
        self.landed = 0
        self.reported = 0
        self.boundary = size
        # (monotonic time, landed) at the stream's first observed write.
        self.first: tuple[float, int] | None = None
        self.stream_over = False
        self.closed = False
        self.stream_task: asyncio.Future[None] | None = None
        self.workers: list[asyncio.Future[None]] = []
        self.fd = -1

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop_thread = threading.get_ident()

        def watch(start: int, end: int) -> None:
            # A store may pwrite from a worker thread: hand the news to the loop thread.
            if threading.get_ident() == loop_thread:
                self._stream_wrote(start, end)
            else:
                loop.call_soon_threadsafe(self._stream_wrote, start, end)

        self.fd = os.open(self.dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        stream_fd = -1
        try:
            os.ftruncate(self.fd, self.size)
            # The stream writes through a descriptor of its own, so that its writes (and only
            # those) are watched; both descriptors write the same file.
            stream_fd = os.open(self.dest, os.O_WRONLY)
            _WATCHERS[stream_fd] = watch
            self.stream_task = asyncio.ensure_future(self._stream(stream_fd))
            try:
                await self._control()
                await asyncio.wait([self.stream_task])
                if not (self.stream_over and self.stream_task.cancelled()):
                    self.stream_task.result()  # its failure is the download's
                # Workers are appended only by _control, which has returned.
                await asyncio.gather(*self.workers)
            finally:
                # The first failure propagates as itself; everything else is cancelled and
                # awaited before the descriptors close, so no late pwrite hits a reused one.
                tasks = [self.stream_task, *self.workers]
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                self.closed = True
            if os.fstat(self.fd).st_size != self.size:
                raise StorageError(
                    f"{self.store.join(self.key)}: downloaded file {self.dest} "
                    f"is not {self.size} bytes long"
                )
        finally:
            if stream_fd >= 0:
                _WATCHERS.pop(stream_fd, None)
                os.close(stream_fd)
            os.close(self.fd)

    # -- the stream ----------------------------------------------------------------------

    async def _stream(self, fd: int) -> None:
        try:
            await self.store.fetch_range_into(self.key, 0, self.size, fd)
        except asyncio.CancelledError:
            if self.stream_over:
                return  # stopped where the ranges begin
            raise
        # Every byte is on disk (a store whose writes were not seen gets here with landed 0).
        if not self.closed and not self.stream_over:
            self.stream_over = True
            self.landed = self.size
            if self.on_progress is not None and self.boundary > self.reported:
                self.on_progress(self.reported, self.boundary)
                self.reported = self.boundary

    def _stream_wrote(self, start: int, end: int) -> None:
        if self.closed or self.stream_over:
            return
        if start <= self.landed < end:
            self.landed = end
        if self.first is None:
            self.first = (time.monotonic(), self.landed)
        top = min(self.landed, self.boundary)
        done = top >= self.boundary
        # The first bytes at once (a reader waits on the header), then in steps.
        step = done or self.reported == 0 or top - self.reported >= _REPORT_STEP
        if self.on_progress is not None and top > self.reported and step:
            self.on_progress(self.reported, top)
            self.reported = top
        if done and self.boundary < self.size:
            # Ranges own the rest: stop the stream here. (Without ranges it ends by itself.)
            self.stream_over = True
            assert self.stream_task is not None
            self.stream_task.cancel()

    # -- ranges from the tail --------------------------------------------------------------

    def _claim(self) -> tuple[int, int] | None:
        """The next part from the tail, or ``None`` when the stream will get there first."""
        if self.stream_over or self.boundary - self.landed < 2 * self.part:
            return None
        end = self.boundary
        # Parts on the grid of part_size: the last one may be short.
        self.boundary = (end - 1) // self.part * self.part
        return self.boundary, end

    async def _fetch_part(self, start: int, end: int) -> None:
        await self.store.fetch_range_into(self.key, start, end, self.fd)
        if self.on_progress is not None and not self.closed:
            self.on_progress(start, end)

    async def _ranges(self) -> None:
        while (claimed := self._claim()) is not None:
            await self._fetch_part(*claimed)

    async def _until(self, ready: Callable[[], bool]) -> bool:
        """Wait until ``ready()`` or the stream is over; whether ``ready()`` came first."""
        assert self.stream_task is not None
        while not ready():
            if self.stream_over or self.stream_task.done():
                return False
            await asyncio.sleep(_POLL)
        return True

    async def _control(self) -> None:
        """Decide whether ranges join the stream (see the module docstring)."""
        if self.size < 4 * self.part:
            return  # the stream alone: too little left for a range to pay
        verdict = _VERDICTS.setdefault(self.store, _Verdict())
        probe = verdict.should_probe()
        if not probe and not verdict.pays:
            return
        if not await self._until(lambda: self.first is not None):
            return
        if not probe:
            self._spread()
            return
        # The stream's own rate, over one part after its first megabyte: the first bytes come
        # in a burst (socket buffers filled while the server answered).
        assert self.first is not None
        skip = self.first[1] + _MEASURE_FROM
        if not await self._until(lambda: self.landed >= skip):
            return
        base_time, base = time.monotonic(), self.landed
        if not await self._until(lambda: self.landed - base >= self.part):
            return
        started, landed = time.monotonic(), self.landed
        alone = (landed - base) / max(started - base_time, 1e-6)
        claimed = self._claim()
        if claimed is None:
            return
        prober = asyncio.ensure_future(self._fetch_part(*claimed))
        self.workers.append(prober)
        if not await self._until(prober.done):
            # The stream did all the rest before one range of a part came back: ranges cost
            # more than they bring here (a server that copies the object for each).
            verdict.pays, verdict.since = False, 0
            return
        await prober  # its failure is the download's
        elapsed = max(time.monotonic() - started, 1e-6)
        streamed, ranged = self.landed - landed, claimed[1] - claimed[0]
        together = (streamed + ranged) / elapsed
        # Both: the two together beat the stream alone, and the range itself moved at least
        # half as fast as the stream beside it (a rate measured while the machine was busy
        # can make the first look true by chance; a range the server serves slowly cannot).
        verdict.pays = together >= PAYS * alone and 2 * ranged >= streamed
        verdict.since = 0
        if verdict.pays:
            self._spread()

    def _spread(self) -> None:
        """Start the range workers: the stream and ``concurrency - 1`` ranges at once."""
        for _ in range(self.store.transfer.concurrency - 1):
            self.workers.append(asyncio.ensure_future(self._ranges()))
