"""astream's per-worker sample ids equal mosaicml-streaming 0.13's for the same parameters.

The reference is driven through its own epoch generation: ``Stream.apply_weights`` resolves the
stream weights, ``StreamingDataset.resample_streams`` lays out the weighted epoch and
``streaming.base.batching.generate_work`` builds the (nodes, ranks, workers, batches, batch)
tensor. The dataset object carries only the attributes those methods read (shard sizes, streams,
order settings), so no shard files, shared memory or locks are involved.
"""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from astream.plan import EpochPlan, OrderConfig, StreamWeighting, World

pytestmark = pytest.mark.interop

streaming = pytest.importorskip("streaming")

from streaming.base.batching import generate_work  # noqa: E402
from streaming.base.dataset import StreamingDataset  # noqa: E402
from streaming.base.stream import Stream  # noqa: E402
from streaming.base.world import World as RefWorld  # noqa: E402


@dataclass(frozen=True)
class Shape:
    """A world: nodes x ranks per node x workers per rank, with a per-device batch size."""

    nodes: int
    ranks: int
    workers: int
    batch: int


def _reference_dataset(cfg: OrderConfig, nodes: int, initial: int | None) -> Any:
    streams = [
        Stream(
            local=f"/nonexistent/stream{i}",
            proportion=s.proportion,
            repeat=s.repeat,
            choose=s.choose,
        )
        for i, s in enumerate(cfg.streams)
    ]
    sizes = [np.array(s.shard_sizes, np.int64) for s in cfg.streams]
    ds = object.__new__(StreamingDataset)
    ds.streams = streams
    ds.num_streams = len(streams)
    ds.shards_per_stream = np.array([len(s) for s in sizes], np.int64)
    ds.shard_offset_per_stream = np.cumsum(ds.shards_per_stream) - ds.shards_per_stream
    ds.samples_per_shard = np.concatenate(sizes)
    ds.sample_offset_per_shard = ds.samples_per_shard.cumsum() - ds.samples_per_shard
    ds.sampling_method = cfg.sampling_method
    ds.sampling_granularity = cfg.sampling_granularity
    ds.partition_algo = cfg.partition_algo
    ds.batch_size = cfg.batch_size or 1
    ds.shuffle = cfg.shuffle
    ds.shuffle_algo = cfg.shuffle_algo
    ds.shuffle_seed = cfg.shuffle_seed
    ds.shuffle_block_size = cfg.shuffle_block_size
    ds.batching_method = cfg.batching_method
    ds.epoch_seed_change = cfg.shuffle and cfg.sampling_method == "balanced"
    ds.initial_physical_nodes = initial
    # StreamingDataset._resume's defaults for a first launch.
    canon = cfg.num_canonical_nodes
    if canon is None:
        canon = 64 * nodes if cfg.shuffle_algo in ("py1s", "py2s") else nodes
    ds.num_canonical_nodes = canon
    ds._set_shuffle_block_size(RefWorld(nodes, 1, 1, 0))
    samples_per_stream = np.array([s.sum() for s in sizes], np.int64)
    ds.epoch_size = Stream.apply_weights(
        streams, samples_per_stream, cfg.epoch_size_value or None, cfg.shuffle_seed
    )
    return ds


def _assert_same(
    cfg: OrderConfig,
    shape: Shape,
    *,
    epoch: int = 0,
    sample_in_epoch: int = 0,
    initial: int | None = None,
) -> None:
    cfg_b = OrderConfig(**{**_fields(cfg), "batch_size": shape.batch})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = _reference_dataset(cfg_b, shape.nodes, initial)
        ref_world = RefWorld(shape.nodes, shape.ranks, shape.workers, 0)
        expected = generate_work(cfg.batching_method, ds, ref_world, epoch, sample_in_epoch)
    plan = EpochPlan(cfg_b, initial_physical_nodes=initial)
    assert plan.epoch_size == ds.epoch_size
    for node in range(shape.nodes):
        for rank in range(shape.ranks):
            for worker in range(shape.workers):
                world = World(
                    num_nodes=shape.nodes,
                    ranks_per_node=shape.ranks,
                    node=node,
                    rank_in_node=rank,
                    workers_per_rank=shape.workers,
                    worker=worker,
                )
                got = plan.worker_ids(world, epoch, sample_in_epoch)
                want = expected[node, rank, worker].reshape(-1)
                np.testing.assert_array_equal(
                    got, want, err_msg=f"{cfg_b} {world} epoch={epoch} at={sample_in_epoch}"
                )


