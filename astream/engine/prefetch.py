"""The prefetch window's driver: samples in a given order, with their shards fetched ahead.

:func:`iter_samples` is the one implementation of the window, a plain generator. Given sample
ids, it fetches the shards they live in in the order they are first needed, a bounded window
ahead of the consumer (:class:`~astream.engine.window.WindowPlan` says what and when), and
decodes samples from local files. Downloads run on the process's IO loop thread; the generator
waits on their futures, one handoff per shard.

- **Open shards.** Every shard the ids still need stays open (mapped, and pinned in an evictable
  cache so that eviction cannot pull it away) until its last use, within the bound of
  :func:`~astream.engine.window.open_limit`; past it, the shard needed furthest ahead closes
  first. Reading a sample of an open shard is a list lookup and a decode.
- **Read while downloading.** For an uncompressed MDS shard that this process is downloading,
  samples are served as soon as their bytes land: the download writes ranges in place into a
  temporary file, and the consumer reads the shard header (checked by the same function as
  :func:`~astream.format.open_shard`) and each sample's range from that file once they are
  covered (the descriptor stays valid across the final rename). Never with ``validate_hash``:
  then no sample of a shard is read before its hash has been verified.

:func:`aiterate` drives any such iterator from ``async for`` on asyncio or trio: each hop runs
the generator in a worker thread (``anyio.to_thread``) for a batch of samples (at most
:data:`HOP_SAMPLES`, or :data:`HOP_SECONDS` of work), so planning, shard opening, lock waits and
decoding never run on the caller's loop.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import concurrent.futures
import contextlib
import itertools
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

import anyio
import anyio.to_thread
import numpy as np
from numpy.typing import NDArray

from astream.engine.cache import ShardCache, ShardPin
from astream.engine.fetch import Counters, Fetcher
from astream.engine.loop import IOLoop
from astream.engine.ranges import RangeAhead
from astream.engine.table import ShardTable
from astream.engine.window import WindowConfig, WindowPlan, open_limit, shard_footprint
from astream.errors import CacheLimitError
from astream.format import (
    ShardReader,
    decode_sample,
    offsets_range,
    open_shard,
    parse_offsets,
    payload_basename,
)

__all__ = [
    "HOP_SAMPLES",
    "HOP_SECONDS",
    "ReaderPool",
    "ThreadedAsyncIterator",
    "WindowConfig",
    "aiterate",
    "iter_samples",
]

Sample = dict[str, Any]
#: ShardReader.decoding(): (decode, buffer, offsets, source).
_Decoding = tuple[Callable[[Any, int, int, str], Sample], Any, list[int], str]
T = TypeVar("T")

#: Most samples one ``async for`` hop takes from the worker thread.
HOP_SAMPLES = 256
#: Seconds of work after which a hop hands its samples over, even if fewer than HOP_SAMPLES.
HOP_SECONDS = 0.002
#: Items a hop takes between two reads of the clock.
_STEP = 16
#: Positions converted to Python lists at a time (bounds the memory of a long epoch's lists).
_CHUNK = 16384


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


def _open_cached(
    table: ShardTable, caches: list[ShardCache], shard: int, allow_unsafe_types: bool
) -> tuple[ShardReader, ShardPin] | None:
    """Pin and open ``shard`` if it is in the cache; ``None`` if it is not (evicted).

    Blocks the calling thread while another process downloads or evicts the shard: call it from
    the consumer's thread (a worker thread for ``async for``), never on an event loop.
    """
    info = table.shards[shard]
    cache = caches[int(table.shard_stream[shard])]
    pin = cache.pin(info)
    try:
        if not cache.is_ready(info):
            pin.release()
            return None
        try:
            cache.check_hash(info, table.sources[int(table.shard_stream[shard])].validate_hash)
            reader = open_shard(
                info, cache.directory_of(info), allow_unsafe_types=allow_unsafe_types
            )
        except FileNotFoundError:
            # Deleted between the check and the open (by hand, or a cleaner that ignores pins):
            # as evicted, fetched again by the caller.
            pin.release()
            return None
        return reader, pin
    except BaseException:
        pin.release()
        raise


class ReaderPool:
    """Open shard readers for random access, least recently used first out; each holds a pin."""

    def __init__(
        self, table: ShardTable, caches: list[ShardCache], capacity: int, allow_unsafe_types: bool
    ) -> None:
        self.table = table
        self.caches = caches
        self.capacity = capacity
        self.allow_unsafe_types = allow_unsafe_types
        self._open: OrderedDict[int, tuple[ShardReader, ShardPin]] = OrderedDict()

    def get(self, shard: int) -> ShardReader | None:
        """The reader of ``shard``, opened from the cache if it is there; else ``None``."""
        entry = self._open.get(shard)
        if entry is not None:
            self._open.move_to_end(shard)
            return entry[0]
        entry = _open_cached(self.table, self.caches, shard, self.allow_unsafe_types)
        if entry is None:
            return None
        self._open[shard] = entry
        while len(self._open) > self.capacity:
            _, (reader, pin) = self._open.popitem(last=False)
            reader.close()
            pin.release()
        return entry[0]

    def close(self) -> None:
        """Close every reader and drop its pin."""
        while self._open:
            _, (reader, pin) = self._open.popitem(last=False)
            reader.close()
            pin.release()


def evicted_error(table: ShardTable, shard: int) -> CacheLimitError:
    """The error of a shard evicted again and again between its fetch and its pin (a
    ``ValueError`` too, as mosaicml-streaming's error for a cache too small)."""
    return CacheLimitError(
        f"shard {table.shards[shard].raw.basename} was evicted from the cache three times "
        "before it could be read; raise cache_limit (see WindowConfig.min_cache_bytes) or "
        "shrink the prefetch window"
    )


def _partial_ok(table: ShardTable, shard: int) -> bool:
    """Whether samples of ``shard`` can be read while it downloads: an uncompressed MDS shard
    whose stream does not ask for a hash check (a sample must never be served before it)."""
    info = table.shards[shard]
    if info.zip is not None or info.format != "mds":
        return False
    if table.sources[int(table.shard_stream[shard])].validate_hash is not None:
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


def consumer_limits(
    table: ShardTable, window: WindowConfig, caches: list[ShardCache], cache_share: int | None
) -> tuple[int, int | None]:
    """(most shards kept open, byte bound ahead or ``None``) for one consumer.

    ``cache_share``: the bytes of ``cache_limit`` this consumer may fill (the limit divided by
    the node's consumers), or ``None`` without a limit. Within it, the consumer fetches at most
    ``shards`` of the largest shards' bytes ahead and keeps open what is left after those and
    one more, at least the shard it reads.
    """
    keep_open = open_limit(pinned=any(c.evictable for c in caches), configured=window.open_shards)
    if cache_share is None or not table.shards:
        return keep_open, None
    largest = int(shard_footprint(table).max()) or 1
    # The share holds: the open (pinned) shards, the shards fetched ahead (each possibly still
    # downloading: unevictable too) and one more being made room for.
    keep_open = min(keep_open, max(1, cache_share // largest - window.shards - 1))
    return keep_open, min(window.bytes, max(1, window.shards) * largest)


def iter_samples(
    ids: Any,
    *,
    table: ShardTable,
    fetcher: Fetcher,
    loop: IOLoop,
    caches: list[ShardCache],
    counters: Counters,
    window: WindowConfig,
    allow_unsafe_types: bool = False,
    cache_share: int | None = None,
    consumers: int = 1,
) -> Iterator[Sample]:
    """Yield the samples ``ids`` in order, fetching on ``loop``'s thread, decoding here.

    :param cache_share: bytes of ``cache_limit`` this consumer may fill (see
        :func:`consumer_limits`), ``None`` without a limit.
    :param consumers: processes of this node iterating at once (ranks x DataLoader workers):
        they share the store's rate (see :class:`~astream.engine.ranges.RangeAhead`).
    """
    array = _prepared(ids, table)
    if not len(array):
        return
    shard_of, within = table.locate(array)
    keep_open, ahead_bytes = consumer_limits(table, window, caches, cache_share)
    plan = WindowPlan(shard_of, table.fetch_bytes, window, ahead_bytes=ahead_bytes)
    futures: dict[int, concurrent.futures.Future[Path]] = {}
    running: set[asyncio.Task[Any]] = set()  # touched on the loop thread only
    partials: dict[int, _Partial] = {}
    # The open shards: reader by shard (a list: the per-sample lookup), their pins, and for
    # each open shard other than the current one, the next position that needs it.
    readers: list[ShardReader | None] = [None] * len(table.shards)
    # reader.decoding() of each open shard: what the per-sample path reads, without a call.
    decodings: list[_Decoding | None] = [None] * len(table.shards)
    pins: dict[int, ShardPin] = {}
    next_need: dict[int, int] = {}
    # Whether open shards may ever have to be closed for others (Belady, on next_need): not
    # when this iteration reads no more shards than may stay open.
    track_need = len(plan.order) > keep_open
    ready: set[int] = set()

    def local(shard: int) -> bool:
        """Whether ``shard`` is open, downloaded or in the cache (no range reads for it)."""
        if shard in ready:
            return True
        future = futures.get(shard)
        cache = caches[int(table.shard_stream[shard])]
        if (
            readers[shard] is not None
            or (future is not None and future.done())
            or cache.is_ready(table.shards[shard])
        ):
            ready.add(shard)
        return shard in ready

    # A shuffled cold start's first samples, by range reads (see astream.engine.ranges).
    ranges = RangeAhead(
        table=table,
        fetcher=fetcher,
        loop=loop,
        counters=counters,
        shard_of=shard_of,
        within=within,
        local=local,
        allow_unsafe_types=allow_unsafe_types,
        consumers=consumers,
    )
    if not window.range_reads:
        ranges.close()
    ranges_event = ranges.next_event

    def start(shard: int) -> None:
        if fetcher.use_cached(shard):
            # Nothing to fetch: marked used now, as a fetch would (it is due soon, so it stays
            # clear of eviction), and opened when it is reached, without a trip to the loop.
            ready.add(shard)
            return
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
        future = futures.get(shard)
        if partial is None or future is None or future.done():
            return None
        info = table.shards[shard]
        began = time.perf_counter()
        try:
            if partial.offsets is None:
                _, lo, hi = offsets_range(info)
                data = partial.wait_read(lo, hi, future)
                if data is None:
                    return None
                # The header check open_shard makes (sample count, offsets in order and in
                # bounds, the recorded config), before anything of the shard is served.
                first = int(parse_offsets(info, data)[0])
                data = partial.wait_read(0, max(first, hi), future)
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

    def close(shard: int) -> None:
        reader, readers[shard] = readers[shard], None
        decodings[shard] = None
        next_need.pop(shard, None)
        pin = pins.pop(shard, None)
        if reader is not None:
            reader.close()
        if pin is not None:
            pin.release()

    def opened(shard: int, entry: tuple[ShardReader, ShardPin]) -> ShardReader:
        readers[shard], pins[shard] = entry
        decodings[shard] = entry[0].decoding()
        return entry[0]

    def open_reader(shard: int) -> ShardReader:
        if len(pins) >= keep_open:
            # Belady: close the open shard needed furthest ahead.
            close(max(pins, key=lambda s: next_need.get(s, 1 << 62)))
        if shard not in futures:
            # Not fetched by this iteration: in the cache already, most likely.
            entry = _open_cached(table, caches, shard, allow_unsafe_types)
            if entry is not None:
                counters.add("cache_hits")
                return opened(shard, entry)
        for _ in range(3):
            future = futures.get(shard)
            if future is None:
                future = futures[shard] = loop.submit(_tracked(fetcher.fetch_shard(shard), running))
            wait(future)
            partial = partials.pop(shard, None)
            if partial is not None:
                partial.close()
            entry = _open_cached(table, caches, shard, allow_unsafe_types)
            if entry is not None:
                return opened(shard, entry)
            # Evicted after its download (a cache too small for what is open): fetch it again.
            futures[shard] = loop.submit(_tracked(fetcher.fetch_shard(shard), running))
        raise evicted_error(table, shard)

    current = -1
    decoding: _Decoding | None = None
    event = 0  # plan.next_event, in a local
    tail = -1  # next use of the position before the current chunk
    yielded = 0
    try:
        for lo in range(0, len(array), _CHUNK):
            shards = shard_of[lo : lo + _CHUNK].tolist()
            indices = within[lo : lo + _CHUNK].tolist()
            nexts = plan.next_use[lo : lo + _CHUNK].tolist()
            # The per-sample path: a compare, a list lookup and a decode. Everything else runs
            # when the shard changes, and the schedule only when it has work (next_event).
            for k, (shard, index) in enumerate(zip(shards, indices, strict=True)):
                if lo + k >= ranges_event:  # within the cold start's budget only
                    ranges.advance(lo + k)
                    ranges_event = ranges.next_event
                if shard != current:
                    if current >= 0:
                        following = nexts[k - 1] if k else tail
                        if following < 0:
                            close(current)  # its last use in this iteration
                        elif track_need:
                            next_need[current] = following
                    current = shard
                    if lo + k >= event:
                        for due in plan.advance(lo + k):
                            start(due)
                        event = plan.next_event
                        counters.set("window_depth", plan.depth())
                    decoding = decodings[shard]
                    if decoding is not None:
                        decode, buffer, offsets, source = decoding
                if decoding is None:
                    sample = ranges.take(lo + k) if ranges.active else None
                    if sample is None:
                        sample = early(shard, index)
                    if sample is not None:
                        yielded += 1
                        yield sample
                        continue
                    decode, buffer, offsets, source = decoding = open_reader(shard).decoding()
                yielded += 1
                # reader[index], without a method call (index is in range: table.locate's).
                yield decode(buffer, offsets[index], offsets[index + 1], source)
            tail = nexts[-1]
            counters.add("samples", yielded)
            yielded = 0
    finally:
        ranges.close()
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
        for shard in list(pins):
            close(shard)
        counters.set("window_depth", 0)


class ThreadedAsyncIterator(Generic[T]):
    """``async for`` over the iterator ``make()`` returns, run in worker threads.

    ``make`` and every step of the iterator run in a worker thread (``anyio.to_thread``), in
    hops of up to ``most`` items or ``seconds`` of work, so nothing of them runs on the caller's
    loop, which may be asyncio or trio. A hop that waits for a download is not interrupted by
    cancellation (which takes effect when it returns); its items stay buffered for the next
    ``__anext__``. :meth:`aclose` (or ``async with``) closes the iterator in a thread; one
    dropped unclosed (``break``) is closed in a thread of its own when collected.
    """

    def __init__(
        self,
        make: Callable[[], Iterator[T]],
        *,
        most: int = HOP_SAMPLES,
        seconds: float = HOP_SECONDS,
    ) -> None:
        self._make: Callable[[], Iterator[T]] | None = make
        self._iterator: Iterator[T] | None = None
        self._most = most
        self._seconds = seconds
        self._buffer: collections.deque[T] = collections.deque()
        self._error: BaseException | None = None
        self._ended = False

    def __aiter__(self) -> ThreadedAsyncIterator[T]:
        return self

    def _hop(self) -> None:
        """One hop, in a worker thread: buffer up to ``most`` items (or ``seconds`` of work)."""
        if self._iterator is None:
            assert self._make is not None
            self._iterator, self._make = self._make(), None
        buffer, iterator = self._buffer, self._iterator
        deadline = time.perf_counter() + self._seconds
        try:
            # Steps of _STEP items taken in C (islice into the deque), the clock read between.
            while len(buffer) < self._most:
                before = len(buffer)
                buffer.extend(itertools.islice(iterator, _STEP))
                if len(buffer) - before < _STEP:
                    break  # exhausted
                if time.perf_counter() >= deadline:
                    return
            else:
                return
        except Exception as exc:  # raised to the consumer after the items before it
            self._error = exc
        self._ended = True

    async def __anext__(self) -> T:
        if not self._buffer and not self._ended:
            await anyio.to_thread.run_sync(self._hop)
        if self._buffer:
            return self._buffer.popleft()
        error, self._error = self._error, None
        if error is not None:
            raise error
        raise StopAsyncIteration

    def _close(self) -> None:
        iterator, self._iterator, self._make = self._iterator, None, None
        self._ended = True
        self._buffer.clear()
        close = getattr(iterator, "close", None)
        if close is not None:
            close()

    async def aclose(self) -> None:
        """Close the iterator (in a worker thread, shielded from cancellation); idempotent."""
        if self._iterator is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._close)
        else:
            self._close()

    async def __aenter__(self) -> ThreadedAsyncIterator[T]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # Dropped unclosed: closing may wait for downloads to settle, so never here (this may
        # be the caller's loop thread), but in a thread of its own.
        if getattr(self, "_iterator", None) is not None:
            threading.Thread(target=self._close, name="astream-close", daemon=True).start()


def aiterate(
    make: Callable[[], Iterator[T]], *, most: int = HOP_SAMPLES, seconds: float = HOP_SECONDS
) -> ThreadedAsyncIterator[T]:
    """``async for`` over ``make()``'s iterator without blocking the loop: see
    :class:`ThreadedAsyncIterator`."""
    return ThreadedAsyncIterator(make, most=most, seconds=seconds)
