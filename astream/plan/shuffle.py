"""The epoch's permutation of positions: shuffles ``naive``, ``py1s``, ``py2s``, ``py1br``, ``py1e``.

Each returns ``perm[positions]`` for the positions asked, where ``perm`` is the permutation the
reference builds whole. Except ``naive``, a permutation is a concatenation of independent
canonical-node pieces. The random generators run through every canonical node in order (their
draws cannot be skipped), but a node that holds none of the asked positions is only drawn
through: its shuffles run on a scratch buffer and its sort is skipped. So one worker pays the
full random draws but sorts and stores only the canonical nodes its own node reads.

Equality with the reference rests on making the same generator calls in the same order:
``Generator.shuffle`` draws depend only on the length shuffled (a list and an array of the same
length draw alike), and ``Generator.random`` draws one 64-bit value per double as ``uniform`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from astream.errors import PlanError

__all__ = ["shuffle_positions"]

Int64Array = NDArray[np.int64]
Float64Array = NDArray[np.float64]


@dataclass(frozen=True)
class _Pieces:
    """Shuffle units in the run's order, cut at canonical-node boundaries.

    :param begin: first id of each piece (ids of a unit are contiguous).
    :param size: length of each piece.
    :param unit: the unit (in run order) each piece was cut from.
    :param offset: where the piece starts inside its unit.
    :param node_bounds: pieces ``node_bounds[c]:node_bounds[c+1]`` belong to canonical node c.
    :param node_starts: first position of each canonical node, and the total at the end.
    """

    begin: Int64Array
    size: Int64Array
    unit: Int64Array
    offset: Int64Array
    node_bounds: Int64Array
    node_starts: Int64Array


def _cut_pieces(unit_sizes: Int64Array, order: Int64Array, canon: int) -> _Pieces:
    """Lay units out in ``order`` and cut them where canonical node ``k`` ends (at N*(k+1)//C)."""
    sizes = unit_sizes[order]
    unit_begin = (np.cumsum(unit_sizes) - unit_sizes)[order]
    ends = np.cumsum(sizes)
    total = int(ends[-1]) if len(ends) else 0
    node_starts = np.arange(canon + 1, dtype=np.int64) * total // canon
    cuts = np.union1d(ends, node_starts[1:])
    cuts = cuts[cuts > 0]
    starts = np.concatenate([[0], cuts[:-1]]).astype(np.int64)
    unit_idx = np.searchsorted(ends, starts, side="right")
    laid_begin = ends[unit_idx] - sizes[unit_idx]
    offset = starts - laid_begin
    return _Pieces(
        begin=unit_begin[unit_idx] + offset,
        size=(cuts - starts).astype(np.int64),
        unit=order[unit_idx],
        offset=offset,
        node_bounds=np.searchsorted(starts, node_starts, side="left").astype(np.int64),
        node_starts=node_starts,
    )


def _run_order(unit_sizes: Int64Array, rng: np.random.Generator) -> Int64Array:
    order = np.arange(len(unit_sizes), dtype=np.int64)
    rng.shuffle(order)
    return order


def _shuffle_piece_order(pieces: _Pieces, rng: np.random.Generator) -> Int64Array:
    """The epoch's order of pieces: each canonical node's pieces shuffled among themselves."""
    order = np.arange(len(pieces.size), dtype=np.int64)
    bounds = pieces.node_bounds.tolist()
    for c in range(len(bounds) - 1):
        rng.shuffle(order[bounds[c] : bounds[c + 1]])
    return order


class _Scratch:
    """Reusable buffers for draws whose values are thrown away."""

    def __init__(self) -> None:
        self.ints = np.zeros(0, np.int64)
        self.floats = np.zeros(0, np.float64)

    def shuffle(self, rng: np.random.Generator, n: int) -> None:
        if n > len(self.ints):
            self.ints = np.zeros(n, np.int64)
        rng.shuffle(self.ints[:n])

    def uniform(self, rng: np.random.Generator, n: int) -> None:
        if n > len(self.floats):
            self.floats = np.zeros(n, np.float64)
        rng.random(out=self.floats[:n])


def _ranges(begin: Int64Array, size: Int64Array) -> Int64Array:
    """Concatenation of ``arange(begin[i], begin[i] + size[i])``."""
    total = int(size.sum())
    starts = np.cumsum(size) - size
    return np.repeat(begin - starts, size) + np.arange(total, dtype=np.int64)


# A canonical-node builder yields (node, ids) for each wanted node, in node order, and draws
# through the others.
_NodeIds = Iterator[tuple[int, Int64Array]]


def _py1s(pieces: _Pieces, epoch_rng: np.random.Generator, wanted: set[int]) -> _NodeIds:
    order = _shuffle_piece_order(pieces, epoch_rng)
    scratch = _Scratch()
    bounds = pieces.node_bounds.tolist()
    for c in range(len(bounds) - 1):
        chosen = order[bounds[c] : bounds[c + 1]]
        sizes = pieces.size[chosen]
        if c not in wanted:
            for n in sizes.tolist():
                scratch.shuffle(epoch_rng, n)
            continue
        ids = _ranges(pieces.begin[chosen], sizes)
        at = 0
        for n in sizes.tolist():
            epoch_rng.shuffle(ids[at : at + n])
            at += n
        yield c, ids


def _py1br(
    pieces: _Pieces, epoch_rng: np.random.Generator, wanted: set[int], block: int
) -> _NodeIds:
    order = _shuffle_piece_order(pieces, epoch_rng)
    canon = len(pieces.node_bounds) - 1
    low, high = int(0.75 * block), int(1.25 * block)
    stagger = epoch_rng.integers(0, low, (canon,)).tolist()
    scratch = _Scratch()
    bounds = pieces.node_bounds.tolist()
    starts = pieces.node_starts.tolist()
    for c in range(canon):
        node_len = starts[c + 1] - starts[c]
        # Blocks are cut on the node's own coordinates; the first is shortened by the stagger.
        blocks: list[tuple[int, int]] = []
        end = 0
        while end < node_len:
            size = int(epoch_rng.integers(low, high))
            begin = max(end - stagger[c], 0)
            stop = min(end + size - stagger[c], node_len)
            blocks.append((begin, stop))
            end += stop - begin
        if c not in wanted:
            for begin, stop in blocks:
                scratch.shuffle(epoch_rng, stop - begin)
            continue
        chosen = order[bounds[c] : bounds[c + 1]]
        ids = _ranges(pieces.begin[chosen], pieces.size[chosen])
        for begin, stop in blocks:
            epoch_rng.shuffle(ids[begin:stop])
        yield c, ids


def _py1e(
    pieces: _Pieces, epoch_rng: np.random.Generator, wanted: set[int], block: int
) -> _NodeIds:
    order = _shuffle_piece_order(pieces, epoch_rng)
    low, high = int(0.75 * block), int(1.25 * block)
    scratch = _Scratch()
    bounds = pieces.node_bounds.tolist()
    for c in range(len(bounds) - 1):
        chosen = order[bounds[c] : bounds[c + 1]]
        sizes = pieces.size[chosen]
        node_len = int(sizes.sum())
        if node_len == 0:
            raise PlanError(
                f"canonical node {c} of {len(bounds) - 1} gets no samples: the epoch has fewer "
                "samples than canonical nodes; lower num_canonical_nodes"
            )
        keep = c in wanted
        if keep:
            ids = _ranges(pieces.begin[chosen], sizes)
            at = 0
            for n in sizes.tolist():
                epoch_rng.shuffle(ids[at : at + n])
                at += n
            keys = np.arange(node_len, dtype=np.float64)
        else:
            for n in sizes.tolist():
                scratch.shuffle(epoch_rng, n)
        # Each piece's samples move by a uniform shift of at most half the room a random
        # block size leaves around the piece, clipped to the canonical node.
        at = 0
        for n in sizes.tolist():
            room = int(epoch_rng.integers(low, high))
            cutoff = max((room - n) / 2, 0)
            lower = max(-cutoff, -at)
            upper = min(cutoff, node_len - at - n)
            if keep:
                keys[at : at + n] += epoch_rng.uniform(lower, upper, n)
            else:
                scratch.uniform(epoch_rng, n)
            at += n
        if keep:
            yield c, ids[np.argsort(keys)]


def _py2s(unit_sizes: Int64Array, canon: int, seed: int, epoch: int, wanted: set[int]) -> _NodeIds:
    run_rng = np.random.default_rng(seed)
    run_order = _run_order(unit_sizes, run_rng)
    pieces = _cut_pieces(unit_sizes, run_order, canon)
    starts = (np.cumsum(unit_sizes) - unit_sizes).tolist()
    bounds = pieces.node_bounds.tolist()
    needed_units: set[int] = set()
    for c in wanted:
        needed_units.update(pieces.unit[bounds[c] : bounds[c + 1]].tolist())
    # The run generator shuffles every unit's samples once, in the run's unit order.
    scratch = _Scratch()
    shuffled_units: dict[int, Int64Array] = {}
    for u in run_order.tolist():
        n = int(unit_sizes[u])
        if u in needed_units:
            ids = np.arange(starts[u], starts[u] + n, dtype=np.int64)
            run_rng.shuffle(ids)
            shuffled_units[u] = ids
        else:
            scratch.shuffle(run_rng, n)
    epoch_rng = np.random.default_rng(seed + epoch)
    for c in range(canon):
        first, last = bounds[c], bounds[c + 1]
        order = np.arange(first, last, dtype=np.int64)
        epoch_rng.shuffle(order)
        if c not in wanted:
            for n in pieces.size[order].tolist():
                scratch.shuffle(epoch_rng, n)
            continue
        parts = []
        for piece in order.tolist():
            unit, offset, n = (
                int(pieces.unit[piece]),
                int(pieces.offset[piece]),
                int(pieces.size[piece]),
            )
            part = shuffled_units[unit][offset : offset + n].copy()
            epoch_rng.shuffle(part)
            parts.append(part)
        yield c, np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _node_builder(
    algo: str, unit_sizes: Int64Array, canon: int, seed: int, epoch: int, block: int
) -> tuple[Int64Array, Callable[[set[int]], _NodeIds]]:
    """The canonical nodes' first positions, and a builder for the wanted nodes' ids."""
    if algo == "py2s":
        total = int(unit_sizes.sum())
        node_starts = np.arange(canon + 1, dtype=np.int64) * total // canon
        return node_starts, lambda wanted: _py2s(unit_sizes, canon, seed, epoch, wanted)
    pieces = _cut_pieces(unit_sizes, _run_order(unit_sizes, np.random.default_rng(seed)), canon)

    def build(wanted: set[int]) -> _NodeIds:
        epoch_rng = np.random.default_rng(seed + epoch)
        if algo == "py1s":
            return _py1s(pieces, epoch_rng, wanted)
        if algo == "py1br":
            return _py1br(pieces, epoch_rng, wanted, block)
        return _py1e(pieces, epoch_rng, wanted, block)

    return pieces.node_starts, build


def shuffle_positions(
    algo: str,
    unit_sizes: Int64Array,
    canon: int,
    seed: int,
    epoch: int,
    block: int,
    positions: Int64Array,
) -> Int64Array:
    """Map positions (``-1`` kept) through the epoch's permutation of ``sum(unit_sizes)`` ids.

    :param algo: the shuffle algorithm.
    :param unit_sizes: sizes of the shuffle units, in order.
    :param canon: number of canonical nodes.
    :param seed: the run's seed.
    :param epoch: the epoch (its generator is seeded ``seed + epoch``).
    :param block: shuffle block size (``py1br``, ``py1e``).
    :param positions: positions in ``[0, N)`` or ``-1``, any shape.
    """
    out = np.full(positions.shape, -1, np.int64)
    valid = positions >= 0
    wanted_positions = positions[valid]
    if algo == "naive":
        perm = np.random.default_rng(seed + epoch).permutation(int(unit_sizes.sum()))
        out[valid] = perm[wanted_positions]
        return out
    if algo in ("py1br", "py1e") and int(0.75 * block) < 1:
        raise PlanError(f"shuffle block size {block} is too small for {algo} (at least 2)")
    node_starts, build = _node_builder(algo, unit_sizes, canon, seed, epoch, block)
    node_of = np.searchsorted(node_starts, wanted_positions, side="right") - 1
    # The canonical nodes holding a wanted position (a count per node: O(n), no sort).
    wanted = set(np.flatnonzero(np.bincount(node_of, minlength=len(node_starts))).tolist())
    if len(wanted) == 1:  # one node (one physical node, or a position range inside one)
        ((c, ids),) = build(wanted)
        out[valid] = ids[wanted_positions - node_starts[c]]
        return out
    result = np.empty(len(wanted_positions), np.int64)
    for c, ids in build(wanted):
        mask = node_of == c
        result[mask] = ids[wanted_positions[mask] - node_starts[c]]
    out[valid] = result
    return out
