"""s3rver (npm ``s3rver@3.7.1`` from tests/servers/package.json): S3 on Node.js, on loopback.

Unlike moto, s3rver checks every request's SigV4 signature against its keys (``S3RVER`` /
``S3RVER``) and answers ``403 SignatureDoesNotMatch`` otherwise: the server that proves a
request is signed as S3 would accept it. Needs Node.js and ``npm install --prefix
tests/servers`` (the nox tests session runs it); without them :class:`ServerUnavailable`.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tests.servers.process import ServerProcess, ServerUnavailable, free_port, run_server

__all__ = ["S3rver", "s3rver_server"]

_BIN = Path(__file__).resolve().parent / "node_modules" / ".bin" / "s3rver"


class S3rver:
    """A running s3rver at :attr:`endpoint_url` with the buckets it was started with."""

    def __init__(self, server: ServerProcess, buckets: Sequence[str]) -> None:
        self.server = server
        self.endpoint_url = server.url
        self.buckets = tuple(buckets)

    def store_options(self, **overrides: Any) -> dict[str, Any]:
        """Options for ``open_store("s3://...", **options)`` against this server."""
        return {
            "endpoint_url": self.endpoint_url,
            "aws_access_key_id": "S3RVER",
            "aws_secret_access_key": "S3RVER",
            "region": "us-east-1",
            **overrides,
        }


@contextlib.contextmanager
def s3rver_server(buckets: Sequence[str] = ("astream",)) -> Iterator[S3rver]:
    """Run s3rver on a free loopback port with ``buckets``, its data in a temporary directory."""
    if shutil.which("node") is None:
        raise ServerUnavailable("Node.js is not installed: s3rver needs it")
    if not _BIN.exists():
        raise ServerUnavailable("s3rver is not installed: run `npm install --prefix tests/servers`")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="astream-s3rver-") as data:
        argv = [str(_BIN), "--address", "127.0.0.1", "--port", str(port)]
        argv += ["--directory", data, "--silent"]
        for bucket in buckets:
            argv += ["--configure-bucket", bucket]
        # s3rver 3.7 hashes with an algorithm newer OpenSSL hides behind the legacy provider.
        env = {"NODE_OPTIONS": "--openssl-legacy-provider"}
        with run_server(argv, port=port, env=env) as server:
            yield S3rver(server, buckets)
