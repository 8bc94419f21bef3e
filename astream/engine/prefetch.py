"""The prefetch window: samples in a given order, with their shards fetched ahead.

Given a sequence of sample ids, the shards they live in are fetched in the order they are first
needed, a bounded window ahead of the consumer (at most ``shards`` shards and ``bytes`` bytes
beyond the one being read). The consumer decodes samples from local files, holding each open shard
pinned in the cache so eviction cannot pull it away.

For an uncompressed MDS shard that this process is downloading, samples are served as soon as
their bytes land: the download writes ranges in place into a temporary file, and the consumer
reads the offsets table and the sample's range from that file once they are covered (the file
descriptor stays valid across the final rename). So the first sample of a cold epoch waits for
one part, not the whole shard.

The sync driver runs downloads on the process's IO loop thread and waits on futures, one handoff
per shard; the async driver runs the same coroutines on the caller's loop, with no thread.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import contextlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from astream.engine.cache import ShardCache, ShardPin
from astream.engine.fetch import Counters, Fetcher
from astream.engine.loop import IOLoop
from astream.engine.table import ShardTable
from astream.errors import CacheError, ConfigError
from astream.format import (
    ShardReader,
    decode_sample,
    offsets_range,
    open_shard,
    parse_offsets,
    payload_basename,
)

__all__ = ["ReaderPool", "WindowConfig", "iter_async", "iter_sync"]

Sample = dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class WindowConfig:
    """How far ahead of the consumer shards are fetched.

    :param shards: shards fetched ahead of the one being read.
    :param bytes: bytes (as fetched: compressed sizes) ahead of the one being read.
    :param samples: also fetch every shard needed within this many samples ahead
        (mosaicml-streaming's ``predownload``), still bounded by ``bytes``.
    :param max_downloads: shards downloading at once in this process.
    :param open_shards: shards kept open (and pinned) by the consumer.
    """

    shards: int = 4
    bytes: int = 1 << 30
    samples: int = 0
    max_downloads: int = 4
    open_shards: int = 16

    def __post_init__(self) -> None:
        for name in ("shards", "bytes", "max_downloads", "open_shards"):
            if getattr(self, name) < 1:
                raise ConfigError(f"WindowConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.samples < 0:
            raise ConfigError(f"WindowConfig.samples must be >= 0, got {self.samples}")


class _Schedule:
    """Which shards to start fetching as the consumer advances (pure bookkeeping)."""

    def __init__(
        self, shard_of: NDArray[np.int64], fetch_bytes: NDArray[np.int64], cfg: WindowConfig
    ):
        uniq, first = np.unique(shard_of, return_index=True)
        by_need = np.argsort(first, kind="stable")
        #: Shards in the order they are first needed, and the position where each is.
        self.order: NDArray[np.int64] = uniq[by_need]
        self.first: NDArray[np.int64] = first[by_need].astype(np.int64)
        self.cum_bytes: NDArray[np.int64] = np.zeros(len(self.order) + 1, dtype=np.int64)
        np.cumsum(fetch_bytes[self.order], out=self.cum_bytes[1:])
        self.cfg = cfg
        self.started = 0

    def reached(self, pos: int) -> int:
        """How many shards (in need order) are needed at or before ``pos``."""
        return int(np.searchsorted(self.first, pos, side="right"))

    def due(self, pos: int) -> NDArray[np.int64]:
        """Shards to start now that the consumer is at ``pos`` (each returned once)."""
        reached = self.reached(pos)
        limit = reached + self.cfg.shards
        if self.cfg.samples:
            limit = max(limit, self.reached(pos + self.cfg.samples))
        # Byte budget for the shards ahead: at least one ahead, whatever its size.
        budget = int(self.cum_bytes[reached]) + self.cfg.bytes
        by_bytes = int(np.searchsorted(self.cum_bytes, budget, side="right")) - 1
        limit = min(limit, max(by_bytes, reached + 1), len(self.order))
        limit = max(limit, reached)
        if limit <= self.started:
            return self.order[:0]
        out = self.order[self.started : limit]
        self.started = limit
        return out

    def depth(self, pos: int) -> int:
        """Shards started ahead of the consumer."""
        return max(0, self.started - self.reached(pos))


class _Partial:
    """Byte ranges of one shard download that have landed, for reading samples early."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.path: Path | None = None
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.fd: int | None = None
        self.offsets: NDArray[Any] | None = None

    def started(self, path: Path) -> None:
        # Open now, while the temporary name exists: the descriptor survives the final rename.
        fd = os.open(path, os.O_RDONLY)
        with self.cond:
            self.path = path
            self.fd = fd
            self.cond.notify_all()

    def wake(self, _: object = None) -> None:
        """Wake a reader waiting in :meth:`wait_read` (its download has ended)."""
        with self.cond:
            self.cond.notify_all()

    def landed(self, start: int, end: int) -> None:
        with self.cond:
            # Keep disjoint sorted intervals; merge the new one with its neighbours.
            i = bisect.bisect_left(self.ends, start)
            j = bisect.bisect_right(self.starts, end)
            if i < j:
                start = min(start, self.starts[i])
                end = max(end, self.ends[j - 1])
            self.starts[i:j] = [start]
            self.ends[i:j] = [end]
            self.cond.notify_all()

    def complete(self, size: int) -> bool:
        """Whether every byte of a ``size``-byte shard has landed."""
        with self.cond:
            return self._covered(0, size)

    def _covered(self, start: int, end: int) -> bool:
        i = bisect.bisect_right(self.starts, start) - 1
        return i >= 0 and self.ends[i] >= end

    def wait_read(
        self, start: int, end: int, done: concurrent.futures.Future[Path]
    ) -> bytes | None:
        """Bytes ``[start, end)`` once landed, or ``None`` if the download finished first."""
        with self.cond:
            while self.path is None or not self._covered(start, end):
                if done.done():
                    return None
                self.cond.wait(0.05)
            fd = self.fd
        assert fd is not None
        return os.pread(fd, end - start, start)

    def close(self) -> None:
        with self.cond:
            fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)


