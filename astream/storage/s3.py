"""Amazon S3 and S3-compatible stores (MinIO, R2, Ceph, OCI's S3 endpoint) over aiobotocore.

URLs: ``s3://bucket`` or ``s3://bucket/prefix``. Credentials come from botocore's standard chain
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ``~/.aws``, instance roles)
unless given as options. The endpoint of an S3-compatible service is read, in order, from the
``endpoint_url`` option, ``S3_ENDPOINT_URL`` (as mosaicml-streaming users set it) and
``AWS_ENDPOINT_URL``. Custom endpoints get path-style addressing and checksums only where
required, which S3-compatible servers need.

Public buckets: ``unsigned=True``, or ``AWS_NO_SIGN_REQUEST=1`` in the environment.
Requester-pays buckets: ``requester_pays=True``, or the bucket named in
``MOSAICML_STREAMING_AWS_REQUESTER_PAYS`` (comma-separated, as mosaicml-streaming reads it).

Reads (whole objects, ranges, the parts of a download) are signed by astream (SigV4, with the
SDK's credentials) and sent through its lean HTTP client (:mod:`astream.storage._s3direct`)
where that sends exactly what the SDK would; everything else, and every read the direct path
cannot answer plainly, goes through aiobotocore. ``direct_reads=False`` sends every request
through aiobotocore.

No credentials anywhere (and not ``unsigned``) is a :class:`~astream.errors.StoragePermissionError`
at the first request, naming every place botocore's chain looked.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import re
import ssl
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from astream.errors import ConfigError, StorageError, StoragePermissionError
from astream.storage._rawhttp import HTTPStatusError
from astream.storage._retry import TruncatedBody, classify
from astream.storage._s3direct import SDK_STATUSES, DirectReads, resolve
from astream.storage._transfer import part_ranges, write_part
from astream.storage.base import ObjectInfo, RetryConfig, Store, TransferConfig

__all__ = ["S3Store"]

# aiobotocore is imported when a request first needs it (most reads do not: see
# astream.storage._s3direct), but its absence is reported when the backend is chosen, as
# for every other backend (the registry turns this into "pip install 'astream[s3]'").
for _name in ("aiobotocore", "botocore"):
    if importlib.util.find_spec(_name) is None:
        raise ModuleNotFoundError(f"No module named {_name!r}", name=_name)

log = logging.getLogger(__name__)
T = TypeVar("T")

_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_TRUE = ("1", "true", "yes", "on")
# S3 refuses more parts than this in one multipart upload.
_MAX_PARTS = 10_000
# Object keys whose reads the SDK answered where the direct path could not, remembered (the
# latest this many) so that their next reads go to the SDK at once.
_SDK_KEYS = 4096
_NO_CREDENTIALS = (
    "no AWS credentials found: looked for the aws_access_key_id/aws_secret_access_key "
    "options, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE in "
    "~/.aws/credentials and ~/.aws/config (AWS_SHARED_CREDENTIALS_FILE, AWS_CONFIG_FILE), "
    "web identity (AWS_WEB_IDENTITY_TOKEN_FILE), SSO, and container and EC2 instance roles; "
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or run `aws configure` "
    "(a public bucket: unsigned=True or AWS_NO_SIGN_REQUEST=1)"
)


def _split(url: str) -> tuple[str, str]:
    match = re.match(r"^s3://([^/]+)/?(.*)$", url, flags=re.IGNORECASE)
    if match is None:
        raise StorageError(f"not an s3:// URL with a bucket: {url}")
    return match.group(1), match.group(2).strip("/")


_sessions: dict[str | None, Any] = {}
_sessions_lock = threading.Lock()


def _new_lock_after_fork() -> None:
    # Held by another thread at fork time, the lock would stay held in the child forever.
    global _sessions_lock
    _sessions_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_after_fork)


def _session(profile: str | None) -> Any:
    """One botocore session per profile and process, shared by every loop's clients.

    Building a session loads botocore's service models (about 0.1 s); a client made from a
    loaded session takes milliseconds, which the first sample of a cold epoch waits for.
    """
    with _sessions_lock:
        session = _sessions.get(profile)
        if session is None:
            from aiobotocore.session import get_session

            session = get_session()
            if profile:
                session.set_config_variable("profile", profile)
            _sessions[profile] = session
        return session


class S3Store(Store):
    """Objects under ``s3://bucket/prefix``, read with ranged GETs, written with (multipart) PUTs.

    :param endpoint_url: an S3-compatible service (default from ``S3_ENDPOINT_URL`` or
        ``AWS_ENDPOINT_URL``; AWS itself when unset).
    :param region: the bucket's region (default from the botocore chain, else ``us-east-1``).
    :param unsigned: send anonymous requests, for public buckets (default from
        ``AWS_NO_SIGN_REQUEST``).
    :param requester_pays: add ``RequestPayer=requester`` to reads.
    :param addressing_style: ``"path"`` or ``"virtual"`` (default: path for custom endpoints).
    :param connections: the client's connection pool size.
    :param aws_access_key_id: explicit credentials (default: botocore's chain).
    :param aws_secret_access_key: explicit credentials.
    :param aws_session_token: explicit credentials.
    :param profile: a profile from ``~/.aws/config``.
    :param direct_reads: sign reads and send them through astream's own HTTP client where it
        can send what the SDK would (default); ``False``: always aiobotocore.
    """

    schemes = ("s3",)
    _live_attributes = ("_client", "_client_loop", "_client_stack", "_direct", "_direct_state")

    def __init__(
        self,
        url: str,
        *,
        retry: RetryConfig | None = None,
        transfer: TransferConfig | None = None,
        endpoint_url: str | None = None,
        region: str | None = None,
        unsigned: bool | None = None,
        requester_pays: bool | None = None,
        addressing_style: str | None = None,
        connections: int = 64,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        aws_session_token: str | None = None,
        profile: str | None = None,
        direct_reads: bool = True,
    ) -> None:
        super().__init__(url, retry=retry, transfer=transfer)
        self.bucket, self.prefix = _split(self.url)
        self.endpoint_url = (
            endpoint_url or os.environ.get("S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
        )
        self.region = region
        if unsigned is None:
            unsigned = os.environ.get("AWS_NO_SIGN_REQUEST", "").lower() in _TRUE
        self.unsigned = unsigned
        if requester_pays is None:
            payers = os.environ.get("MOSAICML_STREAMING_AWS_REQUESTER_PAYS", "")
            requester_pays = self.bucket in {name.strip() for name in payers.split(",")}
        self.requester_pays = requester_pays
        self.addressing_style = addressing_style or ("path" if self.endpoint_url else None)
        self.connections = connections
        self._credentials = {
            "aws_access_key_id": aws_access_key_id,
            "aws_secret_access_key": aws_secret_access_key,
            "aws_session_token": aws_session_token,
        }
        self.profile = profile
        self._client: Any = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._client_stack: contextlib.AsyncExitStack | None = None
        self.direct_reads = direct_reads
        self._direct: DirectReads | None = None
        #: ``None`` until the direct path was considered, then "on" or why it is off.
        self._direct_state: str | None = None
        #: Object keys the SDK answered where the direct path could not (insertion-ordered).
        self._sdk_keys: dict[str, None] = {}

    def _object_key(self, key: str) -> str:
        key = key.lstrip("/")
        return f"{self.prefix}/{key}" if self.prefix else key

    def __repr__(self) -> str:  # never show credentials
        return f"S3Store({self.url!r}, endpoint_url={self.endpoint_url!r})"

    # -- the client, one per loop ----------------------------------------------------------

    async def _get_client(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._client is not None and self._client_loop is loop:
            return self._client
        # A client belongs to the loop that made it; one used from a new loop (after a fork,
        # in a new worker) is dropped unclosed and replaced.
        extra: dict[str, Any] = {}
        if self.unsigned:
            from botocore import UNSIGNED

            extra["signature_version"] = UNSIGNED
        s3_options: dict[str, Any] = {}
        if self.addressing_style:
            s3_options["addressing_style"] = self.addressing_style
        if self.endpoint_url:
            # S3-compatible servers reject or mishandle the newer default checksums.
            extra["request_checksum_calculation"] = "when_required"
            extra["response_checksum_validation"] = "when_required"
        from aiobotocore.config import AioConfig

        config = AioConfig(
            connect_timeout=self.retry.connect_timeout,
            read_timeout=self.retry.read_timeout,
            # Our own retry loop (astream.storage._retry) is the only one: botocore's would
            # multiply attempts and hide retries from our statistics.
            retries={"total_max_attempts": 1, "mode": "standard"},
            max_pool_connections=self.connections,
            s3=s3_options or None,
            **extra,
        )
        session = _session(self.profile)
        region = self.region or session.get_config_variable("region") or "us-east-1"
        stack = contextlib.AsyncExitStack()
        client = await stack.enter_async_context(
            session.create_client(
                "s3",
                region_name=region,
                endpoint_url=self.endpoint_url,
                config=config,
                **{k: v for k, v in self._credentials.items() if v is not None},
            )
        )
        self._client, self._client_loop, self._client_stack = client, loop, stack
        return client

    async def _get_direct(self) -> DirectReads | None:
        """The direct read path, or ``None`` when reads go through the SDK."""
        direct = self._direct
        if direct is None:
            if not self.direct_reads or self._direct_state is not None:
                return None
            # Credentials may come from the network (instance roles): resolve off the loop.
            resolved = await asyncio.to_thread(
                resolve,
                bucket=self.bucket,
                endpoint_url=self.endpoint_url,
                region=self.region,
                profile=self.profile,
                explicit=self._credentials,
                unsigned=self.unsigned,
            )
            if self._direct is not None:  # another request resolved it meanwhile
                direct = self._direct
            elif isinstance(resolved, str):
                self._direct_state = resolved
                log.debug("%s: reads go through aiobotocore: %s", self.url, resolved)
                return None
            else:
                direct = DirectReads(
                    bucket=self.bucket,
                    region=resolved.region,
                    endpoint_url=self.endpoint_url,
                    addressing_style=self.addressing_style,
                    credentials=resolved.credentials,
                    requester_pays=self.requester_pays,
                    ca_bundle=resolved.ca_bundle,
                    connections=self.connections,
                    connect_timeout=self.retry.connect_timeout,
                    read_timeout=self.retry.read_timeout,
                    deadline=self.retry.deadline,
                )
                self._direct, self._direct_state = direct, "on"
        return direct

    async def _read_attempt(
        self,
        object_key: str,
        direct_call: Callable[[DirectReads], Awaitable[T | None]],
        sdk_call: Callable[[], Awaitable[T]],
    ) -> T:
        """One try of a read: the direct path, else (or when it is refused) the SDK.

        The fallback is per request: one object the direct path cannot read (a redirect, a
        Content-Encoding in its metadata, a TLS failure) sends that read to the SDK, and that
        key's next reads, not the whole store's.
        """
        direct = await self._get_direct()
        if direct is None or object_key in self._sdk_keys:
            return await sdk_call()
        try:
            result = await direct_call(direct)
        except HTTPStatusError as exc:
            if exc.status not in SDK_STATUSES:
                raise
            result = None
        except ssl.SSLError as exc:
            # The SDK verifies with the same certificates; its error is the one to report.
            log.debug("%s: direct read failed TLS (%s); asking the SDK", self.url, exc)
            result = None
        if result is not None:
            return result
        result = await sdk_call()
        # The SDK got an answer where the direct path was refused: send this key's reads to
        # the SDK from now on.
        self._sdk_keys[object_key] = None
        if len(self._sdk_keys) > _SDK_KEYS:
            del self._sdk_keys[next(iter(self._sdk_keys))]
        log.debug("%s: direct read of %s refused where the SDK succeeded", self.url, object_key)
        return result

    def _classify(self, exc: BaseException, url: str) -> StorageError | None:
        if type(exc).__name__ in ("NoCredentialsError", "PartialCredentialsError"):
            return StoragePermissionError(f"{url}: {_NO_CREDENTIALS}")
        return classify(exc, url)

    async def aclose(self) -> None:
        if self._direct is not None:
            self._direct.close()
        stack, loop = self._client_stack, self._client_loop
        self._client = self._client_loop = self._client_stack = None
        if stack is not None and loop is asyncio.get_running_loop():
            await stack.aclose()

    async def _call(self, key: str, method: str, **params: Any) -> Any:
        async def operation() -> Any:
            client = await self._get_client()
            return await getattr(client, method)(Bucket=self.bucket, **params)

        return await self._retrying(key, operation)

    def _payer(self) -> dict[str, str]:
        return {"RequestPayer": "requester"} if self.requester_pays else {}

    # -- reading ---------------------------------------------------------------------------

    async def stat(self, key: str) -> ObjectInfo:
        head = await self._call(key, "head_object", Key=self._object_key(key), **self._payer())
        return ObjectInfo(key=key, size=int(head["ContentLength"]), etag=head.get("ETag"))

    async def _sdk_get(
        self, key: str, check: Callable[[dict[str, Any], bytes], None], **params: Any
    ) -> bytes:
        """One GET through aiobotocore, its body checked by ``check``."""
        client = await self._get_client()
        response = await client.get_object(
            Bucket=self.bucket, Key=self._object_key(key), **self._payer(), **params
        )
        # The SDK times out silence alone: the body is also held to the minimum rate.
        deadline = self.retry.deadline(int(response.get("ContentLength") or 0))
        async with response["Body"] as stream:
            body: bytes = await asyncio.wait_for(stream.read(), deadline)
        check(response, body)
        return body

    def _range_check(
        self, key: str, start: int, end: int
    ) -> Callable[[dict[str, Any], bytes], None]:
        url = self.join(key)

        def check(response: dict[str, Any], body: bytes) -> None:
            match = _CONTENT_RANGE.match(response.get("ContentRange") or "")
            if match is not None and int(match.group(2)) + 1 < end:
                # S3 clips a range that runs past the end: a caller error, not transient.
                raise StorageError(
                    f"range [{start}, {end}) is past the end of {url} ({match.group(3)} bytes)"
                )
            if len(body) != end - start:
                raise TruncatedBody(f"{url}: got {len(body)} of {end - start} bytes")

        return check

    async def read_range(self, key: str, start: int, end: int) -> bytes:
        url = self.join(key)
        if not 0 <= start <= end:
            raise ConfigError(f"bad range [{start}, {end}) for {url}")
        if start == end:
            return b""
        object_key = self._object_key(key)
        check = self._range_check(key, start, end)

        async def operation() -> bytes:
            return await self._read_attempt(
                object_key,
                lambda direct: direct.get_bytes(object_key, start, end),
                lambda: self._sdk_get(key, check, Range=f"bytes={start}-{end - 1}"),
            )

        return await self._retrying(key, operation)

    async def streams_into(self) -> bool:
        # The direct path writes as bytes arrive; the SDK's answer is one buffer.
        return await self._get_direct() is not None

    async def fetch_range_into(self, key: str, start: int, end: int, fd: int) -> None:
        if start == end:
            return
        object_key = self._object_key(key)
        check = self._range_check(key, start, end)

        async def direct_call(direct: DirectReads) -> bool | None:
            return await direct.get_into(object_key, start, end, fd) or None

        async def sdk_call() -> bool:
            data = await self._sdk_get(key, check, Range=f"bytes={start}-{end - 1}")
            await write_part(fd, data, start)
            return True

        async def operation() -> None:
            await self._read_attempt(object_key, direct_call, sdk_call)

        await self._retrying(key, operation)

    async def read(self, key: str) -> bytes:
        url = self.join(key)
        object_key = self._object_key(key)

        def check(response: dict[str, Any], body: bytes) -> None:
            length = response.get("ContentLength")
            if length is not None and len(body) != int(length):
                raise TruncatedBody(f"{url}: got {len(body)} of {length} bytes")

        async def operation() -> bytes:
            return await self._read_attempt(
                object_key,
                lambda direct: direct.get_bytes(object_key),
                lambda: self._sdk_get(key, check),
            )

        return await self._retrying(key, operation)

    # -- writing ---------------------------------------------------------------------------

    async def write(self, key: str, data: bytes) -> None:
        await self._call(key, "put_object", Key=self._object_key(key), Body=data)

    async def upload(self, src: str | os.PathLike[str], key: str) -> None:
        path = Path(src)
        url = self.join(key)
        try:
            size = (await asyncio.to_thread(path.stat)).st_size
        except OSError as exc:
            raise StorageError(f"cannot upload {path} to {url}: {exc}") from exc
        if size < self.transfer.multipart_threshold:
            data = await asyncio.to_thread(path.read_bytes)
            await self.write(key, data)
            return
        await self._multipart_upload(path, key, size)

    async def _multipart_upload(self, path: Path, key: str, size: int) -> None:
        part_size = max(self.transfer.part_size, -(-size // _MAX_PARTS))
        ranges = part_ranges(size, part_size)
        object_key = self._object_key(key)
        created = await self._call(key, "create_multipart_upload", Key=object_key)
        upload_id = created["UploadId"]
        etags: dict[int, str] = {}
        pending = iter(enumerate(ranges, start=1))

        def read_part(start: int, end: int) -> bytes:
            with path.open("rb") as f:
                return os.pread(f.fileno(), end - start, start)

        async def worker() -> None:
            # Workers share one iterator: their number bounds parts in flight (and memory).
            for number, (start, end) in pending:
                data = await asyncio.to_thread(read_part, start, end)
                if len(data) != end - start:
                    raise StorageError(f"{path} changed size while uploading to {self.join(key)}")
                part = await self._call(
                    key,
                    "upload_part",
                    Key=object_key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=data,
                )
                etags[number] = part["ETag"]

        workers = [
            asyncio.ensure_future(worker())
            for _ in range(min(self.transfer.concurrency, len(ranges)))
        ]
        try:
            try:
                await asyncio.gather(*workers)
            finally:
                for task in workers:
                    task.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
            parts = [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]
            await self._call(
                key,
                "complete_multipart_upload",
                Key=object_key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            # Abandoned parts cost storage until aborted; abort is best effort (shielded, so
            # a cancelled upload still cleans up).
            with contextlib.suppress(Exception):
                await asyncio.shield(self._abort(key, object_key, upload_id))
            raise

    async def _abort(self, key: str, object_key: str, upload_id: str) -> None:
        await self._call(key, "abort_multipart_upload", Key=object_key, UploadId=upload_id)

    # -- listing ---------------------------------------------------------------------------

    async def list(self, prefix: str = "", *, limit: int | None = None) -> list[str]:
        root = f"{self.prefix}/" if self.prefix else ""
        full = root + prefix.lstrip("/")
        keys: list[str] = []
        token: str | None = None
        while limit is None or len(keys) < limit:
            params: dict[str, Any] = {"Prefix": full}
            if limit is not None:
                params["MaxKeys"] = min(limit - len(keys), 1000)
            if token:
                params["ContinuationToken"] = token
            page = await self._call(prefix, "list_objects_v2", **params)
            keys.extend(item["Key"][len(root) :] for item in page.get("Contents", ()))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                break
        keys.sort()
        return keys[:limit]
