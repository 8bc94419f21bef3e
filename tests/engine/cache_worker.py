"""Helpers for the cache tests: a dataset on disk, a counting store, and child-process entry points.

Imported by the tests (and by ``multiprocessing`` spawn children, which find it on the
``sys.path`` they inherit) and run as a script by the SIGKILL tests::

    python cache_worker.py fetch-slow REMOTE LOCAL SHARD   # prints "started", then crawls
    python cache_worker.py pin REMOTE LOCAL SHARD          # prints "pinned", then waits
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import zstandard

from astream.engine.cache import ShardCache
from astream.format import ShardInfo, load_index
from astream.storage.base import ProgressCallback, Store, TransferConfig
from astream.storage.local import LocalStore


class RangedLocalStore(LocalStore):
    """A local directory downloaded the way remote stores are: concurrent ranged reads."""

    async def download(
        self,
        key: str,
        dest: str | os.PathLike[str],
        *,
        size: int | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> int:
        self._note(key)
        # The generic ranged download (LocalStore's own is one kernel-side copy).
        return await Store.download(self, key, dest, size=size, on_progress=on_progress)

    def _note(self, key: str) -> None:
        """Called as each download starts (subclasses log it)."""


class CountingStore(RangedLocalStore):
    """A local directory served the way remote stores serve it: concurrent ranged reads.

    Every download appends its key to ``log`` (``O_APPEND`` writes of one line are atomic, so
    several processes can share the log). ``delay`` seconds pass before each ranged read.
    """

    def __init__(
        self, url: str | Path, log: Path, *, delay: float = 0.0, part_size: int = 4096
    ) -> None:
        super().__init__(str(url), transfer=TransferConfig(part_size=part_size, concurrency=2))
        self.log = log
        self.delay = delay

    async def read(self, key: str) -> bytes:
        self._note(key)  # a whole read is a download too (indexes are fetched this way)
        return await super().read(key)

    def _note(self, key: str) -> None:
        fd = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, f"{key}\n".encode())
        finally:
            os.close(fd)

    async def read_range(self, key: str, start: int, end: int) -> bytes:
        if self.delay:
            await anyio.sleep(self.delay)
        return await super().read_range(key, start, end)


def downloads(log: Path) -> Counter[str]:
    """How many times each key was downloaded, from a :class:`CountingStore` log."""
    if not log.exists():
        return Counter()
    return Counter(log.read_text().split())


def shard_bytes(i: int, size: int) -> bytes:
    """Deterministic, incompressible-enough content of shard ``i``."""
    return random.Random(i).randbytes(size // 2) + bytes([i % 256]) * (size - size // 2)


def _file_entry(name: str, data: bytes) -> dict[str, Any]:
    return {
        "basename": name,
        "bytes": len(data),
        "hashes": {"sha1": hashlib.sha1(data).hexdigest(), "md5": hashlib.md5(data).hexdigest()},
    }


def write_dataset(
    remote: Path, sizes: list[int], *, compression: str | None = None
) -> tuple[ShardInfo, ...]:
    """Write shards of the given raw sizes and their index.json under ``remote``."""
    remote.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, size in enumerate(sizes):
        raw = shard_bytes(i, size)
        name = f"shard.{i:05}.mds"
        entry: dict[str, Any] = {
            "column_encodings": ["bytes"],
            "column_names": ["x"],
            "column_sizes": [None],
            "compression": compression,
            "format": "mds",
            "hashes": ["md5", "sha1"],
            "raw_data": _file_entry(name, raw),
            "samples": 1,
            "size_limit": 1 << 26,
            "version": 2,
            "zip_data": None,
        }
        if compression is None:
            (remote / name).write_bytes(raw)
        else:
            assert compression.startswith("zstd")
            packed = zstandard.ZstdCompressor().compress(raw)
            (remote / f"{name}.zstd").write_bytes(packed)
            entry["zip_data"] = _file_entry(f"{name}.zstd", packed)
        entries.append(entry)
    text = json.dumps({"shards": entries, "version": 2}, sort_keys=True)
    (remote / "index.json").write_text(text)
    return load_index(text, source=str(remote / "index.json")).shards


def load_shards(remote: Path) -> tuple[ShardInfo, ...]:
    index = remote / "index.json"
    return load_index(index.read_bytes(), source=str(index)).shards


def temp_files(root: Path) -> list[Path]:
    """Temporary files the cache left anywhere under ``root``."""
    return sorted(p for p in root.rglob("*") if ".astream-tmp-" in p.name)


# -- multiprocessing entry point (spawn) ---------------------------------------------------------


def fetch_all(remote: str, local: str, log: str, seed: int, barrier: Any) -> dict[str, str]:
    """Fetch every shard of ``remote`` into ``local`` concurrently, in an order of ``seed``.

    Returns basename -> sha1 of the bytes this process reads back.
    """
    shards = list(load_shards(Path(remote)))
    random.Random(seed).shuffle(shards)
    cache = ShardCache(local)
    store = CountingStore(remote, Path(log), delay=0.001)

    async def run() -> dict[str, str]:
        paths = await asyncio.gather(*(cache.fetch(store, s, validate_hash="sha1") for s in shards))
        return {
            s.raw.basename: hashlib.sha1(p.read_bytes()).hexdigest()
            for s, p in zip(shards, paths, strict=True)
        }

    barrier.wait()
    return asyncio.run(run())


# -- script entry points (the SIGKILL tests) -----------------------------------------------------


class CrawlingStore(CountingStore):
    """Prints "started" once two ranges of a download are on disk, then crawls."""

    reads = 0

    async def read_range(self, key: str, start: int, end: int) -> bytes:
        self.reads += 1
        if self.reads == 3:
            # Two ranges are written (concurrency 2: both earlier reads have returned) and the
            # shard's lock is held: tell the parent, which kills us long before we finish.
            print("started", flush=True)
        if self.reads >= 3:
            await anyio.sleep(0.5)
        return await super().read_range(key, start, end)


def _fetch_slow(remote: Path, local: Path, index: int) -> None:
    shard = load_shards(remote)[index]
    store = CrawlingStore(remote, local.parent / "child-downloads.log", part_size=1024)
    asyncio.run(ShardCache(local).fetch(store, shard))
    print("finished", flush=True)


def _pin(remote: Path, local: Path, index: int) -> None:
    shard = load_shards(remote)[index]
    with ShardCache(local, limit=1).pin(shard):
        print("pinned", flush=True)
        sys.stdin.read()  # until the parent closes our stdin or kills us


if __name__ == "__main__":
    mode, remote_arg, local_arg, index_arg = sys.argv[1:]
    entry = {"fetch-slow": _fetch_slow, "pin": _pin}[mode]
    entry(Path(remote_arg), Path(local_arg), int(index_arg))
