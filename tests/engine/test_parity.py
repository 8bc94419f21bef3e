"""mosaicml-streaming's behaviours that user code relies on, on astream's side (issue 14).

The same behaviours run side by side against mosaicml-streaming in
``tests/interop/test_dataset_interop.py``.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from astream import (
    CacheConflictError,
    CacheLimitError,
    DatasetNotFoundError,
    EmptyDatasetError,
    LocalDataset,
    MDSWriter,
    Stream,
    StreamingDataLoader,
    StreamingDataset,
    UnsafeTypeError,
    streams_registry,
)
from astream.engine.prefetch import evicted_error
from astream.engine.table import default_local
from astream.errors import CacheError, ConfigError, WorldError
from astream.format import compress, decompress
from tests.engine.datasets import check_sample, write_mds


@pytest.fixture
def two_remotes(tmp_path: Path) -> tuple[Path, Path]:
    return write_mds(tmp_path / "a", 60, size_limit=2000), write_mds(tmp_path / "b", 30)


# -- 1. one local, two remotes ---------------------------------------------------------------


def test_a_local_dir_of_another_remote_is_refused_in_this_and_later_runs(
    tmp_path: Path, two_remotes: tuple[Path, Path]
) -> None:
    a, b = two_remotes
    local = tmp_path / "local"
    assert len(list(StreamingDataset(remote=str(a), local=str(local), batch_size=4))) == 60
    with pytest.raises(CacheConflictError) as info:
        StreamingDataset(remote=str(b), local=str(local), batch_size=4)
    assert str(a) in str(info.value) and str(b) in str(info.value)
    assert isinstance(info.value, ValueError)  # as mosaicml-streaming's "Reused local directory"
    # Another process (a later run, another job) is refused too: the record is on disk.
    code = (
        "import sys\n"
        "from astream import StreamingDataset, CacheConflictError\n"
        "try:\n"
        "    StreamingDataset(remote=sys.argv[1], local=sys.argv[2])\n"
        "except CacheConflictError as exc:\n"
        "    print('refused', exc)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    out = subprocess.run(
        [sys.executable, "-c", code, str(b), str(local)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    ).stdout
    assert out.startswith("refused") and str(a) in out
    # The same remote, from another dataset (another rank, job or run), shares the directory.
    again = StreamingDataset(remote=str(a) + "/", local=str(local), batch_size=4)
    assert sorted(check_sample(s) for s in again) == list(range(60))


def test_a_different_split_is_a_different_source(tmp_path: Path) -> None:
    for split in ("train", "val"):
        write_mds(tmp_path / "remote" / split, 10 if split == "train" else 5)
    local = tmp_path / "local"
    train = StreamingDataset(remote=str(tmp_path / "remote"), local=str(local), split="train")
    val = StreamingDataset(remote=str(tmp_path / "remote"), local=str(local), split="val")
    assert (train.size, val.size) == (10, 5)
    (local / "val" / ".astream" / "source.json").write_text(
        '{"remote": "%s", "split": "train"}' % (tmp_path / "remote" / "train")
    )
    with pytest.raises(CacheConflictError, match="split 'train'"):
        StreamingDataset(remote=str(tmp_path / "remote"), local=str(local), split="val")


# -- 2. a cached shard deleted mid-epoch -----------------------------------------------------


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_a_shard_deleted_mid_epoch_is_fetched_again_within_the_epoch(
    tmp_path: Path, compression: str | None
) -> None:
    remote = write_mds(tmp_path / "remote", 300, size_limit=2000, compression=compression)
    local = tmp_path / "local"
    # Whole shards from the start (no range reads of the first batch): shards are cached by
    # sample 40, to be deleted under the iterator.
    dataset = StreamingDataset(
        remote=str(remote),
        local=str(local),
        shuffle=True,
        shuffle_block_size=300,
        batch_size=4,
        cold_range_reads=False,
    )
    seen = []
    for k, sample in enumerate(dataset):
        seen.append(check_sample(sample))
        if k == 40:
            deleted = [p for p in local.glob("shard.*.mds") if p.is_file()]
            for path in deleted:
                path.unlink()
            assert deleted
    assert sorted(seen) == list(range(300))
    # Random access after the deletion fetches again too.
    for path in local.glob("shard.*.mds"):
        path.unlink()
    dataset.close()
    assert check_sample(dataset[7]) == 7


@pytest.mark.timeout(120)
@pytest.mark.parametrize("compression", [None, "zstd"])
def test_a_shard_deleted_under_another_workers_pin_is_fetched_again(
    tmp_path: Path, compression: str | None
) -> None:
    # Each DataLoader worker keeps the shards it read open (pinned); a worker that needs a
    # deleted shard again must not wait for the other's pin, which lasts while it is parked.
    remote = write_mds(tmp_path / "remote", 300, size_limit=2000, compression=compression)
    local = tmp_path / "local"
    dataset = StreamingDataset(
        remote=str(remote), local=str(local), shuffle=True, shuffle_block_size=300, batch_size=4
    )
    seen = []
    for k, batch in enumerate(StreamingDataLoader(dataset, batch_size=4, num_workers=2)):
        seen.extend(int(i) for i in batch["id"])
        if k == 10:
            for path in local.glob("shard.*"):
                path.unlink()
    assert sorted(seen) == list(range(300))


# -- 3. cache_limit counts every byte ------------------------------------------------------


def test_cache_limit_counts_the_index_and_refuses_an_impossible_limit(tmp_path: Path) -> None:
    remote = write_mds(tmp_path / "remote", 400, size_limit=1000, payload=100)
    largest = max(p.stat().st_size for p in remote.glob("shard.*"))
    with pytest.raises(CacheLimitError, match=r"the minimum is (\d+) bytes") as info:
        StreamingDataset(remote=str(remote), local=str(tmp_path / "l1"), cache_limit="4kb")
    assert isinstance(info.value, ValueError)
    minimum = int(str(info.value).split("the minimum is ")[1].split()[0])
    index = (tmp_path / "l1" / "index.json").stat().st_size
    assert minimum > index + 5 * largest  # the shard read and prefetch_shards=4 ahead
    # Concurrent downloads (max_downloads) each reserve their room: together they stay within.
    dataset = StreamingDataset(
        remote=str(remote), local=str(tmp_path / "l2"), cache_limit=minimum, batch_size=4
    )
    assert dataset.cache_usage >= index  # the index and astream's record count
    assert sorted(check_sample(s, 100) for s in dataset) == list(range(400))
    on_disk = sum(p.stat().st_size for p in (tmp_path / "l2").rglob("*") if p.is_file())
    assert dataset.cache_usage == on_disk <= minimum
    assert dataset.statistics().evictions > 0


# -- 4. the shard and cache surface --------------------------------------------------------


def test_prepare_evict_and_cache_usage(tmp_path: Path) -> None:
    remote = write_mds(tmp_path / "remote", 60, size_limit=2000)
    local = tmp_path / "local"
    dataset = StreamingDataset(remote=str(remote), local=str(local), batch_size=4)
    assert dataset.num_shards == len(dataset.shards) == len(list(remote.glob("shard.*")))
    assert dataset.samples_per_shard.sum() == 60
    assert list(dataset.shards_per_stream) == [dataset.num_shards]
    assert list(dataset.sample_offset_per_shard[:2]) == [0, dataset.shards[0].samples]
    base = dataset.cache_usage
    for shard in range(dataset.num_shards):
        dataset.prepare_shard(shard)
    full = {p.name for p in local.iterdir()}
    assert dataset.cache_usage > base
    assert check_sample(dataset[0]) == 0  # leaves a reader open: evict_shard closes it
    for shard in range(dataset.num_shards):
        dataset.evict_shard(shard)
    assert {p.name for p in local.iterdir()} == {"index.json", ".astream"}
    # dataset[i] range-reads uncompressed shards without caching them (mosaicml-streaming
    # downloads each whole shard); prepare_shard brings them back.
    assert [check_sample(dataset[i]) for i in range(60)] == list(range(60))
    dataset.prepare_shard(0, blocking=False)
    for shard in range(dataset.num_shards):
        dataset.prepare_shard(shard)
    assert {p.name for p in local.iterdir()} == full
    for _ in range(dataset.num_shards):
        dataset.evict_coldest_shard()
    with pytest.raises(CacheLimitError) as nothing_left:
        dataset.evict_coldest_shard()
    assert isinstance(nothing_left.value, ValueError)
    assert {p.name for p in local.iterdir()} == {"index.json", ".astream"}
    with pytest.raises(IndexError):
        dataset.prepare_shard(dataset.num_shards)


def test_a_local_dataset_is_never_evicted(tmp_path: Path) -> None:
    dataset = StreamingDataset(local=str(write_mds(tmp_path / "data", 20)))
    with pytest.raises(CacheError, match="no remote"):
        dataset.evict_shard(0)


def test_resample_streams_lays_out_the_weighted_epoch(tmp_path: Path) -> None:
    a, b = write_mds(tmp_path / "a", 40, size_limit=2000), write_mds(tmp_path / "b", 10)
    dataset = StreamingDataset(
        streams=[Stream(local=str(a), repeat=1.5), Stream(local=str(b), choose=5)]
    )
    units, ids = dataset.resample_streams(0)
    assert units.sum() == len(ids) == dataset.epoch_size == 65
    counts = np.bincount(ids, minlength=50)
    assert set(counts[:40]) <= {1, 2} and counts[:40].sum() == 60 and counts[40:].sum() == 5
    _, ids_b = dataset.resample_streams(0, stream_id=1)
    assert len(ids_b) == 5 and ids_b.min() >= 40


def test_local_dataset(tmp_path: Path) -> None:
    data = write_mds(tmp_path / "data" / "train", 25, size_limit=2000)
    dataset = LocalDataset(str(data.parent), split="train")
    assert len(dataset) == dataset.size == 25
    assert check_sample(dataset[24]) == 24 and check_sample(dataset.get_item(-1)) == 24
    assert [check_sample(s) for s in dataset[3:6]] == [3, 4, 5]
    copy = pickle.loads(pickle.dumps(dataset))
    assert check_sample(copy[10]) == 10
    dataset.close()
    with pytest.raises(DatasetNotFoundError) as info:
        LocalDataset(str(tmp_path / "nothing"))
    assert isinstance(info.value, RuntimeError) and isinstance(info.value, FileNotFoundError)


# -- 5, 6. Stream's resolved weights and local; registry; replication ------------------------


def test_streams_show_their_resolved_weights_and_cache_dir(tmp_path: Path) -> None:
    a, b = write_mds(tmp_path / "a", 40), write_mds(tmp_path / "b", 10)
    first, second = Stream(remote=str(a), repeat=2), Stream(remote=str(b), split=None)
    assert second.local == str(default_local(str(b)))  # known before any dataset is built
    StreamingDataset(streams=[first, second], batch_size=4)
    assert (first.repeat, first.choose, second.repeat, second.choose) == (2.0, 80, 1.0, 10)
    assert first.proportion == pytest.approx(80 / 90)
    assert Path(second.local).is_dir() and (Path(second.local) / "index.json").is_file()
    # The stream can build another dataset: the weights given are what it resolves.
    assert StreamingDataset(streams=[first, second], batch_size=4).epoch_size == 90


def test_stream_name_and_config_build_a_registered_stream(tmp_path: Path) -> None:
    class TaggedStream(Stream):
        def __init__(self, *, tag: str, **kwargs: object) -> None:
            super().__init__(**kwargs)  # type: ignore[arg-type]
            self.tag = tag

    streams_registry.register("tagged", func=TaggedStream)
    try:
        dataset = StreamingDataset(
            local=str(write_mds(tmp_path / "a", 10)),
            stream_name="tagged",
            stream_config={"tag": "x"},
        )
        assert isinstance(dataset.streams[0], TaggedStream) and dataset.streams[0].tag == "x"
        assert "tagged" in streams_registry and streams_registry.get("stream") is Stream
    finally:
        streams_registry._entries.pop("tagged")
    with pytest.raises(Exception, match="registered"):
        StreamingDataset(local=str(tmp_path / "a"), stream_name="nope")


def test_replication_gives_consecutive_ranks_the_same_samples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = write_mds(tmp_path / "data", 48)
    per_rank = []
    for rank in range(4):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "4")
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
        dataset = StreamingDataset(local=str(data), batch_size=4, replication=2, shuffle=True)
        assert len(dataset) == 24
        per_rank.append([check_sample(s) for s in dataset])
    assert per_rank[0] == per_rank[1] and per_rank[2] == per_rank[3]
    assert sorted(per_rank[0] + per_rank[2]) == list(range(48))
    with pytest.raises(WorldError, match="divisible"):
        list(StreamingDataset(local=str(data), batch_size=4, replication=3))
    with pytest.raises(WorldError, match="positive"):
        StreamingDataset(local=str(data), replication=0)


# -- 7. checks and warnings at construction ----------------------------------------------


def test_pickled_columns_are_refused_at_construction(tmp_path: Path) -> None:
    with MDSWriter(out=str(tmp_path / "pkl"), columns={"obj": "pkl"}) as writer:
        writer.write({"obj": {"a": 1}})
    with pytest.raises(UnsafeTypeError, match="allow_unsafe_types"):
        StreamingDataset(local=str(tmp_path / "pkl"))
    dataset = StreamingDataset(local=str(tmp_path / "pkl"), allow_unsafe_types=True)
    assert dataset[0]["obj"] == {"a": 1}


def test_a_loader_with_workers_needs_the_dataset_batch_size(tmp_path: Path) -> None:
    data = write_mds(tmp_path / "data", 10)
    with pytest.raises(ConfigError, match="batch_size=4"):
        StreamingDataLoader(StreamingDataset(local=str(data)), batch_size=4, num_workers=2)
    StreamingDataLoader(StreamingDataset(local=str(data)), batch_size=4)  # in process: fine


def test_the_reference_warnings(tmp_path: Path) -> None:
    data = write_mds(tmp_path / "data", 100, size_limit=4000)
    with pytest.warns(UserWarning, match=r"predownload < batch_size \(2 < 4\)") as caught:
        StreamingDataset(local=str(data), batch_size=4, predownload=2)
    # Attributed to the caller's line, not to a line inside astream.
    assert [w.filename for w in caught] == [__file__]
    with pytest.warns(UserWarning, match="shuffle_block_size=5 is smaller than the largest shard"):
        StreamingDataset(local=str(data), shuffle=True, shuffle_block_size=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        StreamingDataset(local=str(data), batch_size=4, shuffle=True, shuffle_block_size=100)


# -- 8. exception classes ------------------------------------------------------------------


def test_error_classes_derive_from_the_reference_builtins(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as missing:
        StreamingDataset(local=str(tmp_path / "absent"))
    assert isinstance(missing.value, RuntimeError)
    with MDSWriter(out=str(tmp_path / "empty"), columns={"id": "int"}):
        pass
    with pytest.raises(EmptyDatasetError) as empty:
        StreamingDataset(local=str(tmp_path / "empty"))
    assert isinstance(empty.value, RuntimeError) and isinstance(empty.value, ValueError)
    assert issubclass(CacheLimitError, ValueError) and issubclass(CacheLimitError, OSError)
    # A cache too small while iterating is a ValueError too, as in mosaicml-streaming.
    table = StreamingDataset(local=str(write_mds(tmp_path / "data", 5))).table
    assert isinstance(evicted_error(table, 0), CacheLimitError)


# -- 9. environments and checkpoints ---------------------------------------------------------


def test_rank_and_world_size_alone_mean_one_rank_per_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = write_mds(tmp_path / "data", 40)
    dataset = StreamingDataset(local=str(data), batch_size=4, shuffle=True)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    alone = [check_sample(s) for s in dataset]
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    dataset.set_epoch(0)
    assert [check_sample(s) for s in dataset] == alone
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    dataset.set_epoch(0)
    assert [check_sample(s) for s in dataset] != alone


def test_a_state_dict_saved_before_the_first_batch_loads(tmp_path: Path) -> None:
    data = write_mds(tmp_path / "data", 40)
    dataset = StreamingDataset(local=str(data), batch_size=4, shuffle=True)
    whole = [check_sample(s) for s in dataset]
    fresh = StreamingDataset(local=str(data), batch_size=4, shuffle=True)
    fresh.load_state_dict(
        {
            "epoch": -1,
            "sample_in_epoch": 0,
            "num_canonical_nodes": 1,
            "shuffle_seed": 9176,
            "initial_physical_nodes": 1,
        }
    )
    assert [check_sample(s) for s in fresh] == whole


# -- 10. compress(None, data) --------------------------------------------------------------


def test_no_compression_passes_data_through() -> None:
    assert compress(None, b"abc") == decompress(None, b"abc") == b"abc"
