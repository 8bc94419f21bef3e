"""One fault scenario the GCS, Azure and OCI tests run through the fault-injecting proxy."""

from __future__ import annotations

from pathlib import Path

import pytest

from astream.errors import StoragePermissionError
from astream.storage import RetryConfig, Store, TransferConfig
from tests.servers.fault_proxy import FaultProxy
from tests.storage.conformance import payload

DATA = payload(600_000, seed=11)
#: Fast backoff; a read timeout well below the proxy's stall.
RETRY = RetryConfig(attempts=4, backoff_initial=0.01, backoff_max=0.05, read_timeout=0.5)
TRANSFER = TransferConfig(part_size=200_000, concurrency=2, adaptive=False)


async def assert_faults_retried(store: Store, proxy: FaultProxy, tmp_path: Path) -> None:
    """``store`` (already pointed through ``proxy``) survives a burst of transient faults with
    exactly the right bytes, then raises a 403 at once, naming the URL."""
    await store.write("data.bin", DATA)
    proxy.clear()
    proxy.inject(["503", "truncate", "drop", "stall", "500"])
    dest = tmp_path / "data.bin"
    await store.download("data.bin", dest, size=len(DATA))
    assert dest.read_bytes() == DATA
    assert proxy.applied == ["503", "truncate", "drop", "stall", "500"]
    # Each fault costs one retry of our loop, except where the transport absorbs it: aiohttp
    # may resend a dropped idempotent request, Azure's downloader re-reads a cut body itself.
    assert 3 <= store.retries <= 5, store.retries
    retries = store.retries
    proxy.inject(["403"])
    with pytest.raises(StoragePermissionError, match=r"data\.bin"):
        await store.read("data.bin")
    assert store.retries == retries