def _fields(cfg: OrderConfig) -> dict[str, Any]:
    return {
        name: getattr(cfg, name)
        for name in (
            "streams",
            "epoch_size",
            "sampling_method",
            "sampling_granularity",
            "partition_algo",
            "num_canonical_nodes",
            "shuffle",
            "shuffle_algo",
            "shuffle_seed",
            "shuffle_block_size",
            "batching_method",
        )
    }


ONE = (StreamWeighting(shard_sizes=(100, 100, 37, 80, 64, 91)),)
TWO = (
    StreamWeighting(shard_sizes=(100, 100, 37, 80)),
    StreamWeighting(shard_sizes=(50, 64, 19, 77, 33)),
)
WORLDS = [
    Shape(1, 1, 1, 1),
    Shape(1, 1, 1, 4),
    Shape(2, 2, 2, 4),
    Shape(4, 1, 3, 2),
    Shape(1, 8, 2, 1),
    Shape(8, 1, 1, 3),
]


@pytest.mark.parametrize("algo", ["orig", "relaxed"])
@pytest.mark.parametrize("canon", [None, 1, 8])
@pytest.mark.parametrize("shape", WORLDS, ids=str)
@pytest.mark.parametrize("at", [0, 37, 128])
def test_partitions_without_shuffle(algo: str, canon: int | None, shape: Shape, at: int) -> None:
    if canon is not None and max(canon, shape.nodes) % min(canon, shape.nodes):
        pytest.skip("canonical and physical nodes do not divide one another")
    cfg = OrderConfig(streams=ONE, partition_algo=algo, num_canonical_nodes=canon)  # type: ignore[arg-type]
    _assert_same(cfg, shape, sample_in_epoch=at)


@pytest.mark.parametrize("shuffle_algo", ["naive", "py1s", "py2s", "py1br", "py1e"])
@pytest.mark.parametrize("shape", WORLDS[1:], ids=str)
@pytest.mark.parametrize("block", [None, 60, 301])
def test_shuffles(shuffle_algo: str, shape: Shape, block: int | None) -> None:
    canon = 8 if shuffle_algo in ("py1s", "py2s") else None
    cfg = OrderConfig(
        streams=TWO,
        shuffle=True,
        shuffle_algo=shuffle_algo,  # type: ignore[arg-type]
        num_canonical_nodes=canon,
        shuffle_block_size=block,
        shuffle_seed=1234,
    )
    _assert_same(cfg, shape, epoch=3, sample_in_epoch=40)


@pytest.mark.parametrize(
    ("canon", "initial", "now"),
    [
        # Node counts that do not divide the canonical count, so relaxed re-deals the first
        # world's partition; and ones that do, where it falls back to orig.
        (6, Shape(2, 2, 2, 6), Shape(4, 2, 2, 3)),
        (6, Shape(3, 1, 2, 4), Shape(4, 1, 2, 3)),
        (4, Shape(4, 1, 1, 3), Shape(3, 1, 1, 4)),
        (8, Shape(2, 1, 2, 6), Shape(4, 1, 2, 3)),
    ],
    ids=str,
)
@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("at", [0, 24, 100])
def test_relaxed_with_changed_world(
    canon: int, initial: Shape, now: Shape, shuffle: bool, at: int
) -> None:
    cfg = OrderConfig(streams=TWO, num_canonical_nodes=canon, shuffle=shuffle)
    _assert_same(cfg, now, sample_in_epoch=at, initial=initial.nodes)


WEIGHTED = [
    (
        StreamWeighting(shard_sizes=(100, 100, 37, 80), proportion=0.7),
        StreamWeighting(shard_sizes=(50, 64, 19, 77, 33), proportion=0.3),
    ),
    (
        StreamWeighting(shard_sizes=(100, 100, 37, 80), repeat=1.5),
        StreamWeighting(shard_sizes=(50, 64, 19, 77, 33), repeat=0.4),
    ),
    (
        StreamWeighting(shard_sizes=(100, 100, 37, 80), choose=123),
        StreamWeighting(shard_sizes=(50, 64, 19, 77, 33), choose=500),
    ),
    TWO,
]


