"""Shard and sample fetching for one dataset on one event loop.

A :class:`Fetcher` lives on exactly one loop (the process's IO loop thread for sync users, the
caller's own loop for ``async for``): it creates its stores there, lazily, and closes them with
:meth:`Fetcher.aclose`. The node-local caches it writes to are plain files guarded by ``fcntl``
locks, so every process and loop of a node shares them safely.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from numpy.typing import NDArray

from astream.engine.cache import ShardCache
from astream.engine.table import ShardTable
from astream.format import decode_sample, offsets_range, parse_offsets, payload_basename
from astream.storage import Store, open_store

__all__ = [
    "LEAD_WAIT",
    "RANGE_READS",
    "Counters",
    "EngineStatistics",
    "Fetcher",
    "make_caches",
    "remote_bytes",
]

#: Longest wait (seconds) of other downloads for a lead download's first bytes, and of
#: whole-shard downloads for a hold (:meth:`Fetcher.hold`) to be released.
LEAD_WAIT = 2.0
#: Sample range reads (:meth:`Fetcher.read_payload`) one fetcher has in flight at once: on
#: loopback s3rver 256 reads of 4 KiB take about 0.39 s at 16 and 0.28 s at 64 (a server's
#: requests per second, not the link, bound them), so a first batch's reads go at 32.
RANGE_READS = 32
# Shards whose sample offsets a fetcher keeps for range reads (4 bytes and more per sample).
_OFFSETS_KEPT = 1024


@dataclass(frozen=True, kw_only=True)
class EngineStatistics:
    """A snapshot of one process's engine counters for a dataset (see ``statistics()``).

    :param bytes_in_flight: bytes of shards scheduled but not yet on local disk.
    :param window_depth: shards fetched or being fetched ahead of the consumer.
    :param cache_hits: shard fetches that found the shard on local disk (at once, or after
        another process of the node downloaded it).
    :param cache_misses: shards this process downloaded (once per node: the others wait).
    :param retries: request retries made by this process's stores.
    :param bytes_downloaded: bytes this process downloaded.
    :param evictions: shards this process evicted to stay under ``cache_limit``.
    :param consumer_wait_s: seconds the consumer waited for data.
    :param samples: samples handed to the consumer.
    :param range_reads: random-access reads served by range requests without the whole shard.
    :param range_samples: samples an iteration took from range reads because their shard was
        not local yet (a cold start's first samples: see :mod:`astream.engine.ranges`).
    :param dataset_bytes: bytes of the dataset's remote shards, each once (as fetched: compressed
        sizes); :attr:`fetched_ratio` compares :attr:`bytes_downloaded` with it.
    """

    bytes_in_flight: int = 0
    window_depth: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    retries: int = 0
    bytes_downloaded: int = 0
    consumer_wait_s: float = 0.0
    samples: int = 0
    range_reads: int = 0
    range_samples: int = 0
    evictions: int = 0
    dataset_bytes: int = 0

    @property
    def fetched_ratio(self) -> float:
        """Bytes this process downloaded per byte of the dataset (0.0 for a local dataset).

        A cold epoch on one node is 1.0 over all its processes together; well above that,
        shards are evicted and downloaded again (a shuffle whose working set exceeds
        ``cache_limit``: see :class:`~astream.errors.CacheLimitWarning`).
        """
        return self.bytes_downloaded / self.dataset_bytes if self.dataset_bytes else 0.0


class Counters:
    """Mutable engine counters shared by the consumer and the loop thread (under a lock)."""

    def __init__(self, dataset_bytes: int = 0) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, float] = {}
        self.dataset_bytes = dataset_bytes
        self.store_retries: Callable[[], int] = lambda: 0
        #: The caches whose download, hit and eviction counts the snapshot adds up.
        self.caches: list[ShardCache] = []

    def add(self, name: str, amount: float = 1) -> None:
        """Add ``amount`` to counter ``name``."""
        with self._lock:
            self._values[name] = self._values.get(name, 0) + amount

    def set(self, name: str, value: float) -> None:
        """Set gauge ``name``."""
        with self._lock:
            self._values[name] = value

    def snapshot(self) -> EngineStatistics:
        """A frozen copy of every counter."""
        with self._lock:
            values = dict(self._values)
        caches = [cache.statistics() for cache in self.caches]
        return EngineStatistics(
            bytes_in_flight=int(values.get("bytes_in_flight", 0)),
            window_depth=int(values.get("window_depth", 0)),
            cache_hits=int(values.get("cache_hits", 0)) + sum(c.hits for c in caches),
            cache_misses=sum(c.misses for c in caches),
            retries=int(values.get("retries", 0)) + self.store_retries(),
            bytes_downloaded=sum(c.bytes_downloaded for c in caches),
            evictions=sum(c.evictions for c in caches),
            consumer_wait_s=float(values.get("consumer_wait_s", 0.0)),
            samples=int(values.get("samples", 0)),
            range_reads=int(values.get("range_reads", 0)),
            range_samples=int(values.get("range_samples", 0)),
            dataset_bytes=self.dataset_bytes,
        )


def remote_bytes(table: ShardTable) -> int:
    """Bytes of the table's remote shards, each once, as fetched (compressed sizes)."""
    remote = [source.remote is not None for source in table.sources]
    return sum(
        int(table.fetch_bytes[k])
        for k in range(len(table.shards))
        if remote[int(table.shard_stream[k])]
    )


