"""A hostile index or planted bookkeeping cannot make the cache touch anything outside it.

The attack found before: an index whose shard basename was ``.astream/shards/<stamp>.json``
made the download overwrite that shard's LRU stamp with a list of paths outside the cache,
and eviction then deleted them. Now such a basename is refused when the index loads, and
eviction trusts a stamp only for files of its own shard that resolve inside the cache.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reliability_data import full_cache, shard_bytes, write_dataset

from astream import StreamingDataset
from astream.engine._locks import FileLock
from astream.engine.cache import ShardCache
from astream.errors import CacheError, CacheLimitError, IndexFormatError
from astream.format.index import _basename_problem, _plain_basename, check_basename, load_index


def _hostile_copy(remote: Path, basename: str, content: bytes) -> None:
    """Add a shard named ``basename`` holding ``content`` to the dataset at ``remote``."""
    index = json.loads((remote / "index.json").read_text())
    entry = json.loads(json.dumps(index["shards"][0]))
    target = remote / basename
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content)
    entry["raw_data"] = {"basename": basename, "bytes": len(content), "hashes": {}}
    entry["samples"] = 0
    index["shards"].append(entry)
    (remote / "index.json").write_text(json.dumps(index))


def test_basename_into_the_cache_bookkeeping_is_refused(tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    write_dataset(remote, 40)
    victim = tmp_path / "victim.txt"
    victim.write_text("not the cache's")
    stamp = f".astream/shards/{urllib.parse.quote('shard.00000.mds', safe='')}.json"
    _hostile_copy(remote, stamp, json.dumps({"files": [str(victim), "../victim.txt"]}).encode())
    with pytest.raises(IndexFormatError, match=r"\.astream/, astream's own folder"):
        dataset = StreamingDataset(remote=str(remote), local=tmp_path / "cache", cache_limit=1)
        list(dataset)
    assert victim.read_text() == "not the cache's"


@pytest.mark.parametrize(
    ("basename", "problem"),
    [
        (".astream/locks/x.lock", "astream's own folder"),
        ("sub/.ASTREAM/shards/x.json", "astream's own folder"),
        (".shard.00000.mds.astream-tmp-12-abcd", "temporary file"),
        ("part/.shard.00001.mds.4242.tmp", "temporary file"),
        ("index.json", "index's own name"),
        ("a" * 201, "too long"),
        ("a/" * 67 + "b", "too long"),
    ],
)
def test_check_basename_refuses_astream_names(basename: str, problem: str) -> None:
    with pytest.raises(IndexFormatError, match=problem):
        check_basename(basename, "where")


_COMPONENTS = st.lists(st.text(alphabet="ab-", min_size=1, max_size=4), min_size=1, max_size=90)


@given(
    st.text(alphabet="ab.-_/\\:%\x00Ié ", max_size=80)
    | _COMPONENTS.map("/".join)
    | st.sampled_from(["index.json", "INDEX.json", "a/index.json", ".astream", "x/.Astream/y"])
)
@settings(max_examples=2000, deadline=None)
def test_the_quick_basename_check_accepts_only_what_the_full_one_accepts(basename: str) -> None:
    # check_basename skips the full check for names that look plain: never one it refuses.
    if _plain_basename(basename):
        assert _basename_problem(basename) is None


def test_a_shard_file_used_as_a_folder_is_refused(tmp_path: Path) -> None:
    write_dataset(tmp_path, 40)
    index = json.loads((tmp_path / "index.json").read_text())
    first = index["shards"][0]["raw_data"]["basename"]
    index["shards"][1]["raw_data"]["basename"] = f"{first}/inner.mds"
    with pytest.raises(IndexFormatError, match="as a folder"):
        load_index(json.dumps(index), source="i")


def _plant(cache: Path, name: str, files: object) -> None:
    shards = cache / ".astream" / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    (shards / f"{urllib.parse.quote(name, safe='')}.json").write_text(json.dumps({"files": files}))


def test_planted_stamps_delete_nothing_outside_the_cache(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    outside = tmp_path / "outside"
    outside.mkdir()
    victims = {name: outside / name for name in ("a", "b", "x.mds", "x.mds.meta")}
    for path in victims.values():
        path.write_bytes(b"v" * 1000)
    cache.mkdir()
    # A folder inside the cache that is a symlink to one outside it.
    (cache / "sub").symlink_to(outside, target_is_directory=True)
    # Files of a real shard that another shard's stamp names.
    (cache / "other.mds").write_bytes(b"o" * 1000)
    _plant(cache, "a", [str(victims["a"])])  # absolute
    _plant(cache, "b", ["../outside/b"])  # '..'
    _plant(cache, "sub/x.mds", ["sub/x.mds", "sub/x.mds.meta"])  # through the symlink
    _plant(cache, "mine.mds", ["mine.mds", "other.mds"])  # another shard's file
    _plant(cache, "index", ["index.json"])  # the index
    (cache / "index.json").write_text("{}")
    _plant(cache, "odd", {"not": "a list"})
    # A stamp that is a symlink to a file outside, and one that is huge.
    shards = cache / ".astream" / "shards"
    os.symlink(victims["a"], shards / "link.json")
    (shards / "big.json").write_bytes(b" " * (1 << 20))

    evictor = ShardCache(cache, limit=1)
    # The limit counts every byte of the directory: nothing can bring it under 1 byte.
    with pytest.raises(CacheLimitError):
        evictor.evict(0)
    evictor.trim()

    for path in victims.values():
        assert path.read_bytes() == b"v" * 1000, path
    assert (cache / "other.mds").read_bytes() == b"o" * 1000
    assert (cache / "index.json").exists()


def test_a_symlinked_folder_in_the_cache_is_not_written_through(tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    write_dataset(remote, 40)
    index = json.loads((remote / "index.json").read_text())
    for shard in index["shards"]:
        name = shard["raw_data"]["basename"]
        (remote / "sub").mkdir(exist_ok=True)
        os.replace(remote / name, remote / "sub" / name)
        shard["raw_data"]["basename"] = f"sub/{name}"
    (remote / "index.json").write_text(json.dumps(index))
    outside = tmp_path / "outside"
    outside.mkdir()
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "sub").symlink_to(outside, target_is_directory=True)
    # A file outside named like a temporary file of the first shard.
    bait = outside / f".{index['shards'][0]['raw_data']['basename'][4:]}.astream-tmp-1-ab"
    bait.write_text("not the cache's")
    with pytest.raises(CacheError, match="resolves outside the cache"):
        list(StreamingDataset(remote=str(remote), local=cache, batch_size=1))
    assert list(outside.iterdir()) == [bait]


def test_legitimate_stamps_still_evict(tmp_path: Path) -> None:
    _remote, cache, size = full_cache(tmp_path, 200)
    assert ShardCache(cache, limit=size // 3).trim() > 0
    assert 0 < shard_bytes(cache) <= size // 3


def test_planted_reservations_neither_delete_nor_take_room(tmp_path: Path) -> None:
    # Reservations (room a download in flight has made) are files under the cache too: one
    # planted there must not make eviction delete anything outside, nor hold room for ever.
    _remote, cache, size = full_cache(tmp_path, 200)
    victim = tmp_path / "victim"
    victim.write_bytes(b"v" * 1000)
    reserved = cache / ".astream" / "reserved"
    reserved.mkdir()
    os.symlink(victim, reserved / "link.json")  # its shard is free: dropped as left over
    held = []
    for name, content in {
        "huge": {"files": ["huge"], "bytes": 10**18},  # more than any limit
        "away": {"files": ["../victim"], "bytes": size},  # not its own shard's files
        "torn": "{",
    }.items():
        (reserved / f"{name}.json").write_text(json.dumps(content))
        # Someone holds each one's shard lock, so none of them is dropped as left over.
        held.append(FileLock.try_acquire(cache / ".astream" / "locks" / f"{name}.lock"))
    assert ShardCache(cache, limit=size // 3).trim() > 0
    assert 0 < shard_bytes(cache) <= size // 3
    assert victim.read_bytes() == b"v" * 1000
    assert sorted(p.name for p in reserved.iterdir()) == ["away.json", "huge.json", "torn.json"]
    for lock in held:
        assert lock is not None
        lock.release()
