"""HTTPStore at the edges where a lean client can differ from aiohttp: Content-Range answers,
credentials in the URL, paths that need encoding, header values, compressing servers, proxies
and servers that drip. Each case runs on the lean path and on aiohttp (``fast_ranges=False``)
against real servers on loopback (tests/servers/edge_http.py)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from conformance import payload

from astream.errors import ObjectNotFoundError, StorageError, StorageTimeoutError
from astream.storage import RetryConfig, TransferConfig
from astream.storage.http import HTTPStore
from tests.servers.edge_http import ForwardProxy, drip_app, gzip_app, private_ca, serve_app

pytestmark = pytest.mark.anyio

DATA = payload(300_001, seed=11)
# Fixed parts (not adaptive): each test counts requests per part.
PARTS = TransferConfig(part_size=100_000, concurrency=1, head_part_size=0, adaptive=False)
ONCE = RetryConfig(attempts=1, connect_timeout=2.0, read_timeout=5.0)
BOTH_PATHS = pytest.mark.parametrize("fast", [True, False], ids=["lean", "aiohttp"])
_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture(autouse=True)
def _no_proxy_from_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[dict[str, Handler]], Awaitable[tuple[str, list]]]]:
    """Start an app whose routes are ``{path: handler}``; returns its URL and a request log."""
    stack: list[object] = []

    async def start(routes: dict[str, Handler]) -> tuple[str, list[web.Request]]:
        seen: list[web.Request] = []
        app = web.Application()
        for path, handler in routes.items():

            async def logged(
                request: web.Request, handler: Handler = handler
            ) -> web.StreamResponse:
                seen.append(request)
                return await handler(request)

            app.router.add_get(path, logged)
        context = serve_app(app)
        stack.append(context)
        return await context.__aenter__(), seen

    yield start
    for context in reversed(stack):
        await context.__aexit__(None, None, None)  # type: ignore[attr-defined]


def _range(request: web.Request) -> tuple[int, int]:
    first, _, last = request.headers["Range"].removeprefix("bytes=").partition("-")
    return int(first), int(last) + 1


async def ranged(request: web.Request) -> web.StreamResponse:
    if "Range" not in request.headers:
        return web.Response(body=DATA)
    start, end = _range(request)
    return web.Response(
        status=206,
        body=DATA[start:end],
        headers={"Content-Range": f"bytes {start}-{end - 1}/{len(DATA)}"},
    )


# -- Content-Range ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        # (first, last, total) of the Content-Range sent for an asked [start, end)
        lambda s, e: (s + 1, e, len(DATA)),  # shifted by one byte
        lambda s, e: (s, e - 2, len(DATA)),  # short, though the object is longer
        lambda s, e: (s, e - 1, e - 1),  # a total that cannot hold the range
    ],
    ids=["shifted", "short", "bad-total"],
)
@BOTH_PATHS
async def test_a_wrong_content_range_is_refused_per_part(
    answer: Callable[[int, int], tuple[int, int, int]],
    fast: bool,
    serve: Callable[..., Awaitable[tuple[str, list[web.Request]]]],
    tmp_path: Path,
) -> None:
    async def lying(request: web.Request) -> web.StreamResponse:
        start, end = _range(request)
        if start < 200_000:  # the first two parts are right, the third is not
            return await ranged(request)
        first, last, total = answer(start, end)
        return web.Response(
            status=206,
            body=DATA[first : last + 1],
            headers={"Content-Range": f"bytes {first}-{last}/{total}"},
        )

    url, seen = await serve({"/data.bin": lying})
    async with HTTPStore(url, transfer=PARTS, fast_ranges=fast) as store:
        with pytest.raises(StorageError, match=r"unexpected Content-Range .* bytes 200000-"):
            await store.download("data.bin", tmp_path / "out.bin", size=len(DATA))
        with pytest.raises(StorageError, match="unexpected Content-Range"):
            await store.read_range("data.bin", 250_000, 260_000)
        assert store.retries == 0
    # Each part asked once, by the path that started it: the lean path refuses a wrong range
    # itself rather than asking aiohttp again.
    assert len(seen) == 4


# -- credentials in the URL ------------------------------------------------------------------


@BOTH_PATHS
async def test_credentials_in_the_url_are_sent_and_never_shown(
    fast: bool,
    serve: Callable[..., Awaitable[tuple[str, list[web.Request]]]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import base64

    password = "s3cr:t@pw"
    expected = "Basic " + base64.b64encode(f"ann:{password}".encode()).decode()

    async def guarded(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != expected:
            return web.Response(status=401)
        return await ranged(request)

    url, _ = await serve({"/d/data.bin": guarded})
    secret_url = url.replace("http://", "http://ann:s3cr%3At%40pw@") + "/d"
    caplog.set_level(logging.DEBUG)
    async with HTTPStore(secret_url, transfer=PARTS, fast_ranges=fast) as store:
        assert await store.read("data.bin") == DATA
        assert await store.read_range("data.bin", 5, 50) == DATA[5:50]
        await store.download("data.bin", tmp_path / "out.bin", size=len(DATA))
        assert (tmp_path / "out.bin").read_bytes() == DATA
        with pytest.raises(ObjectNotFoundError) as missing:
            await store.read("missing.bin")
        shown = [store.url, repr(store), store.join("k"), str(missing.value), caplog.text]
    from astream import Stream

    shown.append(repr(Stream(remote=secret_url)))
    for text in shown:
        assert "s3cr" not in text and "ann" not in text, text
    assert store.url == f"{url}/d"


def test_credentials_in_the_url_and_an_authorization_header_are_refused() -> None:
    with pytest.raises(ValueError, match="give one") as refused:
        HTTPStore("http://ann:pw@127.0.0.1:1/x", headers={"Authorization": "Bearer t"})
    assert "pw" not in str(refused.value)


# -- paths and headers as aiohttp sends them -------------------------------------------------


@BOTH_PATHS
async def test_a_root_path_with_a_space_and_non_ascii_letters(
    fast: bool,
    serve: Callable[..., Awaitable[tuple[str, list[web.Request]]]],
    tmp_path: Path,
) -> None:
    async def named(request: web.Request) -> web.StreamResponse:
        if request.path != "/my data/données/data.bin":
            return web.Response(status=404)
        return await ranged(request)

    url, seen = await serve({"/{tail:.*}": named})
    async with HTTPStore(f"{url}/my data/données", transfer=PARTS, fast_ranges=fast) as store:
        assert await store.read("data.bin") == DATA
        assert await store.read_range("data.bin", 1, 11) == DATA[1:11]
        await store.download("data.bin", tmp_path / "out.bin", size=len(DATA))
        assert (tmp_path / "out.bin").read_bytes() == DATA
    assert {r.raw_path for r in seen} == {"/my%20data/donn%C3%A9es/data.bin"}


@BOTH_PATHS
async def test_header_values_in_utf8_and_a_host_header_of_the_callers(
    fast: bool, serve: Callable[..., Awaitable[tuple[str, list[web.Request]]]]
) -> None:
    url, seen = await serve({"/data.bin": ranged})
    headers = {"X-Note": "café ☕", "Host": "data.example:8080"}
    async with HTTPStore(url, headers=headers, fast_ranges=fast) as store:
        assert await store.read_range("data.bin", 0, 10) == DATA[:10]
        assert await store.read("data.bin") == DATA
    assert {r.headers["X-Note"] for r in seen} == {"café ☕"}
    assert {r.headers["Host"] for r in seen} == {"data.example:8080"}


# -- compressing servers ---------------------------------------------------------------------


async def test_an_index_behind_a_redirect_to_a_compressing_server() -> None:
    index = json.dumps({"version": 2, "shards": [{"basename": f"s{i}"} for i in range(50)]})
    async with serve_app(gzip_app({"index.json": index.encode()})) as url:
        # The lean path gets the redirect and hands the read to aiohttp, which follows it.
        async with HTTPStore(url) as store:
            assert await store.read("moved/index.json") == index.encode()
            assert store._session is not None
        async with HTTPStore(url, fast_ranges=False) as store:
            assert await store.read("index.json") == index.encode()
            assert await store.read_range("moved/index.json", 2, 9) == index.encode()[2:9]


@BOTH_PATHS
async def test_a_content_coding_that_was_not_asked_for_is_refused(fast: bool) -> None:
    app = gzip_app({"index.json": b"{}" * 100}, always=True)
    async with serve_app(app) as url, HTTPStore(url, fast_ranges=fast, retry=ONCE) as store:
        with pytest.raises(StorageError, match="Content-Encoding 'gzip'"):
            await store.read("index.json")


# -- proxies ---------------------------------------------------------------------------------


async def test_http_proxy_from_the_environment(
    serve: Callable[..., Awaitable[tuple[str, list[web.Request]]]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    url, seen = await serve({"/data.bin": ranged})
    async with ForwardProxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        async with HTTPStore(url, transfer=PARTS) as store:
            assert await store.read("data.bin") == DATA
            await store.download("data.bin", tmp_path / "out.bin", size=len(DATA))
            assert (tmp_path / "out.bin").read_bytes() == DATA
        assert proxy.requests == [f"GET {url}/data.bin"] * 5  # the read and four parts
        assert len(seen) == 5
        # NO_PROXY names the host: straight there, on the lean path.
        monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
        async with HTTPStore(url, transfer=PARTS) as store:
            assert await store.read("data.bin") == DATA
            assert store._session is None
        assert len(proxy.requests) == 5
        assert len(seen) == 6


async def test_https_proxy_from_the_environment_tunnels(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import ssl

    ca, server_context = private_ca(tmp_path)
    app = web.Application()
    app.router.add_get("/data.bin", ranged)
    trusted = ssl.create_default_context(cafile=str(ca))
    async with serve_app(app, server_context) as url, ForwardProxy() as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # not for https URLs
        async with HTTPStore(url, ssl=trusted, transfer=PARTS) as store:
            assert await store.read_range("data.bin", 3, 30_003) == DATA[3:30_003]
        authority = url.removeprefix("https://")
        assert proxy.requests == [f"CONNECT {authority}"]
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        async with HTTPStore(url, ssl=trusted) as store:
            assert await store.read("data.bin") == DATA
        assert len(proxy.requests) == 1


# -- timeouts --------------------------------------------------------------------------------


@BOTH_PATHS
@pytest.mark.parametrize("how", ["read", "read_range", "download"])
async def test_a_server_that_drips_times_out_within_the_deadline(
    fast: bool, how: str, tmp_path: Path
) -> None:
    data = payload(200, seed=3)
    # A byte every 0.2 s beats a 0.5 s read timeout forever (40 s for this body); the
    # minimum rate of 50 bytes/s gives the body 0.5 + 200 / 50 = 4.5 s.
    retry = RetryConfig(attempts=1, connect_timeout=1.0, read_timeout=0.5, min_rate=50)
    async with (
        serve_app(drip_app(data, 0.2)) as url,
        HTTPStore(url, retry=retry, fast_ranges=fast) as store,
    ):
        if how == "read":
            call = store.read("d.bin")
        elif how == "read_range":
            call = store.read_range("d.bin", 0, len(data))
        else:
            call = store.download("d.bin", tmp_path / "out.bin", size=len(data))
        with pytest.raises(StorageTimeoutError, match="minimum rate"):
            # The bound is the documented budget (plus slack for a loaded machine).
            await asyncio.wait_for(call, retry.budget(len(data)) + 5.0)


async def test_silence_after_a_byte_counts_from_that_byte() -> None:
    # Two bytes 0.8 s apart: silence longer than the 0.5 s read timeout, though a byte came
    # in the first 0.5 s (a window restarted by any byte would let it pass).
    retry = RetryConfig(attempts=1, connect_timeout=1.0, read_timeout=0.5, min_rate=1e-3)
    async with serve_app(drip_app(b"ab", 0.8)) as url, HTTPStore(url, retry=retry) as store:
        with pytest.raises(StorageTimeoutError, match=r"no data .* for 0\.5 s"):
            await store.read_range("d.bin", 0, 2)


def test_the_budget_is_what_the_docs_say() -> None:
    assert RetryConfig().deadline(8 << 20) == 60 + 128
    assert RetryConfig().budget(0) == pytest.approx(5 * (10 + 60) + 0.2 + 0.4 + 0.8 + 1.6)
    with pytest.raises(ValueError, match="min_rate"):
        RetryConfig(min_rate=0)


# -- TLS -------------------------------------------------------------------------------------


@BOTH_PATHS
async def test_a_certificate_for_another_host_is_refused_at_once(
    fast: bool, tmp_path: Path
) -> None:
    import ssl

    ca, server_context = private_ca(tmp_path, "localhost")  # not valid for 127.0.0.1
    trusted = ssl.create_default_context(cafile=str(ca))
    app = web.Application()
    app.router.add_get("/data.bin", ranged)
    retry = RetryConfig(attempts=3, backoff_initial=0.01)
    async with (
        serve_app(app, server_context) as url,
        HTTPStore(url, ssl=trusted, fast_ranges=fast, retry=retry) as store,
    ):
        with pytest.raises(StorageError, match=r"TLS certificate of .* does not verify"):
            await store.read_range("data.bin", 0, 10)
        assert store.retries == 0  # the same certificate would come again
