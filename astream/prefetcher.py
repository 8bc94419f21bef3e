"""``Prefetcher``: a dataset's samples in any order, with the engine's window and budget."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from astream.dataset import StreamingDataset
from astream.engine.prefetch import aiterate

__all__ = ["Prefetcher"]


class Prefetcher:
    """Yield ``dataset``'s samples ``ids`` in exactly that order, fetching shards ahead.

    For inference loops and evaluation passes that choose their own order: the shards the ids
    need are fetched in the order they are first needed, within the dataset's prefetch window
    (shards and bytes) and connection caps, into the same node-local cache. Iterate it with
    ``for`` or ``async for`` (the same iterator, run in worker threads, so it never blocks your
    loop: see :meth:`StreamingDataset.__aiter__`). Negative ids count from the end, as with
    ``dataset[i]``. Building one does not load the dataset's index: the ids are checked against
    its size when the index is loaded (at once if it is; else by the first iteration, in a
    worker thread for ``async for``).

    :param dataset: the dataset to read.
    :param ids: global sample ids, in the order wanted; repeats allowed.
    """

    def __init__(self, dataset: StreamingDataset, ids: Sequence[int] | NDArray[Any]) -> None:
        self.dataset = dataset
        self._given: NDArray[np.int64] = np.asarray(ids, dtype=np.int64).reshape(-1)
        self._ids: NDArray[np.int64] | None = None
        if dataset._table is not None:
            self._ids = self._checked()

    def _checked(self) -> NDArray[np.int64]:
        array = self._given
        size = self.dataset.size
        if len(array) and (int(array.min()) < -size or int(array.max()) >= size):
            raise IndexError(f"sample ids must be within [-{size}, {size})")
        return np.where(array < 0, array + size, array)

    @property
    def ids(self) -> NDArray[np.int64]:
        """The global sample ids, negatives resolved (loads the dataset's index if needed)."""
        if self._ids is None:
            self._ids = self._checked()
        return self._ids

    def __len__(self) -> int:
        return len(self._given)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.dataset.iter_ids(self.ids)

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return aiterate(self.__iter__)
