"""StreamingDataset's behaviours side by side with mosaicml-streaming 0.13 (issue 14).

Each test gives both libraries the same inputs (datasets written once, the same arguments) and
compares what comes out: the samples, the builtin class of each error (what user code catches),
the warnings. Where astream deliberately differs, the test pins the difference that
docs/migrating.md lists.
"""

from __future__ import annotations

import gc
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = [pytest.mark.interop, pytest.mark.usefixtures("reference_tempdir")]

streaming = pytest.importorskip("streaming")

from streaming.base.compression import compress as ref_compress  # noqa: E402
from streaming.base.compression import decompress as ref_decompress  # noqa: E402
from streaming.base.dataset import StreamingDataset as RefDataset  # noqa: E402
from streaming.base.local import LocalDataset as RefLocalDataset  # noqa: E402
from streaming.base.stream import Stream as RefStream  # noqa: E402
from streaming.base.world import World as RefWorld  # noqa: E402

import astream  # noqa: E402
from astream.format import compress, decompress  # noqa: E402
from astream.plan import World, detect_world  # noqa: E402
from tests.engine.datasets import check_sample, write_mds  # noqa: E402

BUILTINS = (RuntimeError, FileNotFoundError, ValueError, OSError, TypeError)


@pytest.fixture(autouse=True)
def _release_reference() -> Iterator[None]:
    # The reference registers each dataset's local dirs in shared memory until it is collected.
    yield
    gc.collect()


def _builtins(exc: BaseException) -> set[type[BaseException]]:
    return {cls for cls in BUILTINS if isinstance(exc, cls)}


def _raises(make: Callable[[], Any]) -> BaseException:
    try:
        make()
    except Exception as exc:
        return exc
    raise AssertionError("no error raised")


def _ids(dataset: Any) -> list[int]:
    return [check_sample(s) for s in dataset]


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    return write_mds(tmp_path / "remote", 300, size_limit=2000)


# -- 1. one local, two remotes ---------------------------------------------------------------


def test_a_local_dir_of_another_remote_is_a_value_error_in_both(tmp_path: Path) -> None:
    a, b = write_mds(tmp_path / "a", 40), write_mds(tmp_path / "b", 20)
    ref_a = RefDataset(remote=str(a), local=str(tmp_path / "ref"), batch_size=4)
    ref_error = _raises(
        lambda: RefDataset(remote=str(b), local=str(tmp_path / "ref"), batch_size=4)
    )
    ours_a = astream.StreamingDataset(remote=str(a), local=str(tmp_path / "ours"), batch_size=4)
    ours_error = _raises(
        lambda: astream.StreamingDataset(remote=str(b), local=str(tmp_path / "ours"), batch_size=4)
    )
    assert ValueError in _builtins(ref_error) and ValueError in _builtins(ours_error)
    assert _ids(ref_a) == _ids(ours_a)
    # The reference forgets once its first dataset is gone; astream's record stays on disk.
    del ref_a, ours_a
    gc.collect()
    assert len(RefDataset(remote=str(b), local=str(tmp_path / "ref"), batch_size=4)) == 40
    with pytest.raises(ValueError, match="already caches"):
        astream.StreamingDataset(remote=str(b), local=str(tmp_path / "ours"), batch_size=4)


# -- 2. a shard deleted mid-epoch --------------------------------------------------------------


def _deleting_shards_at(dataset: Any, local: Path, at: int) -> list[int]:
    out = []
    for k, sample in enumerate(dataset):
        out.append(check_sample(sample))
        if k == at:
            for path in local.glob("shard.*.mds"):
                path.unlink()
    return out


def test_a_shard_deleted_mid_epoch_is_fetched_again_in_both(tmp_path: Path, remote: Path) -> None:
    kwargs: dict[str, Any] = {"shuffle": True, "shuffle_block_size": 300, "batch_size": 4}
    ref = RefDataset(remote=str(remote), local=str(tmp_path / "ref"), **kwargs)
    ours = astream.StreamingDataset(remote=str(remote), local=str(tmp_path / "ours"), **kwargs)
    ref_ids = _deleting_shards_at(ref, tmp_path / "ref", 40)
    ours_ids = _deleting_shards_at(ours, tmp_path / "ours", 40)
    assert ours_ids == ref_ids and sorted(ours_ids) == list(range(300))


# -- 3. cache_limit --------------------------------------------------------------------------


@pytest.mark.parametrize("limit", ["2048", "5kb"])
def test_an_impossible_cache_limit_is_a_value_error_at_construction_in_both(
    tmp_path: Path, remote: Path, limit: str
) -> None:
    ref_error = _raises(
        lambda: RefDataset(remote=str(remote), local=str(tmp_path / "r"), cache_limit=limit)
    )
    ours_error = _raises(
        lambda: astream.StreamingDataset(
            remote=str(remote), local=str(tmp_path / "o"), cache_limit=limit
        )
    )
    assert ValueError in _builtins(ref_error) and ValueError in _builtins(ours_error)
    assert "the minimum is" in str(ours_error)