class ReaderPool:
    """Open shard readers, least recently used first out; each holds a cache pin."""

    def __init__(
        self, table: ShardTable, caches: list[ShardCache], capacity: int, allow_unsafe_types: bool
    ) -> None:
        self.table = table
        self.caches = caches
        self.capacity = capacity
        self.allow_unsafe_types = allow_unsafe_types
        self._open: OrderedDict[int, tuple[ShardReader, contextlib.ExitStack]] = OrderedDict()

    def get(self, shard: int) -> ShardReader | None:
        """The open reader of ``shard``, if any."""
        entry = self._open.get(shard)
        if entry is None:
            return None
        self._open.move_to_end(shard)
        return entry[0]

    def try_open(self, shard: int) -> ShardReader | None:
        """Pin and open ``shard`` if it is in the cache; ``None`` if it is not (evicted).

        Blocks the calling thread while another process downloads or evicts the shard: call it
        from the consumer's thread, never on an event loop (see :meth:`try_open_async`).
        """
        cache = self.caches[int(self.table.shard_stream[shard])]
        return self._open_pinned(shard, cache.pin(self.table.shards[shard]))

    async def try_open_async(self, shard: int) -> ShardReader | None:
        """:meth:`try_open` for an event loop: waits for the pin without blocking the loop."""
        cache = self.caches[int(self.table.shard_stream[shard])]
        return self._open_pinned(shard, await cache.pin_async(self.table.shards[shard]))

    def _open_pinned(self, shard: int, pin: ShardPin) -> ShardReader | None:
        info = self.table.shards[shard]
        cache = self.caches[int(self.table.shard_stream[shard])]
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(pin)
            if not cache.is_ready(info):
                stack.close()
                return None
            reader = open_shard(
                info, cache.directory_of(info), allow_unsafe_types=self.allow_unsafe_types
            )
            stack.callback(reader.close)
        except BaseException:
            stack.close()
            raise
        self._open[shard] = (reader, stack)
        while len(self._open) > self.capacity:
            _, (_, old) = self._open.popitem(last=False)
            old.close()
        return reader

    def close(self) -> None:
        """Close every reader and drop its pin."""
        while self._open:
            _, (_, stack) = self._open.popitem(last=False)
            stack.close()


