"""Batching methods: how the streams' samples are grouped into global and device batches.

- ``random``: one partition over all streams' resampled samples; a batch mixes streams at random.
  Only this method lets a worker compute its own ids alone (see :mod:`astream.plan.partition`).
- ``stratified``: every global batch holds each stream's share of the global batch.
- ``per_stream``: every global batch comes from one stream; the order of streams is shuffled.
- ``device_per_stream``: every device batch comes from one stream, per node.

The last three compose whole per-stream partitions, so they build the epoch's full tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from astream.errors import PlanError
from astream.plan.config import OrderConfig
from astream.plan.partition import make_partition
from astream.plan.shuffle import shuffle_positions
from astream.plan.weights import EpochWeights, ResampledEpoch, resample
from astream.plan.world import World

__all__ = ["EpochParams", "worker_sample_ids"]

Int64Array = NDArray[np.int64]


@dataclass(frozen=True)
class EpochParams:
    """The resolved inputs of one epoch's order for one world."""

    config: OrderConfig
    weights: EpochWeights
    world: World
    canon: int
    batch: int
    block: int
    initial_nodes: int | None
    epoch: int
    sample_in_epoch: int

    @property
    def global_batch(self) -> int:
        return self.batch * self.world.world_size


def _shuffled_ids(
    params: EpochParams, res: ResampledEpoch, positions: Int64Array, block: int
) -> Int64Array:
    """Sample ids at the given positions of the shuffled epoch (``-1`` kept)."""
    cfg = params.config
    big = shuffle_positions(
        cfg.shuffle_algo,
        res.unit_sizes,
        params.canon,
        cfg.shuffle_seed,
        params.epoch,
        block,
        positions,
    )
    return res.to_sample_ids(big)


def _stream_ids(params: EpochParams, stream: int, nodes: int, batch: int) -> Int64Array:
    """One stream's full partition ``(nodes, ranks, workers, batches, batch)`` in sample ids."""
    cfg, world = params.config, params.world
    res = resample(cfg, params.weights, [stream], params.epoch)
    positions = make_partition(
        cfg.partition_algo,
        res.size,
        params.canon,
        nodes,
        world.ranks_per_node,
        world.workers_per_rank,
        batch,
        0,
        params.initial_nodes,
    ).full()
    if cfg.shuffle:
        # A stream's shuffle block is its share of the block, so the whole epoch's block
        # (and hence the cache a node needs) stays about the configured size.
        block = int(params.block * params.weights.proportion[stream])
        if block == 0:
            raise PlanError(
                f"stream {stream} gets a shuffle block of 0 samples; raise shuffle_block_size "
                f"({params.block}) or the stream's weight"
            )
        return _shuffled_ids(params, res, positions, block)
    return res.to_sample_ids(positions)


def _in_traversal_order(tensor: Int64Array) -> Int64Array:
    """Flatten a ``(nodes, ranks, workers, batches, batch)`` tensor in the order it is consumed."""
    flat: Int64Array = tensor.transpose(3, 2, 0, 1, 4).reshape(-1)
    return flat


def _full_rows(rows: Int64Array) -> int:
    """Number of rows without padding (the reference keeps that many leading rows)."""
    if rows.shape[0] == 0:
        return 0
    return int(np.count_nonzero(rows.min(axis=1) >= 0))


def _resume_batch(params: EpochParams) -> int:
    # These methods resume at a global batch boundary: a partial batch already consumed is
    # finished, not repeated.
    return params.sample_in_epoch // params.global_batch


def _worker_rows(params: EpochParams, batches: Int64Array) -> Int64Array:
    """This worker's ids from global batches ``(T, G)`` in consumption order."""
    world, batch = params.world, params.batch
    batches = batches[_resume_batch(params) :]
    # Pad with empty global batches to a whole number of rounds over the rank's workers.
    missing = -batches.shape[0] % world.workers_per_rank
    if missing:
        pad = np.full((missing, batches.shape[1]), -1, np.int64)
        batches = np.concatenate([batches, pad])
    column = world.rank * batch
    return batches[world.worker :: world.workers_per_rank, column : column + batch].reshape(-1)


def _proportional_portions(params: EpochParams) -> Int64Array:
    """Each stream's share of a global batch; rounding losses go to the largest remainders."""
    g = params.global_batch
    proportions = np.array(params.weights.proportion, np.float64)
    portions = np.array([int(p * g) for p in params.weights.proportion], np.int64)
    missing = int(g - portions.sum())
    if missing:
        remainders = g * proportions - portions
        portions[np.flip(np.argsort(remainders))[:missing]] += 1
    for stream, portion in enumerate(portions.tolist()):
        if portion <= 0:
            raise PlanError(
                f"stream {stream} gets {portion} samples of each global batch of {g}; raise "
                "the global batch size or the stream's proportion"
            )
    return portions


