"""AzureStore against Azurite on loopback (the conformance suite plus Azure specifics)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from astream.errors import StoragePermissionError
from astream.storage import TransferConfig, open_store
from astream.storage.azure import AzureStore
from tests.servers.azurite import ACCOUNT, ACCOUNT_KEY, Azurite, azurite_server
from tests.servers.fault_proxy import FaultProxy
from tests.servers.process import ServerUnavailable
from tests.storage.cloud_faults import RETRY, TRANSFER, assert_faults_retried
from tests.storage.conformance import StoreConformance, payload

pytest.importorskip("azure.storage.blob", reason="azure-storage-blob (astream[azure]) missing")


@pytest.fixture(scope="module")
def azurite() -> Iterator[Azurite]:
    try:
        with azurite_server() as server:
            yield server
    except ServerUnavailable as exc:
        pytest.skip(f"Azurite cannot run here: {exc}")


@pytest.fixture(scope="module")
def container(azurite: Azurite) -> str:
    return azurite.create_container()


class TestAzureConformance(StoreConformance):
    @pytest.fixture
    async def store(self, azurite: Azurite, container: str) -> AsyncIterator[AzureStore]:
        # A small page size, so the pagination test's 1005 keys take two listing requests.
        store = AzureStore(
            f"azure://{container}/{uuid.uuid4().hex}",
            connection_string=azurite.connection_string(),
            list_page_size=1000,
        )
        yield store
        await store.aclose()


pytestmark = pytest.mark.anyio


async def test_connection_string_from_environment(
    azurite: Azurite, container: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string())
    async with open_store(f"azure://{container}/env-{uuid.uuid4().hex}") as store:
        assert isinstance(store, AzureStore)
        assert store.account_name == ACCOUNT
        await store.write("k", b"v")
        assert await store.list() == ["k"]


async def test_account_qualified_url_with_account_key(azurite: Azurite, container: str) -> None:
    # mosaicml-streaming's form: the account in the host, the container first in the path.
    prefix = f"aq-{uuid.uuid4().hex}"
    url = f"azure://{ACCOUNT}.blob.core.windows.net/{container}/{prefix}"
    async with AzureStore(url, account_url=azurite.blob_endpoint, credential=ACCOUNT_KEY) as store:
        assert (store.account_name, store.bucket, store.prefix) == (ACCOUNT, container, prefix)
        await store.write("k", b"shared key")
    # The same object through the container@account form and the account-key variables.
    async with AzureStore(
        f"azure://{container}@{ACCOUNT}/{prefix}", account_url=azurite.blob_endpoint
    ) as store:
        assert store.account_name == ACCOUNT
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("AZURE_STORAGE_KEY", ACCOUNT_KEY)
            assert await store.read("k") == b"shared key"


async def test_wrong_key_is_permission_error_without_retry(
    azurite: Azurite, container: str
) -> None:
    wrong = "A" * 86 + "=="
    url = f"azure://{container}/denied"
    async with AzureStore(
        url, account_name=ACCOUNT, account_url=azurite.blob_endpoint, credential=wrong
    ) as store:
        with pytest.raises(StoragePermissionError, match="denied/k"):
            await store.read("k")
        assert store.retries == 0


async def test_large_upload_is_committed_from_blocks(
    azurite: Azurite, container: str, tmp_path: Path
) -> None:
    from azure.storage.blob import BlobServiceClient

    data = payload(4 * 250_000 + 3, seed=4)
    src = tmp_path / "blocks.bin"
    src.write_bytes(data)
    prefix = f"bl-{uuid.uuid4().hex}"
    transfer = TransferConfig(part_size=250_000, multipart_threshold=250_000, concurrency=3)
    async with AzureStore(
        f"azure://{container}/{prefix}",
        connection_string=azurite.connection_string(),
        transfer=transfer,
    ) as store:
        await store.upload(src, "blocks.bin")
    with BlobServiceClient.from_connection_string(azurite.connection_string()) as service:
        blob = service.get_blob_client(container, f"{prefix}/blocks.bin")
        committed, uncommitted = blob.get_block_list("all")
        assert len(committed) == 5 and not uncommitted
        assert blob.download_blob().readall() == data


async def test_faults_are_retried(azurite: Azurite, container: str, tmp_path: Path) -> None:
    with FaultProxy(azurite.server.url, stall_seconds=1.5) as proxy:
        async with AzureStore(
            f"azure://{container}/faults-{uuid.uuid4().hex}",
            account_name=ACCOUNT,
            account_url=f"{proxy.url}/{ACCOUNT}",
            credential=ACCOUNT_KEY,
            retry=RETRY,
            transfer=TRANSFER,
        ) as store:
            await assert_faults_retried(store, proxy, tmp_path)


def test_url_forms_and_missing_account(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT", "AZURE_ACCOUNT_NAME"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="no Azure storage account"):
        AzureStore("azure://container/prefix")
    monkeypatch.setenv("AZURE_ACCOUNT_NAME", "legacy")
    store = AzureStore("azure://container/a/b")
    assert (store.account_name, store.bucket, store.prefix) == ("legacy", "container", "a/b")
    with pytest.raises(ValueError, match="no container"):
        AzureStore("azure://acct.blob.core.windows.net/")


async def test_anonymous_by_default_refused_names_what_was_looked_for(
    azurite: Azurite, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in (
        "AZURE_STORAGE_CONNECTION_STRING",
        "AZURE_STORAGE_KEY",
        "AZURE_ACCOUNT_ACCESS_KEY",
        "AZURE_STORAGE_ACCOUNT",
        "AZURE_ACCOUNT_NAME",
    ):
        monkeypatch.delenv(name, raising=False)
    container = azurite.create_container()  # private: no public access
    url = f"azure://{container}/p"
    async with AzureStore(
        url, account_name=ACCOUNT, account_url=azurite.blob_endpoint, credential=ACCOUNT_KEY
    ) as owner:
        await owner.write("index.json", b"{}")
    # No credential anywhere (and azure-identity not installed): anonymous, which the private
    # container refuses; the error says what was looked for, on one line.
    async with AzureStore(url, account_name=ACCOUNT, account_url=azurite.blob_endpoint) as store:
        with pytest.raises(StoragePermissionError) as refused:
            await store.read("index.json")
        assert store.retries == 0
    message = str(refused.value)
    assert "\n" not in message
    for part in (url, "anonymous request refused", "AZURE_STORAGE_KEY", "unsigned=True"):
        assert part in message
    # Asked for, anonymous access is not second-guessed: the service's answer stands.
    async with AzureStore(
        url, account_name=ACCOUNT, account_url=azurite.blob_endpoint, unsigned=True
    ) as store:
        with pytest.raises(StoragePermissionError) as plain:
            await store.read("index.json")
    assert "anonymous request refused" not in str(plain.value)
