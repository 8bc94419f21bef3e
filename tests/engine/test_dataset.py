"""StreamingDataset end to end: local, HTTP and S3 datasets, in and out of DataLoader workers."""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from astream import (
    DatasetNotFoundError,
    IndexFormatError,
    ObjectNotFoundError,
    Prefetcher,
    StorageError,
    Stream,
    StreamingDataLoader,
    StreamingDataset,
)
from astream.engine.fetch import Fetcher
from astream.engine.table import local_only_cache
from astream.plan import World
from tests.engine.datasets import (
    batches_of_ids,
    check_resume,
    check_sample,
    loader_order,
    sample_bytes,
    write_mds,
)
from tests.servers.moto_s3 import CREDENTIALS, MotoS3
from tests.storage.conftest import HTTPFiles

N = 300  # samples: ~17 shards of ~18 samples at size_limit 4096


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mds(tmp_path_factory.mktemp("mds"), N)


@pytest.fixture
def s3_env(moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch) -> MotoS3:
    # How mosaicml-streaming users point at S3-compatible endpoints.
    monkeypatch.setenv("S3_ENDPOINT_URL", moto_s3.endpoint_url)
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    return moto_s3


def _upload_dir(moto: MotoS3, src: Path) -> str:
    import boto3

    bucket = moto.create_bucket()
    client = boto3.client("s3", endpoint_url=moto.endpoint_url, **_boto_creds())
    for path in sorted(src.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, f"data/{path.relative_to(src).as_posix()}")
    return f"s3://{bucket}/data"


def _boto_creds() -> dict[str, str]:
    return {
        "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": CREDENTIALS["AWS_DEFAULT_REGION"],
    }


def _serve_http(http_files: HTTPFiles, src: Path) -> str:
    name = uuid.uuid4().hex[:12]
    shutil.copytree(src, http_files.root / name)
    return f"{http_files.url}/{name}"


@pytest.fixture(params=["local", "http", "s3"])
def remote(
    request: pytest.FixtureRequest, dataset_dir: Path, tmp_path: Path
) -> Iterator[tuple[str, Path]]:
    """(remote, local cache dir) for the same dataset on each kind of store."""
    kind = request.param
    if kind == "local":
        url = str(dataset_dir)
    elif kind == "http":
        url = _serve_http(request.getfixturevalue("http_files"), dataset_dir)
    else:
        url = _upload_dir(request.getfixturevalue("s3_env"), dataset_dir)
    yield url, tmp_path / "cache"


def _ids(samples: Any) -> list[int]:
    return [check_sample(s) for s in samples]


@pytest.mark.parametrize("shuffle", [False, True])
def test_iteration_yields_the_plan(remote: tuple[str, Path], shuffle: bool) -> None:
    url, local = remote
    dataset = StreamingDataset(remote=url, local=local, shuffle=shuffle, batch_size=4)
    expected = [int(i) for i in dataset.worker_sample_ids(World(), 0, 0) if i >= 0]
    assert sorted(expected) == list(range(N))
    assert _ids(dataset) == expected
    # The next iteration is the next epoch.
    second = [int(i) for i in dataset.worker_sample_ids(World(), 1, 0) if i >= 0]
    assert _ids(dataset) == second
    if shuffle:
        assert second != expected


