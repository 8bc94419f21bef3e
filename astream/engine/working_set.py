"""Whether a shuffle's working set fits the node's cache, and what would make it fit.

A shard is *live* on a node from the first to the last time the node's order reads it: evicting
it in between means downloading it again. The peak, over the epoch, of the bytes of live shards
is the least cache that lets an epoch download each shard once, whatever the eviction policy;
the prefetch window of every process on the node comes on top. With a shuffle whose blocks span
many shards, that peak can be far above ``cache_limit``, and an LRU cache then evicts shards
just before they are needed again: a run downloads the dataset many times over (issue 13 saw 48x
to 272x), silently, at a cloud bucket's egress price.

:func:`check_cache_plan` computes the peak from the plan itself (node 0's order of epoch 0) at
construction, and names a ``cache_limit`` and a ``shuffle_block_size`` that would fit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from astream.engine.table import ShardTable
from astream.plan import EpochPlan, OrderConfig, World

__all__ = ["CachePlan", "check_cache_plan", "format_bytes", "live_peak"]

# Shuffles whose working set follows shuffle_block_size; the others (py1s, py2s, naive) span a
# whole canonical node (or the dataset) at once.
_BLOCK_ALGOS = ("py1br", "py1e")
# How many smaller block sizes to try before giving up on suggesting one.
_BLOCK_TRIES = 5


def format_bytes(n: float) -> str:
    """``n`` bytes for a message: ``"1.5 GB"``, ``"300 MB"`` (decimal units, as parse_bytes)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


def live_peak(shards: NDArray[np.int64], shard_bytes: NDArray[np.int64]) -> NDArray[np.int64]:
    """The peak bytes of live shards over a sequence of shard reads, per group of columns.

    :param shards: the shard of each read, in order.
    :param shard_bytes: ``(num_shards, groups)`` bytes each shard takes in each group's cache
        (one column per stream: a shard's bytes in its own stream's column, 0 elsewhere).
    :returns: one peak per group.
    """
    groups = shard_bytes.shape[1]
    n = len(shards)
    if n == 0:
        return np.zeros(groups, dtype=np.int64)
    used, first = np.unique(shards, return_index=True)
    _, from_end = np.unique(shards[::-1], return_index=True)
    last = n - 1 - from_end
    delta = np.zeros((n + 1, groups), dtype=np.int64)
    np.add.at(delta, first, shard_bytes[used])
    np.subtract.at(delta, last + 1, shard_bytes[used])
    peaks: NDArray[np.int64] = np.cumsum(delta[:n], axis=0).max(axis=0).astype(np.int64)
    return peaks


@dataclass(frozen=True, kw_only=True)
class CachePlan:
    """What :func:`check_cache_plan` found (all per node; bytes as the cache holds them).

    :param live: the peak bytes of live shards of node 0's order, per stream.
    :param window: the prefetch windows of the node's processes, per stream.
    :param limits: each stream's share of ``cache_limit``.
    :param cache_limit: a ``cache_limit`` that would fit.
    :param block_size: a ``shuffle_block_size`` that would fit this ``cache_limit``, if one was
        found (with :attr:`algo`).
    :param algo: the shuffle algorithm :attr:`block_size` is for.
    :param message: the warning, or ``""`` when the working set fits.
    """

    live: tuple[int, ...]
    window: tuple[int, ...]
    limits: tuple[int, ...]
    cache_limit: int
    block_size: int | None = None
    algo: str | None = None
    message: str = ""

    @property
    def fits(self) -> bool:
        return not self.message


def _node_order(plan: EpochPlan, world: World) -> NDArray[np.int64]:
    """Node 0's sample ids of epoch 0, in the order the node's processes read them."""
    node = World(num_nodes=world.num_nodes, ranks_per_node=1)
    ids = plan.worker_ids(node, 0, 0)
    return ids[ids >= 0]


