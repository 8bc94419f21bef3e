"""``StreamingDataLoader``: a torch DataLoader whose state dict makes resume exact."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Iterator, Mapping
from multiprocessing.reduction import ForkingPickler
from typing import Any

from astream.errors import ConfigError, MissingDependencyError

try:
    import torch
    from torch import Tensor
    from torch.multiprocessing.reductions import reduce_tensor
    from torch.utils.data import DataLoader
except ModuleNotFoundError:  # the chain would only repeat "No module named 'torch'"
    raise MissingDependencyError(
        "StreamingDataLoader needs torch, which is not installed: pip install 'astream[torch]'"
    ) from None

from astream.dataset import StreamingDataset
from astream.plan import detect_world

__all__ = ["StreamingDataLoader"]

#: Freed heap a DataLoader worker keeps for its next batches instead of handing it back to the
#: kernel (glibc's ``M_TOP_PAD``). Without it, a worker that frees its batch (the samples, the
#: collate's buffers) returns those pages at once and takes fresh zeroed ones for the next batch:
#: a page fault per 4 KiB, about 500 per batch of 256 samples of 4 KiB. It bounds what each
#: worker may hold unused, not what it uses.
WORKER_HEAP_PAD = 32 << 20
_M_TOP_PAD = -2  # glibc's malloc.h


def keep_heap_for_batches(pad: int = WORKER_HEAP_PAD) -> bool:
    """Make this process keep ``pad`` bytes of freed heap for reuse (glibc only).

    Returns whether the setting took: ``False`` where the C library is not glibc.
    """
    try:
        libc_name = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):  # not a glibc system (the name is unknown there)
        return False
    if not libc_name or not libc_name.startswith("glibc"):
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    return mallopt is not None and bool(mallopt(_M_TOP_PAD, pad))


#: Tensors of a batch up to this many bytes travel from a worker inside the batch's pickle. A
#: tensor sent the torch way is copied into a new shared-memory segment whose file descriptor the
#: main process then fetches over a socket of its own from the worker (a connection, an HMAC
#: challenge each way): about 1.5 ms per tensor on the build machine, and the main process waits
#: it out batch after batch, whatever the tensor's size. Up to 64 KiB (a pipe's default buffer,
#: so the message goes in one write) a copy costs microseconds. Bigger tensors go the torch way.
SMALL_TENSOR_BYTES = 64 << 10


def _tensor_from_bytes(data: bytes, dtype: torch.dtype, shape: tuple[int, ...]) -> Tensor:
    """A tensor sent by value by :func:`_reduce_tensor` (in the main process)."""
    if not data:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(data), dtype=dtype).reshape(shape)


def _reduce_tensor(tensor: Tensor) -> tuple[Any, tuple[Any, ...]]:
    """How a worker pickles a tensor: by value when small and plain, else the torch way."""
    if (
        tensor.device.type == "cpu"
        and tensor.layout == torch.strided
        and not tensor.requires_grad
        and not tensor.is_quantized
        and not tensor.is_conj()
        and not tensor.is_neg()
        and tensor.numel() * tensor.element_size() <= SMALL_TENSOR_BYTES
    ):
        data = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        return _tensor_from_bytes, (data, tensor.dtype, tuple(tensor.shape))
    return reduce_tensor(tensor)  # type: ignore[no-untyped-call,no-any-return]


def send_small_tensors_by_value() -> None:
    """In this process, pickle for other processes tensors of up to
    :data:`SMALL_TENSOR_BYTES` by value (see there); bigger ones as torch does."""
    ForkingPickler.register(torch.Tensor, _reduce_tensor)


class _WorkerSetup:
    """A DataLoader worker's start: astream's process settings, then the user's init function.

    Picklable (a module-level class holding the user's function), for every start method.
    """

    def __init__(self, user_init: Callable[[int], None] | None) -> None:
        self.user_init = user_init

    def __call__(self, worker_id: int) -> None:
        keep_heap_for_batches()
        send_small_tensors_by_value()
        if self.user_init is not None:
            self.user_init(worker_id)


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

    Its worker processes keep up to :data:`WORKER_HEAP_PAD` bytes of freed heap for their next
    batches (glibc), so that batch after batch they reuse memory instead of faulting in fresh
    zeroed pages (about a page fault per 4 KiB of samples and collate buffers otherwise). The
    user's ``worker_init_fn`` runs after that setting, and the attribute stays the user's.
    Tensors of a batch up to :data:`SMALL_TENSOR_BYTES` (64 KiB) travel from a worker inside
    the batch's pickle, as plain memory of the main process; bigger ones through shared memory,
    as torch sends them (which costs the main process a file-descriptor hand-off per tensor).
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

    def _get_iterator(self) -> Any:
        # The workers start with astream's settings (see _WorkerSetup); the user's
        # worker_init_fn attribute is left as the user set it.
        if self.num_workers == 0:
            return super()._get_iterator()
        user_init = self.worker_init_fn
        self.worker_init_fn = _WorkerSetup(user_init)
        try:
            return super()._get_iterator()
        finally:
            self.worker_init_fn = user_init

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
