"""Google Cloud Storage (``gs://bucket/prefix``) over gcloud-aio-storage.

Credentials follow gcloud-aio-auth's chain: an explicit ``service_file``, else
``GOOGLE_APPLICATION_CREDENTIALS``, else the gcloud SDK's application-default credentials, else
the GCE metadata server. Off Google Cloud (no ``GCE_METADATA_HOST``, none of the variables
Cloud Run, Cloud Functions and App Engine set, and a machine whose DMI product name is not
Google's) with none of the others, the first request fails at once with a
:class:`~astream.errors.StoragePermissionError` naming them all, instead of asking the metadata
server, which does not exist there, for a token. ``unsigned=True`` sends no ``Authorization`` header at all, for public
buckets. ``STORAGE_EMULATOR_HOST=http://host:port`` (or ``endpoint_url=``) points the store at an
emulator such as fake-gcs-server, which also needs no token.

The aiohttp session (and the ``Storage`` client on it) is created on first use inside the
running loop and closed by :meth:`GCSStore.aclose`.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

import aiohttp
import anyio

from astream.errors import ConfigError, MissingDependencyError, StoragePermissionError
from astream.storage._cloud import BucketStore, write_body
from astream.storage.base import ObjectInfo, RetryConfig, TransferConfig

if TYPE_CHECKING:
    from gcloud.aio.storage import Storage

__all__ = ["GCSStore"]

#: gcloud-aio-storage switches to a resumable upload above this size (its own constant).
RESUMABLE_THRESHOLD = 5 << 20
#: Where Linux names the machine's product: "Google Compute Engine" on Google Cloud (how
#: google-auth tells whether a metadata server can exist).
DMI_PRODUCT_NAME = "/sys/class/dmi/id/product_name"


#: Variables that Google's serverless platforms set, where the sandbox may hide the DMI name
#: but a metadata server answers (Cloud Run services and jobs, Cloud Functions, App Engine).
_SERVERLESS_VARIABLES = ("K_SERVICE", "CLOUD_RUN_JOB", "FUNCTION_TARGET", "GAE_ENV")


def _on_google_cloud() -> bool:
    if os.environ.get("GCE_METADATA_HOST") or os.environ.get("GCE_METADATA_ROOT"):
        return True
    if any(os.environ.get(name) for name in _SERVERLESS_VARIABLES):
        return True
    try:
        return Path(DMI_PRODUCT_NAME).read_text().startswith("Google")
    except OSError:
        return False


def _application_default_file() -> Path:
    root = os.environ.get("CLOUDSDK_CONFIG")
    base = Path(root) if root else Path.home() / ".config" / "gcloud"
    return base / "application_default_credentials.json"


class GCSStore(BucketStore):
    """A Google Cloud Storage bucket, optionally below a prefix: ``gs://bucket/prefix``.

    :param url: ``gs://bucket`` or ``gs://bucket/some/prefix``.
    :param retry: retry and timeout policy (defaults: :class:`~astream.storage.base.RetryConfig`).
    :param transfer: part size and concurrency of ranged downloads.
    :param service_file: path of a service-account or authorized-user JSON file; by default
        gcloud-aio-auth's chain finds credentials (``GOOGLE_APPLICATION_CREDENTIALS`` first).
    :param unsigned: send unauthenticated requests (public buckets); default ``False``.
    :param endpoint_url: the JSON API's root URL, for emulators; by default
        ``STORAGE_EMULATOR_HOST`` when set, else ``https://www.googleapis.com``.
    """

    schemes = ("gs",)
    _live_attributes = ("_session", "_client")

    def __init__(
        self,
        url: str,
        *,
        retry: RetryConfig | None = None,
        transfer: TransferConfig | None = None,
        service_file: str | os.PathLike[str] | None = None,
        unsigned: bool = False,
        endpoint_url: str | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "gs" or not parts.netloc:
            raise ConfigError(f"not a gs://bucket[/prefix] URL: {url!r}")
        super().__init__(url, parts.netloc, parts.path, retry=retry, transfer=transfer)
        self.service_file = os.fspath(service_file) if service_file is not None else None
        self.unsigned = unsigned
        self.endpoint_url = endpoint_url
        self._session: aiohttp.ClientSession | None = None
        self._client: Storage | None = None

    # -- plumbing --------------------------------------------------------------------------

    def _timeout(self) -> Any:
        # gcloud-aio annotates ``timeout`` as seconds in total, but passes an aiohttp
        # ClientTimeout through unchanged; a total limit would cut off large reads that are
        # still making progress, so only connect and idle-read limits apply.
        return aiohttp.ClientTimeout(
            total=None, sock_connect=self.retry.connect_timeout, sock_read=self.retry.read_timeout
        )

    def _missing_credentials(self) -> str | None:
        """Why no token can be had, or ``None`` when gcloud-aio-auth's chain has a source."""
        if self.unsigned or self.endpoint_url or os.environ.get("STORAGE_EMULATOR_HOST"):
            return None
        if self.service_file or os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
            return None
        adc = _application_default_file()
        if adc.is_file() or _on_google_cloud():
            return None
        return (
            f"{self.url}: no Google Cloud credentials found: looked for the service_file= "
            f"option, GOOGLE_APPLICATION_CREDENTIALS, gcloud's application-default "
            f"credentials ({adc}; CLOUDSDK_CONFIG) and a GCE metadata server (not on Google "
            "Cloud: GCE_METADATA_HOST unset); set GOOGLE_APPLICATION_CREDENTIALS to a "
            "service-account key file or run `gcloud auth application-default login` "
            "(a public bucket: unsigned=True)"
        )

    async def _storage(self) -> Storage:
        if self._client is None:
            missing = self._missing_credentials()
            if missing is not None:
                raise StoragePermissionError(missing)
            try:
                from gcloud.aio.storage import Storage
            except ImportError as exc:
                raise MissingDependencyError(
                    f"{self.url} needs gcloud-aio-storage: pip install 'astream[gcs]'"
                ) from exc
            cls = _unsigned_storage_class() if self.unsigned else Storage
            self._session = aiohttp.ClientSession(timeout=self._timeout())
            self._client = cls(
                # gcloud-aio annotates the session as its REST build's requests.Session.
                session=cast(Any, self._session),
                service_file=self.service_file,
                api_root=self.endpoint_url,
            )
        return self._client

    # -- reading ---------------------------------------------------------------------------

    async def stat(self, key: str) -> ObjectInfo:
        client = await self._storage()

        async def op() -> dict[str, Any]:
            return await client.download_metadata(
                self.bucket, self._name(key), timeout=self._timeout()
            )

        meta: dict[str, Any] = await self._retrying(key, op)
        return ObjectInfo(key=key, size=int(meta["size"]), etag=meta.get("etag"))

    async def read_range(self, key: str, start: int, end: int) -> bytes:
        if self._check_range(key, start, end):
            return b""
        client = await self._storage()

        async def op() -> bytes:
            return await client.download(
                self.bucket,
                self._name(key),
                headers={"Range": f"bytes={start}-{end - 1}"},
                timeout=self._timeout(),
            )

        # GCS clips a range that runs past the end of the object; the contract refuses it.
        return self._exact(key, start, end, await self._retrying(key, op))

    async def streams_into(self) -> bool:
        return True  # write_body: chunks at their offsets as they arrive

    async def fetch_range_into(self, key: str, start: int, end: int, fd: int) -> None:
        """One part of :meth:`download`: the body is written at its offsets as it arrives."""
        if self._check_range(key, start, end):
            return
        client = await self._storage()

        async def get() -> None:
            stream = await client.download_stream(
                self.bucket,
                self._name(key),
                headers={"Range": f"bytes={start}-{end - 1}"},
                timeout=self._timeout(),
            )
            async with stream as response:
                await write_body(
                    response.content.iter_any(), fd, start, end, self.join(key), self.retry
                )

        await self._retrying(key, get)

    async def read(self, key: str) -> bytes:
        client = await self._storage()

        async def op() -> bytes:
            return await client.download(self.bucket, self._name(key), timeout=self._timeout())

        data: bytes = await self._retrying(key, op)
        return data

    # -- writing ---------------------------------------------------------------------------

    async def write(self, key: str, data: bytes) -> None:
        client = await self._storage()

        async def op() -> None:
            await client.upload(
                self.bucket,
                self._name(key),
                data,
                content_type="application/octet-stream",
                timeout=self._timeout(),
            )

        await self._retrying(key, op)

    async def upload(self, src: str | os.PathLike[str], key: str) -> None:
        """Upload a local file; above 5 MiB gcloud-aio-storage uses a resumable upload session.

        The file is streamed from disk (each try reopens it), never read into memory whole.
        """
        client = await self._storage()
        path = os.fspath(src)
        # A missing source is the caller's error, raised as itself and never retried.
        await anyio.Path(path).stat()

        async def op() -> None:
            stream = await anyio.to_thread.run_sync(open, path, "rb")
            try:
                await client.upload(
                    self.bucket,
                    self._name(key),
                    stream,
                    content_type="application/octet-stream",
                    timeout=self._timeout(),
                )
            finally:
                stream.close()

        await self._retrying(key, op)

    # -- listing ---------------------------------------------------------------------------

    async def list(self, prefix: str = "", *, limit: int | None = None) -> list[str]:
        client = await self._storage()
        full = self._list_prefix(prefix)
        names: list[str] = []
        token: str | None = None
        while limit is None or len(names) < limit:
            params = {"prefix": full, "fields": "items(name),nextPageToken"}
            if limit is not None:
                params["maxResults"] = str(min(limit - len(names), 1000))
            if token:
                params["pageToken"] = token

            async def op(params: dict[str, str] = params) -> dict[str, Any]:
                return await client.list_objects(
                    self.bucket, params=params, timeout=self._timeout()
                )

            page: dict[str, Any] = await self._retrying(prefix, op)
            names.extend(item["name"] for item in page.get("items", ()))
            token = page.get("nextPageToken")
            if not token:
                break
        return self._relative(names)[:limit]

    # -- lifetime --------------------------------------------------------------------------

    async def aclose(self) -> None:
        session, self._session, self._client = self._session, None, None
        if session is not None:
            await session.close()
            # Let aiohttp's transports finish closing before the loop may stop.
            await asyncio.sleep(0)


def _unsigned_storage_class() -> type[Storage]:
    from gcloud.aio.storage import Storage

    class UnsignedStorage(Storage):
        """A Storage client that never asks for a token (public buckets)."""

        async def _headers(self) -> dict[str, str]:
            return {}

    return UnsignedStorage
