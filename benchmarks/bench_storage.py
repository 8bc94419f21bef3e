"""Download one large object from each loopback server, with one GET and with concurrent ranges.

The yardstick is a plain socket copy over loopback measured in the same run (a thread sends the
file with ``sendfile``; the receiver writes it to disk): the aiohttp server should reach at
least 70% of it. moto copies the whole object for every ranged GET, so its rows measure a
correctness server, not a client; s3rver rows appear when ``tests/servers/node_modules`` has it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from astream.storage import Store, TransferConfig, open_store  # noqa: E402

MB = 1 << 20


def _make_file(path: Path, size: int) -> None:
    block = os.urandom(MB)
    with path.open("wb") as f:
        for _ in range(size // MB):
            f.write(block)


def _fresh(dest: Path) -> None:
    """Remove ``dest`` and flush dirty pages, before the clock starts, for every row alike.

    The engine always downloads into a new temporary file; truncating a file whose pages are
    still cached (or racing the writeback of the previous run) costs as much as the copy itself.
    """
    dest.unlink(missing_ok=True)
    os.sync()


def _socket_copy(src: Path, dest: Path) -> float:
    """Seconds to move ``src`` over a loopback TCP socket into ``dest``."""
    _fresh(dest)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]

    def send() -> None:
        conn, _ = server.accept()
        with conn, src.open("rb") as f:
            conn.sendfile(f)

    thread = threading.Thread(target=send)
    thread.start()
    buffer = bytearray(MB)
    view = memoryview(buffer)
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as client, dest.open("wb") as out:
        while True:
            n = client.recv_into(buffer)
            if not n:
                break
            out.write(view[:n])
    elapsed = time.perf_counter() - started
    thread.join()
    server.close()
    return elapsed


async def _download(store: Store, key: str, dest: Path, size: int) -> float:
    _fresh(dest)
    started = time.perf_counter()
    got = await store.download(key, dest, size=size)
    elapsed = time.perf_counter() - started
    if got != size:  # download() itself checks the file's length
        raise RuntimeError(f"short download from {store.join(key)}")
    return elapsed


def _rows_for(
    name: str,
    url: str,
    key: str,
    size: int,
    dest: Path,
    ranged: TransferConfig,
    options: dict[str, Any],
    upload_from: Path | None = None,
) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        rows = []
        single = TransferConfig(part_size=size, concurrency=1, adaptive=False)
        # The default: one streaming GET, ranges beside it where a probe finds they pay.
        adaptive = TransferConfig()
        async with open_store(url, **options) as store:
            if upload_from is not None:
                store.transfer = TransferConfig(part_size=32 * MB, multipart_threshold=64 * MB)
                await store.upload(upload_from, key)
            modes = (("one GET", single), ("ranges", ranged), ("adaptive (default)", adaptive))
            for label, transfer in modes:
                store.transfer = transfer
                seconds = min([await _download(store, key, dest, size) for _ in range(2)])
                rows.append(
                    {
                        "name": f"{name}, {label}",
                        "parts": "1 GET, ranges where they pay"
                        if transfer.adaptive
                        else f"{-(-size // transfer.part_size)} x {transfer.part_size // MB} MB, "
                        f"{transfer.concurrency} at once",
                        "MB/s": size / MB / seconds,
                    }
                )
        return rows

    return asyncio.run(go())


def run(workdir: Path, quick: bool) -> dict[str, Any]:
    from tests.servers.http_files import http_file_server
    from tests.servers.moto_s3 import moto_s3_server

    size = (64 if quick else 256) * MB
    served = workdir / "served"
    served.mkdir()
    src = served / "object.bin"
    _make_file(src, size)
    dest = workdir / "dest.bin"
    notes = [
        f"object: {size // MB} MB of random bytes; best of 2 runs per row, each into a new file"
    ]

    socket_seconds = min(_socket_copy(src, dest) for _ in range(2))
    socket_mbps = size / MB / socket_seconds
    rows: list[dict[str, Any]] = [
        {
            "name": "plain socket copy (loopback, sendfile -> file)",
            "parts": "-",
            "MB/s": socket_mbps,
        }
    ]
    ranged = TransferConfig(part_size=8 * MB, concurrency=8, adaptive=False)

    with http_file_server(served) as server:
        http_rows = _rows_for("aiohttp server", server.url, "object.bin", size, dest, ranged, {})
    rows += http_rows

    with moto_s3_server() as moto:
        bucket = moto.create_bucket()
        # Fewer, larger parts: moto copies the whole object for every ranged GET.
        moto_ranged = TransferConfig(part_size=size // 4, concurrency=4, adaptive=False)
        rows += _rows_for(
            "moto S3 (correctness server)",
            f"s3://{bucket}/bench",
            "object.bin",
            size,
            dest,
            moto_ranged,
            moto.store_options(),
            upload_from=src,
        )
    notes.append("moto copies the whole object per ranged GET: slow by construction")

    from tests.servers.process import ServerUnavailable

    try:
        rows += _s3rver_rows(src, size, dest, ranged)
    except ServerUnavailable as exc:
        notes.append(f"no s3rver rows: {exc}")
    rows += cloud_rows(src, size, dest, ranged)

    best_http = max(row["MB/s"] for row in http_rows)
    return {
        "title": f"storage: download one {size // MB} MB object over loopback",
        "rows": rows,
        "ratios": {
            "aiohttp server ranges / socket copy": http_rows[1]["MB/s"] / socket_mbps,
            "aiohttp server best / socket copy (target >= 0.70)": best_http / socket_mbps,
        },
        "notes": notes,
    }


def _s3rver_rows(src: Path, size: int, dest: Path, ranged: TransferConfig) -> list[dict[str, Any]]:
    from tests.servers.s3rver import s3rver_server

    with s3rver_server(buckets=("bench",)) as server:
        return _rows_for(
            "s3rver S3",
            "s3://bench/x",
            "object.bin",
            size,
            dest,
            ranged,
            server.store_options(),
            upload_from=src,
        )


def cloud_rows(src: Path, size: int, dest: Path, ranged: TransferConfig) -> list[dict[str, Any]]:
    """Rows for the GCS (fake-gcs-server), Azure (Azurite) and OCI (our loopback server) stores;
    a server that cannot start here, or whose SDK is not installed, is left out."""
    from tests.servers.process import ServerUnavailable

    def gcs() -> list[dict[str, Any]]:
        from tests.servers.gcs import fake_gcs_server

        with fake_gcs_server() as server:
            options = {"endpoint_url": server.url}
            url = f"gs://{server.create_bucket()}/bench"
            return _rows_for("fake-gcs-server GCS", url, "object.bin", size, dest, ranged,
                             options, upload_from=src)  # fmt: skip

    def azure() -> list[dict[str, Any]]:
        from tests.servers.azurite import azurite_server

        with azurite_server() as server:
            options = {"connection_string": server.connection_string()}
            url = f"azure://{server.create_container()}/bench"
            return _rows_for("Azurite Azure Blob", url, "object.bin", size, dest, ranged,
                             options, upload_from=src)  # fmt: skip

    def oci() -> list[dict[str, Any]]:
        from tests.servers.oci_server import oci_server

        with oci_server() as server:
            options = {"config": server.config, "endpoint_url": server.url}
            url = f"oci://{server.create_bucket()}@{server.namespace}/bench"
            return _rows_for("astream's OCI server", url, "object.bin", size, dest, ranged,
                             options, upload_from=src)  # fmt: skip

    def rows_of(name: str, part: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
        try:
            return part()
        except (ServerUnavailable, ImportError) as exc:
            print(f"storage bench: no {name} rows: {type(exc).__name__}: {exc}", file=sys.stderr)
            return []

    return rows_of("GCS", gcs) + rows_of("Azure", azure) + rows_of("OCI", oci)
