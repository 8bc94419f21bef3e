"""``StreamingDataLoader``: a torch DataLoader whose state dict makes resume exact."""

from __future__ import annotations

import ctypes
import dataclasses
import io
import itertools
import logging
import mmap
import os
import pickle
import struct
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from multiprocessing.reduction import DupFd, ForkingPickler
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

_log = logging.getLogger(__name__)

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
#: so the message goes in one write) a copy costs microseconds. Bigger tensors of a batch go
#: through the worker's ring (:class:`_BatchRing`) where they can, else the torch way.
SMALL_TENSOR_BYTES = 64 << 10


def _tensor_from_bytes(data: bytes, dtype: torch.dtype, shape: tuple[int, ...]) -> Tensor:
    """A tensor sent by value by :func:`_reduce_tensor` (in the main process)."""
    if not data:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(data), dtype=dtype).reshape(shape)


def _conj(tensor: Tensor) -> Tensor:
    return tensor.conj()


def _neg_view(tensor: Tensor) -> Tensor:
    return torch._neg_view(tensor)


def _dense_cpu(tensor: Tensor) -> bool:
    """A dense CPU tensor of plain values: its bytes, dtype and geometry are all it is."""
    return (
        tensor.device.type == "cpu"
        and tensor.layout == torch.strided
        and not tensor.is_nested  # strided too, but without sizes or strides
        and not tensor.requires_grad
        and not tensor.is_quantized
    )


def _reduce_tensor(tensor: Tensor) -> tuple[Any, tuple[Any, ...]]:
    """How a worker pickles a tensor: by value when small and plain, else the torch way."""
    # torch's way drops a lazy conjugate's or negative's bit (x.conj(), x.conj().imag): the
    # values came back unconjugated, not negated. The view without the bit goes, the bit is
    # set again on arrival (on the same storage as the batch's other views of it).
    if tensor.is_conj():
        return _conj, (tensor.conj(),)
    if tensor.is_neg():
        return _neg_view, (torch._neg_view(tensor),)
    if _dense_cpu(tensor) and tensor.numel() * tensor.element_size() <= SMALL_TENSOR_BYTES:
        data = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        return _tensor_from_bytes, (data, tensor.dtype, tuple(tensor.shape))
    return reduce_tensor(tensor)  # type: ignore[no-untyped-call,no-any-return]


def send_small_tensors_by_value() -> None:
    """In this process, pickle for other processes tensors of up to
    :data:`SMALL_TENSOR_BYTES` by value (see there); bigger ones as torch does."""
    ForkingPickler.register(torch.Tensor, _reduce_tensor)


#: Bytes of the shared memory through which each DataLoader worker hands its batches' bigger
#: tensors to the main process (see :class:`_BatchRing`). Pages are taken as batches fill them:
#: the ring restarts at its beginning whenever the main process has taken everything, so a
#: worker holds about the bytes of its batches in flight (``prefetch_factor`` of them).
RING_BYTES = 64 << 20
_RING_HEAD = 64  # the ring's first bytes: the main process's "taken up to" count (uint64)
_BLOCK_HEAD = struct.Struct("<QQ")  # each block: its start and its size, checked on arrival
_RINGS: weakref.WeakValueDictionary[str, _BatchRing] = weakref.WeakValueDictionary()
_ring_names = itertools.count()


