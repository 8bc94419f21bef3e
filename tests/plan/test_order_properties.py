"""Properties of the sample order that users rely on, over many worlds and configurations."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from plan_helpers import all_worlds, global_batches

from astream.plan import EpochPlan, OrderConfig, StreamWeighting, World

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SHUFFLES = ["py1e", "py1br", "py1s", "py2s", "naive"]


def epoch_counts(plan: EpochPlan, nodes: int, ranks: int, workers: int) -> Counter[int]:
    counts: Counter[int] = Counter()
    for world in all_worlds(nodes, ranks, workers):
        ids = plan.worker_ids(world, 0, 0)
        counts.update(ids[ids >= 0].tolist())
    return counts


shard_lists = st.lists(st.integers(1, 90), min_size=1, max_size=8).map(tuple)


@st.composite
def split_of(draw: st.DrawFn, canon: int, global_batch: int) -> tuple[int, int, int, int]:
    """(nodes, ranks, workers, batch) with nodes * ranks * batch == global_batch."""
    divisors = [d for d in range(1, global_batch + 1) if global_batch % d == 0]
    nodes = draw(
        st.sampled_from([d for d in divisors if max(d, canon) % min(d, canon) == 0] or [1])
    )
    rest = global_batch // nodes
    ranks = draw(st.sampled_from([d for d in divisors if rest % d == 0]))
    return nodes, ranks, draw(st.integers(1, 3)), rest // ranks


@SETTINGS
@given(
    shards=st.lists(shard_lists, min_size=1, max_size=3),
    repeat=st.sampled_from([None, 1.0, 2.0, 3.0]),
    nodes=st.sampled_from([1, 2, 4]),
    ranks=st.integers(1, 3),
    workers=st.integers(1, 3),
    batch=st.integers(1, 5),
    canon=st.sampled_from([None, 1, 2, 4, 8]),
    shuffle=st.booleans(),
    algo=st.sampled_from(SHUFFLES),
    partition=st.sampled_from(["orig", "relaxed"]),
)
def test_every_sample_appears_as_weighted(
    shards: list[tuple[int, ...]],
    repeat: float | None,
    nodes: int,
    ranks: int,
    workers: int,
    batch: int,
    canon: int | None,
    shuffle: bool,
    algo: str,
    partition: str,
) -> None:
    if canon is not None and max(canon, nodes) % min(canon, nodes):
        canon = nodes
    streams = tuple(StreamWeighting(shard_sizes=s, repeat=repeat) for s in shards)
    cfg = OrderConfig(
        streams=streams,
        batch_size=batch,
        num_canonical_nodes=canon,
        shuffle=shuffle,
        shuffle_algo=algo,  # type: ignore[arg-type]
        partition_algo=partition,  # type: ignore[arg-type]
        shuffle_block_size=50,
    )
    plan = EpochPlan(cfg)
    resolved = plan.resolved_canonical_nodes(World(num_nodes=nodes))
    times = int(repeat or 1)
    if plan.epoch_size <= resolved * 2 * nodes:
        # Too few samples per canonical node: rows are tiled, or (with fewer canonical than
        # physical nodes) cannot be padded at all; both as in the reference, and documented.
        return
    counts = epoch_counts(plan, nodes, ranks, workers)
    assert set(counts) == set(range(plan.num_samples))
    assert all(counts[i] >= times for i in range(plan.num_samples))
    # Padding is the only repetition: short canonical rows, canonical rows padded for more
    # physical nodes, and node sequences padded to a multiple of the ranks.
    extra = sum(counts.values()) - plan.epoch_size
    assert 0 <= extra < resolved + nodes * ranks


@SETTINGS
@given(
    shards=st.lists(st.integers(20, 200), min_size=1, max_size=6).map(tuple),
    repeat=st.sampled_from([0.3, 0.75, 1.5, 2.2]),
    granularity=st.sampled_from([1, 3, 10]),
    sampling=st.sampled_from(["balanced", "fixed"]),
    epoch=st.integers(0, 5),
)
def test_fractional_repeats_draw_each_sample_floor_or_ceil_times(
    shards: tuple[int, ...], repeat: float, granularity: int, sampling: str, epoch: int
) -> None:
    stream = StreamWeighting(shard_sizes=shards, repeat=repeat)
    cfg = OrderConfig(
        streams=(stream,),
        sampling_method=sampling,  # type: ignore[arg-type]
        sampling_granularity=granularity,
        shuffle=True,
    )
    plan = EpochPlan(cfg)
    ids = plan.worker_ids(World(), epoch)
    assert plan.epoch_size == int(repeat * sum(shards)) == len(ids)
    counts = np.bincount(ids, minlength=sum(shards))
    assert counts.min() >= int(repeat) and counts.max() <= int(repeat) + 1


def test_fixed_sampling_draws_the_same_samples_each_epoch() -> None:
    stream = StreamWeighting(shard_sizes=(50, 70, 31), repeat=0.5)
    fixed = EpochPlan(OrderConfig(streams=(stream,), sampling_method="fixed", shuffle=True))
    balanced = EpochPlan(OrderConfig(streams=(stream,), shuffle=True))
    fixed_sets = {tuple(sorted(fixed.worker_ids(World(), e).tolist())) for e in range(4)}
    balanced_sets = {tuple(sorted(balanced.worker_ids(World(), e).tolist())) for e in range(4)}
    assert len(fixed_sets) == 1
    assert len(balanced_sets) > 1


def test_proportions_and_epoch_size_split_the_epoch() -> None:
    a = StreamWeighting(shard_sizes=(100, 100), proportion=3.0)
    b = StreamWeighting(shard_sizes=(10, 10, 10), proportion=1.0)
    plan = EpochPlan(OrderConfig(streams=(a, b), epoch_size="1k"))
    assert plan.epoch_size == 1000
    assert plan.samples_per_stream == (750, 250)
    ids = plan.worker_ids(World(), 0)
    assert np.count_nonzero(ids < 200) == 750
    assert np.count_nonzero(ids >= 200) == 250
    # Without weights an epoch size splits by stream size.
    plain = EpochPlan(
        OrderConfig(
            streams=(StreamWeighting(shard_sizes=(300,)), StreamWeighting(shard_sizes=(100,))),
            epoch_size=200,
        )
    )
    assert plain.samples_per_stream == (150, 50)


@SETTINGS
@given(
    data=st.data(),
    canon=st.sampled_from([1, 2, 4, 8]),
    global_batch=st.sampled_from([4, 8, 12, 16, 24]),
    shards=st.lists(st.integers(30, 150), min_size=2, max_size=10).map(tuple),
    shuffle=st.booleans(),
    algo=st.sampled_from(SHUFFLES),
    partition=st.sampled_from(["orig", "relaxed"]),
    epoch=st.integers(0, 3),
)
def test_global_batches_do_not_depend_on_the_split_of_the_world(
    data: st.DataObject,
    canon: int,
    global_batch: int,
    shards: tuple[int, ...],
    shuffle: bool,
    algo: str,
    partition: str,
    epoch: int,
) -> None:
    cfg = OrderConfig(
        streams=(StreamWeighting(shard_sizes=shards),),
        num_canonical_nodes=canon,
        shuffle=shuffle,
        shuffle_algo=algo,  # type: ignore[arg-type]
        partition_algo=partition,  # type: ignore[arg-type]
        shuffle_block_size=64,
    )
    results = []
    for _ in range(3):
        nodes, ranks, workers, batch = data.draw(split_of(canon, global_batch))
        plan = EpochPlan(replace(cfg, batch_size=batch))
        results.append(global_batches(plan, nodes, ranks, workers, batch, epoch, 0))
    # Padding sits at the end of the epoch; every batch before it is the same set of samples.
    n = sum(shards)
    full = max(0, (n - canon) // global_batch - 1)
    for other in results[1:]:
        assert other[:full] == results[0][:full]


@SETTINGS
@given(
    data=st.data(),
    canon=st.sampled_from([2, 4, 6, 8]),
    global_batch=st.sampled_from([8, 12, 24]),
    shards=st.lists(st.integers(30, 150), min_size=2, max_size=10).map(tuple),
    shuffle=st.booleans(),
    algo=st.sampled_from(SHUFFLES),
    stop=st.integers(0, 10),
)
def test_resume_continues_the_uninterrupted_epoch(
    data: st.DataObject,
    canon: int,
    global_batch: int,
    shards: tuple[int, ...],
    shuffle: bool,
    algo: str,
    stop: int,
) -> None:
    cfg = OrderConfig(
        streams=(StreamWeighting(shard_sizes=shards),),
        num_canonical_nodes=canon,
        shuffle=shuffle,
        shuffle_algo=algo,  # type: ignore[arg-type]
        shuffle_block_size=64,
    )
    nodes, ranks, workers, batch = data.draw(split_of(canon, global_batch))
    first = EpochPlan(replace(cfg, batch_size=batch))
    world = World(num_nodes=nodes, ranks_per_node=ranks, workers_per_rank=workers)
    uninterrupted = global_batches(first, nodes, ranks, workers, batch, 1, 0)
    stop = min(stop, sum(shards) // global_batch)
    at = stop * global_batch
    state = EpochPlan.parse_state(first.state_dict(1, at, world))
    # The resumed run may have any node count (relaxed re-deals the first world's partition
    # when it does not divide the canonical count), any ranks and workers, same global batch.
    divisors = [d for d in range(1, global_batch + 1) if global_batch % d == 0]
    nodes2 = data.draw(st.sampled_from(divisors))
    ranks2 = data.draw(
        st.sampled_from(
            [
                d
                for d in divisors
                if (global_batch // nodes2) % d == 0 and global_batch % (nodes * d) == 0
            ]
        )
    )
    workers2 = data.draw(st.integers(1, 3))
    batch2 = global_batch // (nodes2 * ranks2)
    resumed_cfg = replace(cfg, batch_size=batch2)
    resumed = EpochPlan(resumed_cfg).resumed(state)
    after = global_batches(resumed, nodes2, ranks2, workers2, batch2, state.epoch, at)
    full = max(0, (sum(shards) - canon) // global_batch - 1 - stop)
    assert after[:full] == uninterrupted[stop : stop + full]


def test_resumed_worker_ids_are_the_tail_of_the_uninterrupted_ones() -> None:
    cfg = OrderConfig(
        streams=(StreamWeighting(shard_sizes=(400, 300, 333)),), batch_size=4, shuffle=True
    )
    plan = EpochPlan(cfg)
    for world in all_worlds(2, 2, 2):
        whole = plan.worker_ids(world, 2, 0)
        # After 12 global batches of 16, each rank has taken 12 device batches of 4, six from
        # each of its two workers: every worker goes on from its 25th id.
        tail = plan.worker_ids(world, 2, 12 * 16)
        np.testing.assert_array_equal(tail[tail >= 0], whole[24:][whole[24:] >= 0])
