"""Oracle Cloud Infrastructure Object Storage (``oci://bucket@namespace/prefix``).

The oci SDK has no asyncio client, so requests are signed with the SDK's own signer (the same
RSA HTTP-signature code its clients use) and sent with aiohttp: ranged reads stream on the event
loop like every other backend instead of occupying a thread each.

Configuration, as mosaicml-streaming users have it: ``~/.oci/config`` (or the file named by
``OCI_CONFIG_FILE``), profile ``DEFAULT`` (or ``OCI_CLI_PROFILE``, or ``profile=``). A profile
with ``security_token_file`` signs with that session token. ``signer=`` accepts any oci signer
(instance or resource principals). The endpoint is the config region's Object Storage endpoint
unless ``endpoint_url=`` overrides it.

The namespace may be left out of the URL (``oci://bucket/prefix``): it is then asked of the
service once (``GET /n/``), as mosaicml-streaming does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
import anyio
import yarl

from astream.errors import ConfigError, MissingDependencyError, StoragePermissionError
from astream.storage._cloud import BucketStore, run_parts, write_body
from astream.storage.base import ObjectInfo, RetryConfig, TransferConfig

__all__ = ["OCIServiceError", "OCIStore"]

#: OCI refuses multipart uploads of more parts than this.
MAX_PARTS = 10_000


class OCIServiceError(Exception):
    """An error response from Object Storage, before translation to an astream error.

    It carries ``status`` (and ``code``/``message`` from the JSON body) so the shared retry
    classifier treats it like any HTTP failure.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class _SigningRequest:
    """What oci's requests-style signers read and write: method, url, path_url, headers, body."""

    def __init__(self, method: str, url: str, body: bytes | None) -> None:
        self.method = method
        self.url = url
        self.body = body
        parts = urlsplit(url)
        self.path_url = parts.path + (f"?{parts.query}" if parts.query else "")
        # Lower-case names only: the signer reads and sets ``date``, ``host``, ``content-type``.
        self.headers: dict[str, str] = {}


