"""The prefetch window's bookkeeping for one pass over a list of sample ids, with no I/O.

:class:`WindowPlan` is computed once per iteration from the ids (numpy, off the caller's event
loop for ``async for``) and then walked by the driver in :mod:`astream.engine.prefetch`:

- **What to fetch next.** Shards are started in the order the ids first need them, a bounded
  window ahead of the consumer. Monotone pointers over the precomputed first-need positions
  advance the schedule: :meth:`WindowPlan.advance` runs only when the consumer reaches
  :attr:`WindowPlan.next_event` (a new shard's first need, or the predownload horizon reaching
  one), so the schedule costs amortised O(1) per sample, whatever the shuffle.
- **Which shards stay open.** ``next_use[k]`` is the next position that reads the same shard as
  position ``k`` (-1 after its last use). The driver closes a shard right after its last use, and
  when it must open one more than :func:`open_limit` allows, closes the open shard needed
  furthest in the future (Belady's rule: the fewest reopens for a given bound).

Bounds, each stated where it is enforced:

- shards open per consumer: :func:`open_limit` (the fd rule; and a share of ``cache_limit``);
- shards fetched ahead: ``WindowConfig.shards`` and ``WindowConfig.bytes`` (capped by the
  consumer's share of ``cache_limit``), extended to ``WindowConfig.samples`` ahead;
- cache room: :meth:`WindowConfig.min_cache_bytes`.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from astream.engine.cache import peak_bytes
from astream.engine.table import ShardTable
from astream.errors import ConfigError

__all__ = ["WindowConfig", "WindowPlan", "open_limit", "shard_footprint"]

#: Most shards one consumer keeps open when each holds a pin (one ``flock`` descriptor): a
#: quarter of the soft ``RLIMIT_NOFILE``, so that sockets, the DataLoader's pipes and the user's
#: own files keep three quarters. A mapped shard needs no descriptor of its own (the file is
#: closed once mapped), so without pins (a local dataset) only the mapping count bounds it.
_FD_SHARE = 4
#: Most shards kept mapped without pins: well under ``vm.max_map_count`` (65530 by default).
_MAX_MAPPINGS = 4096
#: At least this many open shards, whatever the fd limit says.
_MIN_OPEN = 1
#: Most shards whose numbers a plan sorts as 16-bit keys (numpy's radix sort).
_RADIX_SHARDS = 1 << 16


def open_limit(*, pinned: bool, configured: int | None = None) -> int:
    """The most shards one consumer keeps open at once (the stated fd rule).

    :param pinned: whether each open shard holds a pin (an evictable cache: one ``flock`` fd).
    :param configured: an explicit cap (``WindowConfig.open_shards``), or ``None``.
    """
    if pinned:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        limit = _MAX_MAPPINGS if soft == resource.RLIM_INFINITY else soft // _FD_SHARE
    else:
        limit = _MAX_MAPPINGS
    if configured is not None:
        limit = min(limit, configured)
    return max(_MIN_OPEN, min(limit, _MAX_MAPPINGS))


def shard_footprint(table: ShardTable) -> NDArray[np.int64]:
    """:func:`~astream.engine.cache.peak_bytes` of each shard of ``table``."""
    return np.asarray([peak_bytes(shard) for shard in table.shards], dtype=np.int64)


@dataclass(frozen=True, kw_only=True)
class WindowConfig:
    """How far ahead of the consumer shards are fetched.

    :param shards: shards fetched ahead of the one being read.
    :param bytes: bytes (as fetched: compressed sizes) ahead of the one being read.
    :param samples: also fetch every shard needed within this many samples ahead
        (mosaicml-streaming's ``predownload``), still bounded by ``bytes``.
    :param max_downloads: shards downloading at once in this process.
    :param open_shards: most shards the consumer keeps open (mapped, and pinned in an evictable
        cache); ``None`` (default): the fd rule of :func:`open_limit`. Shards are closed after
        their last use in the iteration anyway.
    :param range_reads: a shuffled cold start reads its first batch by range requests, its
        shards' downloads held back until those are in (:mod:`astream.engine.ranges`).
    """

    shards: int = 4
    bytes: int = 1 << 30
    samples: int = 0
    max_downloads: int = 4
    open_shards: int | None = None
    range_reads: bool = True

    def __post_init__(self) -> None:
        for name in ("shards", "bytes", "max_downloads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"WindowConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.open_shards is not None and self.open_shards < 1:
            raise ConfigError(f"WindowConfig.open_shards must be >= 1, got {self.open_shards}")
        if self.samples < 0:
            raise ConfigError(f"WindowConfig.samples must be >= 0, got {self.samples}")

    def consumer_bytes(self, table: ShardTable) -> int:
        """Cache bytes one consumer needs at once: the shard it reads plus ``shards`` fetched
        ahead, each counted at the largest shard's peak footprint."""
        if not table.shards:
            return 0
        return (1 + self.shards) * int(shard_footprint(table).max())

    def min_cache_bytes(self, table: ShardTable, consumers: int = 1) -> int:
        """The smallest ``cache_limit`` (shard bytes, the index not included) with which
        ``consumers`` iterating processes of one node (ranks x DataLoader workers) always make
        progress: ``consumers x (1 + shards) x`` the largest shard's footprint.

        With a limit this small each consumer keeps only the shard it reads pinned and shards it
        needs again may be evicted and fetched again; a larger limit lets it keep more open.
        """
        return max(1, consumers) * self.consumer_bytes(table)


class WindowPlan:
    """The precomputed window of one pass over ``shard_of`` (the shard of each position).

    :param shard_of: the shard each position reads, in consumption order.
    :param fetch_bytes: bytes each shard costs to fetch (indexed by shard).
    :param config: the window bounds.
    :param ahead_bytes: the byte bound ahead of the consumer (``config.bytes``, or less under a
        cache limit).
    """

    def __init__(
        self,
        shard_of: NDArray[np.int64],
        fetch_bytes: NDArray[np.int64],
        config: WindowConfig,
        *,
        ahead_bytes: int | None = None,
    ) -> None:
        n = len(shard_of)
        # One stable sort by shard gives the shards used, the first position of each and the
        # next use of every position. Radix (O(n)) where shard numbers fit 16 bits: a shuffled
        # 100k-sample pass takes about 1 ms instead of 12 (timsort plus np.unique), paid before
        # the first sample of every iteration.
        keys = shard_of.astype(np.uint16) if len(fetch_bytes) <= _RADIX_SHARDS else shard_of
        by_shard = np.argsort(keys, kind="stable")
        sorted_shards = shard_of[by_shard]
        same = sorted_shards[:-1] == sorted_shards[1:]
        starts = np.flatnonzero(np.concatenate(([True], ~same))) if n else by_shard
        uniq, first = sorted_shards[starts], by_shard[starts]
        by_need = np.argsort(first, kind="stable")
        order = uniq[by_need]
        #: Shards in the order they are first needed, and the position where each is.
        self.order: list[int] = order.tolist()
        self.first: list[int] = first[by_need].tolist()
        cum = np.zeros(len(order) + 1, dtype=np.int64)
        np.cumsum(fetch_bytes[order], out=cum[1:])
        self._cum: list[int] = cum.tolist()
        #: The next position reading the same shard as position ``k``, or -1 after its last use.
        self.next_use: NDArray[np.int64] = np.full(n, -1, dtype=np.int64)
        if n > 1:
            self.next_use[by_shard[:-1][same]] = by_shard[1:][same]
        self._shards = config.shards
        self._samples = config.samples
        self._ahead_bytes = config.bytes if ahead_bytes is None else max(1, ahead_bytes)
        self._reached = 0  # shards (in need order) first needed at or before the position
        self._ahead = 0  # shards first needed within ``samples`` after the position
        self._by_bytes = 0  # largest k with cum[k] <= cum[reached] + ahead_bytes
        self.started = 0  # shards (in need order) handed out by advance()
        #: The position at which :meth:`advance` has work again (0: at once).
        self.next_event = 0

    def advance(self, pos: int) -> list[int]:
        """Shards to start now that the consumer is at ``pos`` (each returned once).

        Call it when ``pos >= next_event``; every pointer only moves forward, so a whole pass
        costs O(shards + positions at which it is called).
        """
        first, count = self.first, len(self.first)
        r = self._reached
        while r < count and first[r] <= pos:
            r += 1
        self._reached = r
        a = max(self._ahead, r)
        if self._samples:
            horizon = pos + self._samples
            while a < count and first[a] <= horizon:
                a += 1
        self._ahead = a
        # Byte budget for the shards ahead: at least one ahead, whatever its size.
        cum, budget = self._cum, self._cum[r] + self._ahead_bytes
        b = self._by_bytes
        while b < count and cum[b + 1] <= budget:
            b += 1
        self._by_bytes = b
        limit = max(min(max(r + self._shards, a), max(b, r + 1), count), r)
        out: list[int] = []
        if limit > self.started:
            out = self.order[self.started : limit]
            self.started = limit
        event = first[r] if r < count else 1 << 62
        if self._samples and a < count:
            event = min(event, first[a] - self._samples)
        self.next_event = max(event, pos + 1)
        return out

    def depth(self) -> int:
        """Shards started ahead of the consumer."""
        return max(0, self.started - self._reached)
