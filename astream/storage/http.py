"""Read-only store over plain HTTP(S) with Range requests (aiohttp).

URLs: ``http://host[:port]/path`` and ``https://...``. Keys are appended to the root URL (each
``/``-separated segment percent-encoded). The server must answer ``Range: bytes=a-b`` with 206
and ``Content-Range``; a server that ignores ranges (answers 200) still works, at the cost of
the whole body per request. Writing and listing raise :class:`~astream.errors.StorageError`:
plain HTTP has no standard way to do either.

Options: ``headers`` (a mapping sent with every request, e.g. an ``Authorization`` token),
``connections`` (the connection cap, default 64), ``ssl`` (an :class:`ssl.SSLContext`, e.g. one
that trusts a private CA) and ``fast_ranges`` (default on: reads and ranged downloads go through
:mod:`astream.storage._rawhttp`, which receives bodies straight into their buffer or file
instead of through aiohttp's parser; anything but the plain answer falls back to aiohttp, which
is imported only then, or for ``stat``).

As aiohttp would: credentials in the URL (``https://user:password@host/path``) are sent as Basic
authorization, and left out of :attr:`HTTPStore.url` and so of every message; the path is
percent-encoded where it is not already; ``HTTP_PROXY``/``HTTPS_PROXY``/``NO_PROXY`` are obeyed
(a proxied URL is read through aiohttp). Bodies are asked for with ``Accept-Encoding:
identity``: they are the stored bytes, and an answer in another content coding is refused.
"""

from __future__ import annotations

import asyncio
import base64
import os
import ssl as ssl_module
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING

from astream.errors import ConfigError, StorageError
from astream.storage._rawhttp import RawHTTP, check_content_range, check_headers
from astream.storage._retry import RateFloor, TruncatedBody, error_for_status
from astream.storage._transfer import pwrite_all, write_part
from astream.storage.base import ObjectInfo, RetryConfig, Store, TransferConfig
from astream.storage.registry import redact_url

if TYPE_CHECKING:
    import aiohttp

__all__ = ["HTTPStore"]


