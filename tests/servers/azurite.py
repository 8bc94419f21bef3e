"""Azurite's blob service (npm ``azurite@3.35.0`` from tests/servers/package.json) on loopback.

Clients use the well-known development account ``devstoreaccount1`` through
:meth:`Azurite.connection_string`. azure-storage-blob speaks a newer API version than Azurite
3.35 knows, hence ``--skipApiVersionCheck``. Needs Node.js and ``npm install --prefix
tests/servers`` (the nox tests session runs it); without them :class:`ServerUnavailable`.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from tests.servers.process import ServerProcess, ServerUnavailable, free_port, run_server

__all__ = ["ACCOUNT", "ACCOUNT_KEY", "Azurite", "azurite_server"]

#: Azurite's built-in development account and its published key.
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
_BIN = Path(__file__).resolve().parent / "node_modules" / ".bin"


class Azurite:
    """A running Azurite blob service; its endpoint is :attr:`blob_endpoint`."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.blob_endpoint = f"{server.url}/{ACCOUNT}"

    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.blob_endpoint};"
        )

    def create_container(self, name: str | None = None) -> str:
        """Create (and return) a container with the real SDK; a unique name when none given."""
        from azure.storage.blob import BlobServiceClient

        name = name or f"astream-{uuid.uuid4().hex[:16]}"
        with BlobServiceClient.from_connection_string(self.connection_string()) as service:
            service.create_container(name)
        return name


@contextlib.contextmanager
def azurite_server() -> Iterator[Azurite]:
    """Run ``azurite-blob`` on a free loopback port, its data in a temporary directory."""
    if shutil.which("node") is None:
        raise ServerUnavailable("Node.js is not installed: Azurite needs it")
    if not (_BIN / "azurite-blob").exists():
        raise ServerUnavailable(
            "Azurite is not installed: run `npm install --prefix tests/servers`"
        )
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="astream-azurite-") as location:
        argv = [
            str(_BIN / "azurite-blob"),
            "--blobHost", "127.0.0.1",
            "--blobPort", str(port),
            "--location", location,
            "--silent",
            "--disableTelemetry",
            "--skipApiVersionCheck",
        ]  # fmt: skip
        # Any answer means it is up (an unsigned listing is refused with 403).
        with run_server(
            argv, port=port, ready_path=f"/{ACCOUNT}?comp=list", ready=lambda status: True
        ) as server:
            yield Azurite(server)