def _block_bytes(nbytes: int) -> int:
    """Room a block of ``nbytes`` takes in a ring: its head, its bytes to a 64-byte line."""
    return _BLOCK_HEAD.size + -(-nbytes // 64) * 64


class _BatchRing:
    """Shared memory through which one DataLoader worker sends its batches' big tensors.

    torch sends a tensor of a batch by copying it into a new shared-memory segment whose file
    descriptor the main process then fetches from the worker over a connection of its own: the
    worker answers it from a thread that must first take the worker's interpreter lock, which the
    worker, decoding its next batch, holds for up to ``sys.getswitchinterval()`` (5 ms) at a
    time. The main process waits that out for every batch. Here the worker copies the tensor
    into this ring instead, created with the DataLoader's iterator and shared with the worker
    once, and the main process copies it out as it unpickles the batch: it never waits on the
    worker.

    A ring of ``RING_BYTES`` after a small head. The worker appends blocks; the main process takes
    them in the order they were sent (one worker's batches arrive in order) and records in the head
    how far it has taken them, which is what frees the bytes for the worker. A block that does
    not fit goes the torch way, so the worker never waits either.
    """

    def __init__(self, size: int) -> None:
        self.name = f"{os.getpid()}-{next(_ring_names)}"
        self.size = size
        self.fd = os.memfd_create(f"astream-batches-{self.name}", os.MFD_CLOEXEC)
        self._setup()
        _RINGS[self.name] = self

    def _setup(self) -> None:
        os.ftruncate(self.fd, _RING_HEAD + self.size)
        self.map = mmap.mmap(self.fd, _RING_HEAD + self.size)
        # Each is one aligned 8-byte load or store, never torn by the other process's access.
        self._taken = ctypes.c_uint64.from_buffer(self.map, 0)
        self._base = ctypes.addressof(ctypes.c_char.from_buffer(self.map, _RING_HEAD))
        self._head = 0  # the worker's: where its next block starts (a count of bytes ever used)
        self._floor = 0  # the worker's: where its current lap on an empty ring started
        self._lock = threading.Lock()
        # The mapping goes with the object (mmap's own); the descriptor with it too.
        self._close_fd = weakref.finalize(self, os.close, self.fd)
        self._close_fd.atexit = False

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # For a worker started by spawn or forkserver: the file descriptor travels with the
        # process's start (a forked worker shares the object itself and never pickles it).
        return _ring_of_fd, (self.name, self.size, DupFd(self.fd))

    def put(self, storage: torch.UntypedStorage) -> int | None:
        """Copy ``storage``'s bytes into the ring (in the worker); where they start, or ``None``
        when the ring has no room for them now (the caller sends them another way)."""
        nbytes = storage.nbytes()
        need = _block_bytes(nbytes)
        size = self.size
        if need > size // 4:
            return None
        with self._lock:
            # What the main process has taken, or more: a lap started on an empty ring frees
            # the rest of the lap before it.
            taken = max(self._taken.value, self._floor)
            head = self._head
            if taken >= head:
                # All taken: start again at the ring's beginning (the next lap's start).
                start = self._floor = -(-head // size) * size
            else:
                at = head % size
                start = head if at + need <= size else head + size - at
                if start + need - taken > size:
                    return None
            self._head = start + need
        address = self._base + start % size
        _BLOCK_HEAD.pack_into(self.map, _RING_HEAD + start % size, start, nbytes)
        ctypes.memmove(address + _BLOCK_HEAD.size, storage.data_ptr(), nbytes)
        return start

    def take(self, start: int, nbytes: int) -> torch.UntypedStorage:
        """The ``nbytes`` the worker put at ``start`` (in the main process), copied out into a
        storage of this process; frees their room and that of every block before them."""
        offset = _RING_HEAD + start % self.size
        begin, sent = _BLOCK_HEAD.unpack_from(self.map, offset)
        out = torch.empty(nbytes, dtype=torch.uint8)
        if begin != start or sent != nbytes:
            raise RuntimeError(
                f"StreamingDataLoader: a worker's batch tensor at {start} of ring {self.name} "
                "was overwritten before the main process took it (an astream bug: please report it)"
            )
        ctypes.memmove(out.data_ptr(), self._base + start % self.size + _BLOCK_HEAD.size, nbytes)
        end = start + _block_bytes(nbytes)
        if end > self._taken.value:
            self._taken.value = end
        return out.untyped_storage()

    def close(self) -> None:
        """Unmap the ring and close its file now (only where nothing can take from it any
        more: otherwise the ring goes when the last reference to it does)."""
        del self._taken, self._base
        self.map.close()
        self._close_fd()


def _ring_of_fd(name: str, size: int, fd: Any) -> _BatchRing:
    """A ring of the main process, in a worker it spawned (see :meth:`_BatchRing.__reduce__`)."""
    ring = _BatchRing.__new__(_BatchRing)
    ring.name, ring.size, ring.fd = name, size, fd.detach()
    ring._setup()
    return ring


def _plain(tensor: Tensor) -> bool:
    """A dense CPU tensor that is nothing but a storage, a dtype and a geometry (sizes, strides,
    offset): rebuilt the same way on a copy of its storage, it is the same tensor."""
    return (
        type(tensor) is torch.Tensor
        and _dense_cpu(tensor)
        and not tensor.is_conj()
        and not tensor.is_neg()
    )


class _RingBlock:
    """A storage of a batch that a worker put in its ring. Pickled once per batch (the
    pickler's memo refers to it again), so every tensor on that storage unpickles onto the one
    copy the main process takes out, and they share memory there as they did in the worker."""

    __slots__ = ("name", "nbytes", "start")

    def __init__(self, name: str, start: int, nbytes: int) -> None:
        self.name, self.start, self.nbytes = name, start, nbytes

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return _from_ring, (self.name, self.start, self.nbytes)


def _from_ring(name: str, start: int, nbytes: int) -> torch.UntypedStorage:
    ring = _RINGS.get(name)
    if ring is None:
        raise RuntimeError(
            f"StreamingDataLoader: a batch tensor came through ring {name}, which this process "
            "does not have (a batch of a DataLoader worker unpickled outside its main process)"
        )
    return ring.take(start, nbytes)


def _on_storage(
    storage: torch.UntypedStorage,
    dtype: torch.dtype,
    shape: tuple[int, ...],
    stride: tuple[int, ...],
    offset: int,
) -> Tensor:
    """A tensor sent through a ring: its geometry on the copy of its storage."""
    return torch.empty(0, dtype=dtype).set_(storage, offset, shape, stride)


class _BatchPickler(ForkingPickler):
    """Pickles a batch in a worker: the storages of plain tensors bigger than
    :data:`SMALL_TENSOR_BYTES` through the worker's ring when they fit, each once, with every
    plain tensor of the batch on them (views, reshapes: they share memory in the main process as
    in the worker); everything else as the worker pickles it anyway."""

    def __init__(self, file: io.BytesIO, ring: _BatchRing) -> None:
        super().__init__(file, pickle.HIGHEST_PROTOCOL)
        self.ring = ring
        # By storage (torch's object, which stays when torch's way moves its bytes to shared
        # memory: the address changes), and its bytes: its block, or None where it went the
        # torch way (its other tensors follow it there, so that they share it as before).
        self.blocks: dict[tuple[int, int], _RingBlock | None] = {}

    def reducer_override(self, obj: Any) -> Any:
        if not isinstance(obj, torch.Tensor) or not _plain(obj):
            return NotImplemented
        storage = obj.untyped_storage()
        key = (storage._cdata, storage.nbytes())
        if key in self.blocks:
            block = self.blocks[key]
        elif obj.numel() * obj.element_size() <= SMALL_TENSOR_BYTES:
            return NotImplemented
        else:
            # A storage already in shared memory (a dataset's shared tensor) goes the torch
            # way: as it is, without a copy, and still shared in the main process.
            start = None if storage.is_shared() else self.ring.put(storage)
            block = None if start is None else _RingBlock(self.ring.name, start, key[1])
            self.blocks[key] = block
        if block is None:
            return NotImplemented
        return _on_storage, (block, obj.dtype, tuple(obj.shape), obj.stride(), obj.storage_offset())


def _unpickle_batch(data: bytes) -> Any:
    return pickle.loads(data)


class _RingBatch:
    """A collated batch on its way from a worker, pickled through :class:`_BatchPickler` where it
    is made: in the worker's main thread, not in its queue's feeder thread.

    The feeder thread is a daemon that a worker leaving mid-epoch does not wait for (torch
    cancels the join). Pickling there, a batch's copy into the ring or torch's own reducers ran
    native code without the GIL while the interpreter shut down, and the thread, ended in that
    code, took the whole worker down (``terminate called without an active exception``,
    SIGABRT, which the main process reports as a dead worker). The feeder now only writes bytes.
    """

    __slots__ = ("data",)

    def __init__(self, batch: Any, ring: _BatchRing) -> None:
        buffer = io.BytesIO()
        try:
            _BatchPickler(buffer, ring).dump(batch)
        except Exception as error:
            data = ForkingPickler.dumps(batch)  # raises as before if the batch cannot go
            # Logged, not warned: a warning made an error would fail a batch torch would send.
            _log.warning(
                "StreamingDataLoader: a batch could not go through the worker's ring (%r); it "
                "went the torch way (an astream bug: please report it)",
                error,
            )
            self.data = bytes(data)
        else:
            self.data = buffer.getvalue()

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return _unpickle_batch, (self.data,)


class _RingCollate:
    """The user's collate_fn, in a worker, with its batch sent through the worker's ring."""

    def __init__(self, collate: Callable[[Any], Any], rings: list[_BatchRing]) -> None:
        self.collate = collate
        self.rings = rings

    def __call__(self, samples: Any) -> Any:
        batch = self.collate(samples)
        info = torch.utils.data.get_worker_info()
        if info is None:  # not in a worker (called by hand): nothing to send
            return batch
        return _RingBatch(batch, self.rings[info.id])


def _open_rings(count: int) -> list[_BatchRing]:
    """A ring per worker; none where the system has no ``memfd_create`` (torch's way then)."""
    if not hasattr(os, "memfd_create"):
        return []
    rings: list[_BatchRing] = []
    try:
        rings.extend(_BatchRing(RING_BYTES) for _ in range(count))
    except OSError:  # no memfd here (a sandbox that forbids it): torch's way
        _close_rings(rings)
        return []
    return rings


def _close_rings(rings: list[_BatchRing]) -> None:
    for ring in rings:
        ring.close()


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
    """Samples in a collated batch: a mapping's or a dataclass's first value, a tensor, or a
    sequence's first item."""
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        batch = {field.name: getattr(batch, field.name) for field in dataclasses.fields(batch)}
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
        batch = batch[0]
    try:
        return len(batch)
    except TypeError:
        raise ConfigError(
            f"StreamingDataLoader cannot count the samples of a batch of {type(batch).__name__}, "
            "which has no len(): the collate_fn must return a mapping, a dataclass, a tensor or "
            "a sequence whose first value has an entry per sample (state_dict counts them)"
        ) from None


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
    the batch's pickle, as plain memory of the main process; bigger plain ones through a ring of
    shared memory per worker (:class:`_BatchRing`, Linux), copied out by the main process; any
    other through shared memory as torch sends them (which costs the main process a
    file-descriptor hand-off per tensor, waiting on the worker).
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
        user_init, user_collate = self.worker_init_fn, self.collate_fn
        rings = _open_rings(self.num_workers) if self._auto_collation else []
        self.worker_init_fn = _WorkerSetup(user_init)
        if rings:
            self.collate_fn = _RingCollate(user_collate, rings)
        try:
            iterator = super()._get_iterator()
        except BaseException:
            _close_rings(rings)
            raise
        finally:
            self.worker_init_fn, self.collate_fn = user_init, user_collate
        # The rings live as long as the iterator (its collate holds them), persistent or not,
        # and as long as a batch is being taken from one: torch's pin-memory thread may still be
        # unpickling one while a reference cycle's iterator is collected, whose weakref
        # callbacks run before its __del__ stops that thread, and at exit. Unmapping a ring
        # then would pull the memory from under the copy (a crash).
        return iterator

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
