"""Who this process is: nodes, ranks per node, DataLoader workers per rank, and its own place."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from astream.errors import WorldError

__all__ = ["World", "detect_world"]


@dataclass(frozen=True)
class World:
    """The shape of a run and one worker's place in it.

    Every node holds the same number of ranks and every rank the same number of DataLoader
    workers (``num_workers=0`` counts as one worker, the rank's own process).

    :param num_nodes: physical nodes in the run.
    :param ranks_per_node: processes (devices) per node.
    :param node: this worker's node, ``0 <= node < num_nodes``.
    :param rank_in_node: this worker's rank within its node.
    :param workers_per_rank: DataLoader workers per rank (at least 1).
    :param worker: this worker's index within its rank.
    """

    num_nodes: int = 1
    ranks_per_node: int = 1
    node: int = 0
    rank_in_node: int = 0
    workers_per_rank: int = 1
    worker: int = 0

    def __post_init__(self) -> None:
        for name in ("num_nodes", "ranks_per_node", "workers_per_rank"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise WorldError(f"World.{name} must be a positive int, got {value!r}")
        for name, bound in (
            ("node", "num_nodes"),
            ("rank_in_node", "ranks_per_node"),
            ("worker", "workers_per_rank"),
        ):
            value = getattr(self, name)
            limit = getattr(self, bound)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < limit:
                raise WorldError(f"World.{name} must be in [0, {bound}={limit}), got {value!r}")

    @property
    def rank(self) -> int:
        """Global rank: ``node * ranks_per_node + rank_in_node``."""
        return self.node * self.ranks_per_node + self.rank_in_node

    @property
    def world_size(self) -> int:
        """Number of ranks (devices) in the run."""
        return self.num_nodes * self.ranks_per_node

    @property
    def num_workers(self) -> int:
        """Number of DataLoader workers in the whole run."""
        return self.world_size * self.workers_per_rank

    @property
    def worker_id(self) -> int:
        """Global worker index: ``rank * workers_per_rank + worker``."""
        return self.rank * self.workers_per_rank + self.worker

    def with_workers(self, workers_per_rank: int, worker: int) -> World:
        """Return this world with another DataLoader worker split (same nodes and ranks)."""
        return World(
            num_nodes=self.num_nodes,
            ranks_per_node=self.ranks_per_node,
            node=self.node,
            rank_in_node=self.rank_in_node,
            workers_per_rank=workers_per_rank,
            worker=worker,
        )

    def replicate(self, replication: int) -> World:
        """The world as the order sees it when ``replication`` consecutive ranks get the same
        samples (sequence or tensor parallelism), as mosaicml-streaming's ``World.replicate``:
        ranks ``r * replication`` to ``r * replication + replication - 1`` become rank ``r``.
        The node layout is kept when the fewer ranks still fill whole nodes, else one node.

        :raises WorldError: ``replication`` is not positive or does not divide the world size.
        """
        if isinstance(replication, bool) or not isinstance(replication, int) or replication < 1:
            raise WorldError(f"replication must be a positive int, got {replication!r}")
        if self.world_size % replication:
            raise WorldError(
                f"world size {self.world_size} is not divisible by replication={replication}"
            )
        num_ranks = self.world_size // replication
        rank = self.rank // replication
        nodes = num_ranks // self.ranks_per_node if num_ranks % self.ranks_per_node == 0 else 1
        per_node = num_ranks // nodes
        return World(
            num_nodes=nodes,
            ranks_per_node=per_node,
            node=rank // per_node,
            rank_in_node=rank % per_node,
            workers_per_rank=self.workers_per_rank,
            worker=self.worker,
        )


_ENV_NAMES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def _read_env(env: Mapping[str, str]) -> dict[str, int]:
    values: dict[str, int] = {}
    for name in _ENV_NAMES:
        text = env.get(name)
        if text is None or text.strip() == "":
            continue
        try:
            values[name] = int(text)
        except ValueError as exc:
            raise WorldError(f"environment variable {name}={text!r} is not an integer") from exc
        if values[name] < 0:
            raise WorldError(f"environment variable {name}={text!r} is negative")
    return values


def _torch_distributed() -> tuple[int, int] | None:
    """``(rank, world_size)`` from torch.distributed when it is importable and initialised."""
    try:
        import torch.distributed as dist
    except ImportError:
        return None
    if not dist.is_available() or not dist.is_initialized():
        return None
    return int(dist.get_rank()), int(dist.get_world_size())


def _dataloader_worker() -> tuple[int, int]:
    """``(worker, workers_per_rank)`` from torch's DataLoader worker info, else ``(0, 1)``."""
    try:
        from torch.utils.data import get_worker_info
    except ImportError:
        return 0, 1
    info: Any = get_worker_info()
    if info is None:
        return 0, 1
    return int(info.id), int(info.num_workers)


def detect_world(env: Mapping[str, str] | None = None) -> World:
    """Detect the world this process runs in.

    The rank and world size come from ``torch.distributed`` when it is importable and
    initialised, else from ``RANK`` and ``WORLD_SIZE``; the node layout from ``LOCAL_RANK`` and
    ``LOCAL_WORLD_SIZE`` (default, as mosaicml-streaming's: one rank per node). When both torch.distributed and
    the environment give a rank or world size, they must agree. The DataLoader worker comes from
    ``torch.utils.data.get_worker_info()`` (one worker outside a DataLoader worker process).

    :param env: the environment to read (default ``os.environ``).
    :raises WorldError: when the settings contradict each other; the message names them.
    """
    values = _read_env(os.environ if env is None else env)
    dist = _torch_distributed()
    if dist is not None:
        rank, world_size = dist
        for name, got in (("RANK", rank), ("WORLD_SIZE", world_size)):
            if name in values and values[name] != got:
                raise WorldError(
                    f"torch.distributed says {name.lower()}={got} but the environment variable "
                    f"{name}={values[name]}"
                )
    else:
        if ("RANK" in values) != ("WORLD_SIZE" in values):
            given, missing = ("RANK", "WORLD_SIZE") if "RANK" in values else ("WORLD_SIZE", "RANK")
            raise WorldError(f"environment variable {given} is set but {missing} is not")
        rank = values.get("RANK", 0)
        world_size = values.get("WORLD_SIZE", 1)
    if world_size < 1:
        raise WorldError(f"WORLD_SIZE={world_size} must be at least 1")
    if rank >= world_size:
        raise WorldError(f"RANK={rank} must be less than WORLD_SIZE={world_size}")
    if "LOCAL_WORLD_SIZE" not in values:
        # As mosaicml-streaming: one rank per node (SLURM- or mpirun-style launchers set RANK and
        # WORLD_SIZE only), so both libraries give every rank the same samples. LOCAL_RANK then
        # says nothing about the layout and is not checked.
        values.pop("LOCAL_RANK", None)
    local_world_size = values.get("LOCAL_WORLD_SIZE", 1)
    if local_world_size < 1:
        raise WorldError(f"LOCAL_WORLD_SIZE={local_world_size} must be at least 1")
    if world_size % local_world_size:
        raise WorldError(
            f"WORLD_SIZE={world_size} is not a multiple of LOCAL_WORLD_SIZE={local_world_size}"
        )
    local_rank = values.get("LOCAL_RANK", rank % local_world_size)
    if local_rank >= local_world_size:
        raise WorldError(
            f"LOCAL_RANK={local_rank} must be less than LOCAL_WORLD_SIZE={local_world_size}"
        )
    if local_rank != rank % local_world_size:
        raise WorldError(
            f"LOCAL_RANK={local_rank} does not match RANK={rank} with "
            f"LOCAL_WORLD_SIZE={local_world_size} (ranks fill nodes in order, so LOCAL_RANK "
            f"should be {rank % local_world_size})"
        )
    worker, workers_per_rank = _dataloader_worker()
    return World(
        num_nodes=world_size // local_world_size,
        ranks_per_node=local_world_size,
        node=rank // local_world_size,
        rank_in_node=local_rank,
        workers_per_rank=workers_per_rank,
        worker=worker,
    )