@pytest.mark.parametrize("streams", WEIGHTED, ids=["proportion", "repeat", "choose", "none"])
@pytest.mark.parametrize("epoch_size", [None, "1k"])
@pytest.mark.parametrize("sampling", ["balanced", "fixed"])
@pytest.mark.parametrize("granularity", [1, 7])
@pytest.mark.parametrize("shuffle", [False, True])
def test_weights(
    streams: tuple[StreamWeighting, ...],
    epoch_size: str | None,
    sampling: str,
    granularity: int,
    shuffle: bool,
) -> None:
    if epoch_size and any(s.repeat is not None or s.choose is not None for s in streams):
        pytest.skip("epoch_size needs relative or no weights")
    cfg = OrderConfig(
        streams=streams,
        epoch_size=epoch_size,
        sampling_method=sampling,  # type: ignore[arg-type]
        sampling_granularity=granularity,
        shuffle=shuffle,
    )
    for epoch in (0, 1):
        _assert_same(cfg, Shape(2, 2, 2, 4), epoch=epoch, sample_in_epoch=16 * epoch)


BIG = (
    StreamWeighting(shard_sizes=(300, 250, 137, 280), proportion=0.6),
    StreamWeighting(shard_sizes=(150, 164, 119, 177, 133), proportion=0.4),
)


@pytest.mark.parametrize("method", ["stratified", "per_stream", "device_per_stream"])
@pytest.mark.parametrize(
    "shape", [Shape(1, 1, 1, 8), Shape(2, 2, 2, 4), Shape(4, 1, 3, 5)], ids=str
)
@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("at", [0, 80, 95])
def test_batching_methods(method: str, shape: Shape, shuffle: bool, at: int) -> None:
    cfg = OrderConfig(
        streams=BIG,
        batching_method=method,  # type: ignore[arg-type]
        shuffle=shuffle,
        num_canonical_nodes=4,
        shuffle_block_size=400,
    )
    for epoch in (0, 2):
        _assert_same(cfg, shape, epoch=epoch, sample_in_epoch=at)


def test_random_configurations() -> None:
    """A seeded sweep over random combinations of every parameter."""
    rnd = random.Random(20240611)
    checked = 0
    while checked < 60:
        nodes = rnd.choice([1, 2, 3, 4])
        shape = Shape(nodes, rnd.choice([1, 2, 3]), rnd.choice([1, 2, 3]), rnd.choice([1, 2, 5]))
        canon = rnd.choice([None, nodes, 2 * nodes, 12])
        algo = rnd.choice(["py1e", "py1br", "py1s", "py2s", "naive"])
        streams = tuple(
            StreamWeighting(
                shard_sizes=tuple(rnd.randint(1, 120) for _ in range(rnd.randint(1, 6))),
                repeat=rnd.choice([None, 0.5, 1.0, 2.3]),
            )
            for _ in range(rnd.randint(1, 3))
        )
        cfg = OrderConfig(
            streams=streams,
            partition_algo=rnd.choice(["orig", "relaxed"]),
            num_canonical_nodes=canon,
            shuffle=rnd.random() < 0.8,
            shuffle_algo=algo,
            shuffle_seed=rnd.randint(0, 99999),
            shuffle_block_size=rnd.choice([None, 20, 200]),
            sampling_method=rnd.choice(["balanced", "fixed"]),
            sampling_granularity=rnd.choice([1, 4]),
        )
        if canon is not None and max(canon, nodes) % min(canon, nodes):
            continue
        total = sum(sum(s.shard_sizes) for s in streams)
        _assert_same(
            cfg, shape, epoch=rnd.randint(0, 5), sample_in_epoch=rnd.randint(0, total // 2)
        )
        checked += 1


@pytest.mark.parametrize("shuffle_algo", ["naive", "py1s", "py2s", "py1br", "py1e"])
@pytest.mark.parametrize("weights", [{}, {"repeat": 1.5}, {"choose": 7}, {"repeat": 0.4}], ids=str)
@pytest.mark.parametrize("sampling_method", ["balanced", "fixed"])
def test_empty_shards_take_part_as_in_the_reference(
    shuffle_algo: str, weights: dict[str, Any], sampling_method: str
) -> None:
    # A writer leaves an empty shard when one sample alone exceeds its size limit; such shards
    # are in the index, and the reference's shard shuffles draw them like any other.
    cfg = OrderConfig(
        streams=(
            StreamWeighting(shard_sizes=(5, 0, 7, 3, 0, 9), **weights),
            StreamWeighting(shard_sizes=(0, 3, 6)),
        ),
        shuffle=True,
        shuffle_algo=shuffle_algo,  # type: ignore[arg-type]
        sampling_method=sampling_method,  # type: ignore[arg-type]
        num_canonical_nodes=4 if shuffle_algo in ("py1s", "py2s") else None,
        shuffle_seed=77,
    )
    for shape in (Shape(1, 1, 1, 2), Shape(2, 2, 2, 1)):
        _assert_same(cfg, shape, epoch=1)
