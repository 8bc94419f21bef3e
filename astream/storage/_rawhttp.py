"""A lean HTTP/1.1 client for the requests that move most bytes: ranged GETs into files.

aiohttp's response parser copies every body chunk it receives (the socket's bytes are sliced
into a new object, then queued in a stream reader): on a fast link that copy, not the network,
bounds a download (raw loopback TCP moves about twice what an aiohttp client does on the build
machine). Here an :class:`asyncio.BufferedProtocol` receives the body straight into one reusable
buffer per connection and ``pwrite``\\ s it at its offset: one copy out of the socket and one
into the page cache, as a plain socket copy does.

It also reads a range or a whole object into memory (:meth:`RawHTTP.get_bytes`), receiving
straight into the result's buffer: the S3 store sends its signed reads this way.

Only the expected answer is handled: ``206 Partial Content`` whose ``Content-Length`` is the
asked length (for a whole read, ``200`` with a ``Content-Length``), with no transfer or content
coding. Its ``Content-Range`` must name exactly the asked bytes and a total that holds them
(:func:`check_content_range`): any other is a final :class:`~astream.errors.StorageError`, not
something to ask again. Error statuses raise through the shared retry classification, as the
aiohttp path's do (the same error types: 404 is ``ObjectNotFoundError``, 416 a final
``StorageError``). Anything else (a redirect, a ``200`` from a server that ignores ranges, a
chunked body, a content coding, a URL the environment routes through a proxy) makes
:meth:`RawHTTP.get_into` return ``False`` (:meth:`RawHTTP.get_bytes` ``None``) before any byte is
written, and the caller asks again through a full client (aiohttp, an SDK), which speaks the
rest of HTTP.

Requests are sent as aiohttp sends them: the path percent-encoded where it is not already
(:func:`quote_target`), header values in UTF-8, a caller's ``Host`` header in place of the URL's.

Timeouts (:class:`~astream.storage.base.RetryConfig`): a request fails when nothing arrived for
``read_timeout`` seconds, counted from the last byte received, or when, ``read_timeout`` seconds
after it was sent, fewer than ``min_rate`` bytes per second have arrived on average since.

Connections are kept alive and reused per ``(scheme, host, port)``; every callback runs on the
loop thread, and a request that ends early (error, timeout, cancellation) aborts its connection
before returning, so no late write can reach a file descriptor the caller has closed.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping

from astream.errors import ConfigError, StorageError
from astream.storage._retry import TruncatedBody
from astream.storage._transfer import pwrite_all

__all__ = [
    "HTTPStatusError",
    "RawHTTP",
    "check_content_range",
    "check_headers",
    "proxied",
    "quote_target",
]

# Bytes of status line and headers a response may use before the body.
_HEAD_LIMIT = 64 << 10
# Body bytes received before each pwrite: large writes, few system calls.
_BODY_BUFFER = 1 << 20

_Key = tuple[str, str, int]
# Headers this client writes itself; callers' values for them are dropped (``Host`` is
# taken from them when given, as aiohttp does).
_OWN_HEADERS = frozenset({"host", "range", "accept-encoding", "connection"})
# What aiohttp (yarl) leaves as it is in a path or query: RFC 3986's unreserved and
# sub-delimiter characters, and escapes already made (``%XX``).
_PATH_SAFE = "/:@!$&'()*+,;=~-._"
_QUERY_SAFE = _PATH_SAFE + "?"
_ESCAPE = re.compile(r"(%[0-9A-Fa-f]{2})")
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)$")


def check_headers(headers: Mapping[str, str]) -> None:
    """Refuse header names or values with line breaks (they would forge headers)."""
    for name, value in headers.items():
        if any(c in text for text in (name, value) for c in "\r\n"):
            raise ConfigError(f"HTTP header {name!r} holds a line break")


def _quote(text: str, safe: str) -> str:
    pieces = _ESCAPE.split(text)
    return "".join(
        piece if index % 2 else urllib.parse.quote(piece, safe=safe)
        for index, piece in enumerate(pieces)
    )


def quote_target(path: str, query: str = "") -> str:
    """The request target of a URL's path and query, percent-encoded as aiohttp sends it: a
    space or a non-ASCII letter is encoded (UTF-8), an escape already made is kept."""
    target = _quote(path or "/", _PATH_SAFE)
    return f"{target}?{_quote(query, _QUERY_SAFE)}" if query else target


def proxied(url: str) -> bool:
    """Whether the environment routes ``url`` through a proxy (``HTTP_PROXY``/``HTTPS_PROXY``
    for its scheme, unless ``NO_PROXY`` names its host), as aiohttp's ``trust_env`` reads it."""
    parts = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    if not proxies.get(parts.scheme):
        return False
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    return not bypass(parts.hostname or "", proxies)


