"""A disk that fills: the write fails with a clear error, and nothing half-written is left.

A full disk is simulated in a child process with ``RLIMIT_FSIZE``: a write past the limit fails
with ``EFBIG`` (``SIGXFSZ`` ignored), the way a write to a full disk fails with ``ENOSPC``:
the same ``OSError`` path through the cache and the writers.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from datasets import check_sample, write_mds

from astream import StreamingDataset
from astream.storage import open_store
from tests.servers.moto_s3 import CREDENTIALS, MotoS3
from tests.storage.conftest import HTTPFiles

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 100_000  # bytes any one file of the child may reach

PRELUDE = f"""
import resource, signal, sys
sys.path.insert(0, {str(ROOT)!r})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({LIMIT}, {LIMIT}))
"""


def _child(body: str, *args: str) -> subprocess.CompletedProcess[str]:
    code = PRELUDE + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120
    )


def _leftovers(root: Path) -> list[str]:
    """Files in the cache that are neither locks nor bookkeeping: temporary or partial data."""
    return sorted(
        p.name for p in root.rglob("*") if p.is_file() and ".tmp" in p.name and "lock" not in p.name
    )


def _to_s3(moto: MotoS3, src: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"s3://{moto.create_bucket()}/data"
    files = sorted(src.iterdir())

    async def upload() -> None:
        async with open_store(url, **moto.store_options()) as store:
            for path in files:
                await store.upload(path, path.name)

    asyncio.run(upload())
    # The child process finds the server and credentials where users set them.
    monkeypatch.setenv("S3_ENDPOINT_URL", moto.endpoint_url)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    return url


@pytest.mark.parametrize("kind", ["local", "http", "s3"])
def test_cache_download_onto_a_full_disk(
    tmp_path: Path,
    http_files: HTTPFiles,
    moto_s3: MotoS3,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
) -> None:
    remote = write_mds(tmp_path / "remote", 600, size_limit=300_000, payload=1000)
    shards = json.loads((remote / "index.json").read_text())["shards"]
    assert max(s["raw_data"]["bytes"] for s in shards) > LIMIT
    url = str(remote)
    if kind == "http":
        name = uuid.uuid4().hex[:12]
        shutil.copytree(remote, http_files.root / name)
        url = f"{http_files.url}/{name}"
    elif kind == "s3":
        url = _to_s3(moto_s3, remote, monkeypatch)
    local = tmp_path / "cache"
    got = _child(
        """
        from astream import StreamingDataset
        dataset = StreamingDataset(remote=sys.argv[1], local=sys.argv[2], batch_size=1)
        try:
            for _ in dataset:
                pass
        except Exception as exc:
            print(f"{type(exc).__name__}: {exc}")
            sys.exit(3)
        """,
        url,
        str(local),
    )
    assert got.returncode == 3, got.stderr
    # A local error, naming the shard and the cache: not a failure of the remote, not retried.
    assert got.stdout.startswith("CacheError: cannot write shard shard.00000.mds"), got.stdout
    assert str(local) in got.stdout
    assert "File too large" in got.stdout or "No space" in got.stdout
    assert _leftovers(local) == []
    # The next run, with room on the disk, reads every sample.
    dataset = StreamingDataset(remote=url, local=local, batch_size=1)
    assert [check_sample(s, payload=1000) for s in dataset] == list(range(600))


def test_writer_onto_a_full_disk(tmp_path: Path) -> None:
    out = tmp_path / "out"
    got = _child(
        """
        from astream import MDSWriter
        try:
            with MDSWriter(out=sys.argv[1], columns={"data": "bytes"}, size_limit=1 << 20) as w:
                for i in range(1000):
                    w.write({"data": bytes(1000)})
        except OSError as exc:
            print(f"{type(exc).__name__}: {exc}")
            sys.exit(3)
        """,
        str(out),
    )
    assert got.returncode == 3, got.stderr
    assert "File too large" in got.stdout or "No space" in got.stdout
    assert "shard.00000.mds" in got.stdout  # the file that could not be written
    assert list(out.glob("*.tmp")) + list(out.glob(".*.tmp")) == []
    # No index names a shard that is missing or shorter than it says.
    index = out / "index.json"
    if index.exists():
        for shard in json.loads(index.read_text())["shards"]:
            path = out / shard["raw_data"]["basename"]
            assert path.stat().st_size == shard["raw_data"]["bytes"]
