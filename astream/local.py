"""``LocalDataset``: a map-style dataset over a dataset directory on local disk, no streaming."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from astream.dataset import sample_keys
from astream.errors import DatasetNotFoundError
from astream.format import ShardInfo, ShardReader, load_index, open_shard

try:  # torch is an extra: without it the dataset is a plain sequence
    from torch.utils.data import Dataset as _Base
except ImportError:  # pragma: no cover - exercised only without the torch extra
    _Base = object  # type: ignore[assignment,misc]

__all__ = ["LocalDataset"]


class LocalDataset(_Base):  # type: ignore[type-arg]
    """The samples of a dataset whose shards lie on local disk, by index (mosaicml-streaming's
    ``LocalDataset``): ``dataset[i]``, slices and lists of ids, ``len(dataset)``.

    Shards are opened (memory-mapped) when first read and stay open; the dataset pickles into
    DataLoader workers without them.

    :param local: the dataset directory (with ``index.json``).
    :param split: a sub-directory of ``local``.
    :param allow_unsafe_types: allow ``pkl`` columns (they run code when decoded).
    :raises DatasetNotFoundError: no ``index.json`` in the directory.
    """

    def __init__(
        self,
        local: str | os.PathLike[str],
        split: str | None = None,
        *,
        allow_unsafe_types: bool = False,
    ) -> None:
        self.local = os.fspath(local)
        self.split = split or ""
        self.root = Path(self.local) / self.split
        path = self.root / "index.json"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise DatasetNotFoundError(
                f"no dataset at {self.root}: {path} does not exist"
            ) from None
        self.allow_unsafe_types = allow_unsafe_types
        #: The shards' index records, in order.
        self.shards: tuple[ShardInfo, ...] = load_index(data, source=str(path)).shards
        sizes = np.asarray([s.samples for s in self.shards], np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        #: Samples over every shard.
        self.num_samples = int(self._offsets[-1])
        self._readers: dict[int, ShardReader] = {}

    def __len__(self) -> int:
        return self.num_samples

    @property
    def size(self) -> int:
        """Samples over every shard (the same as ``len``)."""
        return self.num_samples

    def get_item(self, sample_id: int) -> dict[str, Any]:
        """One sample by id."""
        (sample_id,) = sample_keys(sample_id, self.num_samples)
        shard = int(np.searchsorted(self._offsets, sample_id, side="right")) - 1
        reader = self._readers.get(shard)
        if reader is None:
            reader = open_shard(
                self.shards[shard], self.root, allow_unsafe_types=self.allow_unsafe_types
            )
            self._readers[shard] = reader
        return reader[sample_id - int(self._offsets[shard])]

    def __getitem__(self, key: Any) -> Any:
        """One sample (an int) or a list of them (a slice, a list or an array of ints)."""
        if isinstance(key, int | np.integer):
            return self.get_item(int(key))
        return [self.get_item(i) for i in sample_keys(key, self.num_samples)]

    def close(self) -> None:
        """Close the open shards (they reopen when read again)."""
        readers, self._readers = self._readers, {}
        for reader in readers.values():
            reader.close()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_readers"] = {}
        return state

    def __repr__(self) -> str:
        return f"LocalDataset({str(self.root)!r}, samples={self.num_samples})"
