"""Partition an epoch's positions over nodes, ranks, workers and batches (``orig``, ``relaxed``).

The reference builds the whole ``(nodes, ranks, workers, batches, batch)`` tensor and slices it.
Each step of that construction is an index map, so here every entry is computed directly from
its coordinates: a worker asks only for its own entries, and the full tensor (needed by the
per-stream batching methods) is the same function evaluated over broadcast coordinates.

Layout of ``orig`` (C canonical nodes, P physical nodes, R ranks per node):

1. A ``(C, S)`` matrix: row ``c`` holds positions ``[c*N//C, (c+1)*N//C)``; a short row repeats
   its last position; when ``C < P`` each row is padded to a multiple of ``P // C`` columns by
   copying earlier columns.
2. Read column-major (canonical nodes interleave), drop the first ``drop_first`` entries
   (rounded down to a multiple of P), and deal the rest round-robin to the P nodes.
3. Each node's sequence is padded to a multiple of R (repeating entries near its end) and dealt
   round-robin to its ranks.
4. Each rank's sequence is padded with ``-1`` to a multiple of ``W * B`` and cut into chunks of
   B that go round-robin to the W workers, as a DataLoader reads them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from astream.errors import PlanError

__all__ = ["Partition", "make_partition"]

Int64Array = NDArray[np.int64]


@dataclass(frozen=True)
class _OrigLayout:
    """The ``orig`` partition's geometry, from which any entry is computed."""

    num_samples: int
    canon: int  # C
    nodes: int  # P
    ranks: int  # R
    workers: int  # W
    batch: int  # B
    drop: int  # drop_first, a multiple of P
    row_len: int  # samples per canonical node before padding
    padded_row_len: int
    node_len: int  # entries per node after the drop, before rank padding
    rank_pad: int  # entries added to each node to reach a multiple of R
    rank_len: int  # real entries per rank
    batches: int  # batches per worker
    tiled: bool  # fewer samples than canonical nodes: rows are filled by tiling 0..N-1
    # Padding columns of a row (when C < P) copy these earlier columns, in order.
    pad_src_start: int
    pad_src_step: int

    @classmethod
    def build(
        cls, n: int, canon: int, nodes: int, ranks: int, workers: int, batch: int, drop: int
    ) -> _OrigLayout:
        if max(canon, nodes) % min(canon, nodes):
            raise PlanError(
                f"num_canonical_nodes={canon} and the number of physical nodes={nodes} must "
                "divide one another (or use partition_algo='relaxed' after the first run)"
            )
        drop -= drop % nodes
        row_len = -(-n // canon)
        pad = 0
        ratio = 0
        if canon < nodes:
            ratio = nodes // canon
            pad = (ratio - row_len % ratio) % ratio
        padded = row_len + pad
        tiled = not (n > canon or (n == canon and canon >= nodes))
        src_start, src_step = 0, 1
        if pad and not tiled:
            # The reference assigns columns [-2*pad-ratio+1, -pad-ratio+1) to the last `pad`
            # columns; Python slicing clips those bounds to the row.
            dst = range(*slice(-pad, None).indices(padded))
            src = range(*slice(-2 * pad - ratio + 1, -pad - ratio + 1).indices(padded))
            if len(src) == len(dst):
                src_start, src_step = src.start, 1
            elif len(src) == 1:
                src_start, src_step = src.start, 0
            else:
                raise PlanError(
                    f"cannot pad {n} samples over {canon} canonical nodes for {nodes} nodes"
                )
        node_len = max(canon * padded - drop, 0) // nodes
        rank_pad = (ranks - node_len % ranks) % ranks
        rank_len = (node_len + rank_pad) // ranks
        per_round = workers * batch
        batches = -(-rank_len // per_round)
        return cls(
            num_samples=n,
            canon=canon,
            nodes=nodes,
            ranks=ranks,
            workers=workers,
            batch=batch,
            drop=drop,
            row_len=row_len,
            padded_row_len=padded,
            node_len=node_len,
            rank_pad=rank_pad,
            rank_len=rank_len,
            batches=batches,
            tiled=tiled,
            pad_src_start=src_start,
            pad_src_step=src_step,
        )

    def _matrix_value(self, canon_row: Int64Array, col: Int64Array) -> Int64Array:
        """Entry ``[canon_row, col]`` of the canonical-node matrix."""
        n, canon = self.num_samples, self.canon
        if self.tiled:
            return (canon_row * self.padded_row_len + col) % n
        is_pad = col >= self.row_len
        if is_pad.any():
            col = np.where(
                is_pad, self.pad_src_start + (col - self.row_len) * self.pad_src_step, col
            )
        start = canon_row * n // canon
        stop = (canon_row + 1) * n // canon
        short = (stop - start < self.row_len) & (col == self.row_len - 1)
        value: Int64Array = start + col - short.astype(np.int64)
        return value

    def rank_entry(self, node: Int64Array, rank: Int64Array, index: Int64Array) -> Int64Array:
        """Entry ``index`` of a rank's padded sequence (``-1`` past its real entries)."""
        valid = index < self.rank_len
        index = np.where(valid, index, 0)
        j = index * self.ranks + rank
        if self.rank_pad:
            tail = j >= self.node_len
            if self.ranks + self.rank_pad - 1 <= self.node_len:
                j = np.where(tail, j - (self.ranks + self.rank_pad - 1), j)
            else:
                j = np.where(tail, (j - self.node_len) % self.node_len, j)
        flat = self.drop + j * self.nodes + node
        value = self._matrix_value(flat % self.canon, flat // self.canon)
        return np.where(valid, value, -1)

    def worker_entries(self, node: Int64Array, rank: Int64Array, worker: Int64Array) -> Int64Array:
        """Entries of the given workers, shape ``coords + (batches, batch)``."""
        k = np.arange(self.batches, dtype=np.int64)[:, None]
        b = np.arange(self.batch, dtype=np.int64)[None, :]
        node, rank, worker = (
            np.asarray(x, np.int64)[..., None, None] for x in (node, rank, worker)
        )
        index = (k * self.workers + worker) * self.batch + b
        return self.rank_entry(node, rank, index)


@dataclass(frozen=True)
class Partition:
    """Positions of an epoch dealt to workers; ``-1`` marks padding.

    :param batches: batches per worker (every worker gets the same number, padded with -1).
    :param batch: samples per batch (the per-device batch size).
    """

    batches: int
    batch: int
    _orig: _OrigLayout
    # Set when the relaxed partition re-deals an initial world's partition to a new world.
    _initial: _OrigLayout | None
    _nodes: int
    _ranks: int
    _workers: int

    def worker(self, node: int, rank: int, worker: int) -> Int64Array:
        """One worker's positions in yield order, flat (``batches * batch``)."""
        coords = (np.int64(node), np.int64(rank), np.int64(worker))
        return self.entries(*coords).reshape(-1)

    def full(self) -> Int64Array:
        """The whole tensor ``(nodes, ranks, workers, batches, batch)``."""
        return self.entries(
            np.arange(self._nodes)[:, None, None],
            np.arange(self._ranks)[None, :, None],
            np.arange(self._workers)[None, None, :],
        )

    def entries(self, node: Int64Array, rank: Int64Array, worker: Int64Array) -> Int64Array:
        """Entries of the given (broadcast) worker coordinates, shape ``coords + (K, B)``."""
        if self._initial is None:
            return self._orig.worker_entries(node, rank, worker)
        init = self._initial
        node, rank, worker = np.broadcast_arrays(
            *(np.asarray(x, np.int64) for x in (node, rank, worker))
        )
        node, rank, worker = (x[..., None, None] for x in (node, rank, worker))
        k = np.arange(self.batches, dtype=np.int64)[:, None]
        b = np.arange(self.batch, dtype=np.int64)[None, :]
        # Position in the traversal order (batches, workers, nodes, ranks, batch), which both
        # worlds share because the global batch size is the same.
        t = (
            ((k * self._workers + worker) * self._nodes + node) * self._ranks + rank
        ) * self.batch + b
        b0 = t % init.batch
        t = t // init.batch
        r0 = t % init.ranks
        t = t // init.ranks
        p0 = t % init.nodes
        t = t // init.nodes
        w0 = t % init.workers
        k0 = t // init.workers
        return init.rank_entry(p0, r0, (k0 * init.workers + w0) * init.batch + b0)


def make_partition(
    algo: str,
    num_samples: int,
    num_canonical_nodes: int,
    num_nodes: int,
    ranks_per_node: int,
    workers_per_rank: int,
    batch_size: int,
    drop_first: int = 0,
    initial_physical_nodes: int | None = None,
) -> Partition:
    """The partition of ``num_samples`` positions for a world, skipping ``drop_first``.

    :param algo: ``"orig"`` or ``"relaxed"``.
    :raises PlanError: when the world cannot hold this partition, or when resuming past the end.
    """
    world_size = ranks_per_node * num_nodes
    if num_samples + world_size - num_samples % world_size < drop_first:
        raise PlanError(
            f"cannot resume at sample {drop_first}: the epoch has only {num_samples} samples"
        )
    canon = num_canonical_nodes
    use_orig = (
        algo == "orig"
        or initial_physical_nodes is None
        or (num_nodes <= canon and canon % num_nodes == 0)
        or (num_nodes > canon and num_nodes % canon == 0)
    )
    args = (num_samples, canon, num_nodes, ranks_per_node, workers_per_rank)
    if use_orig:
        layout = _OrigLayout.build(*args, batch_size, drop_first)
        return Partition(
            layout.batches, batch_size, layout, None, num_nodes, ranks_per_node, workers_per_rank
        )
    assert initial_physical_nodes is not None
    global_batch = num_nodes * ranks_per_node * batch_size
    initial_devices = initial_physical_nodes * ranks_per_node
    if global_batch % initial_devices:
        raise PlanError(
            f"the global batch size {global_batch} is not a multiple of the first run's "
            f"{initial_devices} devices; keep the global batch size fixed when resuming with "
            "partition_algo='relaxed'"
        )
    initial = _OrigLayout.build(
        num_samples,
        canon,
        initial_physical_nodes,
        ranks_per_node,
        workers_per_rank,
        global_batch // initial_devices,
        drop_first,
    )
    return Partition(
        initial.batches, batch_size, initial, initial, num_nodes, ranks_per_node, workers_per_rank
    )