def test_a_tight_cache_limit_evicts_and_counts_the_index_in_both(tmp_path: Path) -> None:
    # mosaicml-streaming's own eviction test (5000 one-byte samples in ~500-byte shards), smaller.
    remote = tmp_path / "remote"
    with astream.MDSWriter(out=str(remote), columns={"data": "bytes"}, size_limit=500) as out:
        for _ in range(3000):
            out.write({"data": b"\0"})
    kwargs: dict[str, Any] = {"cache_limit": "60kb", "batch_size": 1}
    ref = RefDataset(remote=str(remote), local=str(tmp_path / "ref"), **kwargs)
    ours = astream.StreamingDataset(
        remote=str(remote), local=str(tmp_path / "ours"), max_downloads=1, **kwargs
    )
    assert [s["data"] for s in ours] == [s["data"] for s in ref]
    listing = set(os.listdir(remote))
    assert set(os.listdir(tmp_path / "ref")) < listing
    assert set(os.listdir(tmp_path / "ours")) - {".astream"} < listing
    limit = ours.cache_limit
    assert limit == ref.cache_limit == 60 * 1024
    assert ref.cache_usage <= limit and ours.cache_usage <= limit
    on_disk = sum(p.stat().st_size for p in (tmp_path / "ours").rglob("*") if p.is_file())
    assert ours.cache_usage == on_disk  # every byte of the directory, the index included


# -- 4. the shard and cache surface ------------------------------------------------------------


def test_manual_prepare_and_evict_as_the_reference(tmp_path: Path, remote: Path) -> None:
    ref = RefDataset(remote=str(remote), local=str(tmp_path / "ref"), batch_size=1)
    ours = astream.StreamingDataset(remote=str(remote), local=str(tmp_path / "ours"), batch_size=1)
    assert ours.num_shards == ref.num_shards
    assert list(ours.samples_per_shard) == list(ref.samples_per_shard)
    assert [s.samples for s in ours.shards] == [s.samples for s in ref.shards]
    for shard in range(ref.num_shards):
        ref.prepare_shard(shard)
        ours.prepare_shard(shard)
    full = set(os.listdir(tmp_path / "ref"))
    assert set(os.listdir(tmp_path / "ours")) == full | {".astream"}
    assert ours.cache_usage >= ref.cache_usage  # astream's own files count too
    for shard in range(ref.num_shards):
        ref.evict_shard(shard)
        ours.evict_shard(shard)
    assert os.listdir(tmp_path / "ref") == ["index.json"]
    assert set(os.listdir(tmp_path / "ours")) == {"index.json", ".astream"}
    assert [check_sample(ours[i]) for i in range(300)] == [check_sample(ref[i]) for i in range(300)]
    # The reference's dataset[i] downloads whole shards; astream's range-reads uncompressed ones
    # and caches nothing: with nothing local, evict_coldest_shard is a ValueError in both.
    for _ in range(ref.num_shards):
        ref.evict_coldest_shard()
    with pytest.raises(ValueError):
        ref.evict_coldest_shard()
    with pytest.raises(ValueError):
        ours.evict_coldest_shard()


def _mixed_streams(cls: Any, a: Path, b: Path, c: Path) -> list[Any]:
    return [
        cls(local=str(a), repeat=1.5),
        cls(local=str(b), choose=7),
        cls(local=str(c)),
    ]


def test_resolved_stream_weights_and_resample_streams_match(tmp_path: Path) -> None:
    a = write_mds(tmp_path / "a", 40, size_limit=2000)
    b = write_mds(tmp_path / "b", 25, size_limit=2000)
    c = write_mds(tmp_path / "c", 10)
    ref_streams = _mixed_streams(RefStream, a, b, c)
    ours_streams = _mixed_streams(astream.Stream, a, b, c)
    kwargs: dict[str, Any] = {"batch_size": 4, "shuffle": True, "shuffle_seed": 17}
    ref = RefDataset(streams=ref_streams, **kwargs)
    ours = astream.StreamingDataset(streams=ours_streams, **kwargs)
    for theirs, mine in zip(ref_streams, ours_streams, strict=True):
        assert mine.proportion == pytest.approx(float(theirs.proportion))
        assert mine.repeat == pytest.approx(float(theirs.repeat))
        assert mine.choose == int(theirs.choose)
    for epoch in (0, 3):
        for stream_id in (None, 0, 1):
            ref_units, ref_ids = ref.resample_streams(epoch, stream_id)
            units, ids = ours.resample_streams(epoch, stream_id)
            assert list(units) == list(ref_units) and list(ids) == list(ref_ids)
    assert _ids(ours) == _ids(ref)


@pytest.mark.usefixtures("allow_reference_file_leaks")
def test_local_dataset_reads_the_same(tmp_path: Path) -> None:
    data = write_mds(tmp_path / "data" / "val", 30, size_limit=2000)
    ref = RefLocalDataset(str(data.parent), "val")
    ours = astream.LocalDataset(str(data.parent), "val")
    assert len(ours) == len(ref) == ours.size == ref.size
    assert [check_sample(ours[i]) for i in range(30)] == [check_sample(ref[i]) for i in range(30)]
    assert [check_sample(s) for s in ours[2:9:3]] == [check_sample(s) for s in ref[2:9:3]]