def _basic_auth(url: str) -> str | None:
    """The ``Authorization`` value for the credentials in ``url``, as aiohttp sends them."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return None
    user = urllib.parse.unquote(parts.username)
    password = urllib.parse.unquote(parts.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


class HTTPStore(Store):
    """Objects are resources under a root URL, fetched with GET/HEAD and ``Range``."""

    schemes = ("http", "https")
    _live_attributes = ("_session", "_session_loop", "_raw")

    def __init__(
        self,
        url: str,
        *,
        retry: RetryConfig | None = None,
        transfer: TransferConfig | None = None,
        headers: Mapping[str, str] | None = None,
        connections: int = 64,
        ssl: ssl_module.SSLContext | None = None,
        fast_ranges: bool = True,
    ) -> None:
        super().__init__(redact_url(url), retry=retry, transfer=transfer)
        self.headers = dict(headers or {})
        check_headers(self.headers)
        auth = _basic_auth(url)
        if auth is not None:
            if any(name.lower() == "authorization" for name in self.headers):
                raise ConfigError(
                    f"{self.url}: credentials in the URL and an Authorization header: give one"
                )
            self.headers["Authorization"] = auth
        self.connections = connections
        self.ssl = ssl
        self.fast_ranges = fast_ranges
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None
        self._raw: RawHTTP | None = None

    def join(self, key: str) -> str:
        key = key.lstrip("/")
        if not key:
            return self.url
        return f"{self.url}/{urllib.parse.quote(key, safe='/~-._')}"

    async def _get_session(self) -> aiohttp.ClientSession:
        import aiohttp

        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            # A session belongs to the loop that made it; a store used from a new loop (after
            # a fork, in a new worker) drops the old one unclosed and makes its own.
            timeout = aiohttp.ClientTimeout(
                total=None,
                sock_connect=self.retry.connect_timeout,
                sock_read=self.retry.read_timeout,
            )
            self._session = aiohttp.ClientSession(
                timeout=timeout,
                connector=aiohttp.TCPConnector(
                    limit=self.connections, ssl=self.ssl if self.ssl is not None else True
                ),
                # Ranges address stored bytes: ask for them as they are (aiohttp would
                # advertise gzip, deflate and br), and never decode a Content-Encoding.
                headers={**self.headers, "Accept-Encoding": "identity"},
                auto_decompress=False,
                # Proxies from HTTP_PROXY/HTTPS_PROXY/NO_PROXY.
                trust_env=True,
                raise_for_status=False,
                # Bigger socket reads: aiohttp's 64 KiB default pauses the transport often.
                read_bufsize=4 << 20,
            )
            self._session_loop = loop
        return self._session

    def _get_raw(self) -> RawHTTP:
        if self._raw is None or self._raw.loop is not asyncio.get_running_loop():
            self._raw = RawHTTP(
                self.headers,
                connections=self.connections,
                connect_timeout=self.retry.connect_timeout,
                read_timeout=self.retry.read_timeout,
                deadline=self.retry.deadline,
                ssl_context=self.ssl,
            )
        return self._raw

    async def aclose(self) -> None:
        raw, self._raw = self._raw, None
        if raw is not None:
            raw.close()
        session, self._session, self._session_loop = self._session, None, None
        if session is not None and not session.closed:
            await session.close()

    def _check(self, response: aiohttp.ClientResponse, url: str) -> None:
        coding = response.headers.get("Content-Encoding", "identity").strip().lower()
        if response.status < 300 and coding not in ("", "identity"):
            raise StorageError(
                f"{url}: the server answered in Content-Encoding {coding!r} where astream "
                "asked for the stored bytes (Accept-Encoding: identity)"
            )
        if response.status >= 400:
            final = error_for_status(response.status, url, response.reason or "")
            if final is not None:
                raise final
            import aiohttp

            raise aiohttp.ClientResponseError(
                response.request_info,
                response.history,
                status=response.status,
                message=response.reason or "",
            )

    # -- reading ---------------------------------------------------------------------------

    async def stat(self, key: str) -> ObjectInfo:
        url = self.join(key)

        async def head() -> ObjectInfo:
            session = await self._get_session()
            async with session.head(url, allow_redirects=True) as response:
                if response.status == 405:  # HEAD not allowed: ask for the first byte instead
                    return await self._stat_by_get(key, url)
                self._check(response, url)
                length = response.headers.get("Content-Length")
                if length is None:
                    return await self._stat_by_get(key, url)
                return ObjectInfo(key=key, size=int(length), etag=response.headers.get("ETag"))

        return await self._retrying(key, head)

    async def _stat_by_get(self, key: str, url: str) -> ObjectInfo:
        session = await self._get_session()
        async with session.get(url, headers={"Range": "bytes=0-0"}) as response:
            if response.status == 416:  # an empty object has no first byte
                return ObjectInfo(key=key, size=0, etag=response.headers.get("ETag"))
            self._check(response, url)
            total = None
            if response.status == 206:
                total = check_content_range(response.headers.get("Content-Range", ""), 0, 1, url)
            if total is not None:
                return ObjectInfo(key=key, size=total, etag=response.headers.get("ETag"))
            body = await response.read()
            return ObjectInfo(key=key, size=len(body), etag=response.headers.get("ETag"))

    def _check_range(
        self, response: aiohttp.ClientResponse, url: str, start: int, end: int
    ) -> None:
        """Raise unless ``response`` is a 206 carrying exactly bytes ``[start, end)``."""
        if response.status == 416:
            raise StorageError(f"range [{start}, {end}) is past the end of {url}")
        self._check(response, url)
        check_content_range(response.headers.get("Content-Range", ""), start, end, url)

    async def read_range(self, key: str, start: int, end: int) -> bytes:
        if not 0 <= start <= end:
            raise ConfigError(f"bad range [{start}, {end}) for {self.join(key)}")
        if start == end:
            return b""
        url = self.join(key)
        want = end - start

        async def get() -> bytes:
            if self.fast_ranges:
                body = await self._get_raw().get_bytes(url, start, end)
                if body is not None:
                    return body
            session = await self._get_session()
            headers = {"Range": f"bytes={start}-{end - 1}"}
            async with session.get(url, headers=headers) as response:
                if response.status == 200:
                    self._check(response, url)
                    return self._slice_whole(await self._body(response, url), url, start, end)
                self._check_range(response, url, start, end)
                # Chunks as they arrive into one preallocated buffer: far faster than
                # aiohttp's read() for large bodies.
                buffer = bytearray(want)
                filled = 0
                floor = RateFloor(self.retry, url)
                async for chunk in response.content.iter_any():
                    if filled + len(chunk) > want:
                        raise StorageError(f"{url}: more than the {want} bytes asked for")
                    buffer[filled : filled + len(chunk)] = chunk
                    filled += len(chunk)
                    floor.check(filled)
                if filled != want:
                    raise TruncatedBody(f"{url}: got {filled} of {want} bytes")
                return bytes(buffer)

        return await self._retrying(key, get)

    async def _body(self, response: aiohttp.ClientResponse, url: str) -> bytes:
        """A whole body, held to :attr:`RetryConfig.min_rate` as it arrives."""
        chunks: list[bytes] = []
        received = 0
        floor = RateFloor(self.retry, url)
        async for chunk in response.content.iter_any():
            chunks.append(chunk)
            received += len(chunk)
            floor.check(received)
        return b"".join(chunks)

    @staticmethod
    def _slice_whole(body: bytes, url: str, start: int, end: int) -> bytes:
        # The server ignored Range (200): take our slice of the whole body.
        if len(body) < end:
            raise StorageError(
                f"range [{start}, {end}) is past the end of {url} ({len(body)} bytes)"
            )
        return body[start:end]

    async def streams_into(self) -> bool:
        return True  # both clients write chunks at their offsets as they arrive

    async def fetch_range_into(self, key: str, start: int, end: int, fd: int) -> None:
        if start == end:
            return
        url = self.join(key)
        want = end - start

        async def get() -> None:
            if self.fast_ranges and await self._get_raw().get_into(url, start, end, fd):
                return
            session = await self._get_session()
            headers = {"Range": f"bytes={start}-{end - 1}"}
            async with session.get(url, headers=headers) as response:
                if response.status == 200:
                    self._check(response, url)
                    data = self._slice_whole(await self._body(response, url), url, start, end)
                    await write_part(fd, data, start)
                    return
                self._check_range(response, url, start, end)
                # Each chunk goes to its offset as it arrives: no part-sized buffer, one copy
                # fewer. A page-cache write of one chunk is cheaper than a thread hop.
                offset = start
                floor = RateFloor(self.retry, url)
                async for chunk in response.content.iter_any():
                    if offset + len(chunk) > end:
                        raise StorageError(f"{url}: more than the {want} bytes asked for")
                    pwrite_all(fd, chunk, offset)
                    offset += len(chunk)
                    floor.check(offset - start)
                if offset != end:
                    raise TruncatedBody(f"{url}: got {offset - start} of {want} bytes")

        await self._retrying(key, get)

    async def read(self, key: str) -> bytes:
        url = self.join(key)

        async def get() -> bytes:
            if self.fast_ranges:
                whole = await self._get_raw().get_bytes(url)
                if whole is not None:
                    return whole
            session = await self._get_session()
            async with session.get(url) as response:
                self._check(response, url)
                body = await self._body(response, url)
                length = response.headers.get("Content-Length")
                if length is not None and len(body) != int(length):
                    raise TruncatedBody(f"{url}: got {len(body)} of {length} bytes")
                return body

        return await self._retrying(key, get)

    # -- writing and listing: not part of plain HTTP ---------------------------------------

    def _read_only(self, what: str, key: str) -> StorageError:
        return StorageError(f"cannot {what} {self.join(key)}: http(s) stores are read-only")

    async def write(self, key: str, data: bytes) -> None:
        raise self._read_only("write", key)

    async def upload(self, src: str | os.PathLike[str], key: str) -> None:
        raise self._read_only("upload to", key)

    async def list(self, prefix: str = "", *, limit: int | None = None) -> list[str]:
        raise StorageError(f"cannot list {self.join(prefix)}: http(s) stores have no listing")
