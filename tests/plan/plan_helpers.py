"""Rebuild what training sees from per-worker ids: worlds, device batches, global batches.

A rank's DataLoader workers hand out batches of ``batch`` ids in turn (worker 0, 1, ..., W-1,
worker 0, ...), padding (-1) is skipped, and global batch t is every rank's t-th batch.
"""

from __future__ import annotations

import numpy as np

from astream.plan import EpochPlan, World


def all_worlds(nodes: int, ranks: int, workers: int) -> list[World]:
    """Every worker's place in a world of the given shape."""
    return [
        World(
            num_nodes=nodes,
            ranks_per_node=ranks,
            node=p,
            rank_in_node=r,
            workers_per_rank=workers,
            worker=w,
        )
        for p in range(nodes)
        for r in range(ranks)
        for w in range(workers)
    ]


def global_batches(
    plan: EpochPlan,
    nodes: int,
    ranks: int,
    workers: int,
    batch: int,
    epoch: int = 0,
    at: int = 0,
) -> list[list[int]]:
    """Global batches (sorted ids) as DataLoader workers and DDP ranks would consume them."""
    places = all_worlds(nodes, ranks, workers)
    per_rank: list[list[np.ndarray]] = []
    for first in range(0, len(places), workers):
        ids = [plan.worker_ids(world, epoch, at) for world in places[first : first + workers]]
        chunks = [
            ids[w][k * batch : (k + 1) * batch]
            for k in range(len(ids[0]) // batch)
            for w in range(workers)
        ]
        per_rank.append([c[c >= 0] for c in chunks if (c >= 0).any()])
    longest = max(len(b) for b in per_rank)
    return [
        sorted(np.concatenate([b[t] for b in per_rank if t < len(b)]).tolist())
        for t in range(longest)
    ]
