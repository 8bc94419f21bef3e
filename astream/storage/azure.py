"""Azure Blob Storage (``azure://``) over azure-storage-blob's asyncio client (``astream[azure]``).

Accepted URLs (the container is never guessed):

* ``azure://container/prefix``: the account comes from ``account_name=``, else
  ``AZURE_STORAGE_ACCOUNT``, else ``AZURE_ACCOUNT_NAME`` (mosaicml-streaming's variable), else
  the connection string;
* ``azure://account.blob.core.windows.net/container/prefix``: the form mosaicml-streaming's
  downloader reads (any host with a dot: its first label is the account);
* ``azure://container@account/prefix`` (adlfs/fsspec style).

Credentials, first found wins: ``connection_string=`` or ``AZURE_STORAGE_CONNECTION_STRING``;
``credential=`` (an account key, a SAS token or a token credential); an account key in
``AZURE_STORAGE_KEY`` or ``AZURE_ACCOUNT_ACCESS_KEY``; ``DefaultAzureCredential`` when
azure-identity is installed; otherwise anonymous access (public containers), which
``unsigned=True`` also forces. When that anonymous access was not asked for and the service
refuses it (or ``DefaultAzureCredential`` finds nothing), the error is one
:class:`~astream.errors.StoragePermissionError` line naming every place looked in.

The SDK's own retry policy is switched off: every request goes through astream's retry loop,
so attempts and backoff follow :class:`~astream.storage.base.RetryConfig` alone.
"""

from __future__ import annotations

import base64
import os
from typing import Any
from urllib.parse import urlsplit

import anyio

from astream.errors import ConfigError, MissingDependencyError, StorageError, StoragePermissionError
from astream.storage._cloud import BucketStore, run_parts
from astream.storage._retry import classify
from astream.storage.base import ObjectInfo, RetryConfig, TransferConfig

__all__ = ["AzureStore"]

#: Azure commits at most this many blocks into one blob.
MAX_BLOCKS = 50_000
# Error codes Azure answers an anonymous request with when the container is not public.
_ANONYMOUS_REFUSED = frozenset(
    {
        "ResourceNotFound",
        "ContainerNotFound",
        "NoAuthenticationInformation",
        "AuthenticationFailed",
        "AuthorizationFailure",
        "PublicAccessNotPermitted",
    }
)
_LOOKED_FOR = (
    "looked for the connection_string= and credential= options, "
    "AZURE_STORAGE_CONNECTION_STRING, an account key in AZURE_STORAGE_KEY or "
    "AZURE_ACCOUNT_ACCESS_KEY, and DefaultAzureCredential ({identity}); set one of them "
    "(a public container: unsigned=True)"
)


def _account_from_connection_string(value: str) -> str | None:
    for item in value.split(";"):
        name, _, setting = item.partition("=")
        if name.strip().lower() == "accountname":
            return setting.strip()
    return None


