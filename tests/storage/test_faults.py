"""Downloads through a fault-injecting proxy: exactly the right bytes, or a clear error."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conformance import payload, write_file

from astream.errors import (
    ObjectNotFoundError,
    StorageError,
    StoragePermissionError,
    StorageTimeoutError,
)
from astream.storage import RetryConfig, TransferConfig, open_store
from astream.storage.s3 import S3Store
from tests.servers.fault_proxy import FaultProxy
from tests.servers.http_files import HTTPFiles
from tests.servers.moto_s3 import MotoS3

pytestmark = pytest.mark.anyio

DATA = payload(1_000_000, seed=42)
RETRY = RetryConfig(attempts=4, backoff_initial=0.01, backoff_max=0.05, read_timeout=0.5)
TRANSFER = TransferConfig(part_size=200_000, concurrency=3, adaptive=False)


@pytest.fixture(scope="module")
def http_proxy(http_files: HTTPFiles) -> Iterator[FaultProxy]:
    write_file(http_files.root, "faults/data.bin", DATA)
    with FaultProxy(http_files.url, stall_seconds=1.5) as proxy:
        yield proxy


@pytest.fixture
def proxy(http_proxy: FaultProxy) -> Iterator[FaultProxy]:
    http_proxy.clear()
    yield http_proxy
    http_proxy.clear()


@pytest.mark.parametrize("fault", ["drop", "stall", "503", "500", "429", "408", "truncate"])
async def test_transient_faults_are_retried_to_exact_bytes(
    proxy: FaultProxy, fault: str, tmp_path: Path
) -> None:
    proxy.inject([fault, fault])
    dest = tmp_path / "out.bin"
    async with open_store(f"{proxy.url}/faults", retry=RETRY, transfer=TRANSFER) as store:
        size = await store.download("data.bin", dest, size=len(DATA))
        assert size == len(DATA)
        assert dest.read_bytes() == DATA
        assert proxy.applied == [fault, fault]
        if fault != "drop":
            assert store.retries == 2
        # else aiohttp itself resends an idempotent request once when a reused keep-alive
        # connection closes before answering (RFC 9112 9.3.1): such retries are not ours.


async def test_whole_reads_are_retried(proxy: FaultProxy) -> None:
    proxy.inject(["truncate", "drop", "503"])
    async with open_store(f"{proxy.url}/faults", retry=RETRY) as store:
        assert await store.read("data.bin") == DATA
        assert 2 <= store.retries <= 3  # a drop may be resent by aiohttp itself


async def test_persistent_errors_give_up_after_the_configured_attempts(
    proxy: FaultProxy, tmp_path: Path
) -> None:
    proxy.inject(["503"] * 50)
    retry = RetryConfig(attempts=3, backoff_initial=0.01, backoff_max=0.02)
    async with open_store(f"{proxy.url}/faults", retry=retry, transfer=TRANSFER) as store:
        with pytest.raises(StorageError, match=r"data\.bin: gave up after 3 attempt") as info:
            await store.download("data.bin", tmp_path / "out.bin", size=len(DATA))
        assert f"{proxy.url}/faults/data.bin" in str(info.value)
        assert "503" in str(info.value)
        assert info.value.__cause__ is not None


async def test_persistent_stalls_raise_timeout(proxy: FaultProxy) -> None:
    proxy.inject(["stall"] * 3)
    retry = RetryConfig(attempts=2, backoff_initial=0.01, backoff_max=0.02, read_timeout=0.3)
    async with open_store(f"{proxy.url}/faults", retry=retry) as store:
        with pytest.raises(StorageTimeoutError, match="2 attempt"):
            await store.read_range("data.bin", 0, 100)
        assert isinstance(StorageTimeoutError("x"), TimeoutError)


@pytest.mark.parametrize(
    ("status", "error"),
    [
        ("403", StoragePermissionError),
        ("404", ObjectNotFoundError),
        ("401", StoragePermissionError),
    ],
)
async def test_final_statuses_are_not_retried(
    proxy: FaultProxy, status: str, error: type[StorageError]
) -> None:
    proxy.inject([status])
    async with open_store(f"{proxy.url}/faults", retry=RETRY) as store:
        with pytest.raises(error, match=r"faults/data\.bin"):
            await store.read_range("data.bin", 0, 10)
        assert store.retries == 0
        assert proxy.requests == 1


@pytest.fixture(scope="module")
def s3_proxy(moto_s3: MotoS3) -> Iterator[FaultProxy]:
    with FaultProxy(moto_s3.endpoint_url, stall_seconds=1.5) as proxy:
        yield proxy


async def test_s3_faults_are_retried(s3_proxy: FaultProxy, moto_s3: MotoS3, tmp_path: Path) -> None:
    bucket = moto_s3.create_bucket()
    options = {**moto_s3.store_options(), "endpoint_url": s3_proxy.url}
    async with open_store(f"s3://{bucket}/f", retry=RETRY, transfer=TRANSFER, **options) as store:
        await store.write("data.bin", DATA)
        s3_proxy.clear()
        s3_proxy.inject(["503", "truncate", "drop", "stall", "500"])
        dest = tmp_path / "s3.bin"
        await store.download("data.bin", dest, size=len(DATA))
        assert dest.read_bytes() == DATA
        assert 4 <= store.retries <= 5  # a drop may be resent by aiohttp itself
        # A 403 to a direct read is asked again through aiobotocore (the SDK may sign another
        # way); when the SDK is refused too, the error is final and not retried.
        s3_proxy.clear()
        s3_proxy.inject(["403", "403"])
        with pytest.raises(StoragePermissionError, match=f"s3://{bucket}/f/data"):
            await store.read("data.bin")
        assert s3_proxy.applied == ["403", "403"]


async def test_s3_direct_read_refused_where_the_sdk_succeeds_leaves_that_key_to_the_sdk(
    s3_proxy: FaultProxy, moto_s3: MotoS3
) -> None:
    bucket = moto_s3.create_bucket()
    options = {**moto_s3.store_options(), "endpoint_url": s3_proxy.url}
    async with open_store(f"s3://{bucket}/g", retry=RETRY, **options) as store:
        assert isinstance(store, S3Store)
        await store.write("data.bin", DATA)
        await store.write("other.bin", DATA[:100])
        assert await store.read_range("data.bin", 0, 10) == DATA[:10]
        assert store._direct is not None and not store._sdk_keys
        s3_proxy.clear()
        s3_proxy.inject(["403"])  # the next (direct) request only: the SDK's goes through
        assert await store.read("data.bin") == DATA
        assert store.retries == 0
        assert list(store._sdk_keys) == ["g/data.bin"]  # that key only, not the store
        assert await store.read_range("data.bin", 5, 9) == DATA[5:9]
        assert s3_proxy.requests == 3  # the refused direct GET, then two through the SDK
        assert await store.read("other.bin") == DATA[:100]
        assert list(store._sdk_keys) == ["g/data.bin"]


async def test_a_dropped_kept_alive_connection_is_resent_once(
    proxy: FaultProxy, tmp_path: Path
) -> None:
    # A server may close an idle connection just as a request goes out on it: that request
    # is sent again on a fresh connection, and it is not one of the configured attempts.
    retry = RetryConfig(attempts=1, read_timeout=0.5)
    single = TransferConfig(part_size=len(DATA), concurrency=1)
    async with open_store(f"{proxy.url}/faults", retry=retry, transfer=single) as store:
        await store.download("data.bin", tmp_path / "a.bin", size=len(DATA))
        proxy.inject(["drop"])
        await store.download("data.bin", tmp_path / "b.bin", size=len(DATA))
        assert (tmp_path / "b.bin").read_bytes() == DATA
        assert proxy.applied == ["drop"]
