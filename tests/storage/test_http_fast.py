"""HTTPStore's lean ranged-GET path (astream.storage._rawhttp) against real aiohttp servers.

Each test runs its own aiohttp application on loopback, shaped to push the lean path off its
happy case: servers that ignore ranges, redirect, answer chunked, close idle connections,
require a header, or speak TLS with a private CA. Downloads must come out byte-exact whichever
path served them, and the happy case must take one request per part.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from conformance import payload

from astream.errors import StorageError
from astream.storage import RetryConfig, TransferConfig
from astream.storage._rawhttp import RawHTTP
from astream.storage.http import HTTPStore

pytestmark = pytest.mark.anyio

DATA = payload(700_001, seed=5)
PARTS = TransferConfig(part_size=100_000, concurrency=1, adaptive=False)  # 8 parts, one at a time
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Server:
    def __init__(self, url: str) -> None:
        self.url = url
        self.requests: list[web.Request] = []
        self.peers: set[object] = set()


async def _serve(
    routes: dict[str, Handler], ssl_context: ssl.SSLContext | None = None, keepalive: float = 75.0
) -> tuple[web.AppRunner, Server]:
    app = web.Application()
    box: list[Server] = []

    def recording(handler: Handler) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            box[0].requests.append(request)
            box[0].peers.add(
                request.transport.get_extra_info("peername") if request.transport else None
            )
            return await handler(request)

        return wrapped

    for path, handler in routes.items():
        app.router.add_get(path, recording(handler))
    runner = web.AppRunner(app, keepalive_timeout=keepalive)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    scheme = "https" if ssl_context else "http"
    server = Server(f"{scheme}://127.0.0.1:{port}")
    box.append(server)
    return runner, server


def _range(request: web.Request) -> tuple[int, int]:
    spec = request.headers["Range"].removeprefix("bytes=")
    first, last = spec.split("-")
    return int(first), int(last) + 1


async def ranged(request: web.Request) -> web.StreamResponse:
    start, end = _range(request)
    return web.Response(
        status=206,
        body=DATA[start:end],
        headers={"Content-Range": f"bytes {start}-{end - 1}/{len(DATA)}"},
    )


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    runners: list[web.AppRunner] = []

    async def start(routes: dict[str, Handler], **options: object) -> Server:
        runner, server = await _serve(routes, **options)  # type: ignore[arg-type]
        runners.append(runner)
        return server

    yield start
    for runner in runners:
        await runner.cleanup()


async def _download(store: HTTPStore, tmp_path: Path, key: str = "data.bin") -> bytes:
    dest = tmp_path / "out.bin"
    await store.download(key, dest, size=len(DATA))
    return dest.read_bytes()


async def test_plain_206_takes_one_request_per_part_on_one_connection(
    serve: Callable[..., Awaitable[Server]], tmp_path: Path
) -> None:
    server = await serve({"/data.bin": ranged})
    async with HTTPStore(server.url, transfer=PARTS) as store:
        assert await _download(store, tmp_path) == DATA
    assert len(server.requests) == 8
    assert len(server.peers) == 1  # kept alive and reused
    assert {r.headers["User-Agent"] for r in server.requests} == {"astream"}
    assert {r.headers["Accept-Encoding"] for r in server.requests} == {"identity"}


async def test_configured_headers_are_sent(
    serve: Callable[..., Awaitable[Server]], tmp_path: Path
) -> None:
    async def guarded(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != "Bearer t0ken":
            return web.Response(status=401)
        return await ranged(request)

    server = await serve({"/data.bin": guarded})
    async with HTTPStore(
        server.url, transfer=PARTS, headers={"Authorization": "Bearer t0ken"}
    ) as store:
        assert await _download(store, tmp_path) == DATA
    async with HTTPStore(server.url, transfer=PARTS) as store:
        with pytest.raises(StorageError, match="401"):
            await _download(store, tmp_path)


def test_header_line_breaks_are_refused() -> None:
    with pytest.raises(ValueError, match="line break"):
        HTTPStore("http://127.0.0.1:1/x", headers={"X-Token": "a\r\nHost: evil"})


async def test_server_that_ignores_ranges(
    serve: Callable[..., Awaitable[Server]], tmp_path: Path
) -> None:
    async def whole(request: web.Request) -> web.StreamResponse:
        return web.Response(body=DATA)

    server = await serve({"/data.bin": whole})
    async with HTTPStore(server.url, transfer=PARTS) as store:
        assert await _download(store, tmp_path) == DATA
        assert store.retries == 0


async def test_redirects_are_followed(
    serve: Callable[..., Awaitable[Server]], tmp_path: Path
) -> None:
    async def moved(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/data.bin")

    server = await serve({"/old.bin": moved, "/data.bin": ranged})
    async with HTTPStore(server.url, transfer=PARTS) as store:
        assert await _download(store, tmp_path, "old.bin") == DATA


async def test_chunked_206(serve: Callable[..., Awaitable[Server]], tmp_path: Path) -> None:
    async def chunked(request: web.Request) -> web.StreamResponse:
        start, end = _range(request)
        response = web.StreamResponse(
            status=206, headers={"Content-Range": f"bytes {start}-{end - 1}/{len(DATA)}"}
        )
        response.enable_chunked_encoding()
        await response.prepare(request)
        for at in range(start, end, 7_000):
            await response.write(DATA[at : min(at + 7_000, end)])
        await response.write_eof()
        return response

    server = await serve({"/data.bin": chunked})
    async with HTTPStore(server.url, transfer=PARTS) as store:
        assert await _download(store, tmp_path) == DATA


async def test_a_wrong_content_range_is_an_error(
    serve: Callable[..., Awaitable[Server]], tmp_path: Path
) -> None:
    async def shifted(request: web.Request) -> web.StreamResponse:
        start, end = _range(request)
        return web.Response(
            status=206,
            body=DATA[start + 1 : end + 1],
            headers={"Content-Range": f"bytes {start + 1}-{end}/{len(DATA)}"},
        )

    server = await serve({"/data.bin": shifted})
    async with HTTPStore(server.url, transfer=PARTS) as store:
        with pytest.raises(StorageError, match="Content-Range"):
            await _download(store, tmp_path)


async def test_idle_connections_the_server_closed_are_not_retries(
    serve: Callable[..., Awaitable[Server]], tmp_path: Path
) -> None:
    server = await serve({"/data.bin": ranged}, keepalive=0.05)
    retry = RetryConfig(attempts=1)  # any retry of ours would fail the download
    async with HTTPStore(server.url, transfer=PARTS, retry=retry) as store:
        assert await _download(store, tmp_path) == DATA
        await asyncio.sleep(0.3)  # the server closes the kept-alive connection meanwhile
        assert await _download(store, tmp_path) == DATA
        assert store.retries == 0


async def test_fast_ranges_off_uses_aiohttp(
    serve: Callable[..., Awaitable[Server]], tmp_path: Path
) -> None:
    server = await serve({"/data.bin": ranged})
    async with HTTPStore(server.url, transfer=PARTS, fast_ranges=False) as store:
        assert await _download(store, tmp_path) == DATA
    assert all(r.headers.get("User-Agent") != "astream" for r in server.requests)


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_https_with_a_private_ca(
    serve: Callable[..., Awaitable[Server]], tmp_path: Path
) -> None:
    cert, key = _self_signed(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    server = await serve({"/data.bin": ranged}, ssl_context=server_context)
    trusted = ssl.create_default_context(cafile=str(cert))
    async with HTTPStore(server.url, transfer=PARTS, ssl=trusted) as store:
        assert await _download(store, tmp_path) == DATA
        assert await store.read_range("data.bin", 10, 20) == DATA[10:20]
    assert len(server.requests) == 9
    retry = RetryConfig(attempts=1)
    async with HTTPStore(server.url, transfer=PARTS, retry=retry) as store:
        with pytest.raises(StorageError, match=r"(?i)certificate"):
            await _download(store, tmp_path)


async def test_a_range_past_the_end_is_final(
    serve: Callable[..., Awaitable[Server]], tmp_path: Path
) -> None:
    async def unsatisfiable(request: web.Request) -> web.StreamResponse:
        start, _ = _range(request)
        if start >= len(DATA):
            return web.Response(status=416, headers={"Content-Range": f"bytes */{len(DATA)}"})
        return await ranged(request)

    server = await serve({"/data.bin": unsatisfiable})
    # Two parts: the whole object, then a range that starts at its end.
    whole = TransferConfig(part_size=len(DATA), concurrency=1, head_part_size=0, adaptive=False)
    async with HTTPStore(server.url, transfer=whole) as store:
        with pytest.raises(StorageError, match=r"past the end of .*data\.bin"):
            await store.download("data.bin", tmp_path / "out.bin", size=2 * len(DATA))
        assert store.retries == 0
    assert len(server.requests) == 2  # the 416 is final at once: not asked again


async def both(request: web.Request) -> web.StreamResponse:
    if "Range" in request.headers:
        return await ranged(request)
    return web.Response(body=DATA)


async def test_reads_into_memory_take_the_lean_path(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    server = await serve({"/data.bin": both})
    async with HTTPStore(server.url) as store:
        assert await store.read("data.bin") == DATA
        assert await store.read_range("data.bin", 12_345, 99_999) == DATA[12_345:99_999]
        assert store._session is None  # aiohttp was never needed
    assert len(server.peers) == 1
    assert [r.headers.get("Range") for r in server.requests] == [None, "bytes=12345-99998"]


async def test_a_chunked_whole_read_is_asked_again_through_aiohttp(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(DATA[:1000])
        await response.write(DATA[1000:])
        await response.write_eof()
        return response

    server = await serve({"/data.bin": chunked})
    async with HTTPStore(server.url) as store:
        assert await store.read("data.bin") == DATA
        assert store._session is not None
    assert len(server.requests) == 2  # the lean try, then aiohttp


async def test_a_request_that_ends_after_close_keeps_no_connection(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    server = await serve({"/data.bin": both})
    raw = RawHTTP({}, connections=4, connect_timeout=5.0, read_timeout=5.0)
    request = asyncio.ensure_future(raw.get_bytes(f"{server.url}/data.bin"))
    raw.close()  # before the request has even connected
    assert await request == DATA
    assert raw._idle == {}  # nobody would close a connection pooled now
