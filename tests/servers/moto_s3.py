"""moto's S3 server (``moto_server``) on loopback, with helpers to make buckets and reset it.

moto is the correctness server for S3: it copies the whole object for every ranged GET, so
never benchmark range reads against it (shared/TESTING.md). It checks no signatures but refuses
unsigned requests, so clients use the dummy credentials in :data:`CREDENTIALS`.
"""

from __future__ import annotations

import contextlib
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.servers.process import ServerProcess, free_port, require_executable, run_server

__all__ = ["CREDENTIALS", "MotoS3", "moto_s3_server"]

#: Environment for any S3 client talking to the emulator (botocore reads these).
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class MotoS3:
    """A running moto S3 server at :attr:`endpoint_url`."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.endpoint_url = server.url

    def store_options(self) -> dict[str, Any]:
        """Options for ``open_store("s3://...", **options)`` against this server."""
        return {
            "endpoint_url": self.endpoint_url,
            "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            "region": CREDENTIALS["AWS_DEFAULT_REGION"],
        }

    def _request(self, method: str, path: str, data: bytes | None = None) -> None:
        request = urllib.request.Request(self.endpoint_url + path, data=data, method=method)
        request.add_header(
            "Authorization", "AWS4-HMAC-SHA256 Credential=testing/x/us-east-1/s3/aws4_request"
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()

    def create_bucket(self, name: str | None = None) -> str:
        """Create (and return) a bucket; a unique name when none is given."""
        name = name or f"astream-{uuid.uuid4().hex[:16]}"
        self._request("PUT", f"/{name}")
        return name

    def reset(self) -> None:
        """Wipe every bucket and object."""
        self._request("POST", "/moto-api/reset")


@contextlib.contextmanager
def moto_s3_server() -> Iterator[MotoS3]:
    """Run ``moto_server`` on a free loopback port; raises ServerUnavailable without moto."""
    try:
        import moto.server  # noqa: F401
    except ImportError as exc:
        from tests.servers.process import ServerUnavailable

        raise ServerUnavailable(f"moto[server] is not installed: {exc}") from exc
    executable = require_executable("moto_server", Path(sys.executable).parent)
    port = free_port()
    argv = [executable, "-H", "127.0.0.1", "-p", str(port)]
    with run_server(argv, port=port, ready_path="/moto-api/") as server:
        yield MotoS3(server)
