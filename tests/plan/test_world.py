"""World detection from the environment, torch.distributed and DataLoader workers."""

from __future__ import annotations

import pickle
import socket
from collections.abc import Iterator

import pytest

from astream.errors import WorldError
from astream.plan import World, detect_world


def test_world_derives_global_rank_and_worker() -> None:
    world = World(
        num_nodes=2, ranks_per_node=4, node=1, rank_in_node=2, workers_per_rank=3, worker=1
    )
    assert world.rank == 6
    assert world.world_size == 8
    assert world.num_workers == 24
    assert world.worker_id == 19
    assert pickle.loads(pickle.dumps(world)) == world
    assert world.with_workers(2, 0).worker_id == 12


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"num_nodes": 0}, "num_nodes"),
        ({"node": 1}, "node"),
        ({"ranks_per_node": 2, "rank_in_node": 2}, "rank_in_node"),
        ({"workers_per_rank": 2, "worker": -1}, "worker"),
    ],
)
def test_world_rejects_impossible_places(kwargs: dict[str, int], name: str) -> None:
    with pytest.raises(WorldError, match=name):
        World(**kwargs)


def test_no_environment_is_a_single_process() -> None:
    assert detect_world({}) == World()


def test_environment_gives_nodes_and_ranks() -> None:
    env = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"}
    world = detect_world(env)
    assert (world.num_nodes, world.ranks_per_node, world.node, world.rank_in_node) == (2, 4, 1, 1)
    assert world.rank == 5


def test_without_local_world_size_each_rank_is_a_node() -> None:
    # mosaicml-streaming's reading of RANK/WORLD_SIZE alone (SLURM- or mpirun-style launchers).
    world = detect_world({"RANK": "3", "WORLD_SIZE": "4"})
    assert (world.num_nodes, world.ranks_per_node, world.node, world.rank_in_node) == (4, 1, 3, 0)
    assert detect_world({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3"}) == world


def test_replicate_as_the_reference() -> None:
    world = World(num_nodes=2, ranks_per_node=4, node=1, rank_in_node=3, workers_per_rank=2)
    # 8 ranks, replication 2: ranks 6 and 7 are rank 3 of 4, on one node of 4 ranks.
    assert world.replicate(2) == World(
        num_nodes=1, ranks_per_node=4, node=0, rank_in_node=3, workers_per_rank=2
    )
    assert World(num_nodes=2, ranks_per_node=2, node=1, rank_in_node=1).replicate(2) == World(
        num_nodes=1, ranks_per_node=2, node=0, rank_in_node=1
    )
    with pytest.raises(WorldError, match="divisible"):
        world.replicate(3)
    with pytest.raises(WorldError, match="positive"):
        world.replicate(0)


@pytest.mark.parametrize(
    ("env", "names"),
    [
        (
            {"RANK": "0", "WORLD_SIZE": "6", "LOCAL_WORLD_SIZE": "4"},
            ["WORLD_SIZE=6", "LOCAL_WORLD_SIZE=4"],
        ),
        ({"RANK": "4", "WORLD_SIZE": "4"}, ["RANK=4", "WORLD_SIZE=4"]),
        (
            {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "4"},
            ["LOCAL_RANK=0", "RANK=5"],
        ),
        ({"RANK": "1"}, ["RANK", "WORLD_SIZE"]),
        ({"RANK": "x", "WORLD_SIZE": "2"}, ["RANK"]),
        ({"RANK": "0", "WORLD_SIZE": "0"}, ["WORLD_SIZE=0"]),
    ],
)
def test_contradicting_environment_names_the_variables(
    env: dict[str, str], names: list[str]
) -> None:
    with pytest.raises(WorldError) as info:
        detect_world(env)
    for name in names:
        assert name in str(info.value)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def process_group() -> Iterator[None]:
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.usefixtures("process_group")
def test_torch_distributed_is_used_when_initialised() -> None:
    assert detect_world({}) == World()
    assert detect_world({"RANK": "0", "WORLD_SIZE": "1"}) == World()


@pytest.mark.usefixtures("process_group")
def test_torch_distributed_and_environment_must_agree() -> None:
    with pytest.raises(WorldError, match="WORLD_SIZE=4"):
        detect_world({"RANK": "0", "WORLD_SIZE": "4"})


def test_dataloader_workers_are_detected() -> None:
    data = pytest.importorskip("torch.utils.data")

    class Places(data.IterableDataset):  # type: ignore[misc,name-defined]
        def __iter__(self) -> Iterator[tuple[int, int]]:
            world = detect_world({})
            yield world.worker, world.workers_per_rank

    loader = data.DataLoader(Places(), num_workers=2, batch_size=None)
    assert sorted(tuple(x) for x in loader) == [(0, 2), (1, 2)]
