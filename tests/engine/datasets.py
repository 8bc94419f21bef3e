"""Small datasets for engine tests, the order they must come out in, and the resume check."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from astream import MDSWriter, StreamingDataset
from astream.plan import World


def sample_bytes(i: int, size: int = 200) -> bytes:
    """Deterministic payload of sample ``i`` (differs per sample, so mix-ups show)."""
    return np.random.default_rng(i).integers(0, 256, size, dtype=np.uint8).tobytes()


def write_mds(
    root: Path,
    num_samples: int,
    *,
    size_limit: int = 4096,
    compression: str | None = None,
    hashes: list[str] | None = None,
    payload: int = 200,
) -> Path:
    """An MDS dataset whose sample ``i`` is ``{"id": i, "data": sample_bytes(i)}``."""
    with MDSWriter(
        out=str(root),
        columns={"id": "int", "data": "bytes"},
        size_limit=size_limit,
        compression=compression,
        hashes=hashes,
    ) as writer:
        for i in range(num_samples):
            writer.write({"id": i, "data": sample_bytes(i, payload)})
    return root


def check_sample(sample: dict[str, Any], payload: int = 200) -> int:
    """The sample's id, after checking its bytes are the ones written for that id."""
    sample_id = int(sample["id"])
    assert sample["data"] == sample_bytes(sample_id, payload), f"sample {sample_id} corrupt"
    return sample_id


def loader_order(
    dataset: StreamingDataset, epoch: int, start: int, num_workers: int, batch_size: int
) -> list[int]:
    """Ids a single-rank DataLoader yields: each worker's plan ids in batches, round robin."""
    per_worker = []
    for worker in range(max(num_workers, 1)):
        world = World(workers_per_rank=max(num_workers, 1), worker=worker)
        ids = [int(i) for i in dataset.worker_sample_ids(world, epoch, start) if i >= 0]
        per_worker.append([ids[k : k + batch_size] for k in range(0, len(ids), batch_size)])
    out: list[int] = []
    for group in itertools.zip_longest(*per_worker):
        for batch in group:
            if batch is not None:
                out.extend(batch)
    return out


def batches_of_ids(batches: Iterable[Any]) -> Iterator[list[int]]:
    """The ids of each collated batch (``{"id": tensor, ...}``)."""
    for batch in batches:
        yield [int(i) for i in batch["id"]]


def check_resume(
    make_loader: Callable[[], Any], *, stop_after: int, epochs: int = 2
) -> tuple[list[int], list[int]]:
    """Stop a run after ``stop_after`` batches, resume a fresh loader from its state dict, and
    check the ids equal an uninterrupted run's, this epoch and the next.

    :returns: the uninterrupted run's ids and the interrupted-then-resumed run's ids.
    """
    whole: list[int] = []
    loader = make_loader()
    for _ in range(epochs):
        whole.extend(i for batch in batches_of_ids(loader) for i in batch)

    interrupted = make_loader()
    seen: list[int] = []
    iterator = iter(interrupted)
    for batch in itertools.islice(batches_of_ids(iterator), stop_after):
        seen.extend(batch)
    state = interrupted.state_dict()
    del iterator

    resumed = make_loader()
    resumed.load_state_dict(state)
    for _ in range(epochs):
        seen.extend(i for batch in batches_of_ids(resumed) for i in batch)
    assert seen == whole, "resumed run differs from the uninterrupted one"
    return whole, seen