def check_cache_plan(
    table: ShardTable,
    config: OrderConfig,
    world: World,
    *,
    cache_limit: int,
    window_bytes: int,
    window_shards: int,
) -> CachePlan:
    """Compare the shuffle's working set per node with ``cache_limit`` (see the module doc).

    :param window_bytes: bytes one process's prefetch window may hold, and
    :param window_shards: shards it may hold; counted once per rank of the node (DataLoader
        workers are not known at construction: each adds its own).
    """
    streams = len(table.sources)
    raw = np.zeros((len(table.shards), streams), dtype=np.int64)
    for k, shard in enumerate(table.shards):
        stream = int(table.shard_stream[k])
        keep = shard.zip is not None and (
            table.sources[stream].keep_zip or table.sources[stream].remote is None
        )
        raw[k, stream] = shard.raw.bytes + (shard.zip.bytes if shard.zip and keep else 0)
    totals = raw.sum(axis=0)
    whole = int(totals.sum()) or 1
    remote = np.asarray([s.remote is not None for s in table.sources])
    # Each stream's share of the limit, as make_caches splits it.
    limits = np.maximum(1, cache_limit * totals // whole)
    largest = raw.max(axis=0)
    window = np.minimum(window_bytes, window_shards * largest) * world.ranks_per_node

    def peak(cfg: OrderConfig) -> NDArray[np.int64]:
        shards, _ = table.locate(_node_order(EpochPlan(cfg), world))
        return live_peak(shards, raw)

    def fits(live: NDArray[np.int64]) -> bool:
        return bool(np.all(~remote | (live + window <= limits)))

    live = peak(config)
    need = live + window
    # The dataset-wide limit at which every remote stream's share holds its working set.
    wanted = max(
        (
            int(-(-int(need[s]) * whole // max(int(totals[s]), 1)))
            for s in range(streams)
            if remote[s]
        ),
        default=0,
    )
    # The whole dataset in cache holds any working set (the window reads the same shards).
    wanted = min(wanted, whole)
    result = CachePlan(
        live=tuple(int(v) for v in live),
        window=tuple(int(v) for v in window),
        limits=tuple(int(v) for v in limits),
        cache_limit=wanted,
    )
    if fits(live):
        return result
    plan = EpochPlan(config)
    block = plan.resolved_shuffle_block_size(world)
    algo = config.shuffle_algo if config.shuffle_algo in _BLOCK_ALGOS else "py1e"
    room = (limits - window)[remote]
    suggestion: int | None = None
    # A block smaller than a shard leaves that shard unshuffled with the others: not offered.
    smallest_block = max(shard.samples for shard in table.shards)
    if np.all(room > largest[remote]):
        # The working set grows about linearly with the block: start from the ratio, then halve.
        ratio = float(np.min(room / np.maximum(live[remote], 1)))
        candidate = int(block * min(ratio, 1.0) * 0.8)
        for _ in range(_BLOCK_TRIES):
            if candidate < smallest_block:
                break
            if fits(peak(replace(config, shuffle_algo=algo, shuffle_block_size=candidate))):
                suggestion = candidate
                break
            candidate //= 2
    worst = int(np.argmax(np.where(remote, need - limits, np.iinfo(np.int64).min)))
    where = f" (stream {worst})" if streams > 1 else ""
    shuffle = f"shuffle_algo={config.shuffle_algo!r}"
    if config.shuffle_algo in _BLOCK_ALGOS:
        shuffle += f", shuffle_block_size={block}"
    message = (
        f"cache_limit={format_bytes(cache_limit)} cannot hold this shuffle's working set: node 0"
        f" reads from {format_bytes(int(live[worst]))} of shards at once{where} ({shuffle}),"
        f" plus {format_bytes(int(window[worst]))} of prefetch window for"
        f" {world.ranks_per_node} rank(s), against {format_bytes(int(limits[worst]))} of"
        " cache; shards would be evicted before their last use and downloaded again, possibly"
        f" many times per epoch. Use cache_limit >= {format_bytes(wanted)}"
    )
    if suggestion is not None:
        message += f", or shuffle_block_size={suggestion}"
        if algo != config.shuffle_algo:
            message += f" with shuffle_algo={algo!r}"
    message += (
        " (DataLoader workers each add a prefetch window; statistics() reports bytes fetched"
        " against the dataset's size)."
    )
    return replace(result, block_size=suggestion, algo=algo, message=message)
