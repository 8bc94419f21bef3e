"""S3Store against moto's S3 server on loopback."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conformance import StoreConformance, payload

from astream.errors import ObjectNotFoundError, StorageError
from astream.storage import Store, TransferConfig, open_store
from astream.storage.s3 import S3Store
from tests.servers.moto_s3 import MotoS3


@pytest.fixture(scope="module")
def bucket(moto_s3: MotoS3) -> str:
    return moto_s3.create_bucket()


class TestS3Store(StoreConformance):
    # S3's minimum for every part but the last.
    min_part_size = 5 << 20

    @pytest.fixture
    async def store(self, moto_s3: MotoS3, bucket: str) -> AsyncIterator[Store]:
        store = open_store(f"s3://{bucket}/{uuid.uuid4().hex}", **moto_s3.store_options())
        assert isinstance(store, S3Store)
        yield store
        await store.aclose()


class TestS3StoreThroughTheSDK(TestS3Store):
    """The conformance suite again with ``direct_reads=False``: the SDK path stays whole."""

    @pytest.fixture
    async def store(self, moto_s3: MotoS3, bucket: str) -> AsyncIterator[Store]:
        options = {**moto_s3.store_options(), "direct_reads": False}
        store = open_store(f"s3://{bucket}/{uuid.uuid4().hex}", **options)
        assert isinstance(store, S3Store)
        yield store
        assert store._direct is None
        await store.aclose()


pytestmark = pytest.mark.anyio


async def test_endpoint_from_mosaicml_env(
    moto_s3: MotoS3, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("S3_ENDPOINT_URL", moto_s3.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    async with open_store(f"s3://{bucket}/env") as store:
        assert isinstance(store, S3Store)
        assert store.endpoint_url == moto_s3.endpoint_url
        await store.write("k", b"via env")
        assert await store.read("k") == b"via env"


async def test_missing_bucket_is_not_found(moto_s3: MotoS3) -> None:
    async with open_store("s3://no-such-bucket-astream/x", **moto_s3.store_options()) as store:
        with pytest.raises(ObjectNotFoundError, match="s3://no-such-bucket-astream/x/a"):
            await store.read("a")


async def test_unsigned_requests_are_refused_by_moto(moto_s3: MotoS3, bucket: str) -> None:
    # moto answers anonymous requests with 403: a permission error, final, never retried.
    options = {**moto_s3.store_options(), "unsigned": True}
    async with open_store(f"s3://{bucket}/anon", **options) as store:
        with pytest.raises(StorageError, match=f"s3://{bucket}/anon/a"):
            await store.read("a")
        assert store.retries == 0


async def test_multipart_upload_of_many_parts(moto_s3: MotoS3, bucket: str, tmp_path: Path) -> None:
    data = payload(3 * (5 << 20) + 7, seed=2)
    src = tmp_path / "many.bin"
    src.write_bytes(data)
    transfer = TransferConfig(part_size=5 << 20, multipart_threshold=1 << 20, concurrency=2)
    async with open_store(
        f"s3://{bucket}/mp", transfer=transfer, **moto_s3.store_options()
    ) as store:
        await store.upload(src, "many.bin")
        out = tmp_path / "out.bin"
        await store.download("many.bin", out)
        assert out.read_bytes() == data
