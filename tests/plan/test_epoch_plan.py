"""EpochPlan's public face: configuration checks, state dicts, pickling, batching methods."""

from __future__ import annotations

import pickle
from collections import Counter

import numpy as np
import pytest
from plan_helpers import all_worlds, global_batches

from astream.errors import PlanError
from astream.plan import EpochPlan, OrderConfig, PlanState, StreamWeighting, World

A = StreamWeighting(shard_sizes=(100, 100, 37))
B = StreamWeighting(shard_sizes=(60, 90))


def test_single_process_without_shuffle_yields_every_sample_in_order() -> None:
    plan = EpochPlan(OrderConfig(streams=(A, B)))
    assert plan.num_samples == plan.epoch_size == 387
    np.testing.assert_array_equal(plan.worker_ids(World()), np.arange(387))


def test_plan_pickles_and_gives_the_same_ids() -> None:
    plan = EpochPlan(OrderConfig(streams=(A, B), shuffle=True, batch_size=4))
    world = World(num_nodes=2, node=1, workers_per_rank=2, worker=1)
    clone = pickle.loads(pickle.dumps(plan))
    np.testing.assert_array_equal(clone.worker_ids(world, 3, 8), plan.worker_ids(world, 3, 8))


def test_epochs_differ_when_shuffling_and_repeat_for_the_same_epoch() -> None:
    plan = EpochPlan(OrderConfig(streams=(A,), shuffle=True))
    first = plan.worker_ids(World(), 0)
    assert not np.array_equal(first, plan.worker_ids(World(), 1))
    np.testing.assert_array_equal(first, plan.worker_ids(World(), 0))
    assert sorted(first.tolist()) == list(range(237))


def test_state_dict_round_trip_and_resume() -> None:
    cfg = OrderConfig(streams=(A, B), shuffle=True, batch_size=2)
    plan = EpochPlan(cfg)
    world = World(num_nodes=2, ranks_per_node=2)
    state = plan.state_dict(4, 40, world)
    assert state == {
        "epoch": 4,
        "sample_in_epoch": 40,
        "num_canonical_nodes": 2,
        "shuffle_seed": 9176,
        "initial_physical_nodes": 2,
    }
    parsed = EpochPlan.parse_state(state)
    assert parsed == PlanState(
        epoch=4,
        sample_in_epoch=40,
        num_canonical_nodes=2,
        shuffle_seed=9176,
        initial_physical_nodes=2,
    )
    # Resumed on one node, the canonical node count and first world come from the state.
    resumed = EpochPlan(OrderConfig(streams=(A, B), shuffle=True, batch_size=8)).resumed(parsed)
    assert resumed.resolved_canonical_nodes(World()) == 2
    assert resumed.initial_physical_nodes == 2
    assert resumed.state_dict(4, 48, World())["initial_physical_nodes"] == 2


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"epoch": 0}, "missing"),
        ({"epoch": -1, "sample_in_epoch": 0, "num_canonical_nodes": 1, "shuffle_seed": 1}, "epoch"),
        (
            {"epoch": 0, "sample_in_epoch": 0, "num_canonical_nodes": 0, "shuffle_seed": 1},
            "canonical",
        ),
        ("nope", "mapping"),
    ],
)
def test_bad_states_are_refused(state: object, message: str) -> None:
    with pytest.raises(PlanError, match=message):
        EpochPlan.parse_state(state)  # type: ignore[arg-type]


def test_state_without_initial_nodes_is_accepted() -> None:
    state = {"epoch": 1, "sample_in_epoch": 0, "num_canonical_nodes": 3, "shuffle_seed": 5}
    assert EpochPlan.parse_state(state).initial_physical_nodes is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"streams": ()}, "at least one stream"),
        ({"streams": (StreamWeighting(shard_sizes=(3,), proportion=1.0), A)}, "mixed"),
        (
            {"streams": (StreamWeighting(shard_sizes=(3,), repeat=2.0),), "epoch_size": 5},
            "epoch_size",
        ),
        ({"streams": (A,), "epoch_size": "12q"}, "epoch_size"),
        ({"streams": (A,), "shuffle_algo": "py9"}, "shuffle_algo"),
        ({"streams": (A,), "partition_algo": "new"}, "partition_algo"),
        ({"streams": (A,), "batching_method": "x"}, "batching_method"),
        ({"streams": (A,), "sampling_method": "x"}, "sampling_method"),
        ({"streams": (A,), "sampling_granularity": 0}, "sampling_granularity"),
        ({"streams": (A,), "batch_size": 0}, "batch_size"),
        ({"streams": (A,), "shuffle_seed": -1}, "shuffle_seed"),
        ({"streams": (A,), "num_canonical_nodes": 0}, "num_canonical_nodes"),
    ],
)
def test_bad_configs_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(PlanError, match=message):
        OrderConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shard_sizes": ()}, "at least one shard"),
        ({"shard_sizes": (3, -1)}, r"shard_sizes\[1\]"),
        ({"shard_sizes": (0, 0)}, "every shard is empty"),
        ({"shard_sizes": (3,), "repeat": 1.0, "choose": 3}, "at most one"),
        ({"shard_sizes": (3,), "proportion": -1.0}, "proportion"),
    ],
)
def test_bad_streams_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(PlanError, match=message):
        StreamWeighting(**kwargs)  # type: ignore[arg-type]


