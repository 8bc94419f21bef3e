"""HTTPStore against a real aiohttp static file server (seeded through its directory)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conformance import Put, StoreConformance, payload, write_file

from astream.errors import ObjectNotFoundError, StorageError
from astream.storage import RetryConfig, Store, open_store
from astream.storage.http import HTTPStore
from tests.servers.http_files import HTTPFiles


class TestHTTPStore(StoreConformance):
    read_only = True
    listable = False

    @pytest.fixture
    async def store(self, http_files: HTTPFiles) -> AsyncIterator[Store]:
        prefix = uuid.uuid4().hex
        (http_files.root / prefix).mkdir()
        store = open_store(f"{http_files.url}/{prefix}")
        assert isinstance(store, HTTPStore)
        yield store
        await store.aclose()

    @pytest.fixture
    def put(self, store: Store, http_files: HTTPFiles) -> Put:
        prefix = store.url.rsplit("/", 1)[1]

        async def put(key: str, data: bytes) -> None:
            write_file(http_files.root / prefix, key, data)

        return put


pytestmark = pytest.mark.anyio


async def test_keys_are_percent_encoded(http_files: HTTPFiles) -> None:
    write_file(http_files.root, "odd dir/a b#c.bin", b"odd")
    async with open_store(http_files.url) as store:
        assert await store.read("odd dir/a b#c.bin") == b"odd"


async def test_unreachable_server_fails_after_retries(tmp_path: Path) -> None:
    from tests.servers.process import free_port

    retry = RetryConfig(attempts=3, backoff_initial=0.01, backoff_max=0.02, connect_timeout=1)
    async with open_store(f"http://127.0.0.1:{free_port()}/data", retry=retry) as store:
        with pytest.raises(StorageError, match=r"3 attempt") as info:
            await store.read("x.bin")
        assert "127.0.0.1" in str(info.value)
        assert info.value.__cause__ is not None
        assert store.retries == 2
        assert not isinstance(info.value, ObjectNotFoundError)


async def test_large_download_matches(http_files: HTTPFiles, tmp_path: Path) -> None:
    data = payload(3_000_001, seed=11)
    write_file(http_files.root, "large.bin", data)
    async with open_store(http_files.url) as store:
        store.transfer = store.transfer.__class__(part_size=256 << 10, concurrency=6)
        await store.download("large.bin", tmp_path / "large.bin")
    assert (tmp_path / "large.bin").read_bytes() == data