def check_content_range(value: str, start: int, end: int, url: str) -> int | None:
    """Check a ``206``'s ``Content-Range`` against the asked bytes ``[start, end)``.

    :returns: the object's total size (``None`` when the server sent ``*``).
    :raises StorageError: the header is missing or malformed, names other bytes than those
        asked, or a total that cannot hold them; a range that ends early because the object
        ends there is reported as "past the end". Final: asking again gets the same answer.
    """
    match = _CONTENT_RANGE.match(value.strip())
    total = None if match is None or match.group(3) == "*" else int(match.group(3))
    if match is not None:
        first, last = int(match.group(1)), int(match.group(2))
        if first == start and last == end - 1 and (total is None or total > last):
            return total
        if first == start and last < end - 1 and total is not None and last == total - 1:
            # The server clipped the range at the end of the object: a caller error.
            raise StorageError(f"range [{start}, {end}) is past the end of {url} ({total} bytes)")
    raise StorageError(f"{url}: unexpected Content-Range {value!r} for bytes {start}-{end - 1}")


class HTTPStatusError(Exception):
    """A non-success status; the retry loop classifies it by :attr:`status`."""

    def __init__(self, status: int, reason: str, url: str) -> None:
        super().__init__(
            f"HTTP {status} {reason} from {url}" if reason else f"HTTP {status} from {url}"
        )
        self.status = status
        self.message = reason


class _Head:
    """A parsed status line and headers (names lower-cased)."""

    def __init__(self, raw: bytes) -> None:
        lines = raw.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise ConnectionError(f"not an HTTP response: {lines[0][:80]!r}")
        self.version = parts[0]
        self.status = int(parts[1])
        self.reason = parts[2] if len(parts) > 2 else ""
        self.headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise ConnectionError(f"malformed response header line {line[:80]!r}")
            name = name.strip().lower()
            value = value.strip()
            self.headers[name] = f"{self.headers[name]}, {value}" if name in self.headers else value

    def keeps_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection


class _Conn(asyncio.BufferedProtocol):
    """One connection, one request at a time; the body goes straight to ``fd``."""

    def __init__(self, key: _Key) -> None:
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.head = bytearray(_HEAD_LIMIT)
        self.head_view = memoryview(self.head)
        self.head_len = 0
        self.body = bytearray(_BODY_BUFFER)
        self.body_view = memoryview(self.body)
        self.filled = 0
        #: "idle" (between requests), "head", "body", "closed".
        self.mode = "idle"
        self.waiter: asyncio.Future[_Head | None] | None = None
        self.reusable = False
        self.fd = -1
        #: The body's destination in memory mode (``fd`` is -1 then), allocated once known.
        self.memory: bytearray | None = None
        self.memory_view: memoryview | None = None
        #: The head of the last answer read (its headers, for a caller's checks).
        self.answer: _Head | None = None
        #: A whole-object read: any length, answered with 200 instead of 206.
        self.whole = False
        self.start = 0  # the range asked for, to check the answer against
        self.url = ""  # for messages
        self.want = 0
        self.offset = 0  # file offset of body[0]
        self.todo = 0  # body bytes not received yet
        self.received_any = False
        #: The loop time of the last receive, for the read timeout.
        self.last_receive = 0.0
        self._clock = asyncio.get_running_loop().time

    # -- asyncio's side ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.mode == "body":
            if self.memory_view is not None:
                got = self.want - self.todo
                return self.memory_view[got:]
            stop = self.filled + min(len(self.body) - self.filled, self.todo)
            return self.body_view[self.filled : stop]
        if self.head_len >= len(self.head):
            # Only after a failure (buffer_updated aborts first): receive into scratch space.
            self.mode = "closed"
            return memoryview(bytearray(4096))
        return self.head_view[self.head_len :]

    def buffer_updated(self, nbytes: int) -> None:
        self.last_receive = self._clock()
        self.received_any = True
        try:
            if self.mode == "body":
                self._body(nbytes)
            elif self.mode == "head":
                self._headers(nbytes)
            else:
                # Bytes outside any request: the connection's framing is lost.
                self._fail(ConnectionError("unexpected bytes from the server between requests"))
        except Exception as exc:  # a pwrite that failed (disk full), a malformed head
            self._fail(exc)

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost reports it

    def connection_lost(self, exc: Exception | None) -> None:
        mode, self.mode = self.mode, "closed"
        self.reusable = False
        if self.waiter is not None and not self.waiter.done():
            if mode == "body":
                got = self.want - self.todo
                self.waiter.set_exception(
                    TruncatedBody(f"connection closed after {got} of {self.want} bytes")
                )
            else:
                self.waiter.set_exception(
                    ConnectionResetError(f"connection closed before a response: {exc or 'EOF'}")
                )

    # -- the request ---------------------------------------------------------------------------

    def begin(
        self, request: bytes, fd: int, start: int, end: int | None, url: str
    ) -> asyncio.Future[_Head | None]:
        """Send ``request``; its body goes to ``fd`` at ``start``, or into memory when ``fd``
        is -1. ``end=None`` asks for the whole object (length from the answer)."""
        assert self.transport is not None
        self.url = url
        self.mode = "head"
        self.head_len = 0
        self.filled = 0
        self.received_any = False
        self.last_receive = self._clock()
        self.memory = self.memory_view = None
        self.whole = end is None
        want = 0 if end is None else end - start
        self.fd, self.start, self.want = fd, start, want
        self.offset, self.todo = start, want
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self.waiter

    def _headers(self, nbytes: int) -> None:
        before = self.head_len
        self.head_len += nbytes
        at = self.head.find(b"\r\n\r\n", max(0, before - 3), self.head_len)
        if at < 0:
            if self.head_len >= len(self.head):
                raise ConnectionError(f"response headers longer than {_HEAD_LIMIT} bytes")
            return
        head = _Head(bytes(self.head[:at]))
        self.answer = head
        self.reusable = head.keeps_alive()
        if not self._expected(head):
            # Not ours to read: stop receiving and let the caller decide. The connection is
            # not reused (its body was never read).
            self.mode = "closed"
            self.reusable = False
            assert self.transport is not None
            self.transport.pause_reading()
            self._resolve(head)
            return
        self.mode = "body"
        if self.whole:
            self.want = self.todo = int(head.headers["content-length"])
        if self.fd < 0:  # memory mode
            self.memory = bytearray(self.want)
            self.memory_view = memoryview(self.memory)
        early = self.head_view[at + 4 : self.head_len]
        if len(early) > self.todo:
            raise ConnectionError(f"more than the {self.want} bytes asked for")
        if early:
            if self.memory is not None:
                self.memory[: len(early)] = early
            else:
                pwrite_all(self.fd, early, self.offset)
                self.offset += len(early)
            self.todo -= len(early)
        if self.todo == 0:
            self._finish()

    def _expected(self, head: _Head) -> bool:
        if head.status != (200 if self.whole else 206):
            return False
        headers = head.headers
        if not self.whole:
            # Wrong bytes are wrong whoever reads them: refused here, not asked again.
            check_content_range(
                headers.get("content-range", ""), self.start, self.start + self.want, self.url
            )
        if "transfer-encoding" in headers:
            return False
        if headers.get("content-encoding", "identity").lower() not in ("", "identity"):
            return False
        length = headers.get("content-length", "")
        if not length.isdigit():
            return False
        if not self.whole and int(length) != self.want:
            raise StorageError(
                f"{self.url}: Content-Length {length} for the {self.want} bytes of "
                f"Content-Range {headers['content-range']!r}"
            )
        return True

    def _body(self, nbytes: int) -> None:
        if self.memory is not None:
            self.todo -= nbytes
            if self.todo == 0:
                self._finish()
            return
        self.filled += nbytes
        self.todo -= nbytes
        if self.filled == len(self.body) or self.todo == 0:
            pwrite_all(self.fd, self.body_view[: self.filled], self.offset)
            self.offset += self.filled
            self.filled = 0
        if self.todo == 0:
            self._finish()

    def _finish(self) -> None:
        self.mode = "idle"
        self.fd = -1
        self._resolve(None)

    def _resolve(self, value: _Head | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(value)

    def _fail(self, exc: BaseException) -> None:
        self.fd = -1
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        self.abort()

    def abort(self) -> None:
        """Drop the connection now: no callback writes anything after this returns."""
        self.mode = "closed"
        self.fd = -1
        self.reusable = False
        if self.waiter is not None and not self.waiter.done():
            self.waiter.cancel()  # its request was abandoned: nobody will read an error
        if self.transport is not None:
            self.transport.abort()


class RawHTTP:
    """Kept-alive connections of one store on one loop, for ranged GETs into files.

    Made on the running loop it serves (:attr:`loop`); a caller on another loop (after a fork,
    in a new worker) makes its own.
    """

    def __init__(
        self,
        headers: Mapping[str, str],
        *,
        connections: int,
        connect_timeout: float | None,
        read_timeout: float | None,
        deadline: Callable[[int], float] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        check_headers(headers)
        #: The loop whose connections these are.
        self.loop = asyncio.get_running_loop()
        names = {name.lower() for name in headers}
        self._extra = "".join(
            f"{name}: {value}\r\n"
            for name, value in headers.items()
            if name.lower() not in _OWN_HEADERS
        )
        self._host = next((v for n, v in headers.items() if n.lower() == "host"), None)
        self._agent = "" if "user-agent" in names else "User-Agent: astream\r\n"
        # RetryConfig.deadline: seconds after sending by which n body bytes must have come.
        self._deadline = deadline
        # Per (scheme, host): whether the environment sends it through a proxy.
        self._proxied: dict[tuple[str, str], bool] = {}
        self._idle: dict[_Key, list[_Conn]] = {}
        self._slots = asyncio.Semaphore(connections)
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._ssl = ssl_context
        # Set by close(): a request still running then drops its connection when done
        # instead of keeping it (nobody would close it).
        self._closed = False

    async def get_into(
        self, url: str, start: int, end: int, fd: int, headers: Mapping[str, str] | None = None
    ) -> bool:
        """``pwrite`` bytes ``[start, end)`` of ``url`` at offset ``start`` of ``fd``.

        :param headers: sent with this request only (a signature), after the store's own.
        :returns: ``True`` when written; ``False`` when the answer is not a plain ``206``
            (nothing written: ask again through a full HTTP client).
        :raises HTTPStatusError: an error status (classified by the retry loop).
        :raises TruncatedBody: the connection closed before the whole range arrived.
        :raises TimeoutError: no byte arrived for ``read_timeout`` seconds.
        """
        if start >= end:
            raise ConfigError(f"empty or bad range [{start}, {end}) for {url}")
        done = await self._request(url, headers, fd, start, end)
        return done is not None

    async def get_bytes(
        self,
        url: str,
        start: int = 0,
        end: int | None = None,
        headers: Mapping[str, str] | None = None,
        check: Callable[[Mapping[str, str], bytes], None] | None = None,
    ) -> bytes | None:
        """Bytes ``[start, end)`` of ``url`` (``end=None``: the whole object) in memory.

        :param check: called with the answer's headers (lower-case names) and the body before
            it is returned; it raises to refuse the body (a checksum that does not match).
        :returns: the body; ``None`` when the answer is not the plain one (a ``206`` with
            exactly that range, or a ``200`` with a ``Content-Length`` for a whole read).
        :raises: as :meth:`get_into`.
        """
        if end is not None and start >= end:
            raise ConfigError(f"empty or bad range [{start}, {end}) for {url}")
        if end is None and start:
            raise ConfigError("a whole read starts at 0")
        return await self._request(url, headers, -1, start, end, check)

    async def _request(
        self,
        url: str,
        headers: Mapping[str, str] | None,
        fd: int,
        start: int,
        end: int | None,
        check: Callable[[Mapping[str, str], bytes], None] | None = None,
    ) -> bytes | None:
        """One GET; the body as bytes (memory mode), ``b""`` (file mode) or ``None`` (refused)."""
        parts = urllib.parse.urlsplit(url)
        https = parts.scheme == "https"
        host = parts.hostname or ""
        port = parts.port or (443 if https else 80)
        key: _Key = (parts.scheme, host, port)
        via_proxy = self._proxied.get((parts.scheme, host))
        if via_proxy is None:
            via_proxy = self._proxied[parts.scheme, host] = proxied(url)
        if via_proxy:
            return None  # a full client goes through the proxy
        target = quote_target(parts.path, parts.query)
        authority = self._host or parts.netloc.rpartition("@")[2]
        extra = self._extra
        if headers:
            check_headers(headers)
            extra += "".join(
                f"{name}: {value}\r\n"
                for name, value in headers.items()
                if name.lower() not in _OWN_HEADERS
            )
        ranged = f"Range: bytes={start}-{end - 1}\r\n" if end is not None else ""
        # UTF-8, as aiohttp encodes header values.
        request = (
            f"GET {target} HTTP/1.1\r\nHost: {authority}\r\n{ranged}"
            f"Accept-Encoding: identity\r\n{self._agent}{extra}\r\n"
        ).encode("utf-8", "surrogateescape")
        async with self._slots:
            for _ in range(2):
                conn, reused = await self._acquire(key, https)
                try:
                    head = await self._run(conn, request, fd, start, end, url)
                except ConnectionResetError:
                    conn.abort()
                    if reused and not conn.received_any:
                        # A kept-alive connection the server had closed: one fresh try,
                        # which is not a retry of ours (RFC 9112 9.3.1).
                        continue
                    raise
                except BaseException:
                    conn.abort()
                    raise
                if head is None:
                    body = bytes(conn.memory) if conn.memory is not None else b""
                    answer, conn.answer = conn.answer, None
                    conn.memory = conn.memory_view = None
                    if conn.reusable and not self._closed:
                        self._idle.setdefault(key, []).append(conn)
                    else:
                        conn.abort()
                    if check is not None and answer is not None:
                        check(answer.headers, body)
                    return body
                conn.abort()
                self._refuse(head, url)
                return None
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    @staticmethod
    def _refuse(head: _Head, url: str) -> None:
        if head.status >= 400:
            # The retry loop's classification turns it into the error every backend raises.
            raise HTTPStatusError(head.status, head.reason, url)

    async def _acquire(self, key: _Key, https: bool) -> tuple[_Conn, bool]:
        idle = self._idle.get(key, [])
        while idle:
            conn = idle.pop()
            if (
                conn.mode == "idle"
                and conn.transport is not None
                and not conn.transport.is_closing()
            ):
                return conn, True
        loop = asyncio.get_running_loop()
        conn = _Conn(key)
        context = None
        if https:
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        connect = loop.create_connection(
            lambda: conn,
            key[1],
            key[2],
            ssl=context,
            server_hostname=key[1] if context is not None else None,
        )
        try:
            await asyncio.wait_for(connect, self._connect_timeout)
        except BaseException:
            conn.abort()
            raise
        assert conn.transport is not None
        sock = conn.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, False

    async def _run(
        self, conn: _Conn, request: bytes, fd: int, start: int, end: int | None, url: str
    ) -> _Head | None:
        loop = asyncio.get_running_loop()
        waiter = conn.begin(request, fd, start, end, url)
        silence = self._read_timeout
        if silence is None:
            return await waiter
        sent = loop.time()
        deadline = self._deadline
        while True:
            # Wake when the read would time out: silence since the last byte, or (with a
            # minimum rate) fewer bytes than the rate owes by now. Each wake re-checks.
            quiet_until = conn.last_receive + silence
            wake = quiet_until
            received = conn.want - conn.todo  # body bytes so far
            if deadline is not None:
                wake = min(wake, sent + deadline(received))
            now = loop.time()
            if now >= wake:
                where = f"{conn.key[1]}:{conn.key[2]}"
                if now >= quiet_until:
                    message = f"no data from {where} for {silence} s"
                else:
                    message = (
                        f"{where} sent {received} bytes in {now - sent:.1f} s: slower "
                        f"than the minimum rate (RetryConfig.min_rate) after {silence} s"
                    )
                raise TimeoutError(message)
            try:
                return await asyncio.wait_for(asyncio.shield(waiter), wake - now)
            except asyncio.TimeoutError:  # TimeoutError itself from Python 3.11
                if waiter.done():
                    return waiter.result()

    def close(self) -> None:
        """Close every idle connection; connections still in use close when their request ends.

        Called from any other loop (its own has gone, after a fork), it only marks the client
        closed: its transports belong to that loop.
        """
        self._closed = True
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        if current is not self.loop:
            return
        for conns in self._idle.values():
            for conn in conns:
                conn.abort()
        self._idle.clear()