@pytest.mark.parametrize("shuffle", [False, True])
def test_shards_in_the_cache_are_read_without_a_fetch(
    remote: tuple[str, Path], shuffle: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A shard already local (read in place, or cached by an earlier epoch) opens on the
    # consumer's thread: no trip to the IO loop per shard, which a shuffled epoch's first
    # batch would otherwise make for every shard it touches.
    url, local = remote
    dataset = StreamingDataset(remote=url, local=local, shuffle=shuffle, batch_size=4)
    first = _ids(dataset)  # fetches what is remote
    assert sorted(first) == list(range(N))

    async def no_fetch(self: Any, shard: int, **kwargs: Any) -> Path:
        raise AssertionError(f"shard {shard} fetched, though it is in the cache")

    monkeypatch.setattr(Fetcher, "fetch_shard", no_fetch)
    hits = dataset.statistics().cache_hits
    second = [int(i) for i in dataset.worker_sample_ids(World(), 1, 0) if i >= 0]
    assert _ids(dataset) == second
    assert dataset.statistics().cache_hits > hits  # still counted as cache hits


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataloader_workers(remote: tuple[str, Path], num_workers: int) -> None:
    url, local = remote
    dataset = StreamingDataset(remote=url, local=local, shuffle=True, batch_size=8)
    loader = StreamingDataLoader(
        dataset,
        batch_size=8,
        num_workers=num_workers,
        multiprocessing_context="spawn" if num_workers else None,
    )
    got = [i for batch in batches_of_ids(loader) for i in batch]
    assert got == loader_order(dataset, 0, 0, num_workers, 8)
    # Each shard was downloaded into the cache once; nothing partial is left behind.
    if not url.startswith("/"):
        names = sorted(p.name for p in local.iterdir() if p.is_file())
        assert [n for n in names if ".tmp" in n] == []


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_mid_epoch(remote: tuple[str, Path], num_workers: int) -> None:
    url, local = remote
    stop = random.Random(num_workers).randrange(1, N // 8 - 1)

    def make() -> StreamingDataLoader:
        dataset = StreamingDataset(remote=url, local=local, shuffle=True, batch_size=8)
        return StreamingDataLoader(
            dataset,
            batch_size=8,
            num_workers=num_workers,
            multiprocessing_context="spawn" if num_workers else None,
        )

    whole, _ = check_resume(make, stop_after=stop)
    assert sorted(whole[:N]) == list(range(N))


def test_plain_dataloader_samples_are_intact(dataset_dir: Path) -> None:
    dataset = StreamingDataset(local=dataset_dir, batch_size=5)
    loader = DataLoader(dataset, batch_size=5)
    for batch in loader:
        assert isinstance(batch["id"], torch.Tensor)
        for i, data in zip(batch["id"].tolist(), batch["data"], strict=True):
            assert data == sample_bytes(i)


def test_random_access_reads_only_what_it_needs(
    http_files: HTTPFiles, dataset_dir: Path, tmp_path: Path
) -> None:
    url = _serve_http(http_files, dataset_dir)
    dataset = StreamingDataset(remote=url, local=tmp_path / "cache")
    assert check_sample(dataset[7]) == 7
    assert check_sample(dataset[-1]) == N - 1
    assert [check_sample(s) for s in dataset[10:40:7]] == list(range(10, 40, 7))
    assert [check_sample(s) for s in dataset[[5, 250, 3]]] == [5, 250, 3]
    assert [check_sample(s) for s in dataset[np.array([299, 0])]] == [299, 0]
    stats = dataset.statistics()
    assert stats.range_reads >= 9
    # No shard was downloaded whole for that.
    shards = [p for p in (tmp_path / "cache").iterdir() if p.suffix == ".mds"]
    assert shards == []
    with pytest.raises(IndexError):
        dataset[N]
    with pytest.raises(IndexError):
        dataset[-N - 1]


def test_random_access_compressed_fetches_the_shard(tmp_path: Path) -> None:
    src = write_mds(tmp_path / "zst", 60, compression="zstd", hashes=["sha1", "xxh64"])
    dataset = StreamingDataset(
        remote=src, local=tmp_path / "cache", validate_hash="xxh64", keep_zip=False
    )
    assert check_sample(dataset[33]) == 33
    assert _ids(dataset) == list(range(60))
    assert not list((tmp_path / "cache").glob("*.zstd"))


async def _collect(dataset: StreamingDataset) -> list[int]:
    return [check_sample(s) async for s in dataset]


@pytest.mark.anyio
async def test_async_for_on_the_callers_loop(remote: tuple[str, Path]) -> None:
    url, local = remote
    dataset = StreamingDataset(remote=url, local=local, shuffle=True)
    expected = [int(i) for i in dataset.worker_sample_ids(World(), 0, 0) if i >= 0]
    assert await _collect(dataset) == expected


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_built_inside_a_loop_the_index_loads_off_it(dataset_dir: Path, backend: str) -> None:
    async def main() -> list[int]:
        dataset = StreamingDataset(local=dataset_dir)
        assert dataset._table is None  # nothing loaded on the loop
        prefetcher = Prefetcher(dataset, [5, -1])
        got = [check_sample(s) async for s in dataset]
        assert [check_sample(s) async for s in prefetcher] == [5, N - 1]
        assert await dataset.load() is dataset
        return got

    assert anyio.run(main, backend=backend) == list(range(N))


def test_prefetcher_follows_any_order(remote: tuple[str, Path]) -> None:
    url, local = remote
    dataset = StreamingDataset(remote=url, local=local)
    order = list(range(N))
    random.Random(3).shuffle(order)
    order = order[:120] + order[:10]  # repeats are fine
    assert [check_sample(s) for s in Prefetcher(dataset, order)] == order


@pytest.mark.anyio
async def test_prefetcher_async(dataset_dir: Path) -> None:
    dataset = StreamingDataset(local=dataset_dir)
    order = [299, 0, 150, 151, 2]
    assert [check_sample(s) async for s in Prefetcher(dataset, order)] == order


def test_stream_mixing(tmp_path: Path) -> None:
    a = write_mds(tmp_path / "a", 50)
    b = write_mds(tmp_path / "b", 30, payload=100)  # b's samples are told apart by size
    dataset = StreamingDataset(
        streams=[Stream(local=a, repeat=2), Stream(local=b, choose=10)], shuffle=True
    )
    assert dataset.size == 80
    samples = list(dataset)
    assert len(samples) == 110 == dataset.epoch_size
    from_a = [check_sample(s) for s in samples if len(s["data"]) == 200]
    from_b = [check_sample(s, payload=100) for s in samples if len(s["data"]) == 100]
    assert sorted(from_a) == sorted(list(range(50)) * 2)
    assert len(from_b) == 10 and set(from_b) <= set(range(30))


def test_statistics_is_a_frozen_snapshot(dataset_dir: Path) -> None:
    dataset = StreamingDataset(local=dataset_dir)
    before = dataset.statistics()
    list(dataset)
    after = dataset.statistics()
    assert after.samples - before.samples == N
    with pytest.raises(dataclasses.FrozenInstanceError):
        after.samples = 0  # type: ignore[misc]


def test_corrupt_index_is_a_clear_error(tmp_path: Path) -> None:
    src = write_mds(tmp_path / "bad", 20)
    (src / "index.json").write_text('{"version": 2, "shards": [{"format": "mds"')
    with pytest.raises(IndexFormatError, match=r"index\.json"):
        StreamingDataset(local=src)


def test_no_dataset_is_one_error_local_or_remote(tmp_path: Path) -> None:
    # One class and one message shape whether the folder or the remote has no index.json, and
    # no "During handling ... no running event loop" chained to it.
    missing = tmp_path / "nothing"
    with pytest.raises(DatasetNotFoundError) as local:
        StreamingDataset(local=missing)
    assert str(local.value) == f"no dataset at {missing}: {missing / 'index.json'} does not exist"
    url = missing.as_uri()
    with pytest.raises(DatasetNotFoundError) as remote:
        StreamingDataset(remote=url, local=tmp_path / "cache")
    assert str(remote.value) == str(local.value)  # a file:// store names the folder
    for caught in (local, remote):
        assert isinstance(caught.value, FileNotFoundError)
        assert isinstance(caught.value, ObjectNotFoundError)
        error: BaseException | None = caught.value
        while error is not None:  # the whole chain, causes and contexts
            assert "no running event loop" not in str(error)
            error = error.__cause__ or error.__context__


def test_unreachable_remote_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/data"
    with pytest.raises(StorageError, match=f"127.0.0.1:{port}"):
        StreamingDataset(remote=url, local=tmp_path / "cache", download_retry=1, download_timeout=2)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_missing_shard_raises_in_the_consumer(
    http_files: HTTPFiles, dataset_dir: Path, tmp_path: Path, num_workers: int
) -> None:
    url = _serve_http(http_files, dataset_dir)
    dataset = StreamingDataset(remote=url, local=tmp_path / "cache", download_retry=0)
    served = http_files.root / url.rsplit("/", 1)[1]
    os.remove(served / "shard.00003.mds")
    loader = DataLoader(
        dataset,
        batch_size=4,
        num_workers=num_workers,
        multiprocessing_context="spawn" if num_workers else None,
    )
    with pytest.raises(ObjectNotFoundError, match=r"shard\.00003\.mds"):
        for _ in loader:
            pass


def test_stopping_early_leaves_nothing_in_flight(
    http_files: HTTPFiles, dataset_dir: Path, tmp_path: Path
) -> None:
    url = _serve_http(http_files, dataset_dir)
    cache = tmp_path / "cache"
    dataset = StreamingDataset(remote=url, local=cache, prefetch_shards=8)
    iterator = iter(dataset)
    assert check_sample(next(iterator)) == 0
    iterator.close()  # as a consumer that stops mid-epoch
    assert dataset.statistics().bytes_in_flight == 0
    leftovers = [p.name for p in cache.rglob("*") if "tmp" in p.name]
    assert leftovers == []
    # The directory can go at once: nothing writes into it any more.
    shutil.rmtree(cache)
    assert not cache.exists()


@pytest.mark.parametrize("context", ["fork", "forkserver", "spawn"])
def test_workers_under_every_start_method(dataset_dir: Path, tmp_path: Path, context: str) -> None:
    dataset = StreamingDataset(remote=dataset_dir, local=tmp_path / "cache", batch_size=6)
    # Start the IO loop in the parent first: forked workers must not use its copy.
    assert check_sample(dataset[0]) == 0
    loader = StreamingDataLoader(
        dataset, batch_size=6, num_workers=2, multiprocessing_context=context
    )
    got = [i for batch in batches_of_ids(loader) for i in batch]
    assert got == loader_order(dataset, 0, 0, 2, 6)


def test_default_local_is_keyed_by_remote(
    http_files: HTTPFiles, dataset_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    url = _serve_http(http_files, dataset_dir)
    first = StreamingDataset(remote=url)
    second = StreamingDataset(remote=url)
    assert first.table.sources[0].local == second.table.sources[0].local
    assert first.table.sources[0].local.is_relative_to(tmp_path)
    assert _ids(first) == list(range(N))
    # The second dataset finds every shard in the shared cache.
    assert _ids(second) == list(range(N))
    assert second.statistics().cache_misses == 0


def test_empty_shards_are_read_past(tmp_path: Path) -> None:
    # One sample bigger than the size limit leaves an empty shard before it (as the reference
    # writer does); iteration, random access and the order all step over it.
    src = write_mds(tmp_path / "src", 30, size_limit=600, payload=200)
    from astream.format import LocalMDSWriter

    with LocalMDSWriter(
        out=str(tmp_path / "big"), columns={"id": "int", "data": "bytes"}, size_limit=600
    ) as w:
        w.write({"id": 0, "data": sample_bytes(0, 2000)})
        for i in range(1, 6):
            w.write({"id": i, "data": sample_bytes(i, 200)})
    dataset = StreamingDataset(
        streams=[Stream(local=tmp_path / "big"), Stream(local=src)], shuffle=True
    )
    assert any(s.samples == 0 for s in dataset.table.shards)
    samples = list(dataset)
    assert len(samples) == 36
    assert int(dataset[0]["id"]) == 0 and len(dataset[0]["data"]) == 2000


def test_persistent_workers_follow_set_epoch_and_resume(dataset_dir: Path) -> None:
    dataset = StreamingDataset(local=dataset_dir, shuffle=True, batch_size=8)
    loader = StreamingDataLoader(
        dataset,
        batch_size=8,
        num_workers=2,
        persistent_workers=True,
        multiprocessing_context="spawn",
    )

    def epoch() -> list[int]:
        return [i for batch in batches_of_ids(loader) for i in batch]

    assert epoch() == loader_order(dataset, 0, 0, 2, 8)
    workers = loader._iterator
    assert epoch() == loader_order(dataset, 1, 0, 2, 8)
    assert loader._iterator is workers  # the same workers ran both epochs
    dataset.set_epoch(5)
    assert epoch() == loader_order(dataset, 5, 0, 2, 8)
    # A checkpoint of another run, 64 samples into epoch 2.
    state = dataset.state_dict(64)
    state["epoch"] = 2
    loader.load_state_dict(state)
    assert epoch() == loader_order(dataset, 2, 64, 2, 8)
    assert epoch() == loader_order(dataset, 3, 0, 2, 8)


def _listing(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_a_local_only_dataset_folder_is_only_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compression: str | None
) -> None:
    # getting-started promises that `local` alone is read in place: nothing of astream's (no
    # decompressed copy, no .astream/ lock folder) may appear in the dataset's folder.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    src = write_mds(tmp_path / "ds", 60, compression=compression)
    before = _listing(src)
    dataset = StreamingDataset(local=src, shuffle=True, batch_size=4)
    assert sorted(check_sample(s) for s in dataset) == list(range(60))
    assert check_sample(dataset[37]) == 37
    loader = StreamingDataLoader(dataset, batch_size=4, num_workers=2)
    assert sorted(i for batch in loader for i in batch["id"].tolist()) == list(range(60))
    assert _listing(src) == before
    cache = local_only_cache(src)
    assert cache.parent == tmp_path / "tmp" / "astream"
    copies = sorted(p.name for p in cache.glob("shard.*"))
    if compression is None:
        assert copies == []  # read in place: nothing copied
    else:
        assert copies == sorted(p.name[: -len(".zstd")] for p in src.glob("shard.*.zstd"))
