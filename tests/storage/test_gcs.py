"""GCSStore against fake-gcs-server on loopback (the conformance suite plus GCS specifics)."""

from __future__ import annotations

import pickle
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from astream.errors import ObjectNotFoundError
from astream.storage import open_store
from astream.storage.gcs import GCSStore
from tests.servers.fault_proxy import FaultProxy
from tests.servers.gcs import FakeGCS, fake_gcs_server
from tests.servers.process import ServerUnavailable
from tests.storage.cloud_faults import RETRY, TRANSFER, assert_faults_retried
from tests.storage.conformance import StoreConformance, payload


@pytest.fixture(scope="module")
def gcs() -> Iterator[FakeGCS]:
    try:
        with fake_gcs_server() as server:
            yield server
    except ServerUnavailable as exc:
        pytest.skip(f"fake-gcs-server cannot run here: {exc}")


@pytest.fixture(scope="module")
def bucket(gcs: FakeGCS) -> str:
    return gcs.create_bucket()


class TestGCSConformance(StoreConformance):
    # Above gcloud-aio-storage's 5 MiB simple-upload limit, so the multipart test goes through
    # a resumable upload session (which needs fake-gcs's -external-url).
    min_part_size = 3 << 20

    @pytest.fixture
    async def store(self, gcs: FakeGCS, bucket: str) -> AsyncIterator[GCSStore]:
        store = GCSStore(f"gs://{bucket}/{uuid.uuid4().hex}", endpoint_url=gcs.url)
        yield store
        await store.aclose()


pytestmark = pytest.mark.anyio


async def test_storage_emulator_host_is_honoured(
    gcs: FakeGCS, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.url)
    async with open_store(f"gs://{bucket}/env-{uuid.uuid4().hex}") as store:
        assert isinstance(store, GCSStore)
        await store.write("k", b"through the emulator")
        assert await store.read("k") == b"through the emulator"


async def test_unsigned_store_reads(gcs: FakeGCS, bucket: str) -> None:
    prefix = f"gs://{bucket}/public-{uuid.uuid4().hex}"
    async with GCSStore(prefix, endpoint_url=gcs.url) as writer:
        await writer.write("open.bin", payload(300))
    async with GCSStore(prefix, endpoint_url=gcs.url, unsigned=True) as reader:
        assert await reader.read_range("open.bin", 10, 20) == payload(300)[10:20]


async def test_keys_with_special_characters(gcs: FakeGCS, bucket: str) -> None:
    async with GCSStore(f"gs://{bucket}/sp-{uuid.uuid4().hex}", endpoint_url=gcs.url) as store:
        key = "dir with space/a+b%c?d#e.bin"
        await store.write(key, b"odd")
        assert await store.read(key) == b"odd"
        assert await store.list("dir with space/") == [key]


async def test_missing_bucket_is_not_found(gcs: FakeGCS) -> None:
    async with GCSStore(f"gs://no-such-bucket-{uuid.uuid4().hex}", endpoint_url=gcs.url) as store:
        with pytest.raises(ObjectNotFoundError, match="no-such-bucket"):
            await store.read("x")


async def test_pickled_store_has_no_session(gcs: FakeGCS, bucket: str, tmp_path: Path) -> None:
    async with GCSStore(f"gs://{bucket}/pk", endpoint_url=gcs.url) as store:
        await store.write("x", b"1")
        clone = pickle.loads(pickle.dumps(store))
        assert clone._session is None and clone._client is None
        assert clone.bucket == bucket and clone.prefix == "pk"


def test_rejects_other_urls() -> None:
    with pytest.raises(ValueError, match="gs://"):
        GCSStore("gs:///nobucket")
    with pytest.raises(ValueError, match="gs://"):
        GCSStore("s3://bucket/x")


async def test_faults_are_retried(gcs: FakeGCS, bucket: str, tmp_path: Path) -> None:
    with FaultProxy(gcs.url, stall_seconds=1.5) as proxy:
        async with GCSStore(
            f"gs://{bucket}/faults-{uuid.uuid4().hex}",
            endpoint_url=proxy.url,
            retry=RETRY,
            transfer=TRANSFER,
        ) as store:
            await assert_faults_retried(store, proxy, tmp_path)