class OCIStore(BucketStore):
    """An OCI Object Storage bucket, optionally below a prefix.

    :param url: ``oci://bucket@namespace/prefix`` (or ``oci://bucket/prefix``).
    :param retry: retry and timeout policy.
    :param transfer: part sizes and concurrency of ranged downloads and multipart uploads.
    :param config: an oci config dict (``user``, ``tenancy``, ``fingerprint``, ``region`` and
        ``key_file`` or ``key_content``); by default read from ``config_file``/``profile``.
    :param config_file: default ``OCI_CONFIG_FILE``, else ``~/.oci/config``.
    :param profile: default ``OCI_CLI_PROFILE``, else ``DEFAULT``.
    :param signer: an oci signer object (instance or resource principals) to use instead of
        one built from the config; the store then pickles only if the signer does.
    :param endpoint_url: Object Storage endpoint URL; default the config region's.
    """

    schemes = ("oci",)
    # A signer built from the config holds a private-key object that does not pickle: drop it.
    _live_attributes = ("_session", "_signer")

    def __init__(
        self,
        url: str,
        *,
        retry: RetryConfig | None = None,
        transfer: TransferConfig | None = None,
        config: dict[str, Any] | None = None,
        config_file: str | os.PathLike[str] | None = None,
        profile: str | None = None,
        signer: Any = None,
        endpoint_url: str | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "oci" or not parts.netloc:
            raise ConfigError(f"not an oci://bucket@namespace[/prefix] URL: {url!r}")
        bucket, _, namespace = parts.netloc.partition("@")
        super().__init__(url, bucket, parts.path, retry=retry, transfer=transfer)
        #: The tenancy's Object Storage namespace; looked up on first use when ``None``.
        self.namespace: str | None = namespace or None
        self.config = config
        self.config_file = os.fspath(config_file) if config_file is not None else None
        self.profile = profile
        self.endpoint_url = endpoint_url.rstrip("/") if endpoint_url else None
        self.signer = signer
        self._signer: Any = None
        self._session: aiohttp.ClientSession | None = None

    # -- plumbing --------------------------------------------------------------------------

    def _load_config(self) -> dict[str, Any]:
        import oci

        if self.config is None:
            profile = self.profile or os.environ.get("OCI_CLI_PROFILE") or "DEFAULT"
            location = (
                self.config_file or os.environ.get("OCI_CONFIG_FILE") or oci.config.DEFAULT_LOCATION
            )
            try:
                self.config = dict(oci.config.from_file(location, profile))
            except Exception as exc:
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise StoragePermissionError(
                    f"{self.url}: no OCI credentials: looked for the config= and signer= "
                    f"options, then profile {profile!r} (profile=, OCI_CLI_PROFILE) in "
                    f"{location} (config_file=, OCI_CONFIG_FILE): {type(exc).__name__}: "
                    f"{reason}; create one with `oci setup config`, or pass signer= "
                    "(instance or resource principals)"
                ) from exc
        return self.config

    def _make_signer(self, config: dict[str, Any]) -> Any:
        import oci

        token_file = config.get("security_token_file")
        if token_file:
            with open(os.path.expanduser(token_file)) as f:
                token = f.read().strip()
            key = oci.signer.load_private_key_from_file(
                config["key_file"], config.get("pass_phrase")
            )
            return oci.auth.signers.SecurityTokenSigner(token, key)
        return oci.signer.Signer(
            config["tenancy"],
            config["user"],
            config["fingerprint"],
            private_key_file_location=config.get("key_file"),
            pass_phrase=config.get("pass_phrase"),
            private_key_content=config.get("key_content"),
        )

    async def _ready(self) -> aiohttp.ClientSession:
        """Signer, endpoint and session, made on first use (reading config files off-loop)."""
        if self._session is None:
            try:
                import oci
            except ImportError as exc:
                raise MissingDependencyError(
                    f"{self.url} needs the oci SDK: pip install 'astream[oci]'"
                ) from exc
            signer, endpoint = self.signer, self.endpoint_url
            if signer is None or endpoint is None:
                config = await anyio.to_thread.run_sync(self._load_config)
                if endpoint is None:
                    endpoint = oci.regions.endpoint_for("object_storage", region=config["region"])
                if signer is None:
                    try:
                        signer = await anyio.to_thread.run_sync(self._make_signer, config)
                    except Exception as exc:  # a key file missing or unreadable, a bad key
                        raise StoragePermissionError(
                            f"{self.url}: cannot sign OCI requests with the key of the "
                            f"config ({config.get('key_file') or 'key_content'}): "
                            f"{type(exc).__name__}: {exc}"
                        ) from exc
            # Concurrent first requests all got here; the first to arrive sets up, so exactly
            # one session exists (the others' work is dropped, not leaked).
            if self._session is None:
                timeout = aiohttp.ClientTimeout(
                    total=None,
                    sock_connect=self.retry.connect_timeout,
                    sock_read=self.retry.read_timeout,
                )
                self._signer, self.endpoint_url = signer, endpoint
                self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session

    @contextlib.asynccontextmanager
    async def _send(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        json_body: Any = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Sign and send one request; yield the response with its body unread, or raise
        :class:`OCIServiceError` for an error status."""
        session = await self._ready()
        url = f"{self.endpoint_url}{path}"
        if query:
            url += "?" + urlencode(query, quote_via=quote)
        request = _SigningRequest(method, url, body)
        request.headers.update({name.lower(): value for name, value in (headers or {}).items()})
        if json_body is not None:
            # Small JSON bodies are signed with their length and SHA-256, as the SDK does.
            request.body = body = json.dumps(json_body).encode()
            request.headers["content-type"] = "application/json"
            request.headers["content-length"] = str(len(body))
            self._signer(request)
        else:
            # Object data is signed without content headers (the SDK's PutObject/UploadPart do
            # the same), so hashing a large part never happens twice.
            request.headers.setdefault("content-type", "application/octet-stream")
            self._signer(request, enforce_content_headers=False)
        # The URL is sent exactly as signed: ``encoded=True`` stops yarl from requoting it.
        async with session.request(
            method, yarl.URL(url, encoded=True), headers=dict(request.headers), data=body
        ) as response:
            if response.status >= 400:
                data = await response.read()
                code, message = "", data.decode(errors="replace")
                try:
                    payload = json.loads(data)
                    code, message = str(payload.get("code", "")), str(payload.get("message", ""))
                except (ValueError, AttributeError):
                    pass
                raise OCIServiceError(response.status, code, message)
            yield response

    async def _request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        json_body: Any = None,
        read: bool = True,
    ) -> tuple[int, Mapping[str, str], bytes]:
        """:meth:`_send`, returning status, headers and (when ``read``) the whole body."""
        async with self._send(
            method, path, query=query, headers=headers, body=body, json_body=json_body
        ) as response:
            data = await response.read() if read else b""
            return response.status, response.headers.copy(), data

    async def _base(self) -> str:
        """``/n/{namespace}/b/{bucket}``, learning the namespace first when the URL lacks it."""
        if self.namespace is None:

            async def op() -> bytes:
                return (await self._request("GET", "/n/"))[2]

            self.namespace = str(json.loads(await self._retrying("", op)))
        return f"/n/{quote(self.namespace, safe='')}/b/{quote(self.bucket, safe='')}"

    async def _object_path(self, key: str) -> str:
        return f"{await self._base()}/o/{quote(self._name(key), safe='')}"

    # -- reading ---------------------------------------------------------------------------

    async def stat(self, key: str) -> ObjectInfo:
        path = await self._object_path(key)

        async def op() -> Mapping[str, str]:
            return (await self._request("HEAD", path, read=False))[1]

        headers = await self._retrying(key, op)
        return ObjectInfo(key=key, size=int(headers["Content-Length"]), etag=headers.get("ETag"))

    async def read_range(self, key: str, start: int, end: int) -> bytes:
        if self._check_range(key, start, end):
            return b""
        path = await self._object_path(key)

        async def op() -> bytes:
            headers = {"Range": f"bytes={start}-{end - 1}"}
            return (await self._request("GET", path, headers=headers))[2]

        return self._exact(key, start, end, await self._retrying(key, op))

    async def streams_into(self) -> bool:
        return True  # write_body: chunks at their offsets as they arrive

    async def fetch_range_into(self, key: str, start: int, end: int, fd: int) -> None:
        """One part of :meth:`download`: the body is written at its offsets as it arrives."""
        if self._check_range(key, start, end):
            return
        path = await self._object_path(key)

        async def get() -> None:
            headers = {"Range": f"bytes={start}-{end - 1}"}
            async with self._send("GET", path, headers=headers) as response:
                await write_body(
                    response.content.iter_any(), fd, start, end, self.join(key), self.retry
                )

        await self._retrying(key, get)

    async def read(self, key: str) -> bytes:
        path = await self._object_path(key)

        async def op() -> bytes:
            return (await self._request("GET", path))[2]

        return await self._retrying(key, op)

    # -- writing ---------------------------------------------------------------------------

    async def write(self, key: str, data: bytes) -> None:
        path = await self._object_path(key)

        async def op() -> None:
            await self._request("PUT", path, body=data)

        await self._retrying(key, op)

    async def upload(self, src: str | os.PathLike[str], key: str) -> None:
        """Upload a local file: one PUT below the multipart threshold, else a multipart upload
        of concurrent parts that is aborted if any part fails."""
        size = (await anyio.Path(src).stat()).st_size
        if size < self.transfer.multipart_threshold:
            data = await anyio.Path(src).read_bytes()
            await self.write(key, data)
            return
        await self._multipart_upload(os.fspath(src), key, size)

    async def _multipart_upload(self, src: str, key: str, size: int) -> None:
        base = await self._base()
        name = self._name(key)

        async def create() -> str:
            body = (await self._request("POST", f"{base}/u", json_body={"object": name}))[2]
            return str(json.loads(body)["uploadId"])

        upload_id = await self._retrying(key, create)
        upload_path = f"{base}/u/{quote(name, safe='')}"
        etags: dict[int, str] = {}

        async def send(number: int, data: bytes) -> None:
            async def put() -> str:
                query = {"uploadId": upload_id, "uploadPartNum": str(number)}
                _, headers, _ = await self._request("PUT", upload_path, query=query, body=data)
                return headers["ETag"]

            etags[number] = await self._retrying(key, put)

        async def commit() -> None:
            parts = [{"partNum": n, "etag": etags[n]} for n in sorted(etags)]
            await self._request(
                "POST",
                upload_path,
                query={"uploadId": upload_id},
                json_body={"partsToCommit": parts},
            )

        try:
            await run_parts(src, size, self.transfer, MAX_PARTS, send)
            await self._retrying(key, commit)
        except BaseException:
            await self._abort(upload_path, upload_id)
            raise

    async def _abort(self, upload_path: str, upload_id: str) -> None:
        # Best effort, shielded from the cancellation that may have brought us here: an
        # abandoned upload keeps its parts (and their storage cost) until it is aborted.
        async def abort() -> None:
            with contextlib.suppress(OCIServiceError, aiohttp.ClientError, TimeoutError):
                await self._request("DELETE", upload_path, query={"uploadId": upload_id})

        await asyncio.shield(asyncio.ensure_future(abort()))

    # -- listing ---------------------------------------------------------------------------

    async def list(self, prefix: str = "", *, limit: int | None = None) -> list[str]:
        base = await self._base()
        full = self._list_prefix(prefix)
        names: list[str] = []
        start: str | None = None
        while limit is None or len(names) < limit:
            query = {"prefix": full, "fields": "name"}
            if limit is not None:
                query["limit"] = str(min(limit - len(names), 1000))
            if start is not None:
                query["start"] = start

            async def op(query: dict[str, str] = query) -> dict[str, Any]:
                page: dict[str, Any] = json.loads(
                    (await self._request("GET", f"{base}/o", query=query))[2]
                )
                return page

            page = await self._retrying(prefix, op)
            names.extend(item["name"] for item in page.get("objects", ()))
            start = page.get("nextStartWith")
            if not start:
                break
        return self._relative(names)[:limit]

    # -- lifetime --------------------------------------------------------------------------

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
            # Let the closed transports' callbacks run before the loop may stop.
            await asyncio.sleep(0)
