"""The parameters of the sample order, as frozen keyword-only dataclasses, validated on creation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from astream.errors import PlanError
from astream.units import parse_count

__all__ = [
    "BATCHING_METHODS",
    "DEFAULT_SHUFFLE_SEED",
    "PARTITION_ALGOS",
    "SAMPLING_METHODS",
    "SHUFFLE_ALGOS",
    "OrderConfig",
    "PlanState",
    "StreamWeighting",
]

DEFAULT_SHUFFLE_SEED = 9176
PARTITION_ALGOS = ("orig", "relaxed")
SHUFFLE_ALGOS = ("naive", "py1s", "py2s", "py1br", "py1e")
SAMPLING_METHODS = ("balanced", "fixed")
BATCHING_METHODS = ("random", "stratified", "per_stream", "device_per_stream")

PartitionAlgo = Literal["orig", "relaxed"]
ShuffleAlgo = Literal["naive", "py1s", "py2s", "py1br", "py1e"]
SamplingMethod = Literal["balanced", "fixed"]
BatchingMethod = Literal["random", "stratified", "per_stream", "device_per_stream"]


def _positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PlanError(f"{what} must be a positive int, got {value!r}")
    return value


@dataclass(frozen=True, kw_only=True)
class StreamWeighting:
    """One stream's shards and how much of it an epoch draws.

    At most one of ``proportion`` (relative to the other streams), ``repeat`` (how many times
    over) and ``choose`` (how many samples) may be set; with none, the stream is drawn once
    (or in proportion to its size when the config sets an ``epoch_size``).

    :param shard_sizes: samples in each shard, in the stream's shard order (empty shards count:
        they take part in the shard shuffles as mosaicml-streaming's do).
    :param proportion: relative weight; either every stream of a config sets one or none does.
    :param repeat: draw the stream this many times per epoch (fractions allowed).
    :param choose: draw exactly this many samples of the stream per epoch.
    """

    shard_sizes: tuple[int, ...]
    proportion: float | None = None
    repeat: float | None = None
    choose: int | None = None

    def __post_init__(self) -> None:
        sizes = tuple(self.shard_sizes)
        object.__setattr__(self, "shard_sizes", sizes)
        if not sizes:
            raise PlanError("a stream needs at least one shard (shard_sizes is empty)")
        for index, size in enumerate(sizes):
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise PlanError(f"shard_sizes[{index}] must be a non-negative int, got {size!r}")
        if not any(sizes):
            raise PlanError("a stream needs at least one sample (every shard is empty)")
        given = [
            name for name in ("proportion", "repeat", "choose") if getattr(self, name) is not None
        ]
        if len(given) > 1:
            raise PlanError(
                f"a stream may set at most one of proportion, repeat, choose; got {given}"
            )
        for name in ("proportion", "repeat"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not value >= 0):
                raise PlanError(f"{name} must be a non-negative number, got {value!r}")
        if self.choose is not None and (
            isinstance(self.choose, bool) or not isinstance(self.choose, int) or self.choose < 0
        ):
            raise PlanError(f"choose must be a non-negative int, got {self.choose!r}")

    @property
    def num_samples(self) -> int:
        """Samples in the stream (sum of its shard sizes)."""
        return sum(self.shard_sizes)


@dataclass(frozen=True, kw_only=True)
class OrderConfig:
    """Everything that decides the order of samples in an epoch, except the world.

    Defaults are mosaicml-streaming 0.13's, so the same settings give the same sample ids.

    :param streams: the streams, in order; sample ids are global over the concatenation of all
        streams' shards (stream 0's shards first).
    :param epoch_size: samples per epoch (int or ``"100k"``-style string); with proportions it
        fixes the total, without weights it splits by stream size. ``None`` or 0: unset.
    :param sampling_method: ``"balanced"`` draws a fractional repeat anew each epoch; ``"fixed"``
        draws the same samples every epoch.
    :param sampling_granularity: samples of one shard taken together when choosing which shards
        contribute to a fractional repeat (default 1).
    :param partition_algo: ``"relaxed"`` (default) or ``"orig"``.
    :param num_canonical_nodes: the number of canonical nodes; ``None`` picks 64 x the physical
        nodes of the first run for ``py1s``/``py2s`` and the physical nodes otherwise.
    :param batch_size: the per-device batch size (``None``: 1). Keep the global batch size fixed
        across resumptions for the order to be elastic.
    :param shuffle: shuffle the samples (default ``False``).
    :param shuffle_algo: ``"py1e"`` (default), ``"py1br"``, ``"py1s"``, ``"py2s"`` or ``"naive"``.
    :param shuffle_seed: the run's seed (default 9176).
    :param shuffle_block_size: unit of shuffle for ``py1br``/``py1e``; ``None`` gives
        ``max(4_000_000 // num_canonical_nodes, 262_144)``.
    :param batching_method: ``"random"`` (default), ``"stratified"``, ``"per_stream"`` or
        ``"device_per_stream"``.
    """

    streams: tuple[StreamWeighting, ...]
    epoch_size: int | str | None = None
    sampling_method: SamplingMethod = "balanced"
    sampling_granularity: int = 1
    partition_algo: PartitionAlgo = "relaxed"
    num_canonical_nodes: int | None = None
    batch_size: int | None = None
    shuffle: bool = False
    shuffle_algo: ShuffleAlgo = "py1e"
    shuffle_seed: int = DEFAULT_SHUFFLE_SEED
    shuffle_block_size: int | None = None
    batching_method: BatchingMethod = "random"
    # The epoch size as an int (0 when unset), derived from ``epoch_size``.
    epoch_size_value: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        streams = tuple(self.streams)
        object.__setattr__(self, "streams", streams)
        if not streams:
            raise PlanError("OrderConfig needs at least one stream")
        for index, stream in enumerate(streams):
            if not isinstance(stream, StreamWeighting):
                raise PlanError(f"streams[{index}] must be a StreamWeighting, got {stream!r}")
        relative = [s.proportion is not None for s in streams]
        if any(relative) and not all(relative):
            first = relative.index(not relative[0])
            raise PlanError(
                "relative (proportion) and absolute (repeat, choose, none) stream weights "
                f"cannot be mixed (stream 0 and stream {first} differ)"
            )
        absolute = any(s.repeat is not None or s.choose is not None for s in streams)
        try:
            size = 0 if self.epoch_size is None else parse_count(self.epoch_size)
        except (TypeError, ValueError) as exc:
            raise PlanError(f"epoch_size={self.epoch_size!r} is not a sample count") from exc
        if size and absolute:
            raise PlanError("epoch_size can only be set with proportion weights or no weights")
        object.__setattr__(self, "epoch_size_value", size)
        for name, allowed in (
            ("sampling_method", SAMPLING_METHODS),
            ("partition_algo", PARTITION_ALGOS),
            ("shuffle_algo", SHUFFLE_ALGOS),
            ("batching_method", BATCHING_METHODS),
        ):
            if getattr(self, name) not in allowed:
                raise PlanError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        _positive_int(self.sampling_granularity, "sampling_granularity")
        if self.num_canonical_nodes is not None:
            _positive_int(self.num_canonical_nodes, "num_canonical_nodes")
        if self.batch_size is not None:
            _positive_int(self.batch_size, "batch_size")
        if self.shuffle_block_size is not None:
            _positive_int(self.shuffle_block_size, "shuffle_block_size")
        seed = self.shuffle_seed
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise PlanError(f"shuffle_seed must be a non-negative int, got {seed!r}")
        if not isinstance(self.shuffle, bool):
            raise PlanError(f"shuffle must be a bool, got {self.shuffle!r}")


@dataclass(frozen=True, kw_only=True)
class PlanState:
    """A position in the run, as saved in a state dict (see :meth:`EpochPlan.state_dict`).

    :param epoch: the epoch to resume.
    :param sample_in_epoch: samples of that epoch already consumed, counted over all ranks.
    :param num_canonical_nodes: the canonical node count of the run.
    :param shuffle_seed: the run's seed.
    :param initial_physical_nodes: physical nodes of the run's first launch.
    """

    epoch: int
    sample_in_epoch: int
    num_canonical_nodes: int
    shuffle_seed: int
    initial_physical_nodes: int | None