def _evicted_error(table: ShardTable, shard: int) -> CacheError:
    return CacheError(
        f"shard {table.shards[shard].raw.basename} was evicted from the cache three times "
        "before it could be read; raise cache_limit or shrink the prefetch window"
    )


def _partial_ok(table: ShardTable, shard: int) -> bool:
    """Whether samples of ``shard`` can be read while it downloads (uncompressed MDS)."""
    info = table.shards[shard]
    if info.zip is not None or info.format != "mds":
        return False
    return offsets_range(info)[0] == payload_basename(info) == info.raw.basename


def _prepared(ids: Any, table: ShardTable) -> NDArray[np.int64]:
    array = np.asarray(ids, dtype=np.int64).reshape(-1)
    array = array[array >= 0]  # -1 is the plan's padding
    if len(array) and int(array.max()) >= table.num_samples:
        raise IndexError(
            f"sample id {int(array.max())} out of range for {table.num_samples} samples"
        )
    return array


async def _tracked(coro: Coroutine[Any, Any, Path], tasks: set[asyncio.Task[Any]]) -> Path:
    """Run ``coro`` as a task that :func:`_settle` can cancel and wait for."""
    task = asyncio.current_task()
    assert task is not None
    tasks.add(task)
    try:
        return await coro
    finally:
        tasks.discard(task)


async def _settle(tasks: set[asyncio.Task[Any]]) -> None:
    """Cancel the fetches still running and wait until they have cleaned up after themselves."""
    pending = [t for t in tasks if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=_SETTLE_TIMEOUT)


#: Seconds a closing iterator waits for its cancelled downloads to remove their temp files.
_SETTLE_TIMEOUT = 10.0
#: Seconds a closing iterator waits for downloads whose bytes have all landed to complete.
_LANDED_TIMEOUT = 5.0


def iter_sync(
    ids: Any,
    *,
    table: ShardTable,
    fetcher: Fetcher,
    loop: IOLoop,
    caches: list[ShardCache],
    counters: Counters,
    window: WindowConfig,
    allow_unsafe_types: bool = False,
) -> Iterator[Sample]:
    """Yield the samples ``ids`` in order, fetching on ``loop``'s thread, decoding here."""
    array = _prepared(ids, table)
    if not len(array):
        return
    shard_of, within = table.locate(array)
    schedule = _Schedule(shard_of, table.fetch_bytes, window)
    futures: dict[int, concurrent.futures.Future[Path]] = {}
    running: set[asyncio.Task[Any]] = set()  # touched on the loop thread only
    partials: dict[int, _Partial] = {}
    pool = ReaderPool(table, caches, window.open_shards, allow_unsafe_types)

    def start(shard: int) -> None:
        partial = None
        if _partial_ok(table, shard):
            partial = partials[shard] = _Partial()
        fetch = fetcher.fetch_shard(
            shard,
            on_raw_started=partial.started if partial else None,
            on_progress=partial.landed if partial else None,
            lead=not futures,  # the first shard of this iteration
        )
        futures[shard] = loop.submit(_tracked(fetch, running))
        if partial is not None:
            # A shard already in the cache never reports a range: end the reader's wait at once.
            futures[shard].add_done_callback(partial.wake)

    def wait(future: concurrent.futures.Future[Path]) -> Path:
        if future.done():
            return future.result()
        began = time.perf_counter()
        try:
            return future.result()
        finally:
            counters.add("consumer_wait_s", time.perf_counter() - began)

    def early(shard: int, index: int) -> Sample | None:
        """A sample of a shard still downloading, if its bytes have landed."""
        partial = partials.get(shard)
        future = futures[shard]
        if partial is None or future.done():
            return None
        info = table.shards[shard]
        began = time.perf_counter()
        try:
            if partial.offsets is None:
                _, lo, hi = offsets_range(info)
                data = partial.wait_read(lo, hi, future)
                if data is None:
                    return None
                partial.offsets = parse_offsets(info, data)
            lo, hi = int(partial.offsets[index]), int(partial.offsets[index + 1])
            payload = partial.wait_read(lo, hi, future)
        finally:
            counters.add("consumer_wait_s", time.perf_counter() - began)
        if payload is None:
            return None
        return decode_sample(info, payload, allow_unsafe_types=allow_unsafe_types)

    def open_reader(shard: int) -> ShardReader:
        for _ in range(3):
            wait(futures[shard])
            partial = partials.pop(shard, None)
            if partial is not None:
                partial.close()
            reader = pool.get(shard) or pool.try_open(shard)
            if reader is not None:
                return reader
            # Evicted between its download and our pin (a cache too small for the window):
            # fetch it again.
            futures[shard] = loop.submit(_tracked(fetcher.fetch_shard(shard), running))
        raise _evicted_error(table, shard)

    current = -1
    reader: ShardReader | None = None
    # The per-sample path is a list lookup and a decode: plain ints (not numpy scalars), and
    # the sample counter is flushed at shard changes rather than taking its lock per sample.
    yielded = 0
    try:
        for pos, (shard, index) in enumerate(zip(shard_of.tolist(), within.tolist(), strict=True)):
            if shard != current:
                counters.add("samples", yielded)
                yielded = 0
                for due in schedule.due(pos):
                    start(int(due))
                counters.set("window_depth", schedule.depth(pos))
                current = shard
                reader = pool.get(shard)
            if reader is None:
                sample = early(shard, index)
                if sample is not None:
                    yielded += 1
                    yield sample
                    continue
                reader = open_reader(shard)
            yielded += 1
            yield reader[index]
    finally:
        counters.add("samples", yielded)
        # A download whose bytes have all landed (its last samples were read early) only lacks
        # its rename into the cache: let it finish rather than throw the shard away.
        landed = [
            futures[shard]
            for shard, partial in partials.items()
            if not futures[shard].done() and partial.complete(int(table.fetch_bytes[shard]))
        ]
        if landed and not loop.closed:
            concurrent.futures.wait(landed, timeout=_LANDED_TIMEOUT)
        # Stop the window's downloads and wait for them to clean up, so that nothing writes into
        # the cache after the consumer has let go (a caller may delete the directory next).
        if any(not f.done() for f in futures.values()) and not loop.closed:
            with contextlib.suppress(Exception):
                loop.run(_settle(running), timeout=2 * _SETTLE_TIMEOUT)
        for partial in partials.values():
            partial.close()
        pool.close()
        counters.set("window_depth", 0)


