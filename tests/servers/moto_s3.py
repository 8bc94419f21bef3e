"""moto's S3 server (``moto_server``) on loopback, with helpers to make buckets and reset it.

moto is the correctness server for S3: it copies the whole object for every ranged GET, so
never benchmark range reads against it (shared/TESTING.md). By default it checks no signatures
but refuses unsigned requests, so clients use the dummy credentials in :data:`CREDENTIALS`.

:func:`moto_s3_server_with_auth` runs it with authentication on (``INITIAL_NO_AUTH_ACTION_COUNT``):
it then recomputes every request's SigV4 signature with the secret of an IAM user it knows and
answers ``403 SignatureDoesNotMatch`` when they differ, which proves a client signs as S3 expects.
"""

from __future__ import annotations

import contextlib
import json
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.servers.process import ServerProcess, free_port, require_executable, run_server

__all__ = ["CREDENTIALS", "MotoS3", "moto_s3_server", "moto_s3_server_with_auth"]

#: Environment for any S3 client talking to the emulator (botocore reads these).
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class MotoS3:
    """A running moto S3 server at :attr:`endpoint_url`."""

    def __init__(
        self, server: ServerProcess, key_id: str | None = None, secret: str | None = None
    ) -> None:
        self.server = server
        self.endpoint_url = server.url
        self.key_id = key_id or CREDENTIALS["AWS_ACCESS_KEY_ID"]
        self.secret = secret or CREDENTIALS["AWS_SECRET_ACCESS_KEY"]

    def store_options(self) -> dict[str, Any]:
        """Options for ``open_store("s3://...", **options)`` against this server."""
        return {
            "endpoint_url": self.endpoint_url,
            "aws_access_key_id": self.key_id,
            "aws_secret_access_key": self.secret,
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
def _moto_process(env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    try:
        import moto.server  # noqa: F401
    except ImportError as exc:
        from tests.servers.process import ServerUnavailable

        raise ServerUnavailable(f"moto[server] is not installed: {exc}") from exc
    executable = require_executable("moto_server", Path(sys.executable).parent)
    port = free_port()
    argv = [executable, "-H", "127.0.0.1", "-p", str(port)]
    with run_server(argv, port=port, ready_path="/moto-api/", env=env) as server:
        yield server


@contextlib.contextmanager
def moto_s3_server() -> Iterator[MotoS3]:
    """Run ``moto_server`` on a free loopback port; raises ServerUnavailable without moto."""
    with _moto_process() as server:
        yield MotoS3(server)


@contextlib.contextmanager
def moto_s3_server_with_auth() -> Iterator[MotoS3]:
    """moto with signature checks on, and an IAM user allowed ``s3:*`` whose keys it returns.

    Its first three requests are unauthenticated (they create the user, its policy and its
    key); every later one must be signed with that key. Buckets are made by a signed client.
    """
    import botocore.session

    with _moto_process({"INITIAL_NO_AUTH_ACTION_COUNT": "3"}) as server:
        session = botocore.session.Session()
        options: dict[str, Any] = {
            "region_name": CREDENTIALS["AWS_DEFAULT_REGION"],
            "endpoint_url": server.url,
            "aws_access_key_id": "bootstrap",
            "aws_secret_access_key": "bootstrap",
        }
        iam = session.create_client("iam", **options)
        iam.create_user(UserName="astream")
        policy = {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}
        iam.put_user_policy(
            UserName="astream",
            PolicyName="s3",
            PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [policy]}),
        )
        key = iam.create_access_key(UserName="astream")["AccessKey"]
        iam.close()
        yield _SignedMoto(server, key["AccessKeyId"], key["SecretAccessKey"])


class _SignedMoto(MotoS3):
    """A :class:`MotoS3` whose helper requests are signed (authentication is on)."""

    def create_bucket(self, name: str | None = None) -> str:
        import botocore.session

        name = name or f"astream-{uuid.uuid4().hex[:16]}"
        client = botocore.session.Session().create_client(
            "s3",
            region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.key_id,
            aws_secret_access_key=self.secret,
        )
        with contextlib.closing(client):
            client.create_bucket(Bucket=name)
        return name
