"""What the engine knows of a dataset's streams and shards: small, immutable, picklable."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from astream.format import DatasetIndex, ShardInfo
from astream.plan._search import last_at_or_below
from astream.storage import RetryConfig, TransferConfig

__all__ = ["ShardTable", "StreamSource", "default_local", "local_only_cache"]


def default_local(remote: str) -> Path:
    """A cache directory under the system temp dir, keyed by the remote URL.

    Every process of a node that streams ``remote`` with ``local=None`` lands on the same
    directory, so they share one cache.
    """
    digest = hashlib.sha256(remote.encode()).hexdigest()[:20]
    return Path(tempfile.gettempdir()) / "astream" / digest


def local_only_cache(dataset: Path) -> Path:
    """Where a local-only dataset's decompressed shards and astream's lock files go.

    ``<temp dir>/astream/local-<digest of the folder's absolute path>``: never inside the
    dataset folder, which is only read, and the same for every process of the node.
    """
    digest = hashlib.sha256(str(dataset.resolve()).encode()).hexdigest()[:20]
    return Path(tempfile.gettempdir()) / "astream" / f"local-{digest}"


@dataclass(frozen=True, kw_only=True)
class StreamSource:
    """Where one stream's shards come from and go to, resolved from a :class:`~astream.Stream`.

    :param remote: URL (or path) of the stream's dataset, ``None`` when ``local`` is the dataset.
    :param local: the node-local cache directory; when ``remote`` is None, the dataset itself,
        read in place (see :attr:`cache_dir`).
    :param validate_hash: hash algorithm every file a sample is read from must match (checked
        on download, else when first opened: :meth:`~astream.engine.cache.ShardCache.check_hash`),
        or ``None``.
    :param keep_zip: keep compressed files next to the decompressed ones.
    :param retry: the store's retry and timeout settings.
    :param transfer: the store's part size and per-object concurrency.
    """

    remote: str | None
    local: Path
    validate_hash: str | None = None
    keep_zip: bool = False
    retry: RetryConfig = field(default_factory=RetryConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)

    @property
    def store_url(self) -> str:
        """The URL the shards are read from."""
        return self.remote if self.remote is not None else str(self.local)

    @property
    def cache_dir(self) -> Path:
        """Where shards are cached: ``local``, except for a local-only dataset (read in place),
        whose decompressed shards and lock files go to :func:`local_only_cache`."""
        return self.local if self.remote is not None else local_only_cache(self.local)


class ShardTable:
    """Every shard of every stream, numbered globally, with sample offsets.

    Sample ids are global over the concatenation of all streams' shards, stream 0's first, as the
    order plan numbers them.
    """

    def __init__(self, sources: Sequence[StreamSource], indexes: Sequence[DatasetIndex]) -> None:
        if len(sources) != len(indexes):
            raise ValueError("one index per stream source")
        self.sources: tuple[StreamSource, ...] = tuple(sources)
        shards: list[ShardInfo] = []
        stream_of: list[int] = []
        first_shard: list[int] = []
        for stream, index in enumerate(indexes):
            first_shard.append(len(shards))
            shards.extend(index.shards)
            stream_of.extend([stream] * len(index.shards))
        first_shard.append(len(shards))
        self.shards: tuple[ShardInfo, ...] = tuple(shards)
        self.shard_stream: NDArray[np.int64] = np.asarray(stream_of, dtype=np.int64)
        #: Global shard number of each stream's first shard, plus the total at the end.
        self.stream_first_shard: tuple[int, ...] = tuple(first_shard)
        sizes = np.asarray([s.samples for s in shards], dtype=np.int64)
        #: ``sample_offsets[k]`` is the global id of shard ``k``'s first sample.
        self.sample_offsets: NDArray[np.int64] = np.zeros(len(shards) + 1, dtype=np.int64)
        np.cumsum(sizes, out=self.sample_offsets[1:])
        #: Bytes each shard costs to fetch (its compressed file when it has one).
        self.fetch_bytes: NDArray[np.int64] = np.asarray(
            [(s.zip or s.raw).bytes for s in shards], dtype=np.int64
        )

    @property
    def num_samples(self) -> int:
        """Samples over every stream."""
        return int(self.sample_offsets[-1])

    def stream_shard_sizes(self, stream: int) -> tuple[int, ...]:
        """Samples in each shard of ``stream``."""
        lo, hi = self.stream_first_shard[stream], self.stream_first_shard[stream + 1]
        return tuple(int(s.samples) for s in self.shards[lo:hi])

    def locate(self, ids: NDArray[np.int64]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """``(shard, index in shard)`` of each global sample id (ids must be in range)."""
        shard = last_at_or_below(self.sample_offsets, ids)
        return shard, ids - self.sample_offsets[shard]

    def locate_one(self, sample_id: int) -> tuple[int, int]:
        """``(shard, index in shard)`` of one global sample id."""
        if not 0 <= sample_id < self.num_samples:
            raise IndexError(f"sample id {sample_id} out of range [0, {self.num_samples})")
        shard = int(np.searchsorted(self.sample_offsets, sample_id, side="right")) - 1
        return shard, sample_id - int(self.sample_offsets[shard])