# -- 6. replication ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nodes", "ranks", "replication"), [(1, 4, 2), (2, 4, 2), (2, 2, 4), (4, 2, 2), (2, 4, 8)]
)
def test_replicated_worlds_match(nodes: int, ranks: int, replication: int) -> None:
    for rank in range(nodes * ranks):
        for worker in range(2):
            ref = RefWorld(nodes, ranks, 2, rank * 2 + worker).replicate(replication)
            ours = World(
                num_nodes=nodes,
                ranks_per_node=ranks,
                node=rank // ranks,
                rank_in_node=rank % ranks,
                workers_per_rank=2,
                worker=worker,
            ).replicate(replication)
            assert (ours.num_nodes, ours.ranks_per_node, ours.rank, ours.worker_id) == (
                ref.num_nodes,
                ref.ranks_per_node,
                ref.rank,
                ref.worker,
            )


# -- 7. checks and warnings ----------------------------------------------------------------------


def test_pickled_columns_are_a_value_error_at_construction_in_both(tmp_path: Path) -> None:
    with astream.MDSWriter(out=str(tmp_path / "pkl"), columns={"obj": "pkl"}) as writer:
        writer.write({"obj": [1]})
    ref_error = _raises(lambda: RefDataset(local=str(tmp_path / "pkl"), batch_size=1))
    ours_error = _raises(lambda: astream.StreamingDataset(local=str(tmp_path / "pkl")))
    assert ValueError in _builtins(ref_error) and ValueError in _builtins(ours_error)


def _warnings(make: Callable[[], Any]) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make()
    return [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def test_the_same_warnings(tmp_path: Path) -> None:
    data = write_mds(tmp_path / "data", 200, size_limit=4000)
    for cls in (RefDataset, astream.StreamingDataset):
        said = _warnings(lambda cls=cls: cls(local=str(data), batch_size=4, predownload=2))
        assert any("predownload < batch_size (2 < 4)" in w for w in said), cls
        # The reference warns as it shuffles (at iteration), astream when it is built.
        said = _warnings(
            lambda cls=cls: list(
                cls(local=str(data), batch_size=4, shuffle=True, shuffle_block_size=5)
            )
        )
        assert any("smaller than" in w and "shard" in w for w in said), cls


def test_a_loader_with_workers_and_no_dataset_batch_size_is_a_value_error(
    tmp_path: Path,
) -> None:
    data = write_mds(tmp_path / "data", 20)
    from streaming.base.dataloader import StreamingDataLoader as RefLoader

    ref_error = _raises(lambda: list(RefLoader(RefDataset(local=str(data)), batch_size=4)))
    ours_error = _raises(
        lambda: astream.StreamingDataLoader(
            astream.StreamingDataset(local=str(data)), batch_size=4, num_workers=2
        )
    )
    assert ValueError in _builtins(ref_error) and ValueError in _builtins(ours_error)


# -- 8. exception classes ----------------------------------------------------------------------


def test_a_missing_or_empty_index_is_a_runtime_error_in_both(tmp_path: Path) -> None:
    with astream.MDSWriter(out=str(tmp_path / "empty"), columns={"id": "int"}):
        pass
    for where in ("absent", "empty"):
        ref_error = _raises(lambda w=where: RefDataset(local=str(tmp_path / w), batch_size=1))
        ours_error = _raises(lambda w=where: astream.StreamingDataset(local=str(tmp_path / w)))
        assert RuntimeError in _builtins(ref_error), where
        assert _builtins(ref_error) <= _builtins(ours_error), where


# -- 9. environments and checkpoints -------------------------------------------------------------


@pytest.mark.parametrize(
    "env",
    [
        {"RANK": "3", "WORLD_SIZE": "4"},
        {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3"},
        {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4"},
    ],
)
def test_the_world_is_read_from_the_environment_as_the_reference(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    ref = RefWorld.detect()
    ours = detect_world()
    assert (ours.num_nodes, ours.ranks_per_node, ours.node, ours.rank_in_node) == (
        ref.num_nodes,
        ref.ranks_per_node,
        ref.node,
        ref.rank_of_node,
    )


def test_a_state_dict_saved_before_the_first_batch_resumes_in_astream(tmp_path: Path) -> None:
    data = write_mds(tmp_path / "data", 60)
    kwargs: dict[str, Any] = {"batch_size": 4, "shuffle": True}
    ref = RefDataset(local=str(data), **kwargs)
    state = ref.state_dict(0, False)
    assert state["epoch"] == -1
    ours = astream.StreamingDataset(local=str(data), **kwargs)
    ours.load_state_dict(state)
    assert _ids(ours) == _ids(ref)


# -- 10. no compression ------------------------------------------------------------------------


def test_no_compression_passes_data_through_in_both() -> None:
    data = bytes(np.arange(50, dtype=np.uint8))
    assert compress(None, data) == ref_compress(None, data) == data
    assert decompress(None, data) == ref_decompress(None, data) == data