async def iter_async(
    ids: Any,
    *,
    table: ShardTable,
    fetcher: Fetcher,
    caches: list[ShardCache],
    counters: Counters,
    window: WindowConfig,
    allow_unsafe_types: bool = False,
) -> AsyncIterator[Sample]:
    """Yield the samples ``ids`` in order, fetching and decoding on the running loop."""
    array = _prepared(ids, table)
    if not len(array):
        return
    shard_of, within = table.locate(array)
    schedule = _Schedule(shard_of, table.fetch_bytes, window)
    tasks: dict[int, asyncio.Task[Path]] = {}
    pool = ReaderPool(table, caches, window.open_shards, allow_unsafe_types)

    async def open_reader(shard: int) -> ShardReader:
        for _ in range(3):
            task = tasks[shard]
            began = time.perf_counter()
            await task
            counters.add("consumer_wait_s", time.perf_counter() - began)
            reader = pool.get(shard) or await pool.try_open_async(shard)
            if reader is not None:
                return reader
            tasks[shard] = asyncio.ensure_future(fetcher.fetch_shard(shard))
        raise _evicted_error(table, shard)

    current = -1
    reader: ShardReader | None = None
    yielded = 0
    try:
        for pos, (shard, index) in enumerate(zip(shard_of.tolist(), within.tolist(), strict=True)):
            if shard != current:
                counters.add("samples", yielded)
                yielded = 0
                for due in schedule.due(pos):
                    tasks[int(due)] = asyncio.ensure_future(fetcher.fetch_shard(int(due)))
                counters.set("window_depth", schedule.depth(pos))
                current = shard
                reader = pool.get(shard) or await open_reader(shard)
            assert reader is not None
            yielded += 1
            yield reader[index]
            if pos % 256 == 255:
                await asyncio.sleep(0)  # let downloads progress on a busy consumer
    finally:
        counters.add("samples", yielded)
        pending = [t for t in tasks.values() if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        pool.close()
        counters.set("window_depth", 0)
