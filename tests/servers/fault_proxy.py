"""A loopback HTTP proxy that injects faults in front of a real server (aiohttp, own thread).

Each request takes the next fault from a queue (:meth:`FaultProxy.inject`); with the queue
empty it passes through untouched. Faults:

* ``"drop"``: close the connection without answering;
* ``"stall"``: answer nothing for :attr:`FaultProxy.stall_seconds` (past a client's read
  timeout), then close;
* ``"503"``/``"500"`` (any status as a string): answer that status with no upstream call;
* ``"truncate"``: forward the upstream status and headers (``Content-Length`` of the whole
  body) but send only half of the body, then close the connection.

Usable from any test (sync or async): it runs its own event loop in a daemon thread.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Iterable
from types import TracebackType

from aiohttp import ClientSession, ClientTimeout, web

from tests.servers.process import free_port

__all__ = ["FaultProxy"]

# Hop-by-hop headers are about one connection, not the message: never forwarded.
_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "proxy-connection"}


class FaultProxy:
    """Proxy ``127.0.0.1:port`` to ``upstream`` (``http://127.0.0.1:PORT``), injecting faults."""

    def __init__(self, upstream: str, *, stall_seconds: float = 5.0) -> None:
        self.upstream = upstream.rstrip("/")
        self.stall_seconds = stall_seconds
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        #: Requests seen, and faults applied, in order (for assertions).
        self.requests = 0
        self.applied: list[str] = []
        self._faults: collections.deque[str] = collections.deque()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    def inject(self, faults: Iterable[str]) -> None:
        """Queue faults for the next requests, one per request."""
        with self._lock:
            self._faults.extend(faults)

    def clear(self) -> None:
        """Drop queued faults and reset the counters."""
        with self._lock:
            self._faults.clear()
            self.applied.clear()
            self.requests = 0

    def _next_fault(self) -> str | None:
        with self._lock:
            self.requests += 1
            fault = self._faults.popleft() if self._faults else None
            if fault is not None:
                self.applied.append(fault)
            return fault

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        fault = self._next_fault()
        transport = request.transport
        if fault == "drop":
            if transport is not None:
                transport.abort()
            return web.Response(status=599)  # never sent: the connection is gone
        if fault == "stall":
            await asyncio.sleep(self.stall_seconds)
            if transport is not None:
                transport.abort()
            return web.Response(status=599)
        if fault is not None and fault.isdigit():
            return web.Response(status=int(fault), text=f"injected {fault}")
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        body = await request.read()
        async with self._session.request(
            request.method,
            self.upstream + request.rel_url.raw_path_qs,
            headers=headers,
            data=body or None,
            allow_redirects=False,
        ) as upstream:
            payload = await upstream.read()
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in upstream.headers.items():
                if name.lower() not in _HOP and name.lower() != "content-length":
                    response.headers.add(name, value)
            if request.method == "HEAD":
                length = upstream.headers.get("Content-Length")
            else:
                length = str(len(payload))
            if length is not None:
                response.headers["Content-Length"] = length
            await response.prepare(request)
            if request.method == "HEAD":
                return response
            if fault == "truncate" and len(payload) > 1:
                await response.write(payload[: len(payload) // 2])
                await asyncio.sleep(0.05)  # let the half reach the client before the close
                if transport is not None:
                    transport.abort()
                return response
            await response.write(payload)
            await response.write_eof()
            return response

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        self._session = ClientSession(
            timeout=ClientTimeout(total=60),
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            self._ready.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()
            await self._session.close()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._ready.set()
        finally:
            loop.close()

    def start(self) -> FaultProxy:
        """Start serving; returns when the proxy accepts connections."""
        self._session: ClientSession | None = None
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(30) or self._error is not None:
            raise RuntimeError(f"fault proxy did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        """Stop serving and join the thread."""
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(30)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
