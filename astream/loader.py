"""``StreamingDataLoader``: a torch DataLoader whose state dict makes resume exact."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from astream.errors import ConfigError, MissingDependencyError

try:
    from torch import Tensor
    from torch.utils.data import DataLoader
except ModuleNotFoundError:  # the chain would only repeat "No module named 'torch'"
    raise MissingDependencyError(
        "StreamingDataLoader needs torch, which is not installed: pip install 'astream[torch]'"
    ) from None

from astream.dataset import StreamingDataset
from astream.plan import detect_world

__all__ = ["StreamingDataLoader"]


def _batch_len(batch: Any) -> int:
    """Samples in a collated batch: a mapping's first value, a tensor, or a sequence's first item."""
    if isinstance(batch, Mapping):
        for value in batch.values():
            return len(value)
        raise ConfigError(
            "StreamingDataLoader cannot count the samples of an empty batch mapping: the "
            "collate_fn must return at least one value per sample (state_dict counts them)"
        )
    if isinstance(batch, Tensor):
        return len(batch)
    if isinstance(batch, list | tuple) and batch and not isinstance(batch[0], Mapping):
        return len(batch[0])
    return len(batch)


class StreamingDataLoader(DataLoader):  # type: ignore[type-arg]
    """A ``torch.utils.data.DataLoader`` that counts the samples it yields, for exact resume.

    Takes DataLoader's arguments. Each ``iter()`` starts the dataset's next epoch in this process
    and hands it to the workers, so epochs advance with any ``num_workers``, with or without
    ``persistent_workers`` (persistent workers are restarted when a ``load_state_dict`` or
    ``set_epoch`` moves the dataset off their own sequence). :meth:`state_dict` counts samples
    across all ranks (each rank yields the same number per step), which is what the dataset
    needs to resume mid-epoch.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        dataset = self.dataset
        if (
            isinstance(dataset, StreamingDataset)
            and self.num_workers > 0
            and dataset.batch_size is None
        ):
            # Each worker's share of the order is cut in batches of the dataset's batch_size:
            # without it, batches mix workers' samples and a resume is not exact.
            raise ConfigError(
                "StreamingDataLoader with num_workers > 0 needs the dataset's batch_size: "
                f"pass batch_size={self.batch_size} to StreamingDataset too (the "
                "per-device batch size, the same as the loader's)"
            )
        self.num_samples_yielded = 0
        # The (epoch, start) handed to the running persistent workers, if any.
        self._workers_claim: tuple[int, int] | None = None

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        dataset = self.dataset
        if isinstance(dataset, StreamingDataset) and self.num_workers > 0:
            # Workers get a pickled copy: decide the epoch here, where it persists.
            claim = dataset._claim_epoch()
            dataset._claimed = claim
            self._restart_stale_workers(claim)
            self._workers_claim = claim
        self.num_samples_yielded = 0
        for batch in super().__iter__():
            self.num_samples_yielded += _batch_len(batch)
            yield batch

    def _restart_stale_workers(self, claim: tuple[int, int]) -> None:
        """Shut down persistent workers that would not run ``claim`` by themselves.

        Persistent workers keep the dataset copy they started with and advance its epoch on
        their own, one per iteration. After a ``load_state_dict`` or ``set_epoch`` that breaks
        that sequence, they are restarted, so they start from a fresh copy that carries it.
        """
        iterator = getattr(self, "_iterator", None)
        previous = self._workers_claim
        if not self.persistent_workers or iterator is None or previous is None:
            return
        if claim == (previous[0] + 1, 0):
            return
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        self._iterator = None

    def state_dict(self) -> dict[str, Any] | None:
        """The dataset's state at the samples consumed so far (``None`` for other datasets)."""
        if not isinstance(self.dataset, StreamingDataset):
            return None
        num_samples = self.num_samples_yielded * detect_world().world_size
        if self.dataset.replication is not None:
            # Replicated ranks yield the same samples: count each group once.
            num_samples //= self.dataset.replication
        return self.dataset.state_dict(num_samples, from_beginning=False)

    def load_state_dict(self, obj: dict[str, Any]) -> None:
        """Resume the dataset from ``obj`` (call on every rank before iterating)."""
        if isinstance(self.dataset, StreamingDataset):
            self.dataset.load_state_dict(obj)
