"""What StreamingDataLoader sets up in its worker processes, beside the user's worker_init_fn."""

from __future__ import annotations

import dataclasses
import gc
import io
import os
import pickle
import resource
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from astream import StreamingDataLoader, StreamingDataset
from astream.loader import SMALL_TENSOR_BYTES
from tests.engine.datasets import check_sample, sample_bytes, write_mds

N = 40
#: Bytes a batch's samples and collate buffers take in the heap test (2,048 blocks of 4 KiB).
CHURN_BLOCKS = 2048


def _glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (ValueError, OSError):
        return False


def _faults_of_batch_churn(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """A collate (run in the worker) that builds and frees a batch's worth of 4 KiB buffers a
    few times, as a worker does batch after batch, and counts the page faults of the last
    rounds (the first may grow the heap)."""
    rounds = []
    for _ in range(4):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        blocks = [bytes(4096) for _ in range(CHURN_BLOCKS)]
        del blocks
        rounds.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return {"ids": [check_sample(s) for s in samples], "faults": rounds[1:]}


_INIT_SEEN: list[int] = []


def _user_init(worker_id: int) -> None:
    _INIT_SEEN.append(worker_id)


def _report_init(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {"ids": [check_sample(s) for s in samples], "init": list(_INIT_SEEN)}


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mds(tmp_path_factory.mktemp("mds"), N)


@pytest.mark.skipif(not _glibc(), reason="the heap setting is glibc's (M_TOP_PAD)")
def test_workers_reuse_freed_batch_memory(dataset_dir: Path) -> None:
    # Freed batch memory stays with the worker for the next batch: without it, each batch's
    # pages go back to the kernel and come back zeroed, a page fault per 4 KiB.
    dataset = StreamingDataset(local=dataset_dir, batch_size=8)
    loader = StreamingDataLoader(
        dataset, batch_size=8, num_workers=1, collate_fn=_faults_of_batch_churn
    )
    batches = list(loader)
    assert sorted(i for b in batches for i in b["ids"]) == list(range(N))
    faults = [f for b in batches for f in b["faults"]]
    # Fresh pages for every round would be CHURN_BLOCKS faults a round; reused ones, few.
    assert max(faults) < CHURN_BLOCKS // 4, faults


def test_the_users_worker_init_fn_still_runs(dataset_dir: Path) -> None:
    dataset = StreamingDataset(local=dataset_dir, batch_size=8)
    loader = StreamingDataLoader(
        dataset,
        batch_size=8,
        num_workers=2,
        worker_init_fn=_user_init,
        collate_fn=_report_init,
        multiprocessing_context="spawn",
    )
    batches = list(loader)
    assert sorted(i for b in batches for i in b["ids"]) == list(range(N))
    assert sorted({tuple(b["init"]) for b in batches}) == [(0,), (1,)]
    # The attribute is the user's, before and after the workers started.
    assert loader.worker_init_fn is _user_init


def _tensors(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return _tensors_of([check_sample(s) for s in samples])


def _tensors_of(sample_ids: list[int]) -> dict[str, Any]:
    """A batch of tensors of every kind of layout, small and big, as a collate returns them."""
    ids = torch.tensor(sample_ids, dtype=torch.int64)
    grid = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    return {
        "ids": ids,
        "half": ids.to(torch.bfloat16),
        "flags": ids % 2 == 0,
        "transposed": grid.t(),  # not contiguous
        "view": grid[1:3, 2:],  # a view into a bigger storage
        "scalar": torch.tensor(7),
        "empty": torch.zeros(0, 3),
        "big": torch.ones(SMALL_TENSOR_BYTES // 4 + 1, dtype=torch.float32),
    }


def test_small_tensors_come_by_value_big_ones_through_the_ring(dataset_dir: Path) -> None:
    # A tensor sent through shared memory costs the main process a file-descriptor hand-off
    # with the worker (a socket connection and an HMAC challenge each way), whatever its size:
    # small ones come inside the batch's pickle instead, big ones through the worker's ring,
    # with the same values, dtype, shape and strides.
    dataset = StreamingDataset(local=dataset_dir, batch_size=8)
    loader = StreamingDataLoader(dataset, batch_size=8, num_workers=1, collate_fn=_tensors)
    batches = list(loader)
    assert sorted(i for b in batches for i in b["ids"].tolist()) == list(range(N))
    grid = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    for batch in batches:
        expected = _tensors_of(batch["ids"].tolist())
        for name, tensor in batch.items():
            want = expected[name]
            assert tensor.dtype == want.dtype and tensor.shape == want.shape, name
            assert torch.equal(tensor, want), name
            # Plain memory of the main process, writable: by value inside the pickle, or
            # copied out of the worker's ring (the big one); none left in shared memory.
            assert not tensor.is_shared(), name
        batch["ids"] += 1  # writable
        assert torch.equal(batch["transposed"], grid.t())


# -- the batch ring: big tensors from worker to main process without an fd hand-off -----------


def _big_tensors(samples: list[dict[str, Any]]) -> dict[str, Any]:
    ids = [check_sample(s) for s in samples]
    return _big_tensors_of(ids)


def _big_tensors_of(ids: list[int]) -> dict[str, Any]:
    """A batch with big tensors of every kind: ones the ring carries and ones it leaves to torch."""
    base = torch.tensor(ids, dtype=torch.float64).repeat_interleave(SMALL_TENSOR_BYTES // 4)
    grid = base.reshape(len(ids), -1)
    return {
        "ids": torch.tensor(ids),
        "payload": grid.to(torch.uint8),  # contiguous, its whole storage
        "nested": [grid * 2, (grid + 1).to(torch.int32)],
        "transposed": grid.t(),  # not contiguous
        "half_view": grid[: max(1, len(ids) // 2)],  # part of a bigger storage, the transposed's
        "grad": (grid * 3).requires_grad_(),  # not plain: always the torch way
    }


def _check_big_batch(batch: dict[str, Any]) -> None:
    expected = _big_tensors_of(batch["ids"].tolist())
    flat = [
        ("ids", batch["ids"], expected["ids"]),
        ("payload", batch["payload"], expected["payload"]),
    ]
    flat += [("transposed", batch["transposed"], expected["transposed"])]
    flat += [("half_view", batch["half_view"], expected["half_view"])]
    flat += [("grad", batch["grad"], expected["grad"])]
    flat += [
        (f"nested{i}", got, want)
        for i, (got, want) in enumerate(zip(batch["nested"], expected["nested"], strict=True))
    ]
    for name, got, want in flat:
        assert got.dtype == want.dtype and got.shape == want.shape, name
        assert torch.equal(got, want), name
        assert got.stride() == want.stride(), name
        assert got.storage_offset() == want.storage_offset(), name
    # Views of one storage in the worker are views of one storage in the main process.
    assert _same_memory(batch["transposed"], batch["half_view"])


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _refuse_fd_handoff(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("a batch tensor came by a file-descriptor hand-off")


def _ring_loader(
    dataset_dir: Path, collate: Any = _big_tensors, **kwargs: Any
) -> StreamingDataLoader:
    dataset = StreamingDataset(local=dataset_dir, batch_size=8)
    return StreamingDataLoader(dataset, batch_size=8, collate_fn=collate, **kwargs)


def _ring_only(samples: list[dict[str, Any]]) -> dict[str, Any]:
    batch = _big_tensors(samples)
    del batch["grad"]
    return batch


@pytest.mark.parametrize(("workers", "context"), [(2, None), (1, "spawn")])
def test_big_tensors_come_through_the_ring_not_an_fd_handoff(
    dataset_dir: Path, monkeypatch: pytest.MonkeyPatch, workers: int, context: str | None
) -> None:
    # The ring carries big plain tensors: the main process never fetches a file descriptor
    # from a worker for them (the hand-off that waits on the worker's interpreter lock), with
    # forked workers (which share the ring) and spawned ones (which get its descriptor at
    # start), whatever their geometry (a view, transposed: their storage comes through the ring,
    # once). Tensors that are more than a storage and a geometry (one that requires grad) go the
    # torch way, as before: the patch below would fail them, so they are left out here.
    import torch.multiprocessing.reductions as reductions

    monkeypatch.setattr(reductions, "rebuild_storage_fd", _refuse_fd_handoff)
    loader = _ring_loader(
        dataset_dir, _ring_only, num_workers=workers, multiprocessing_context=context
    )
    batches = list(loader)
    assert sorted(i for b in batches for i in b["ids"].tolist()) == list(range(N))
    for batch in batches:
        batch["grad"] = _big_tensors_of(batch["ids"].tolist())["grad"]
        _check_big_batch(batch)
        # Plain memory of the main process, writable, not shared with the worker any more.
        assert not batch["payload"].is_shared() and not batch["transposed"].is_shared()
        batch["payload"] += 1


@pytest.mark.parametrize("persistent", [False, True])
def test_batches_through_the_ring_are_the_collates_batches(
    dataset_dir: Path, persistent: bool
) -> None:
    loader = _ring_loader(dataset_dir, num_workers=2, persistent_workers=persistent)
    for _epoch in range(2):
        batches = list(loader)
        assert sorted(i for b in batches for i in b["ids"].tolist()) == list(range(N))
        for batch in batches:
            _check_big_batch(batch)


_COLLATED: list[int] = []


def _big_tensors_marking_the_last(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """:func:`_big_tensors`, creating the file ``$ASTREAM_TEST_LAST_BATCH`` after the worker's
    last batch (``N // 8`` of them)."""
    batch = _big_tensors(samples)
    _COLLATED.append(len(samples))
    if len(_COLLATED) == N // 8:
        Path(os.environ["ASTREAM_TEST_LAST_BATCH"]).touch()
    return batch


def test_a_full_ring_sends_the_torch_way(
    dataset_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A ring too small for what is in flight: the tensors that do not fit go through torch's
    # shared memory, the others through the ring; every batch is still the collate's.
    import astream.loader as loader_module

    # Room for the ring's storages of about 1.7 of the 5 batches (2.6 MiB each; 1 MiB the
    # biggest, which must be at most a quarter of the ring).
    monkeypatch.setattr(loader_module, "RING_BYTES", 9 << 19)
    marker = tmp_path / "last-batch-collated"
    monkeypatch.setenv("ASTREAM_TEST_LAST_BATCH", str(marker))
    loader = _ring_loader(
        dataset_dir, _big_tensors_marking_the_last, num_workers=1, prefetch_factor=N // 8
    )
    iterator = iter(loader)
    batches = [next(iterator)]
    # The worker collates and sends all its other batches before the main process takes any:
    # wait for its last collate (which pickles the batch), then for its queue thread to send it.
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "the worker did not collate its last batch within 60 s"
    time.sleep(0.5)
    batches += list(iterator)
    assert sorted(i for b in batches for i in b["ids"].tolist()) == list(range(N))
    for batch in batches:
        _check_big_batch(batch)
    shared = [t.is_shared() for b in batches for t in (b["payload"], *b["nested"])]
    assert any(shared) and not all(shared), shared
    assert all(b["grad"].is_shared() for b in batches)  # never the ring's


def _taken(ring: Any, start: int | None, nbytes: int) -> torch.Tensor:
    assert start is not None
    return torch.empty(0, dtype=torch.uint8).set_(ring.take(start, nbytes))


def test_the_ring_frees_in_order_wraps_and_refuses_what_does_not_fit() -> None:
    from astream.loader import _BatchRing

    ring = _BatchRing(1 << 20)
    size = 250 << 10  # with its 16-byte head, a block takes 256,016 bytes: 4 fit
    try:
        block = torch.arange(size, dtype=torch.int32).to(torch.uint8)
        starts = [ring.put(block.untyped_storage()) for _ in range(5)]
        assert starts == [0, 256016, 512032, 768048, None]  # the fifth: no room
        assert (
            ring.put(torch.zeros(300 << 10, dtype=torch.uint8).untyped_storage()) is None
        )  # > a quarter
        assert torch.equal(_taken(ring, starts[0], size), block)
        assert torch.equal(_taken(ring, starts[1], size), block)
        # Two blocks' room is free again, but not in one piece at the end: it wraps.
        wrapped = ring.put((block + 1).untyped_storage())
        assert wrapped == 1 << 20
        for start in starts[2:4]:
            assert start is not None
            assert torch.equal(_taken(ring, start, size), block)
        assert torch.equal(_taken(ring, wrapped, size), block + 1)
        # Everything taken: the next block starts the next lap at the ring's beginning, and
        # the lap's room is all there.
        assert [ring.put(block.untyped_storage()) for _ in range(5)] == [
            2 << 20,
            *(2 * 2**20 + k * 256016 for k in (1, 2, 3)),
            None,
        ]
        # A block overwritten before it was taken is refused, not handed on.
        ring.map[64] ^= 0xFF
        with pytest.raises(RuntimeError, match="overwritten"):
            ring.take(2 << 20, size)
    finally:
        ring.close()


def _aliases(samples: list[dict[str, Any]]) -> dict[str, Any]:
    ids = torch.tensor([check_sample(s) for s in samples])
    grid = ids.to(torch.float32).repeat_interleave(SMALL_TENSOR_BYTES // 4).reshape(len(ids), -1)
    return {
        "ids": ids,
        "grid": grid,
        "flat": grid.view(-1),  # the whole storage again: each once in the ring
        "rows": grid[1:],
        "columns": grid.t(),
        "bytes": grid.view(torch.uint8),
    }


def _beside_collated(
    batch: dict[str, Any], collate: Callable[[list[dict[str, Any]]], dict[str, Any]]
) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    """Each tensor of a batch beside the collate's for the same samples (same dtype and shape)."""
    samples = [{"id": i, "data": sample_bytes(i)} for i in batch["ids"].tolist()]
    for name, want in collate(samples).items():
        got = batch[name]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        yield name, got, want


@pytest.mark.parametrize("context", [None, "spawn"])
def test_tensors_on_one_storage_share_it_in_the_main_process(
    dataset_dir: Path, monkeypatch: pytest.MonkeyPatch, context: str | None
) -> None:
    # A collate may return views of one tensor (x and x.view(...)): torch's way rebuilds them on
    # one storage, and so does the ring, which carries the storage once (the fd hand-off is
    # refused: none of them goes the torch way).
    import torch.multiprocessing.reductions as reductions

    monkeypatch.setattr(reductions, "rebuild_storage_fd", _refuse_fd_handoff)
    loader = _ring_loader(dataset_dir, _aliases, num_workers=1, multiprocessing_context=context)
    batches = list(loader)
    assert sorted(i for b in batches for i in b["ids"].tolist()) == list(range(N))
    for batch in batches:
        for name, got, want in _beside_collated(batch, _aliases):
            assert got.stride() == want.stride(), name
            assert torch.equal(got, want), name
        for name in ("flat", "rows", "columns", "bytes"):
            assert _same_memory(batch["grid"], batch[name]), name
        batch["grid"][1, 0] = -1  # one write, seen through every view, as in the worker
        assert batch["flat"][SMALL_TENSOR_BYTES // 4] == -1
        assert batch["rows"][0, 0] == -1 and batch["columns"][0, 1] == -1


def test_a_storage_the_ring_refused_takes_all_its_tensors_the_torch_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A storage the ring has no room for goes the torch way, which moves it into shared memory
    # (a new address): the batch's other tensors on it follow, not into the ring that has
    # room again by then, so that they still share it in the main process.
    from astream.loader import _BatchPickler, _BatchRing

    ring = _BatchRing(8 << 20)
    put, asked = ring.put, []

    def no_room_at_first(storage: torch.UntypedStorage) -> int | None:
        asked.append(storage.nbytes())
        return None if len(asked) == 1 else put(storage)

    monkeypatch.setattr(ring, "put", no_room_at_first)
    grid = torch.arange(8 * SMALL_TENSOR_BYTES, dtype=torch.float32).reshape(8, -1)
    buffer = io.BytesIO()
    try:
        _BatchPickler(buffer, ring).dump({"columns": grid.t(), "rows": grid[1:]})
        batch = pickle.loads(buffer.getvalue())
    finally:
        ring.close()
    assert asked == [grid.untyped_storage().nbytes()]
    assert torch.equal(batch["columns"], grid.t()) and torch.equal(batch["rows"], grid[1:])
    assert batch["rows"].is_shared() and _same_memory(batch["columns"], batch["rows"])


def test_a_ring_outlives_its_iterator_while_a_batch_is_taken_from_it(dataset_dir: Path) -> None:
    # torch's pin-memory thread unpickles the workers' batches, so it may be copying out of a
    # ring when the iterator goes: collected in a reference cycle (whose weakref callbacks run
    # before the iterator's __del__ stops that thread) or at exit. A ring unmapped then would
    # crash the process: it lasts as long as anything holds it. Here the test holds it, as that
    # thread does while it takes, and unpickles a batch after the iterator went.
    loader = _ring_loader(dataset_dir, _ring_only, num_workers=1, persistent_workers=True)
    batches = iter(loader)
    first = next(batches)
    iterator = loader._iterator
    ring = iterator._collate_fn.rings[0]
    raw = iterator._worker_result_queue._reader.recv_bytes()  # the next batch, as sent
    del batches
    loader._iterator = iterator = None
    gc.collect()
    _index, second = pickle.loads(raw)
    for batch in (first, second):
        batch["grad"] = _big_tensors_of(batch["ids"].tolist())["grad"]
        _check_big_batch(batch)
    assert ring.name


@dataclasses.dataclass
class _Batch:
    ids: torch.Tensor
    grid: torch.Tensor


def _as_dataclass(samples: list[dict[str, Any]]) -> _Batch:
    aliases = _aliases(samples)
    return _Batch(aliases["ids"], aliases["grid"])


def test_a_dataclass_batch_is_counted_by_its_first_field(dataset_dir: Path) -> None:
    # state_dict counts the samples yielded: a dataclass batch by its first field, as a
    # mapping by its first value (it raised a TypeError: no len()).
    loader = _ring_loader(dataset_dir, _as_dataclass, num_workers=1)
    iterator = iter(loader)
    first = next(iterator)
    assert isinstance(first, _Batch) and loader.num_samples_yielded == len(first.ids) == 8
    rest = list(iterator)
    assert sorted(i for b in [first, *rest] for i in b.ids.tolist()) == list(range(N))
    assert all(torch.equal(b.grid[:, 0], b.ids.to(torch.float32)) for b in rest)
    assert loader.num_samples_yielded == N


def _nested(samples: list[dict[str, Any]]) -> dict[str, Any]:
    ids = [check_sample(s) for s in samples]
    rows = [torch.full((SMALL_TENSOR_BYTES // 4 + i,), float(i)) for i in ids]
    small = [torch.full((2 + i,), float(i)) for i in ids]
    return {
        "ids": torch.tensor(ids),
        "rows": torch.nested.nested_tensor(rows),
        "small": torch.nested.nested_tensor(small),  # not by value either
    }


def test_nested_tensors_go_the_torch_way(dataset_dir: Path) -> None:
    # A nested tensor has a storage but no sizes or strides: neither the ring nor the small
    # tensors' by-value way can rebuild it, and trying to failed the batch's pickling (then in the
    # worker's queue thread, so the batch never came: the timeout ends the wait here).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nested tensors are a prototype: torch says so
        loader = _ring_loader(dataset_dir, _nested, num_workers=1, timeout=30)
        batches = list(loader)
    assert sorted(i for b in batches for i in b["ids"].tolist()) == list(range(N))
    for batch in batches:
        for i, row in zip(batch["ids"].tolist(), batch["rows"].unbind(), strict=True):
            assert torch.equal(row, torch.full((SMALL_TENSOR_BYTES // 4 + i,), float(i)))
        for i, row in zip(batch["ids"].tolist(), batch["small"].unbind(), strict=True):
            assert torch.equal(row, torch.full((2 + i,), float(i)))


class _PickledWhere:
    """Records, when pickled, whether that happened in its process's main thread."""

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return bool, (threading.current_thread() is threading.main_thread(),)


def _marking_the_pickling_thread(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {**_big_tensors(samples), "main_thread": _PickledWhere()}


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_batches_are_pickled_in_the_worker_main_thread(dataset_dir: Path, context: str) -> None:
    # Not in the worker's queue thread, which torch does not wait for when the worker leaves
    # mid-epoch: pickling there (the ring's copy, torch's reducers: native code run without the
    # interpreter lock) now and then took the worker down with SIGABRT at its exit ("terminate
    # called without an active exception"; the main process raised "DataLoader worker is killed
    # by signal: Aborted"). The queue's thread only writes the bytes.
    loader = _ring_loader(
        dataset_dir,
        _marking_the_pickling_thread,
        num_workers=2,
        timeout=60,
        multiprocessing_context=context,
    )
    batches = list(loader)
    assert sorted(i for b in batches for i in b["ids"].tolist()) == list(range(N))
    assert [b["main_thread"] for b in batches] == [True] * len(batches)
    for batch in batches:
        _check_big_batch(batch)


def _broken_put(self: Any, storage: torch.UntypedStorage) -> int | None:
    raise RuntimeError("a ring that fails")


def test_a_batch_the_ring_fails_goes_the_torch_way(
    dataset_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whatever goes wrong in the ring's way, the batch goes the torch way instead (logged in the
    # worker). When the queue's thread pickled batches, an error there lost the batch and the main
    # process waited forever (the timeout ends the wait here).
    import astream.loader as loader_module

    monkeypatch.setattr(loader_module._BatchRing, "put", _broken_put)  # forked workers too
    loader = _ring_loader(dataset_dir, num_workers=1, timeout=30, multiprocessing_context="fork")
    batches = list(loader)
    assert sorted(i for b in batches for i in b["ids"].tolist()) == list(range(N))
    for batch in batches:
        _check_big_batch(batch)
        assert batch["payload"].is_shared()


_SHARED: list[torch.Tensor] = []  # a tensor in shared memory, for forked workers


def _shared_rows(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {"ids": torch.tensor([check_sample(s) for s in samples]), "rows": _SHARED[0][1:]}


def test_a_storage_in_shared_memory_stays_shared(dataset_dir: Path) -> None:
    # A batch tensor on a storage already in shared memory (a dataset's preloaded tensor,
    # here shared with the forked worker) comes the torch way: no copy, and the main process
    # shares it with the worker and the dataset, as before the ring.
    _SHARED[:] = [torch.zeros(4, SMALL_TENSOR_BYTES // 4 + 1).share_memory_()]
    loader = _ring_loader(dataset_dir, _shared_rows, num_workers=1, multiprocessing_context="fork")
    batches = list(loader)
    assert sorted(i for b in batches for i in b["ids"].tolist()) == list(range(N))
    _SHARED.pop()[1, 0] = 7
    for batch in batches:
        assert batch["rows"].is_shared() and batch["rows"][0, 0] == 7


def _lazy_views(samples: list[dict[str, Any]]) -> dict[str, Any]:
    ids = torch.tensor([check_sample(s) for s in samples])
    waves = (ids[:, None] + torch.arange(SMALL_TENSOR_BYTES // 8) * 1j).to(torch.complex64)
    return {
        "ids": ids,
        "waves": waves,
        "conj": waves.conj(),  # a lazy conjugate: a bit on a view of waves
        "neg": waves.conj().imag,  # a lazy negative
        "small": waves[:, :4].conj(),
    }


def test_lazy_conjugate_and_negative_views_keep_their_values(dataset_dir: Path) -> None:
    # torch's way of sending a tensor drops the view's conjugate or negative bit: the values
    # came unconjugated or not negated (torch's DataLoader does the same to them).
    batches = list(_ring_loader(dataset_dir, _lazy_views, num_workers=1))
    assert sorted(i for b in batches for i in b["ids"].tolist()) == list(range(N))
    for batch in batches:
        for name, got, want in _beside_collated(batch, _lazy_views):
            resolved = want.resolve_conj().resolve_neg()
            assert torch.equal(got.resolve_conj().resolve_neg(), resolved), name
        assert _same_memory(batch["waves"], batch["conj"])