def _random(params: EpochParams) -> Int64Array:
    cfg, world = params.config, params.world
    res = resample(cfg, params.weights, range(len(cfg.streams)), params.epoch)
    positions = make_partition(
        cfg.partition_algo,
        res.size,
        params.canon,
        world.num_nodes,
        world.ranks_per_node,
        world.workers_per_rank,
        params.batch,
        params.sample_in_epoch,
        params.initial_nodes,
    ).worker(world.node, world.rank_in_node, world.worker)
    if cfg.shuffle:
        return _shuffled_ids(params, res, positions, params.block)
    return res.to_sample_ids(positions)


def _stratified(params: EpochParams) -> Int64Array:
    portions = _proportional_portions(params)
    parts = []
    for stream, portion in enumerate(portions.tolist()):
        # Partitioned for one node with batch 1, so the order does not depend on the world.
        order = _in_traversal_order(_stream_ids(params, stream, 1, 1))
        order = np.concatenate([order, np.full(-order.size % portion, -1, np.int64)])
        parts.append(order.reshape(-1, portion))
    usable = min(_full_rows(part) for part in parts)
    batches = np.concatenate([part[:usable] for part in parts], axis=1)
    return _worker_rows(params, batches)


def _interleave_by_origin(
    rng: np.random.Generator, rows_per_stream: list[int], rows: Int64Array
) -> Int64Array:
    """Reorder stream-ordered rows so the stream of each row follows a shuffled sequence.

    Each stream's rows keep their own order; only which stream comes next is random.
    """
    origins = np.concatenate([np.full(n, i) for i, n in enumerate(rows_per_stream)])
    rng.shuffle(origins)
    index = np.zeros(len(origins), np.int64)
    offset = 0
    for stream, n in enumerate(rows_per_stream):
        index[origins == stream] = offset + np.arange(n)
        offset += n
    return rows[index]


def _origin_rng(params: EpochParams) -> np.random.Generator:
    cfg = params.config
    changes = cfg.shuffle and cfg.sampling_method == "balanced"
    return np.random.default_rng(cfg.shuffle_seed + (params.epoch if changes else 0))


def _per_stream(params: EpochParams) -> Int64Array:
    g = params.global_batch
    counts: list[int] = []
    parts = []
    for stream in range(len(params.config.streams)):
        ids = _stream_ids(params, stream, params.world.num_nodes, params.batch)
        rows = _in_traversal_order(ids).reshape(-1, g)
        usable = _full_rows(rows)
        if usable == 0:
            raise PlanError(
                f"stream {stream} has too few samples for one global batch of {g} "
                "(batching_method='per_stream')"
            )
        counts.append(usable)
        parts.append(rows[:usable])
    batches = _interleave_by_origin(_origin_rng(params), counts, np.concatenate(parts))
    return _worker_rows(params, batches)


def _device_per_stream(params: EpochParams) -> Int64Array:
    world, batch, canon = params.world, params.batch, params.canon
    nodes = world.num_nodes
    if canon % nodes:
        raise PlanError(
            f"batching_method='device_per_stream' needs num_canonical_nodes={canon} to be a "
            f"multiple of the number of physical nodes={nodes}"
        )
    per_node = canon // nodes
    # Partitioned over the canonical nodes as if each were a physical node, so the order does
    # not depend on the world; each physical node then takes its canonical nodes' samples.
    stream_ids = [
        _stream_ids(params, stream, canon, 1) for stream in range(len(params.config.streams))
    ]
    node_rows: list[list[Int64Array]] = []
    node_counts: list[list[int]] = []
    for node in range(nodes):
        rows_of_node, counts = [], []
        for stream, ids in enumerate(stream_ids):
            order = _in_traversal_order(ids[node * per_node : (node + 1) * per_node])
            # The reference always appends padding, a whole row of it when already divisible.
            pad = batch - order.size % batch
            rows = np.concatenate([order, np.full(pad, -1, np.int64)]).reshape(-1, batch)
            usable = _full_rows(rows)
            if usable == 0:
                raise PlanError(
                    f"stream {stream} has too few samples for one device batch of {batch} "
                    "(batching_method='device_per_stream')"
                )
            rows_of_node.append(rows[:usable])
            counts.append(usable)
        node_rows.append(rows_of_node)
        node_counts.append(counts)
    devices = world.world_size
    longest = max(sum(counts) for counts in node_counts)
    longest += devices - longest % devices
    rng = _origin_rng(params)
    per_node_rows = []
    for node in range(nodes):
        ordered = _interleave_by_origin(rng, node_counts[node], np.concatenate(node_rows[node]))
        filler = np.full((longest - ordered.shape[0], batch), -1, np.int64)
        per_node_rows.append(np.concatenate([ordered, filler]))
    # Device batches interleave across nodes: node 0's first, node 1's first, ...
    batches = np.stack(per_node_rows, axis=1).reshape(-1, params.global_batch)
    return _worker_rows(params, batches)


_METHODS = {
    "random": _random,
    "stratified": _stratified,
    "per_stream": _per_stream,
    "device_per_stream": _device_per_stream,
}


def worker_sample_ids(params: EpochParams) -> Int64Array:
    """This worker's sample ids for the epoch, in yield order; ``-1`` marks padding."""
    return _METHODS[params.config.batching_method](params)