def test_resuming_past_the_end_is_an_error() -> None:
    plan = EpochPlan(OrderConfig(streams=(A,)))
    with pytest.raises(PlanError, match="resume"):
        plan.worker_ids(World(), 0, 10_000)


def test_orig_needs_divisible_node_counts() -> None:
    plan = EpochPlan(OrderConfig(streams=(A,), partition_algo="orig", num_canonical_nodes=4))
    with pytest.raises(PlanError, match="divide"):
        plan.worker_ids(World(num_nodes=3), 0)


def test_default_canonical_nodes_and_block_size() -> None:
    world = World(num_nodes=4)
    assert EpochPlan(OrderConfig(streams=(A,))).resolved_canonical_nodes(world) == 4
    py1s = EpochPlan(OrderConfig(streams=(A,), shuffle_algo="py1s"))
    assert py1s.resolved_canonical_nodes(world) == 256
    assert py1s.resolved_shuffle_block_size(world) == 262_144
    small = EpochPlan(OrderConfig(streams=(A,), num_canonical_nodes=2))
    assert small.resolved_shuffle_block_size(world) == 2_000_000


BIG_A = StreamWeighting(shard_sizes=(300, 250, 137), proportion=3.0)
BIG_B = StreamWeighting(shard_sizes=(150, 164, 119), proportion=1.0)
SPLIT = 687  # first sample id of stream B


@pytest.mark.parametrize("shuffle", [False, True])
def test_stratified_batches_hold_each_streams_share(shuffle: bool) -> None:
    cfg = OrderConfig(
        streams=(BIG_A, BIG_B), batching_method="stratified", batch_size=4, shuffle=shuffle
    )
    for batch in global_batches(EpochPlan(cfg), 2, 2, 2, 4):
        stream_b = sum(i >= SPLIT for i in batch)
        assert (len(batch) - stream_b, stream_b) == (12, 4)


def stream_plan(method: str) -> EpochPlan:
    """Two weighted streams, batch 4, shuffled, two canonical nodes."""
    cfg = OrderConfig(
        streams=(BIG_A, BIG_B),
        batching_method=method,  # type: ignore[arg-type]
        batch_size=4,
        shuffle=True,
        num_canonical_nodes=2,
    )
    return EpochPlan(cfg)


@pytest.mark.parametrize("method", ["per_stream", "device_per_stream"])
def test_per_stream_batches_come_from_one_stream(method: str) -> None:
    plan = stream_plan(method)
    batches = global_batches(plan, 2, 2, 2, 4)
    assert len(batches) > 10
    if method == "per_stream":
        for batch in batches:
            assert len({i >= SPLIT for i in batch}) == 1
    else:
        for world in all_worlds(2, 2, 2):
            ids = plan.worker_ids(world)
            for device_batch in ids.reshape(-1, 4):
                real = device_batch[device_batch >= 0]
                assert len({i >= SPLIT for i in real.tolist()}) <= 1
    # Whole batches only: each stream gives at most its weighted share of the epoch.
    seen = Counter(i >= SPLIT for batch in batches for i in batch)
    assert seen[False] <= plan.samples_per_stream[0]
    assert seen[True] <= plan.samples_per_stream[1]
    assert seen[False] + seen[True] > plan.epoch_size // 2


@pytest.mark.parametrize("method", ["stratified", "per_stream", "device_per_stream"])
def test_batching_methods_resume_at_global_batch_boundaries(method: str) -> None:
    plan = stream_plan(method)
    for world in all_worlds(2, 2, 2):
        whole = plan.worker_ids(world, 1, 0)
        # Six global batches of 16 done (and 5 samples into the seventh, which is finished):
        # three rounds of each rank's two workers.
        tail = plan.worker_ids(world, 1, 6 * 16 + 5)
        np.testing.assert_array_equal(tail[tail >= 0], whole[12:][whole[12:] >= 0])
