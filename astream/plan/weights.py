"""Stream weighting: how many samples each stream and shard gives an epoch, and which ones.

An epoch is laid out in "big" ids: every shard contributes ``choose // size`` whole copies of
itself and then a sorted random subset of ``choose % size`` samples. Each copy or subset is one
shuffle unit. Big ids map back to the real ("small") sample ids, global over all streams.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from astream.errors import PlanError
from astream.plan._search import last_at_or_below
from astream.plan.config import OrderConfig

__all__ = ["EpochWeights", "ResampledEpoch", "choose_per_shard", "resample", "resolve_weights"]

Int64Array = NDArray[np.int64]


@dataclass(frozen=True)
class EpochWeights:
    """Each stream's resolved share of an epoch.

    :param choose: samples drawn from each stream per epoch.
    :param proportion: each stream's fraction of the epoch (as float64, used to size
        per-stream batch portions and shuffle blocks).
    :param epoch_size: the total, ``sum(choose)``.
    """

    choose: tuple[int, ...]
    proportion: tuple[float, ...]
    epoch_size: int


def _split_by_weight(total: int, weights: NDArray[np.float64], seed: int) -> Int64Array:
    """Split ``total`` by ``weights`` (summing to 1), spreading the rounding shortfall at random."""
    counts = (total * weights).astype(np.int64)
    shortfall = int(total - counts.sum())
    try:
        lucky = np.random.default_rng(seed).choice(len(weights), shortfall, False)
    except ValueError as exc:
        raise PlanError(
            f"cannot spread {shortfall} samples over {len(weights)} streams: {exc}"
        ) from exc
    counts[lucky] += 1
    return counts


def resolve_weights(config: OrderConfig) -> EpochWeights:
    """Resolve each stream's ``proportion``/``repeat``/``choose`` into sample counts."""
    streams = config.streams
    sizes = np.array([s.num_samples for s in streams], np.int64)
    size = config.epoch_size_value
    if streams[0].proportion is not None:
        weights = np.array([s.proportion for s in streams], np.float64)
        if not weights.sum() > 0:
            raise PlanError("stream proportions must not all be zero")
        weights /= weights.sum()
        choose = _split_by_weight(size or int(sizes.sum()), weights, config.shuffle_seed)
    elif size and all(s.repeat is None and s.choose is None for s in streams):
        weights = sizes.astype(np.float64)
        weights /= weights.sum()
        choose = _split_by_weight(size, weights, config.shuffle_seed)
    else:
        per_stream = []
        for stream, stream_size in zip(streams, sizes.tolist(), strict=True):
            if stream.repeat is not None:
                per_stream.append(int(stream.repeat * stream_size))
            elif stream.choose is not None:
                per_stream.append(stream.choose)
            else:
                per_stream.append(stream_size)
        choose = np.array(per_stream, np.int64)
        total = choose.sum()
        if total == 0:
            raise PlanError("the stream weights draw no samples at all")
        weights = choose / total
    return EpochWeights(
        choose=tuple(int(c) for c in choose),
        proportion=tuple(float(p) for p in weights),
        epoch_size=int(choose.sum()),
    )


