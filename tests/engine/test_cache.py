"""The node-local shard cache: downloads, checks, decompression, exactly-once, eviction."""

from __future__ import annotations

import asyncio
import hashlib
import json
import multiprocessing
import os
import pickle
from pathlib import Path

import anyio
import pytest
import zstandard
from cache_worker import (
    CountingStore,
    downloads,
    fetch_all,
    shard_bytes,
    temp_files,
    write_dataset,
)

import astream.engine.cache as cache_module
from astream.engine.cache import ShardCache, fetch_index
from astream.errors import CacheError, FormatError, ObjectNotFoundError, ShardCorruptError
from astream.format import LocalJSONWriter, ShardInfo, load_index

SIZE = 10_000


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    return tmp_path / "remote"


@pytest.fixture
def local(tmp_path: Path) -> Path:
    return tmp_path / "local"


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "downloads.log"


@pytest.mark.anyio
async def test_fetch_downloads_once_and_counts(remote: Path, local: Path, log: Path) -> None:
    shards = write_dataset(remote, [SIZE, SIZE + 1])
    cache = ShardCache(local)
    store = CountingStore(remote, log)
    assert not cache.is_ready(shards[0])

    path = await cache.fetch(store, shards[0])
    assert path == local / "shard.00000.mds" == cache.raw_path(shards[0])
    assert path.read_bytes() == shard_bytes(0, SIZE)
    assert cache.is_ready(shards[0])
    assert not cache.is_ready(shards[1])

    assert await cache.fetch(store, shards[0]) == path
    assert downloads(log) == {"shard.00000.mds": 1}
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.bytes_downloaded) == (1, 1, SIZE)
    assert cache.shard_usage() == SIZE
    assert temp_files(local) == []


