"""Datasets that a process builds, iterates and drops are collected (issue 13 item 7).

The IO loop used to keep every iterated dataset's fetcher registered as a shutdown closer, so
each dataset's shard table (and stores) stayed in memory for the life of the process. Counted
with weak references and the loop's closer list, not with RSS.
"""

from __future__ import annotations

import gc
import itertools
import shutil
import time
import uuid
import weakref
from pathlib import Path

import pytest

from astream import StreamingDataset
from astream.engine.loop import io_loop
from tests.engine.datasets import check_sample, write_mds
from tests.storage.conftest import HTTPFiles

ROUNDS = 40


@pytest.fixture(scope="module")
def served(http_files: HTTPFiles, tmp_path_factory: pytest.TempPathFactory) -> str:
    src = write_mds(tmp_path_factory.mktemp("churn"), 60)
    name = uuid.uuid4().hex[:12]
    shutil.copytree(src, http_files.root / name)
    return f"{http_files.url}/{name}"


def test_dropped_datasets_are_collected(served: str, tmp_path: Path) -> None:
    loop = io_loop()
    closers_before = len(loop._closers)
    alive: list[weakref.ref[object]] = []
    for round_ in range(ROUNDS):
        dataset = StreamingDataset(remote=served, local=tmp_path / "cache", shuffle=True)
        # Iterate part of an epoch (its window and fetcher are live) and read one sample.
        for sample in itertools.islice(dataset, 5):
            check_sample(sample)
        assert check_sample(dataset[round_]) == round_
        alive += [weakref.ref(dataset), weakref.ref(dataset.table)]
        if round_ % 2:
            dataset.close()  # closing explicitly, or not, both let it go
        del dataset, sample
    # A dropped dataset's stores close on the IO loop (that coroutine holds its fetcher, and so
    # its table, until it has run): give the loop its turn, then everything must be gone.
    for _ in range(200):
        gc.collect()
        if all(r() is None for r in alive):
            break
        time.sleep(0.05)
    assert [r for r in alive if r() is not None] == []
    assert len(loop._closers) <= closers_before + 1


def test_close_while_an_iterator_runs_closes_its_stores_when_it_ends(
    served: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The iterator goes on after close() (the dataset stays usable) and opens its store again
    # for the shards it still needs: that store must be closed too, once the iterator ends.
    import astream.engine.fetch as fetch_module

    opened: list[object] = []
    closed: list[object] = []
    real_open = fetch_module.open_store

    def open_store(*args: object, **kwargs: object) -> object:
        store = real_open(*args, **kwargs)  # type: ignore[arg-type]
        real_aclose = store.aclose

        async def aclose() -> None:
            closed.append(store)
            await real_aclose()

        store.aclose = aclose  # type: ignore[method-assign]
        opened.append(store)
        return store

    monkeypatch.setattr(fetch_module, "open_store", open_store)
    dataset = StreamingDataset(remote=served, local=tmp_path / "cache", batch_size=1)
    samples = iter(dataset)
    assert check_sample(next(samples)) == 0
    dataset.close()
    assert [check_sample(s) for s in samples] == list(range(1, 60))
    assert opened
    for _ in range(200):  # the stores close on the IO loop
        if all(store in closed for store in opened):
            break
        time.sleep(0.05)
    assert [store for store in opened if store not in closed] == []