def choose_per_shard(
    shard_sizes: Int64Array, choose: int, granularity: int, seed: int
) -> Int64Array:
    """How many samples to draw from each shard so that a stream yields ``choose`` samples.

    Whole repeats are spread evenly. The fractional rest is filled by picks of ``granularity``
    samples of one shard (a shard's last pick may be smaller), taken in the order of a
    permutation drawn from ``default_rng(seed)``; the last pick taken may be cut short.
    """
    total = int(shard_sizes.sum())
    if choose % total == 0:
        return shard_sizes * (choose // total)
    picks_per_shard = (shard_sizes + granularity - 1) // granularity
    pick_shard = np.repeat(np.arange(len(shard_sizes)), picks_per_shard)
    pick_size = np.full(len(pick_shard), granularity, np.int64)
    pick_size[np.cumsum(picks_per_shard) - 1] = shard_sizes - (picks_per_shard - 1) * granularity
    order = np.random.default_rng(seed).permutation(len(pick_shard))
    sizes_in_order = pick_size[order]
    wanted = choose % total
    # Samples each pick contributes: whole picks until the running total reaches `wanted`,
    # then the part of the next pick that is still missing, then nothing.
    before = np.cumsum(sizes_in_order) - sizes_in_order
    taken = np.clip(wanted - before, 0, sizes_in_order)
    extra = np.bincount(pick_shard[order], weights=taken, minlength=len(shard_sizes))
    return shard_sizes * (choose // total) + extra.astype(np.int64)


@dataclass(frozen=True)
class ResampledEpoch:
    """An epoch's big ids laid out as shuffle units, and their map back to real sample ids.

    :param unit_sizes: size of each shuffle unit, in order (the shuffle's "shard sizes").
    :param unit_starts: first big id of each unit.
    :param unit_shard_offsets: first real sample id of the unit's shard.
    :param unit_subset_starts: where a partial unit's chosen samples start in ``subset_ids``,
        or -1 for a whole copy of its shard.
    :param subset_ids: chosen shard-relative sample offsets of all partial units, concatenated.
    """

    unit_sizes: Int64Array
    unit_starts: Int64Array
    unit_shard_offsets: Int64Array
    unit_subset_starts: Int64Array
    subset_ids: Int64Array

    @property
    def size(self) -> int:
        """Number of big ids (samples in the epoch)."""
        return int(self.unit_sizes.sum())

    def to_sample_ids(self, big: Int64Array) -> Int64Array:
        """Map big ids (``-1`` kept as ``-1``) to real sample ids."""
        out = np.full(big.shape, -1, np.int64)
        valid = big >= 0
        ids = big[valid]
        unit = last_at_or_below(self.unit_starts, ids)
        offset = ids - self.unit_starts[unit]
        subset_start = self.unit_subset_starts[unit]
        partial = subset_start >= 0
        offset[partial] = self.subset_ids[subset_start[partial] + offset[partial]]
        out[valid] = self.unit_shard_offsets[unit] + offset
        return out


def resample(
    config: OrderConfig,
    weights: EpochWeights,
    stream_ids: Sequence[int],
    epoch: int,
) -> ResampledEpoch:
    """Lay out the given streams' samples for ``epoch`` as shuffle units.

    One random generator serves all the given streams in order, so resampling all streams at
    once differs from resampling them one by one, as in the reference.
    """
    seed = config.shuffle_seed
    balanced = config.sampling_method == "balanced"
    # Which shards a fractional repeat draws from changes per epoch only when shuffling with
    # balanced sampling; which samples of a shard it takes changes whenever sampling is balanced.
    pick_seed = seed + epoch if (config.shuffle and balanced) else seed
    subset_rng = np.random.default_rng(seed + epoch if balanced else seed)
    stream_shard_offset = np.cumsum([0] + [len(s.shard_sizes) for s in config.streams])
    all_sizes = np.concatenate([np.array(s.shard_sizes, np.int64) for s in config.streams])
    shard_offsets = np.cumsum(all_sizes) - all_sizes
    unit_sizes: list[Int64Array] = []
    unit_shard_offsets: list[Int64Array] = []
    unit_subset_starts: list[Int64Array] = []
    subsets: list[Int64Array] = []
    subset_total = 0
    for stream_id in stream_ids:
        first = int(stream_shard_offset[stream_id])
        sizes = all_sizes[first : int(stream_shard_offset[stream_id + 1])]
        offsets = shard_offsets[first : first + len(sizes)]
        per_shard = choose_per_shard(
            sizes, weights.choose[stream_id], config.sampling_granularity, pick_seed
        )
        # Empty shards (samples == 0, as a writer leaves when one sample exceeds its size limit)
        # draw nothing: divide by 1 there instead of 0.
        divisor = np.maximum(sizes, 1)
        repeats = per_shard // divisor
        rests = per_shard % divisor
        units_per_shard = repeats + (rests > 0)
        shard_of_unit = np.repeat(np.arange(len(sizes)), units_per_shard)
        # Within a shard, the whole copies come first and the partial subset last.
        last_unit = np.cumsum(units_per_shard) - 1
        is_partial = np.zeros(len(shard_of_unit), bool)
        is_partial[last_unit[rests > 0]] = True
        sizes_of_units = np.where(is_partial, rests[shard_of_unit], sizes[shard_of_unit])
        subset_start = np.full(len(shard_of_unit), -1, np.int64)
        for shard in np.flatnonzero(rests).tolist():
            chosen = subset_rng.choice(int(sizes[shard]), int(rests[shard]), False)
            chosen.sort()
            subset_start[last_unit[shard]] = subset_total
            subsets.append(chosen.astype(np.int64))
            subset_total += len(chosen)
        unit_sizes.append(sizes_of_units.astype(np.int64))
        unit_shard_offsets.append(offsets[shard_of_unit])
        unit_subset_starts.append(subset_start)
    all_unit_sizes = np.concatenate(unit_sizes)
    return ResampledEpoch(
        unit_sizes=all_unit_sizes,
        unit_starts=np.cumsum(all_unit_sizes) - all_unit_sizes,
        unit_shard_offsets=np.concatenate(unit_shard_offsets),
        unit_subset_starts=np.concatenate(unit_subset_starts),
        subset_ids=np.concatenate(subsets) if subsets else np.zeros(0, np.int64),
    )
