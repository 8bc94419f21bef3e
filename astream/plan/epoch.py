"""``EpochPlan``: the one entry point that turns an :class:`OrderConfig` into per-worker sample ids."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from astream.errors import PlanError
from astream.plan.batching import EpochParams, worker_sample_ids
from astream.plan.config import OrderConfig, PlanState
from astream.plan.weights import EpochWeights, resolve_weights
from astream.plan.world import World

__all__ = ["EpochPlan"]

_STATE_KEYS = ("epoch", "sample_in_epoch", "num_canonical_nodes", "shuffle_seed")


def _non_negative(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise PlanError(f"{what} must be a non-negative int, got {value!r}")
    return int(value)


class EpochPlan:
    """The sample order of every epoch of a run, as a pure function of its inputs.

    Construction only resolves the stream weights; each call to :meth:`worker_ids` computes one
    worker's ids. The plan holds no resources and pickles into DataLoader workers.

    :param config: the order's parameters.
    :param initial_physical_nodes: physical nodes of the run's first launch, when resuming from
        a state dict (``relaxed`` partitioning uses it to keep the order when the node count
        changes); ``None`` on a first launch.
    """

    def __init__(self, config: OrderConfig, initial_physical_nodes: int | None = None) -> None:
        if not isinstance(config, OrderConfig):
            raise PlanError(f"EpochPlan needs an OrderConfig, got {config!r}")
        if initial_physical_nodes is not None:
            if isinstance(initial_physical_nodes, bool) or not isinstance(
                initial_physical_nodes, int
            ):
                raise PlanError(
                    f"initial_physical_nodes must be an int, got {initial_physical_nodes!r}"
                )
            if initial_physical_nodes < 1:
                raise PlanError(
                    f"initial_physical_nodes must be positive, got {initial_physical_nodes}"
                )
        self.config = config
        self.initial_physical_nodes = initial_physical_nodes
        self._weights = resolve_weights(config)

    def __repr__(self) -> str:
        return f"EpochPlan({self.config!r}, initial_physical_nodes={self.initial_physical_nodes!r})"

    @property
    def num_samples(self) -> int:
        """Real samples over all streams (the dataset's length)."""
        return sum(s.num_samples for s in self.config.streams)

    @property
    def epoch_size(self) -> int:
        """Samples per epoch after stream weighting."""
        return self._weights.epoch_size

    @property
    def weights(self) -> EpochWeights:
        """Each stream's resolved share of an epoch (choose, proportion)."""
        return self._weights

    @property
    def samples_per_stream(self) -> tuple[int, ...]:
        """Samples each stream contributes to an epoch."""
        return self._weights.choose

    def resolved_canonical_nodes(self, world: World) -> int:
        """The canonical node count: the config's, else 64 x nodes (py1s/py2s) or the nodes."""
        if self.config.num_canonical_nodes is not None:
            return self.config.num_canonical_nodes
        if self.config.shuffle_algo in ("py1s", "py2s"):
            return 64 * world.num_nodes
        return world.num_nodes

    def resolved_shuffle_block_size(self, world: World) -> int:
        """The shuffle block size: the config's, else ``max(4_000_000 // C, 262_144)``."""
        if self.config.shuffle_block_size is not None:
            return self.config.shuffle_block_size
        return max(4_000_000 // self.resolved_canonical_nodes(world), 1 << 18)

    def worker_ids(
        self, world: World, epoch: int = 0, sample_in_epoch: int = 0
    ) -> NDArray[np.int64]:
        """This worker's sample ids for ``epoch``, in yield order, starting at ``sample_in_epoch``.

        ``-1`` entries are padding that keeps every worker's count equal; skip them when
        yielding. Sample ids are global over all streams' shards, stream 0's first.

        :param world: the world and this worker's place in it.
        :param epoch: the epoch (0-based).
        :param sample_in_epoch: samples of the epoch already consumed, counted over all ranks.
        :raises PlanError: when the world cannot hold this order, or when resuming past the end.
        """
        if not isinstance(world, World):
            raise PlanError(f"worker_ids needs a World, got {world!r}")
        params = EpochParams(
            config=self.config,
            weights=self._weights,
            world=world,
            canon=self.resolved_canonical_nodes(world),
            batch=self.config.batch_size or 1,
            block=self.resolved_shuffle_block_size(world),
            initial_nodes=self.initial_physical_nodes,
            epoch=_non_negative(epoch, "epoch"),
            sample_in_epoch=_non_negative(sample_in_epoch, "sample_in_epoch"),
        )
        try:
            return worker_sample_ids(params)
        except (ValueError, ZeroDivisionError) as exc:
            if isinstance(exc, PlanError):
                raise
            raise PlanError(f"cannot build the order of epoch {epoch} for {world}: {exc}") from exc

    def state_dict(self, epoch: int, sample_in_epoch: int, world: World) -> dict[str, Any]:
        """The run's position, in mosaicml-streaming's state dict layout.

        :param epoch: the epoch in progress.
        :param sample_in_epoch: samples of it consumed, counted over all ranks.
        :param world: the current world (its node count becomes ``initial_physical_nodes`` on a
            first launch).
        """
        initial = self.initial_physical_nodes
        return {
            "epoch": _non_negative(epoch, "epoch"),
            "sample_in_epoch": _non_negative(sample_in_epoch, "sample_in_epoch"),
            "num_canonical_nodes": self.resolved_canonical_nodes(world),
            "shuffle_seed": self.config.shuffle_seed,
            "initial_physical_nodes": world.num_nodes if initial is None else initial,
        }

    @staticmethod
    def parse_state(obj: Mapping[str, Any]) -> PlanState:
        """Read a state dict written by :meth:`state_dict` (or by mosaicml-streaming).

        :raises PlanError: when a key is missing or a value is not a valid count.
        """
        if not isinstance(obj, Mapping):
            raise PlanError(f"a plan state must be a mapping, got {type(obj).__name__}")
        missing = [key for key in _STATE_KEYS if key not in obj]
        if missing:
            raise PlanError(f"plan state is missing {', '.join(missing)}")
        values = {key: _non_negative(obj[key], f"state[{key!r}]") for key in _STATE_KEYS}
        if values["num_canonical_nodes"] < 1:
            raise PlanError("state['num_canonical_nodes'] must be positive")
        initial = obj.get("initial_physical_nodes")
        if initial is not None:
            initial = _non_negative(initial, "state['initial_physical_nodes']")
            if initial < 1:
                raise PlanError("state['initial_physical_nodes'] must be positive")
        return PlanState(initial_physical_nodes=initial, **values)

    def resumed(self, state: PlanState) -> EpochPlan:
        """This plan as the run that wrote ``state`` saw it: its canonical nodes, seed, first world."""
        config = replace(
            self.config,
            num_canonical_nodes=state.num_canonical_nodes,
            shuffle_seed=state.shuffle_seed,
        )
        return EpochPlan(config, initial_physical_nodes=state.initial_physical_nodes)
