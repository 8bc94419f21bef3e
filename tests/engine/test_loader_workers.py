"""What StreamingDataLoader sets up in its worker processes, beside the user's worker_init_fn."""

from __future__ import annotations

import os
import resource
from pathlib import Path
from typing import Any

import pytest
import torch

from astream import StreamingDataLoader, StreamingDataset
from astream.loader import SMALL_TENSOR_BYTES
from tests.engine.datasets import check_sample, write_mds

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


def test_small_tensors_come_by_value_big_ones_in_shared_memory(dataset_dir: Path) -> None:
    # A tensor sent through shared memory costs the main process a file-descriptor hand-off
    # with the worker (a socket connection and an HMAC challenge each way), whatever its size:
    # small ones come inside the batch's pickle instead, with the same values, dtype and shape.
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
            # By value: plain memory of its own, writable; the big one came through shm.
            assert tensor.is_shared() == (name == "big"), name
        batch["ids"] += 1  # writable
        assert torch.equal(batch["transposed"], grid.t())