def make_caches(table: ShardTable, cache_limit: int | None) -> list[ShardCache]:
    """One cache per stream; a dataset-wide ``cache_limit`` is split by each stream's size."""
    totals = [0] * len(table.sources)
    for k, shard in enumerate(table.shards):
        totals[int(table.shard_stream[k])] += shard.raw.bytes + (
            shard.zip.bytes if shard.zip else 0
        )
    whole = sum(totals) or 1
    caches = []
    for stream, source in enumerate(table.sources):
        limit = None
        if cache_limit is not None and source.remote is not None:
            limit = max(1, cache_limit * totals[stream] // whole)
        local_only = source.remote is None
        cache = ShardCache(
            source.cache_dir,
            limit=limit,
            evictable=not local_only,
            origin=source.local if local_only else None,
        )
        # A cache left over its limit by an earlier run shrinks before this one downloads.
        cache.trim()
        caches.append(cache)
    return caches


class Fetcher:
    """Brings shards (and single samples) of a :class:`ShardTable` to the consumer.

    :param table: the shards.
    :param caches: one node-local cache per stream (see :func:`make_caches`).
    :param counters: where to count hits, misses and bytes.
    :param max_downloads: shards this fetcher downloads at once (a per-process connection cap on
        top of each store's per-object concurrency).
    :param allow_unsafe_types: let random-access reads decode ``pkl`` columns.
    """

    def __init__(
        self,
        table: ShardTable,
        caches: list[ShardCache],
        counters: Counters,
        *,
        max_downloads: int = 4,
        allow_unsafe_types: bool = False,
    ) -> None:
        self.table = table
        self.caches = caches
        self.counters = counters
        self.allow_unsafe_types = allow_unsafe_types
        self._max_downloads = max_downloads
        self._stores: dict[int, Store] = {}
        self._semaphore: asyncio.Semaphore | None = None
        self._offsets: dict[int, NDArray[Any]] = {}
        # Set once the first bytes of a lead download have landed (see fetch_shard's lead).
        self._gate: asyncio.Event | None = None
        # Range reads of samples (read_payload): slots and shared offsets reads.
        self._range_slots: asyncio.Semaphore | None = None
        self._offsets_pending: dict[int, asyncio.Future[NDArray[Any]]] = {}
        # Holds on whole-shard downloads (hold/release), the event set when the last one goes,
        # and the loop time after which downloads stop waiting for it anyway.
        self._holds = 0
        self._held: asyncio.Event | None = None
        self._held_until = 0.0
        #: Bytes of shard downloads that reported progress, landed so far (written on the loop
        #: thread, read anywhere): how fast whole shards arrive, for RangeAhead to compare.
        self.landed = 0
        #: Set when this fetcher's sample range reads came too slowly to be worth it (see
        #: :data:`astream.engine.ranges.RANGE_MIN_RATE`): later iterations read whole shards.
        self.range_slow = False
        counters.store_retries = self._retries
        counters.caches = caches

    def _retries(self) -> int:
        return sum(store.retries for store in list(self._stores.values()))

    def store(self, stream: int) -> Store:
        """The store of ``stream``, created on first use (on the running loop)."""
        store = self._stores.get(stream)
        if store is None:
            source = self.table.sources[stream]
            store = open_store(source.store_url, retry=source.retry, transfer=source.transfer)
            self._stores[stream] = store
        return store

    def cache_of(self, shard: int) -> ShardCache:
        """The cache that holds global shard ``shard``."""
        return self.caches[int(self.table.shard_stream[shard])]

    def use_cached(self, shard: int) -> bool:
        """Whether shard ``shard`` is in the cache now; if it is, count a cache hit and mark it
        used (its place in the LRU order), as a fetch that finds it does. Any thread."""
        info = self.table.shards[shard]
        cache = self.cache_of(shard)
        if not cache.is_ready(info):
            return False
        self.counters.add("cache_hits")
        cache.touch(info)
        return True

    async def fetch_shard(
        self,
        shard: int,
        *,
        on_raw_started: Callable[[Path], None] | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        lead: bool = False,
    ) -> Path:
        """Make shard ``shard`` local (downloaded at most once per node) and return its path.

        :param lead: the shard a consumer waits on first, read as its bytes land
            (``on_progress``). Until its first bytes are on disk, other downloads of this
            fetcher wait (at most :data:`LEAD_WAIT` seconds) rather than share the link with
            it: the first sample then costs one small request, not a share of the whole window.
        """
        if self.use_cached(shard):
            return self.cache_of(shard).raw_path(self.table.shards[shard])
        held = self._held
        if held is not None and not held.is_set():
            # The consumer's first samples come by range reads (hold): they go first.
            left = self._held_until - asyncio.get_running_loop().time()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(held.wait(), max(0.0, left))
        if lead and on_progress is not None:
            gate = self._gate = asyncio.Event()
            inner = on_progress

            def on_progress(start: int, end: int) -> None:
                gate.set()
                inner(start, end)

            try:
                return await self._fetch(shard, on_raw_started, on_progress)
            finally:
                gate.set()
        waiting = self._gate
        if waiting is not None and not waiting.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(waiting.wait(), LEAD_WAIT)
        return await self._fetch(shard, on_raw_started, on_progress)

    async def _fetch(
        self,
        shard: int,
        on_raw_started: Callable[[Path], None] | None,
        on_progress: Callable[[int, int], None] | None,
    ) -> Path:
        info = self.table.shards[shard]
        cache = self.cache_of(shard)
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self._max_downloads)
        stream = int(self.table.shard_stream[shard])
        source = self.table.sources[stream]
        size = int(self.table.fetch_bytes[shard])
        self.counters.add("bytes_in_flight", size)
        if on_progress is not None:
            inner = on_progress

            def on_progress(start: int, end: int) -> None:
                self.landed += end - start
                inner(start, end)

        try:
            async with self._semaphore:
                path = await cache.fetch(
                    self.store(stream),
                    info,
                    validate_hash=source.validate_hash,
                    keep_zip=source.keep_zip or source.remote is None,
                    on_raw_started=on_raw_started,
                    on_progress=on_progress,
                )
        finally:
            self.counters.add("bytes_in_flight", -size)
        return path

    async def _offsets_of(self, shard: int) -> NDArray[Any]:
        offsets = self._offsets.get(shard)
        if offsets is None:
            info = self.table.shards[shard]
            basename, start, end = offsets_range(info)
            store = self.store(int(self.table.shard_stream[shard]))
            offsets = parse_offsets(info, await store.read_range(basename, start, end))
            self._offsets[shard] = offsets
        return offsets

    async def read_sample(self, shard: int, index: int) -> dict[str, Any] | None:
        """One sample by range requests, without the whole shard; ``None`` when impossible.

        Only uncompressed shards can be range-read (a compressed file has no sample offsets),
        and only without ``validate_hash`` (a range cannot be checked against the file's hash):
        the caller fetches the whole shard then. The shard's offsets are read once and kept.
        """
        info = self.table.shards[shard]
        if info.zip is not None or self.table.sources[self.table.shard_stream[shard]].validate_hash:
            return None
        offsets = await self._offsets_of(shard)
        start, end = int(offsets[index]), int(offsets[index + 1])
        store = self.store(int(self.table.shard_stream[shard]))
        payload = await store.read_range(payload_basename(info), start, end)
        self.counters.add("range_reads")
        return decode_sample(info, payload, allow_unsafe_types=self.allow_unsafe_types)

    def can_range_read(self, shard: int) -> bool:
        """Whether samples of ``shard`` may come by range requests (:meth:`read_payload`).

        Not for compressed shards (no sample offsets in the file), not with ``validate_hash``
        (a range cannot be checked against the file's hash, and no unverified byte may reach
        the consumer), nor for a local stream.
        """
        source = self.table.sources[int(self.table.shard_stream[shard])]
        return (
            self.table.shards[shard].zip is None
            and source.validate_hash is None
            and source.remote is not None
        )

    async def read_payload(self, shard: int, index: int) -> bytes | None:
        """Sample ``index`` of ``shard``'s bytes by range requests; ``None`` when not possible.

        At most :data:`RANGE_READS` run at once per fetcher (more wait their turn); the shard's
        offsets are read once, by whichever read comes first. ``None`` when
        :meth:`can_range_read` says no: the caller reads the sample from the whole shard.
        """
        if not self.can_range_read(shard):
            return None
        if self._range_slots is None:
            self._range_slots = asyncio.Semaphore(RANGE_READS)
        async with self._range_slots:
            stream = int(self.table.shard_stream[shard])
            info = self.table.shards[shard]
            offsets = await self._shared_offsets(shard)
            start, end = int(offsets[index]), int(offsets[index + 1])
            payload = await self.store(stream).read_range(payload_basename(info), start, end)
        self.counters.add("range_reads")
        return payload

    def hold(self) -> None:
        """Hold this fetcher's whole-shard downloads back until :meth:`release` (on its loop).

        A download that is not a cache hit waits, before it takes a download slot, until every
        hold is released, and at most :data:`LEAD_WAIT` seconds after the first hold of a
        stretch: a shuffled cold start's first samples come by range reads
        (:class:`~astream.engine.ranges.RangeAhead`) and then do not share the server and the
        link with every shard of the window.
        """
        self._holds += 1
        if self._held is None or self._held.is_set():
            self._held = asyncio.Event()
            self._held_until = asyncio.get_running_loop().time() + LEAD_WAIT

    def release(self) -> None:
        """Release one :meth:`hold` (on the fetcher's loop); the last one lets downloads go."""
        self._holds = max(0, self._holds - 1)
        if self._holds == 0 and self._held is not None:
            self._held.set()

    async def _shared_offsets(self, shard: int) -> NDArray[Any]:
        """The offsets of ``shard``, read once however many reads ask for them at once."""
        offsets = self._offsets.get(shard)
        if offsets is not None:
            return offsets
        pending = self._offsets_pending.get(shard)
        if pending is None:
            pending = asyncio.ensure_future(self._offsets_of(shard))
            self._offsets_pending[shard] = pending
            pending.add_done_callback(lambda _: self._offsets_pending.pop(shard, None))
        offsets = await asyncio.shield(pending)
        while len(self._offsets) > _OFFSETS_KEPT:
            self._offsets.pop(next(iter(self._offsets)))
        return offsets

    async def aclose(self) -> None:
        """Close every store this fetcher opened (on the loop that opened them)."""
        stores, self._stores = self._stores, {}
        # Keep the closed stores' retries in the counters before dropping them.
        self.counters.add("retries", sum(store.retries for store in stores.values()))
        for store in stores.values():
            await store.aclose()
