"""The sample order: pure numpy, no I/O.

``EpochPlan(config).worker_ids(world, epoch, sample_in_epoch)`` gives one DataLoader worker's
sample ids for an epoch. The order equals mosaicml-streaming 0.13's for the same parameters and
is elastic: for a fixed canonical node count and global batch size, every global batch holds the
same samples however the world is split into nodes, ranks, workers and device batches.
"""

from __future__ import annotations

# numpy imports numpy.random on first use, and numpy.ma inside np.unique (numpy >= 2.3): 10-30 ms
# each on the build machine. Every epoch's order uses both, so they load with the plan rather than
# inside the first batch of a process (and of every spawned DataLoader worker).
import numpy.ma
import numpy.random  # noqa: F401

from astream.plan.config import (
    DEFAULT_SHUFFLE_SEED,
    OrderConfig,
    PlanState,
    StreamWeighting,
)
from astream.plan.epoch import EpochPlan
from astream.plan.world import World, detect_world

__all__ = [
    "DEFAULT_SHUFFLE_SEED",
    "EpochPlan",
    "OrderConfig",
    "PlanState",
    "StreamWeighting",
    "World",
    "detect_world",
]