@pytest.mark.anyio
async def test_downloads_do_not_list_the_shards_folder(
    remote: Path, local: Path, log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Listing a folder of thousands of shards before each download made an epoch's downloads
    # quadratic: only a download whose marker a killed process left (test_cache_kill) looks
    # for its temporary files, and a normal one leaves no marker behind.
    listed: list[Path] = []
    real = cache_module._temps_of
    monkeypatch.setattr(
        cache_module, "_temps_of", lambda final: listed.append(final) or real(final)
    )
    shards = write_dataset(remote, [SIZE] * 6)
    cache = ShardCache(local, limit=SIZE * 6 + (1 << 20))
    store = CountingStore(remote, log)
    await asyncio.gather(*(cache.fetch(store, shard) for shard in shards))
    assert listed == []
    assert downloads(log) == {shard.raw.basename: 1 for shard in shards}
    assert list((local / ".astream" / "downloads").iterdir()) == []
    assert temp_files(local) == []


@pytest.mark.anyio
async def test_a_file_of_the_wrong_size_is_not_ready_and_is_replaced(
    remote: Path, local: Path, log: Path
) -> None:
    shards = write_dataset(remote, [SIZE])
    cache = ShardCache(local)
    os.mkdir(local)
    cache.raw_path(shards[0]).write_bytes(shard_bytes(0, SIZE)[: SIZE // 2])
    assert not cache.is_ready(shards[0])
    path = await cache.fetch(CountingStore(remote, log), shards[0])
    assert path.read_bytes() == shard_bytes(0, SIZE)


@pytest.mark.anyio
@pytest.mark.parametrize("compression", [None, "zstd:3"])
async def test_validate_hash_accepts_the_right_bytes(
    remote: Path, local: Path, log: Path, compression: str | None
) -> None:
    shards = write_dataset(remote, [SIZE], compression=compression)
    path = await ShardCache(local).fetch(
        CountingStore(remote, log), shards[0], validate_hash="sha1"
    )
    assert path.read_bytes() == shard_bytes(0, SIZE)


@pytest.mark.anyio
@pytest.mark.parametrize("compression", [None, "zstd:3"])
async def test_validate_hash_refuses_tampered_bytes(
    remote: Path, local: Path, log: Path, compression: str | None
) -> None:
    shards = write_dataset(remote, [SIZE], compression=compression)
    name = shards[0].raw.basename if compression is None else shards[0].zip.basename  # type: ignore[union-attr]
    tampered = bytearray((remote / name).read_bytes())
    tampered[-1] ^= 0xFF  # same size: only the hash can tell
    (remote / name).write_bytes(bytes(tampered))
    cache = ShardCache(local)

    with pytest.raises(ShardCorruptError, match=r"shard\.00000\.mds.*sha1"):
        await cache.fetch(CountingStore(remote, log), shards[0], validate_hash="sha1")
    assert not cache.raw_path(shards[0]).exists()
    assert not (local / "shard.00000.mds.zstd").exists()
    assert temp_files(local) == []


@pytest.mark.anyio
async def test_validate_hash_needs_the_algorithm_in_the_index(
    remote: Path, local: Path, log: Path
) -> None:
    shards = write_dataset(remote, [SIZE])
    with pytest.raises(FormatError, match=r"xxh64.*shard\.00000\.mds"):
        await ShardCache(local).fetch(CountingStore(remote, log), shards[0], validate_hash="xxh64")
    assert temp_files(local) == []


@pytest.mark.anyio
async def test_a_corrupt_compressed_file_is_refused(remote: Path, local: Path, log: Path) -> None:
    shards = write_dataset(remote, [SIZE], compression="zstd")
    zip_path = remote / "shard.00000.mds.zstd"
    zip_path.write_bytes(b"\0" * zip_path.stat().st_size)
    cache = ShardCache(local)
    with pytest.raises(ShardCorruptError, match=r"shard\.00000\.mds"):
        await cache.fetch(CountingStore(remote, log), shards[0])
    assert not cache.raw_path(shards[0]).exists()
    assert temp_files(local) == []


@pytest.mark.anyio
@pytest.mark.parametrize("keep_zip", [False, True])
async def test_compressed_shard_is_decompressed(
    remote: Path, local: Path, log: Path, keep_zip: bool
) -> None:
    shards = write_dataset(remote, [SIZE, SIZE], compression="zstd")
    cache = ShardCache(local)
    path = await cache.fetch(CountingStore(remote, log), shards[1], keep_zip=keep_zip)
    assert path.read_bytes() == shard_bytes(1, SIZE)
    zip_copy = local / "shard.00001.mds.zstd"
    assert zip_copy.exists() == keep_zip
    if keep_zip:
        assert zip_copy.read_bytes() == (remote / "shard.00001.mds.zstd").read_bytes()
    assert downloads(log) == {"shard.00001.mds.zstd": 1}
    assert cache.stats().bytes_downloaded == shards[1].zip.bytes  # type: ignore[union-attr]
    assert temp_files(local) == []


@pytest.mark.anyio
async def test_a_local_compressed_dataset_is_decompressed_in_place(remote: Path, log: Path) -> None:
    # No remote: the local directory holds only compressed shards. Nothing is downloaded and
    # the compressed files stay.
    shards = write_dataset(remote, [SIZE], compression="zstd")
    cache = ShardCache(remote, evictable=False)
    path = await cache.fetch(CountingStore(remote, log), shards[0], validate_hash="md5")
    assert path.read_bytes() == shard_bytes(0, SIZE)
    assert (remote / "shard.00000.mds.zstd").exists()
    assert downloads(log) == {}


@pytest.mark.anyio
async def test_uncompressed_shard_is_readable_range_by_range(
    remote: Path, local: Path, log: Path
) -> None:
    size = 50_000  # 13 parts of 4096 bytes
    shards = write_dataset(remote, [size])
    expected = shard_bytes(0, size)
    cache = ShardCache(local)
    fds: list[int] = []
    landed: list[tuple[int, int]] = []

    def on_raw_started(tmp: Path) -> None:
        assert tmp.parent == local and tmp != cache.raw_path(shards[0])
        assert tmp.stat().st_size == size
        fds.append(os.open(tmp, os.O_RDONLY))

    def on_progress(start: int, end: int) -> None:
        # What the engine relies on: a reported range is readable through the early descriptor.
        assert os.pread(fds[0], end - start, start) == expected[start:end]
        landed.append((start, end))

    try:
        await cache.fetch(
            CountingStore(remote, log),
            shards[0],
            on_raw_started=on_raw_started,
            on_progress=on_progress,
        )
        assert len(fds) == 1
        covered = bytearray(size)
        for start, end in landed:
            assert covered[start:end] == bytes(end - start)  # each byte reported once
            covered[start:end] = b"\1" * (end - start)
        assert covered == b"\1" * size
        # The descriptor opened on the temporary file now reads the renamed, complete shard.
        assert os.pread(fds[0], size + 1, 0) == expected
        assert os.fstat(fds[0]).st_ino == cache.raw_path(shards[0]).stat().st_ino
    finally:
        for fd in fds:
            os.close(fd)


def test_exactly_once_per_node_across_processes(remote: Path, local: Path, log: Path) -> None:
    sizes = [20_000 + i for i in range(6)]
    shards = write_dataset(remote, sizes)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager, ctx.Pool(4) as pool:
        barrier = manager.Barrier(4)  # all four start fetching at once
        results = pool.starmap(
            fetch_all, [(str(remote), str(local), str(log), seed, barrier) for seed in range(4)]
        )
    assert downloads(log) == {s.raw.basename: 1 for s in shards}
    expected = {
        s.raw.basename: hashlib.sha1(shard_bytes(i, sizes[i])).hexdigest()
        for i, s in enumerate(shards)
    }
    assert results == [expected] * 4
    assert temp_files(local) == []


@pytest.mark.anyio
async def test_eviction_keeps_usage_under_the_limit_in_lru_order(
    remote: Path, local: Path, log: Path
) -> None:
    shards = write_dataset(remote, [SIZE] * 5)
    cache = ShardCache(local, limit=25_000)
    store = CountingStore(remote, log)
    await cache.fetch(store, shards[0])
    await cache.fetch(store, shards[1])
    assert cache.shard_usage() == 2 * SIZE
    cache.touch(shards[0])  # 1 is now the least recently used
    await cache.fetch(store, shards[2])
    assert cache.shard_usage() <= 25_000
    assert [cache.is_ready(s) for s in shards[:3]] == [True, False, True]

    # A hit refreshes the stamp too: 2 becomes the oldest.
    await cache.fetch(store, shards[0])
    await cache.fetch(store, shards[3])
    assert [cache.is_ready(s) for s in shards[:4]] == [True, False, False, True]
    assert cache.shard_usage() <= 25_000
    stats = cache.stats()
    assert (stats.evictions, stats.bytes_evicted) == (2, 2 * SIZE)
    assert (remote / "index.json").exists()


@pytest.mark.anyio
async def test_eviction_removes_kept_compressed_files_and_spares_the_index(
    remote: Path, local: Path, log: Path
) -> None:
    shards = write_dataset(remote, [SIZE] * 2, compression="zstd")
    store = CountingStore(remote, log)
    await fetch_index(store, local)
    zip_size = shards[0].zip.bytes  # type: ignore[union-attr]
    cache = ShardCache(local, limit=SIZE + zip_size + SIZE + zip_size + 10)
    await cache.fetch(store, shards[0], keep_zip=True)
    assert cache.shard_usage() == SIZE + zip_size
    assert cache.evict(cache.limit - SIZE) == SIZE + zip_size  # type: ignore[operator]
    assert sorted(os.listdir(local)) == [".astream", "index.json"]
    assert cache.shard_usage() == 0


@pytest.mark.anyio
async def test_a_pinned_shard_is_not_evicted_and_the_limit_is_an_error(
    remote: Path, local: Path, log: Path
) -> None:
    shards = write_dataset(remote, [SIZE] * 3)
    cache = ShardCache(local, limit=2 * SIZE + 1024)  # two shards and their stamps
    store = CountingStore(remote, log)
    pin = await cache.acquire(store, shards[0])
    with pin as path:
        await cache.fetch(store, shards[1])
        await cache.fetch(store, shards[2])  # evicts 1: 0 is pinned, though older
        assert path.read_bytes() == shard_bytes(0, SIZE)
        assert [cache.is_ready(s) for s in shards] == [True, False, True]
        with cache.pin(shards[2]), pytest.raises(CacheError, match="cache_limit"):
            await cache.fetch(store, shards[1])
    assert cache.evict(SIZE) == SIZE  # unpinned now
    assert not cache.is_ready(shards[0])


@pytest.mark.anyio
async def test_a_pin_does_not_fetch_and_does_not_block_the_fetch_of_others(
    remote: Path, local: Path, log: Path
) -> None:
    shards = write_dataset(remote, [SIZE, SIZE])
    cache = ShardCache(local)
    with cache.pin(shards[0]) as path:
        assert path == cache.raw_path(shards[0])
        assert not cache.is_ready(shards[0])
        await cache.fetch(CountingStore(remote, log), shards[1])
    pin = await cache.pin_async(shards[1])
    with pin as path:
        assert path.read_bytes() == shard_bytes(1, SIZE)
    assert cache.shard_usage() == SIZE  # pinning an absent shard recorded nothing


@pytest.mark.anyio
async def test_a_shard_larger_than_the_limit_is_an_error(
    remote: Path, local: Path, log: Path
) -> None:
    shards = write_dataset(remote, [SIZE])
    cache = ShardCache(local, limit="4kb")
    assert cache.limit == 4096
    with pytest.raises(CacheError, match=r"shard\.00000\.mds.*cache_limit=4096"):
        await cache.fetch(CountingStore(remote, log), shards[0])
    assert downloads(log) == {}


@pytest.mark.anyio
async def test_not_evictable_never_deletes(remote: Path, log: Path) -> None:
    shards = write_dataset(remote, [SIZE] * 3)
    cache = ShardCache(remote, limit=1, evictable=False)
    for shard in shards:
        await cache.fetch(CountingStore(remote, log), shard)
        with cache.pin(shard) as path:
            assert path.exists()
    assert cache.evict(10**9) == 0
    assert all(cache.is_ready(s) for s in shards)
    assert downloads(log) == {}


@pytest.mark.anyio
async def test_fetch_index_reads_the_remote_each_time_and_keeps_an_unchanged_copy(
    remote: Path, local: Path, log: Path
) -> None:
    write_dataset(remote, [SIZE])
    store = CountingStore(remote, log)
    expected = (remote / "index.json").read_bytes()
    assert await fetch_index(store, local) == expected
    inode = (local / "index.json").stat().st_ino
    assert await fetch_index(store, local) == expected
    assert downloads(log) == {"index.json": 2}  # as mosaicml-streaming, at every start
    assert (local / "index.json").read_bytes() == expected
    assert (local / "index.json").stat().st_ino == inode  # unchanged: not rewritten
    with pytest.raises(ObjectNotFoundError):
        await fetch_index(store, local, name="missing/index.json")
    assert temp_files(local) == []


@pytest.mark.anyio
async def test_a_cache_pickles_without_its_counters(remote: Path, local: Path, log: Path) -> None:
    shards = write_dataset(remote, [SIZE])
    cache = ShardCache(local, limit="1mb")
    await cache.fetch(CountingStore(remote, log), shards[0])
    copy = pickle.loads(pickle.dumps(cache))
    assert (copy.root, copy.limit, copy.evictable) == (local, 1 << 20, True)
    assert copy.stats().misses == 0
    assert copy.is_ready(shards[0])


@pytest.mark.anyio
async def test_a_cancelled_fetch_leaves_nothing_and_frees_its_lock(
    remote: Path, local: Path, log: Path
) -> None:
    shards = write_dataset(remote, [SIZE])
    cache = ShardCache(local)
    store = CountingStore(remote, log, part_size=1024)
    with anyio.CancelScope() as scope:
        await cache.fetch(store, shards[0], on_progress=lambda start, end: scope.cancel())
    assert scope.cancelled_caught
    assert temp_files(local) == [] and not cache.is_ready(shards[0])
    path = await cache.fetch(store, shards[0])
    assert path.read_bytes() == shard_bytes(0, SIZE)


@pytest.mark.anyio
async def test_a_jsonl_shard_brings_its_meta_file(remote: Path, local: Path, log: Path) -> None:
    samples = [{"text": f"sample {i} " * (i % 7)} for i in range(200)]
    with LocalJSONWriter(
        out=remote, columns={"text": "str"}, compression="zstd", hashes=["sha1"]
    ) as w:
        for sample in samples:
            w.write(sample)
    index = remote / "index.json"
    shard = load_index(index.read_bytes(), source=str(index)).shards[0]
    assert shard.raw_meta is not None and shard.zip_meta is not None
    cache = ShardCache(local)
    await cache.fetch(CountingStore(remote, log), shard, validate_hash="sha1")
    assert cache.is_ready(shard)
    for raw, packed in ((shard.raw, shard.zip), (shard.raw_meta, shard.zip_meta)):
        with zstandard.ZstdDecompressor().stream_reader(
            (remote / packed.basename).read_bytes()  # type: ignore[union-attr]
        ) as reader:
            assert (local / raw.basename).read_bytes() == reader.read()
    assert sorted(downloads(log)) == sorted([shard.zip.basename, shard.zip_meta.basename])  # type: ignore[union-attr]
    assert cache.shard_usage() == shard.raw.bytes + shard.raw_meta.bytes


@pytest.mark.anyio
async def test_concurrent_fetches_in_one_process_download_once(
    remote: Path, local: Path, log: Path
) -> None:
    shards = write_dataset(remote, [SIZE] * 2, compression="zstd")
    cache = ShardCache(local, limit="1mb")
    store = CountingStore(remote, log, delay=0.001)
    paths = await asyncio.gather(*(cache.fetch(store, shards[i % 2]) for i in range(8)))
    assert downloads(log) == {"shard.00000.mds.zstd": 1, "shard.00001.mds.zstd": 1}
    assert [p.read_bytes() for p in paths] == [shard_bytes(i % 2, SIZE) for i in range(8)]
    stats = cache.stats()
    assert (stats.hits, stats.misses) == (6, 2)


def _bytes_under(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


@pytest.mark.anyio
async def test_the_limit_counts_every_byte_of_the_directory(
    remote: Path, local: Path, log: Path
) -> None:
    # Room for two shards but not for two shards and the index: the index must make the
    # second fetch evict the first (mosaicml-streaming counts the index too).
    shards = write_dataset(remote, [SIZE] * 2)
    store = CountingStore(remote, log)
    await fetch_index(store, local)
    (local / "notes.txt").write_bytes(b"x" * 100)  # anything else in the directory counts too
    cache = ShardCache(local, limit=2 * SIZE + 100)
    await cache.fetch(store, shards[0])
    assert cache.usage() == _bytes_under(local) > SIZE + (local / "index.json").stat().st_size
    await cache.fetch(store, shards[1])
    assert [cache.is_ready(s) for s in shards] == [False, True]
    assert cache.usage() == _bytes_under(local) <= 2 * SIZE + 100
    assert cache.stats().evictions == 1


class _GatedStore(CountingStore):
    """Downloads wait at ``gate`` until it is set (``entered`` says one is waiting)."""

    def __init__(self, remote: Path, log: Path) -> None:
        super().__init__(remote, log)
        self.entered = anyio.Event()
        self.gate = anyio.Event()

    async def read_range(self, key: str, start: int, end: int) -> bytes:
        self.entered.set()
        await self.gate.wait()
        return await super().read_range(key, start, end)


def _room(shard: ShardInfo) -> int:
    """What a compressed shard occupies at its peak: raw and compressed files together."""
    assert shard.zip is not None
    return shard.raw.bytes + shard.zip.bytes


@pytest.mark.anyio
async def test_concurrent_downloads_do_not_overshoot_the_limit(
    remote: Path, local: Path, log: Path
) -> None:
    # Two caches on one directory are two processes of a node. A's download has made room
    # for its shard (raw + compressed: it decompresses later) and has written only part of it
    # when B makes room for its own: B must count A's room as taken and evict the old shard,
    # or the directory ends over the limit once A decompresses.
    shards = write_dataset(remote, [SIZE] * 3, compression="zstd")
    store = CountingStore(remote, log)
    await fetch_index(store, local)
    index = (local / "index.json").stat().st_size
    limit = index + _room(shards[0]) + _room(shards[1]) + 1024  # and the stamps
    a, b = ShardCache(local, limit=limit), ShardCache(local, limit=limit)
    await b.fetch(store, shards[2])  # an older shard, raw only now
    gated = _GatedStore(remote, log)
    async with anyio.create_task_group() as tg:
        tg.start_soon(a.fetch, gated, shards[0])
        await gated.entered.wait()  # A has made its room and is downloading
        await b.fetch(store, shards[1])
        gated.gate.set()
    assert [a.is_ready(s) for s in shards] == [True, True, False]
    assert _bytes_under(local) <= limit
    assert list((local / ".astream" / "reserved").iterdir()) == []


@pytest.mark.anyio
async def test_a_reservation_left_by_a_killed_download_is_dropped(
    remote: Path, local: Path, log: Path
) -> None:
    # A reservation whose shard nobody downloads (its process was killed) takes no room: the
    # next pass deletes it, and a fetch that needs that room gets it.
    shards = write_dataset(remote, [SIZE] * 2)
    store = CountingStore(remote, log)
    cache = ShardCache(local, limit=SIZE + 2048)
    await cache.fetch(store, shards[0])
    cache.evict_one(shards[0])
    reserved = local / ".astream" / "reserved"
    reserved.mkdir(exist_ok=True)
    (reserved / "shard.00000.mds.json").write_text(
        json.dumps({"files": ["shard.00000.mds"], "bytes": SIZE + 256})
    )
    await cache.fetch(store, shards[1])
    assert cache.is_ready(shards[1])
    assert list(reserved.iterdir()) == []


@pytest.mark.anyio
async def test_downloads_at_the_limit_rarely_walk_the_directory(
    remote: Path, local: Path, log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A walk costs a stat per cached file, under the lock every download of the node takes:
    # with thousands of shards cached, one per download caps the node's download rate. Most
    # downloads find their room in the ledger; the limit holds after every one.
    shards = write_dataset(remote, [1000] * 300)
    store = CountingStore(remote, log)
    limit = 128 * 1300
    cache = ShardCache(local, limit=limit)
    walks: list[Path] = []
    real = cache_module.folder_bytes

    def folder_bytes(root: Path) -> int:
        walks.append(root)
        return real(root)

    monkeypatch.setattr(cache_module, "folder_bytes", folder_bytes)
    for shard in shards:
        await cache.fetch(store, shard)
        assert _bytes_under(local) <= limit
    assert cache.stats().evictions > 100
    assert len(walks) <= len(shards) // 3, len(walks)
