"""The tests every store passes, against its real server: subclass :class:`StoreConformance`.

A backend's test module defines a subclass and provides the fixture ``store``: an (async)
fixture yielding a :class:`~astream.storage.base.Store` rooted at an empty, unique prefix,
closed after the test. Read-only backends (HTTP) set ``read_only = True`` and override the
``put`` fixture to seed objects another way (through the server's directory). Class flags
describe what a backend cannot do cheaply::

    class TestMyStore(StoreConformance):
        min_part_size = 5 << 20      # S3-style multipart minimum for all but the last part

        @pytest.fixture
        async def store(self, my_server):
            store = MyStore(f"my://bucket/{uuid.uuid4().hex}", **my_server.options())
            yield store
            await store.aclose()
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import ClassVar

import pytest

from astream.errors import ObjectNotFoundError, StorageError
from astream.storage import Store, TransferConfig

Put = Callable[[str, bytes], Awaitable[None]]


def payload(size: int, seed: int = 0) -> bytes:
    """``size`` bytes that differ at every offset mod 251, so a misplaced range shows."""
    pattern = bytes((i * 7 + seed) % 251 for i in range(251))
    return (pattern * (size // 251 + 1))[:size]


class StoreConformance:
    """Behaviour users rely on from every store. Subclasses provide the ``store`` fixture."""

    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [pytest.mark.anyio]

    #: Writing (write/upload) raises StorageError instead of storing.
    read_only: bool = False
    #: ``list`` is supported.
    listable: bool = True
    #: Smallest part a multipart upload accepts (all but the last part).
    min_part_size: int = 1 << 20
    #: Keys created for the pagination test (more than one 1000-key page).
    pagination_keys: int = 1005

    @pytest.fixture
    def put(self, store: Store) -> Put:
        """Create an object with these bytes (the store's own ``write`` by default)."""
        return store.write

    # -- reading ---------------------------------------------------------------------------

    async def test_stat_and_exists(self, store: Store, put: Put) -> None:
        await put("dir/a.bin", payload(1000))
        info = await store.stat("dir/a.bin")
        assert info.key == "dir/a.bin"
        assert info.size == 1000
        assert await store.exists("dir/a.bin")
        assert not await store.exists("dir/missing.bin")
        assert not await store.exists("dir/a.bi")

    async def test_read_whole(self, store: Store, put: Put) -> None:
        data = payload(70_000, seed=3)
        await put("whole.bin", data)
        assert await store.read("whole.bin") == data

    async def test_empty_object(self, store: Store, put: Put, tmp_path: Path) -> None:
        await put("empty", b"")
        assert (await store.stat("empty")).size == 0
        assert await store.read("empty") == b""
        assert await store.download("empty", tmp_path / "e") == 0
        assert (tmp_path / "e").read_bytes() == b""

    async def test_read_range(self, store: Store, put: Put) -> None:
        data = payload(10_000, seed=1)
        await put("r.bin", data)
        assert await store.read_range("r.bin", 0, 1) == data[:1]
        assert await store.read_range("r.bin", 9_999, 10_000) == data[-1:]
        assert await store.read_range("r.bin", 1234, 5678) == data[1234:5678]
        assert await store.read_range("r.bin", 0, 10_000) == data
        assert await store.read_range("r.bin", 500, 500) == b""

    async def test_read_range_past_end_raises(self, store: Store, put: Put) -> None:
        await put("short.bin", payload(100))
        with pytest.raises(StorageError, match=r"short\.bin"):
            await store.read_range("short.bin", 50, 101)
        with pytest.raises(StorageError, match=r"short\.bin"):
            await store.read_range("short.bin", 200, 300)

    async def test_missing_object_names_url(self, store: Store, tmp_path: Path) -> None:
        url = store.join("nope/missing.bin")
        for call in (
            lambda: store.stat("nope/missing.bin"),
            lambda: store.read("nope/missing.bin"),
            lambda: store.read_range("nope/missing.bin", 0, 10),
            lambda: store.download("nope/missing.bin", tmp_path / "x"),
        ):
            with pytest.raises(ObjectNotFoundError) as info:
                await call()
            assert url in str(info.value)
            assert isinstance(info.value, FileNotFoundError)
        assert store.retries == 0, "a missing object is final, never retried"

    # -- downloads -------------------------------------------------------------------------

    async def test_download_small(self, store: Store, put: Put, tmp_path: Path) -> None:
        data = payload(5000)
        await put("small.bin", data)
        seen: list[tuple[int, int]] = []
        dest = tmp_path / "small.bin"
        dest.write_bytes(b"x" * 99_999)  # an existing longer file is truncated
        size = await store.download("small.bin", dest, on_progress=lambda a, b: seen.append((a, b)))
        assert size == 5000
        assert dest.read_bytes() == data
        assert sorted(seen) == [(0, 5000)]

    async def test_download_in_parts_reports_progress(
        self, store: Store, put: Put, tmp_path: Path
    ) -> None:
        data = payload(1_000_003, seed=5)
        await put("big.bin", data)
        store.transfer = TransferConfig(part_size=100_000, concurrency=4)
        seen: list[tuple[int, int]] = []
        dest = tmp_path / "big.bin"
        size = await store.download(
            "big.bin", dest, size=len(data), on_progress=lambda a, b: seen.append((a, b))
        )
        assert size == len(data)
        assert dest.read_bytes() == data
        # Parts cover the file exactly once, whatever order they landed in.
        covered = 0
        for start, end in sorted(seen):
            assert start == covered
            covered = end
        assert covered == len(data)

    async def test_download_with_wrong_size_fails(
        self, store: Store, put: Put, tmp_path: Path
    ) -> None:
        await put("sized.bin", payload(1000))
        with pytest.raises(StorageError, match=r"sized\.bin"):
            await store.download("sized.bin", tmp_path / "s", size=1500)

    # -- writing ---------------------------------------------------------------------------

    async def test_write_and_replace(self, store: Store) -> None:
        if self.read_only:
            with pytest.raises(StorageError, match=r"w\.bin"):
                await store.write("w.bin", b"abc")
            return
        await store.write("sub/w.bin", b"first")
        await store.write("sub/w.bin", b"second version")
        assert await store.read("sub/w.bin") == b"second version"
        assert (await store.stat("sub/w.bin")).size == len(b"second version")

    async def test_upload_small(self, store: Store, tmp_path: Path) -> None:
        src = tmp_path / "src.bin"
        src.write_bytes(payload(12_345))
        if self.read_only:
            with pytest.raises(StorageError, match=r"up\.bin"):
                await store.upload(src, "up.bin")
            return
        await store.upload(src, "up.bin")
        assert await store.read("up.bin") == src.read_bytes()

    async def test_upload_multipart(self, store: Store, tmp_path: Path) -> None:
        if self.read_only:
            pytest.skip("read-only store")
        part = self.min_part_size
        data = payload(2 * part + 12_345, seed=9)
        src = tmp_path / "multi.bin"
        src.write_bytes(data)
        store.transfer = TransferConfig(part_size=part, multipart_threshold=part, concurrency=3)
        await store.upload(src, "multi/part.bin")
        assert (await store.stat("multi/part.bin")).size == len(data)
        assert await store.read("multi/part.bin") == data
        # No stray objects (temporary files, part objects) are left visible.
        if self.listable:
            assert await store.list("multi/") == ["multi/part.bin"]

    async def test_upload_missing_source(self, store: Store, tmp_path: Path) -> None:
        with pytest.raises(OSError):
            await store.upload(tmp_path / "does-not-exist", "x.bin")

    # -- listing ---------------------------------------------------------------------------

    async def test_list_under_prefix_sorted(self, store: Store, put: Put) -> None:
        if not self.listable:
            with pytest.raises(StorageError):
                await store.list("")
            return
        keys = ["b/2.bin", "a/1.bin", "b/1.bin", "b/sub/3.bin", "bb.bin", "c.bin"]
        for key in keys:
            await put(key, key.encode())
        assert await store.list() == sorted(keys)
        assert await store.list("b/") == ["b/1.bin", "b/2.bin", "b/sub/3.bin"]
        assert await store.list("b") == ["b/1.bin", "b/2.bin", "b/sub/3.bin", "bb.bin"]
        assert await store.list("b/sub/3") == ["b/sub/3.bin"]
        assert await store.list("zzz/") == []
        assert await store.list("b/", limit=1) == ["b/1.bin"]
        assert await store.list("zzz/", limit=1) == []

    async def test_list_paginates(self, store: Store, put: Put) -> None:
        if not self.listable or self.read_only:
            pytest.skip("listing needs a writable, listable store")
        import anyio

        keys = [f"many/{i:05d}" for i in range(self.pagination_keys)]
        limiter = anyio.Semaphore(16)

        async def one(key: str) -> None:
            async with limiter:
                await put(key, b"x")

        async with anyio.create_task_group() as tg:
            for key in keys:
                tg.start_soon(one, key)
        assert await store.list("many/") == keys
        # A limit stops the listing early, across a page boundary too.
        assert await store.list("many/", limit=3) == keys[:3]
        assert await store.list("many/", limit=1002) == keys[:1002]
        assert await store.list("many/", limit=len(keys) + 10) == keys

    # -- lifetime --------------------------------------------------------------------------

    async def test_pickles_after_use(self, store: Store, put: Put) -> None:
        await put("p.bin", b"pickled")
        assert await store.read("p.bin") == b"pickled"  # live session/client now open
        clone = pickle.loads(pickle.dumps(store))
        assert type(clone) is type(store)
        assert clone.url == store.url
        try:
            assert await clone.read("p.bin") == b"pickled"
        finally:
            await clone.aclose()

    async def test_aclose_then_reuse(self, store: Store, put: Put) -> None:
        await put("c.bin", b"again")
        assert await store.read("c.bin") == b"again"
        await store.aclose()
        assert await store.read("c.bin") == b"again"  # reopens lazily


def write_file(root: Path, key: str, data: bytes) -> None:
    """Create ``root/key`` atomically (for seeding stores through a server's directory)."""
    path = root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".seed-tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
