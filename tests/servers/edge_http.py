"""Small in-process servers for the edges of HTTP clients, run on the test's own event loop.

* :class:`ForwardProxy`: an HTTP forward proxy (absolute-form ``GET http://...`` and ``CONNECT``
  tunnels for https) that records what it was asked, for ``HTTP_PROXY``/``HTTPS_PROXY``.
* :class:`TLSRelay`: a TLS front for a plain TCP server (moto), so that an S3 client speaks
  https to it with a certificate of the test's choosing.
* :func:`private_ca`: a certificate authority made at test time (trustme) and a server
  certificate it signed for 127.0.0.1 (or any names).
* :func:`gzip_app` and :func:`drip_app`: aiohttp applications that compress as nginx's
  ``gzip on`` does, and that drip a body one byte at a time.

Everything binds 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypeVar

from aiohttp import web

_S = TypeVar("_S", bound="_TCPServer")

__all__ = ["ForwardProxy", "TLSRelay", "drip_app", "gzip_app", "private_ca", "serve_app"]


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(1 << 16):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def _splice(
    client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    await asyncio.gather(_pipe(client[0], upstream[1]), _pipe(upstream[0], client[1]))


class _TCPServer:
    """An asyncio server on 127.0.0.1 whose connection handlers are cancelled on exit."""

    scheme = "http"

    def __init__(self, context: ssl.SSLContext | None = None) -> None:
        self.url = ""
        self._context = context
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[object]] = set()

    async def __aenter__(self: _S) -> _S:
        self._server = await asyncio.start_server(self._tracked, "127.0.0.1", 0, ssl=self._context)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"{self.scheme}://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _tracked(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._handle(reader, writer)
        finally:
            self._tasks.discard(task)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


class ForwardProxy(_TCPServer):
    """An HTTP/1.1 forward proxy on 127.0.0.1; :attr:`requests` lists each request line."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[str] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line, _, rest = head.decode("latin-1").partition("\r\n")
            method, target, version = line.split(" ", 2)
            self.requests.append(f"{method} {target}")
            if method == "CONNECT":
                host, _, port = target.rpartition(":")
                upstream = await asyncio.open_connection(host, int(port))
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
                await _splice((reader, writer), upstream)
                return
            # Absolute form: forward one request in origin form, then close both sides (the
            # client opens a new connection for its next request).
            url = target.removeprefix("http://")
            authority, _, path = url.partition("/")
            host, _, port = authority.rpartition(":")
            headers = [
                h
                for h in rest.split("\r\n")
                if h and not h.lower().startswith(("connection:", "proxy-", "keep-alive:"))
            ]
            forwarded = f"{method} /{path} {version}\r\n" + "".join(
                f"{h}\r\n" for h in [*headers, "Connection: close"]
            )
            upstream = await asyncio.open_connection(host, int(port or 80))
            upstream[1].write(forwarded.encode("latin-1") + b"\r\n")
            await _splice((reader, writer), upstream)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            writer.close()


class TLSRelay(_TCPServer):
    """TLS on 127.0.0.1 in front of a plain TCP server at ``upstream_port``;
    :attr:`connections` counts the TLS connections accepted."""

    scheme = "https"

    def __init__(self, upstream_port: int, context: ssl.SSLContext) -> None:
        super().__init__(context)
        self.upstream_port = upstream_port
        self.connections = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            upstream = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        await _splice((reader, writer), upstream)


def private_ca(tmp_path: Path, *names: str) -> tuple[Path, ssl.SSLContext]:
    """A new CA's certificate file and a server context whose certificate it signed for
    ``names`` (default ``127.0.0.1``)."""
    import trustme

    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*(names or ("127.0.0.1",))).configure_cert(server)
    path = tmp_path / f"ca-{id(ca)}.pem"
    ca.cert_pem.write_to_path(str(path))
    return path, server


def gzip_app(files: dict[str, bytes], *, always: bool = False) -> web.Application:
    """Serves ``files`` (GET, whole bodies), gzip-compressed when the client accepts gzip, as
    nginx with ``gzip on`` does (``always``: whatever the client asked, as a broken server
    would); ``/moved/NAME`` redirects to ``/NAME``."""

    async def get(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in files:
            raise web.HTTPNotFound()
        body = files[name]
        if always or "gzip" in request.headers.get("Accept-Encoding", ""):
            return web.Response(body=gzip.compress(body), headers={"Content-Encoding": "gzip"})
        return web.Response(body=body)

    async def moved(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(f"/{request.match_info['name']}")

    app = web.Application()
    app.router.add_get("/moved/{name}", moved)
    app.router.add_get("/{name}", get)
    return app


def drip_app(data: bytes, interval: float) -> web.Application:
    """Serves ``data`` at any path (ranges honoured) one byte per ``interval`` seconds, with
    its full ``Content-Length`` announced first."""

    async def get(request: web.Request) -> web.StreamResponse:
        start, end = 0, len(data)
        status, headers = 200, {}
        if "Range" in request.headers:
            first, _, last = request.headers["Range"].removeprefix("bytes=").partition("-")
            start, end = int(first), int(last) + 1
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = end - start
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            for at in range(start, end):
                await response.write(data[at : at + 1])
                await asyncio.sleep(interval)
        return response

    app = web.Application()
    app.router.add_get("/{tail:.*}", get)
    return app


@contextlib.asynccontextmanager
async def serve_app(
    app: web.Application, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[str]:
    """Run ``app`` on 127.0.0.1 on a free port; yields its base URL."""
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
