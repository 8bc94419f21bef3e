"""OCIStore against our loopback Object Storage server, which verifies every request's signature
with the public half of a throwaway key; the real oci SDK cross-checks what the store wrote."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from astream.errors import StoragePermissionError
from astream.storage import TransferConfig, open_store
from astream.storage.oci import OCIStore
from tests.servers.fault_proxy import FaultProxy
from tests.servers.oci_server import OCIServer, oci_server, throwaway_config
from tests.storage.cloud_faults import RETRY, TRANSFER, assert_faults_retried
from tests.storage.conformance import StoreConformance, payload

oci = pytest.importorskip("oci", reason="the oci SDK (astream[oci]) is not installed")


@pytest.fixture(scope="module")
def server() -> Iterator[OCIServer]:
    with oci_server() as running:
        yield running


@pytest.fixture(scope="module")
def bucket(server: OCIServer) -> str:
    return server.create_bucket()


def make_store(server: OCIServer, bucket: str, prefix: str, **options: object) -> OCIStore:
    url = f"oci://{bucket}@{server.namespace}/{prefix}"
    return OCIStore(url, config=server.config, endpoint_url=server.url, **options)  # type: ignore[arg-type]


class TestOCIConformance(StoreConformance):
    @pytest.fixture
    async def store(self, server: OCIServer, bucket: str) -> AsyncIterator[OCIStore]:
        store = make_store(server, bucket, uuid.uuid4().hex)
        yield store
        await store.aclose()


pytestmark = pytest.mark.anyio


async def test_sdk_and_store_read_each_others_objects(server: OCIServer, bucket: str) -> None:
    prefix = f"x-{uuid.uuid4().hex}"
    client = server.sdk_client()
    client.put_object(server.namespace, bucket, f"{prefix}/from-sdk.bin", payload(5000))
    async with make_store(server, bucket, prefix) as store:
        assert await store.read_range("from-sdk.bin", 100, 200) == payload(5000)[100:200]
        await store.write("from-store.bin", b"written by astream")
    got = client.get_object(server.namespace, bucket, f"{prefix}/from-store.bin")
    assert got.data.content == b"written by astream"


async def test_multipart_upload_is_committed_whole(
    server: OCIServer, bucket: str, tmp_path: Path
) -> None:
    data = payload(3 * 300_000 + 7, seed=2)
    src = tmp_path / "m.bin"
    src.write_bytes(data)
    prefix = f"mp-{uuid.uuid4().hex}"
    transfer = TransferConfig(part_size=300_000, multipart_threshold=300_000, concurrency=2)
    async with make_store(server, bucket, prefix, transfer=transfer) as store:
        await store.upload(src, "m.bin")
    client = server.sdk_client()
    assert client.get_object(server.namespace, bucket, f"{prefix}/m.bin").data.content == data
    # Committed uploads are gone from the bucket's list of uploads in progress.
    uploads = client.list_multipart_uploads(server.namespace, bucket).data
    assert [u.object for u in uploads if u.object.startswith(prefix)] == []


async def test_namespace_is_looked_up_when_absent(server: OCIServer, bucket: str) -> None:
    prefix = f"ns-{uuid.uuid4().hex}"
    url = f"oci://{bucket}/{prefix}"
    async with open_store(url, config=server.config, endpoint_url=server.url) as store:
        assert isinstance(store, OCIStore)
        await store.write("k", b"v")
        assert store.namespace == server.namespace
        assert await store.list() == ["k"]


async def test_config_file_and_profile_from_environment(
    server: OCIServer, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = tmp_path / "key.pem"
    key_file.write_text(server.config["key_content"])
    config_file = tmp_path / "config"
    fields = {k: v for k, v in server.config.items() if k != "key_content"}
    lines = ["[DEFAULT]", "region=eu-frankfurt-1", "", "[ASTREAM]"]
    lines += [f"{k}={v}" for k, v in fields.items()] + [f"key_file={key_file}"]
    config_file.write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("OCI_CLI_PROFILE", "ASTREAM")
    url = f"oci://{bucket}@{server.namespace}/cfg-{uuid.uuid4().hex}"
    async with OCIStore(url, config_file=config_file, endpoint_url=server.url) as store:
        await store.write("k", b"signed with the file's key")
        assert await store.read("k") == b"signed with the file's key"


async def test_wrong_key_is_permission_error_without_retry(server: OCIServer, bucket: str) -> None:
    other_config, _ = throwaway_config()
    url = f"oci://{bucket}@{server.namespace}/denied"
    async with OCIStore(url, config=other_config, endpoint_url=server.url) as store:
        with pytest.raises(StoragePermissionError, match="denied/k") as info:
            await store.read("k")
        assert "NotAuthenticated" in str(info.value) or "401" in str(info.value)
        assert store.retries == 0


def test_endpoint_defaults_to_the_config_region() -> None:
    config, _ = throwaway_config()
    store = OCIStore("oci://b@ns/p", config=config)
    assert (store.bucket, store.namespace, store.prefix) == ("b", "ns", "p")
    with pytest.raises(ValueError, match="oci://"):
        OCIStore("oci:///p")


async def test_faults_are_retried(server: OCIServer, bucket: str, tmp_path: Path) -> None:
    # The proxy forwards the Host header it was sent, so signatures still verify upstream.
    with FaultProxy(server.url, stall_seconds=1.5) as proxy:
        url = f"oci://{bucket}@{server.namespace}/faults-{uuid.uuid4().hex}"
        async with OCIStore(
            url, config=server.config, endpoint_url=proxy.url, retry=RETRY, transfer=TRANSFER
        ) as store:
            await assert_faults_retried(store, proxy, tmp_path)