class AzureStore(BucketStore):
    """An Azure Blob Storage container, optionally below a prefix.

    :param url: see the module docstring for the accepted forms.
    :param retry: retry and timeout policy.
    :param transfer: ranged-download parts; block size, concurrency and threshold of uploads.
    :param account_name: the storage account, where the URL does not name it.
    :param connection_string: a full connection string (default
        ``AZURE_STORAGE_CONNECTION_STRING``); it also gives the endpoint.
    :param credential: any credential azure-storage-blob accepts.
    :param account_url: the blob endpoint (default ``https://{account}.blob.core.windows.net``).
    :param unsigned: anonymous requests only (public containers); default ``False``.
    :param list_page_size: blob names per listing request (Azure's maximum is 5000).
    """

    schemes = ("azure",)
    _live_attributes = ("_service", "_owned_credential")

    def __init__(
        self,
        url: str,
        *,
        retry: RetryConfig | None = None,
        transfer: TransferConfig | None = None,
        account_name: str | None = None,
        connection_string: str | None = None,
        credential: Any = None,
        account_url: str | None = None,
        unsigned: bool = False,
        list_page_size: int = 5000,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "azure" or not parts.netloc:
            raise ConfigError(f"not an azure://container[/prefix] URL: {url!r}")
        host, path = parts.netloc, parts.path.strip("/")
        account: str | None = None
        if "@" in host:
            container, _, account = host.partition("@")
            account = account.split(".")[0]
        elif "." in host:
            account = host.split(".")[0]
            container, _, path = path.partition("/")
            if not container:
                raise ConfigError(f"no container in {url!r}: azure://account.blob.../container")
        else:
            container = host
        super().__init__(url, container, path, retry=retry, transfer=transfer)
        self.connection_string = connection_string or os.environ.get(
            "AZURE_STORAGE_CONNECTION_STRING"
        )
        self.account_name = (
            account
            or account_name
            or os.environ.get("AZURE_STORAGE_ACCOUNT")
            or os.environ.get("AZURE_ACCOUNT_NAME")
            or (
                _account_from_connection_string(self.connection_string)
                if self.connection_string
                else None
            )
        )
        if self.account_name is None:
            raise ConfigError(
                f"no Azure storage account for {url!r}: name it in the URL"
                " (azure://account.blob.core.windows.net/container/...), pass account_name=,"
                " or set AZURE_STORAGE_ACCOUNT or AZURE_STORAGE_CONNECTION_STRING"
            )
        self.credential = credential
        self.account_url = account_url
        self.unsigned = unsigned
        self.list_page_size = list_page_size
        self._service: Any = None
        self._owned_credential: Any = None
        #: Set when no credential was found and requests go out anonymously unasked.
        self._anonymous_by_default = False

    # -- plumbing --------------------------------------------------------------------------

    def _client_options(self) -> dict[str, Any]:
        return {
            # astream's loop retries; the SDK's own policy would multiply the attempts.
            "retry_total": 0,
            "connection_timeout": self.retry.connect_timeout,
            "read_timeout": self.retry.read_timeout,
        }

    def _default_credential(self) -> Any:
        key = os.environ.get("AZURE_STORAGE_KEY") or os.environ.get("AZURE_ACCOUNT_ACCESS_KEY")
        if key:
            return key
        try:
            from azure.identity.aio import DefaultAzureCredential
        except ImportError:
            self._anonymous_by_default = True
            return None  # anonymous: public containers only
        # Ours to close in aclose(), unlike a credential the caller passed.
        self._owned_credential = DefaultAzureCredential()
        return self._owned_credential

    def _container(self) -> Any:
        if self._service is None:
            try:
                from azure.storage.blob.aio import BlobServiceClient
            except ImportError as exc:
                raise MissingDependencyError(
                    f"{self.url} needs azure-storage-blob: pip install 'astream[azure]'"
                ) from exc
            options = self._client_options()
            if self.connection_string and not self.unsigned and self.credential is None:
                self._service = BlobServiceClient.from_connection_string(
                    self.connection_string, **options
                )
            else:
                credential = None
                if not self.unsigned:
                    credential = self.credential or self._default_credential()
                account_url = (
                    self.account_url or f"https://{self.account_name}.blob.core.windows.net"
                )
                self._service = BlobServiceClient(account_url, credential=credential, **options)
        return self._service.get_container_client(self.bucket)

    def _classify(self, exc: BaseException, url: str) -> StorageError | None:
        if type(exc).__name__ == "ClientAuthenticationError" and not hasattr(exc, "status_code"):
            # DefaultAzureCredential found nothing: its message lists each source on its own
            # line; one line says where astream looked.
            looked = _LOOKED_FOR.format(identity="found nothing")
            return StoragePermissionError(f"{url}: no Azure credentials: {looked}")
        code = getattr(exc, "error_code", None) or ""
        code = str(getattr(code, "value", code))  # the SDK's StorageErrorCode enum
        if self._anonymous_by_default and code in _ANONYMOUS_REFUSED:
            looked = _LOOKED_FOR.format(identity="azure-identity is not installed")
            return StoragePermissionError(
                f"{url}: anonymous request refused ({code}): no Azure credentials found: {looked}"
            )
        return classify(exc, url)

    def _blob(self, key: str) -> Any:
        return self._container().get_blob_client(self._name(key))

    # -- reading ---------------------------------------------------------------------------

    async def stat(self, key: str) -> ObjectInfo:
        blob = self._blob(key)

        async def op() -> Any:
            return await blob.get_blob_properties()

        props = await self._retrying(key, op)
        return ObjectInfo(key=key, size=int(props.size), etag=props.etag)

    async def read_range(self, key: str, start: int, end: int) -> bytes:
        if self._check_range(key, start, end):
            return b""
        blob = self._blob(key)

        async def op() -> bytes:
            stream = await blob.download_blob(offset=start, length=end - start)
            data: bytes = await stream.readall()
            return data

        # Azure answers a range past the end with 416, Azurite with a short body: both raise.
        return self._exact(key, start, end, await self._retrying(key, op))

    async def read(self, key: str) -> bytes:
        blob = self._blob(key)

        async def op() -> bytes:
            data: bytes = await (await blob.download_blob()).readall()
            return data

        return await self._retrying(key, op)

    # -- writing ---------------------------------------------------------------------------

    async def write(self, key: str, data: bytes) -> None:
        blob = self._blob(key)

        async def op() -> None:
            await blob.upload_blob(data, overwrite=True)

        await self._retrying(key, op)

    async def upload(self, src: str | os.PathLike[str], key: str) -> None:
        """Upload a local file: one PUT below the multipart threshold, else concurrent staged
        blocks committed as one block list (uncommitted blocks of a failed upload are
        discarded by the service)."""
        size = (await anyio.Path(src).stat()).st_size
        if size < self.transfer.multipart_threshold:
            await self.write(key, await anyio.Path(src).read_bytes())
            return
        blob = self._blob(key)
        # Block ids must all have the same length: a fixed-width counter, base64-encoded.
        ids: dict[int, str] = {}

        async def stage(number: int, data: bytes) -> None:
            block_id = base64.b64encode(f"{number:08d}".encode()).decode()

            async def op() -> None:
                await blob.stage_block(block_id, data, length=len(data))

            await self._retrying(key, op)
            ids[number] = block_id

        await run_parts(os.fspath(src), size, self.transfer, MAX_BLOCKS, stage)
        from azure.storage.blob import BlobBlock

        blocks = [BlobBlock(block_id=ids[n]) for n in sorted(ids)]

        async def commit() -> None:
            await blob.commit_block_list(blocks)

        await self._retrying(key, commit)

    # -- listing ---------------------------------------------------------------------------

    async def list(self, prefix: str = "", *, limit: int | None = None) -> list[str]:
        container = self._container()
        full = self._list_prefix(prefix)
        names: list[str] = []
        token: str | None = None
        while limit is None or len(names) < limit:
            size = self.list_page_size if limit is None else min(limit - len(names), 5000)

            async def op(
                token: str | None = token, size: int = size
            ) -> tuple[list[str], str | None]:
                pages = container.list_blobs(name_starts_with=full, results_per_page=size).by_page(
                    continuation_token=token
                )
                page = await pages.__anext__()
                return [blob.name async for blob in page], pages.continuation_token

            page_names, token = await self._retrying(prefix, op)
            names.extend(page_names)
            if not token:
                break
        return self._relative(names)[:limit]

    # -- lifetime --------------------------------------------------------------------------

    async def aclose(self) -> None:
        service, self._service = self._service, None
        credential, self._owned_credential = self._owned_credential, None
        if service is not None:
            await service.close()
        if credential is not None:
            await credential.close()
