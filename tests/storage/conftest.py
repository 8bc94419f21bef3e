"""Fixtures for storage tests: anyio on asyncio, and the loopback servers (session-scoped).

Other test directories reuse the servers through the plain context managers in
``tests/servers/`` (``http_file_server``, ``moto_s3_server``) or by importing these fixtures
into their own conftest: ``from tests.storage.conftest import moto_s3, http_files  # noqa``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The repository root on sys.path, so ``tests.servers`` imports however pytest was started.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.servers.http_files import HTTPFiles, http_file_server  # noqa: E402
from tests.servers.moto_s3 import MotoS3, moto_s3_server  # noqa: E402
from tests.servers.process import ServerUnavailable  # noqa: E402


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def http_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HTTPFiles]:
    """An aiohttp static file server (Range support) over a session temp directory."""
    root = tmp_path_factory.mktemp("http-files")
    try:
        with http_file_server(root) as server:
            yield HTTPFiles(server, root)
    except ServerUnavailable as exc:
        pytest.skip(f"HTTP file server unavailable: {exc}")


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    """moto's S3 server; tests isolate themselves with unique buckets or prefixes."""
    try:
        with moto_s3_server() as server:
            yield server
    except ServerUnavailable as exc:
        pytest.skip(f"moto S3 server unavailable: {exc}")
