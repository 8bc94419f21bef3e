"""``Prefetcher``: a dataset's samples in any order, with the engine's window and budget."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from astream.dataset import StreamingDataset

__all__ = ["Prefetcher"]


class Prefetcher:
    """Yield ``dataset``'s samples ``ids`` in exactly that order, fetching shards ahead.

    For inference loops and evaluation passes that choose their own order: the shards the ids
    need are fetched in the order they are first needed, within the dataset's prefetch window
    (shards and bytes) and connection caps, into the same node-local cache. Iterate it with
    ``for`` (downloads on the IO loop thread) or ``async for`` (on your loop, no thread).
    Negative ids count from the end, as with ``dataset[i]``.

    :param dataset: the dataset to read.
    :param ids: global sample ids, in the order wanted; repeats allowed.
    """

    def __init__(self, dataset: StreamingDataset, ids: Sequence[int] | NDArray[Any]) -> None:
        array = np.asarray(ids, dtype=np.int64).reshape(-1)
        size = dataset.size
        if len(array) and (int(array.min()) < -size or int(array.max()) >= size):
            raise IndexError(f"sample ids must be within [-{size}, {size})")
        self.dataset = dataset
        self.ids: NDArray[np.int64] = np.where(array < 0, array + size, array)

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.dataset.iter_ids(self.ids)

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self.dataset.aiter_ids(self.ids)
