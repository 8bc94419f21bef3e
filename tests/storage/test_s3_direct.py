"""S3 reads signed with botocore and sent by astream's own HTTP client (``_s3direct``).

The server that matters here is moto with authentication on: it recomputes each request's
SigV4 signature and refuses a mismatch, so a read that succeeds there was signed as S3 expects.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import botocore.session
import pytest
from conformance import payload

from astream.errors import ObjectNotFoundError, StoragePermissionError
from astream.storage import TransferConfig, open_store
from astream.storage._s3direct import (
    DirectReads,
    Resolved,
    StaticCredentials,
    direct_blocker,
    resolve,
    sign_v4,
)
from astream.storage.s3 import S3Store
from tests.servers.moto_s3 import MotoS3, moto_s3_server_with_auth
from tests.servers.process import ServerUnavailable

pytestmark = pytest.mark.anyio

# Characters SigV4 and S3 encode in a key: a space, "+", "=", "~", "%", a non-ASCII letter.
KEY = "dir/a b+c=d~e%f é.bin"


@pytest.fixture(scope="module")
def signed_moto() -> Iterator[MotoS3]:
    try:
        with moto_s3_server_with_auth() as server:
            yield server
    except ServerUnavailable as exc:
        pytest.skip(f"moto S3 server unavailable: {exc}")


async def _put(moto: MotoS3, url: str, key: str, data: bytes) -> None:
    async with open_store(url, **moto.store_options()) as store:
        await store.write(key, data)


async def test_direct_reads_carry_signatures_s3_accepts(
    signed_moto: MotoS3, tmp_path: Path
) -> None:
    url = f"s3://{signed_moto.create_bucket()}/p"
    data = payload(3 * (1 << 20) + 5, seed=7)
    await _put(signed_moto, url, KEY, data)
    transfer = TransferConfig(part_size=1 << 20, concurrency=3)
    async with open_store(url, transfer=transfer, **signed_moto.store_options()) as store:
        assert isinstance(store, S3Store)
        assert await store.read(KEY) == data
        assert await store.read_range(KEY, 7, 100_007) == data[7:100_007]
        dest = tmp_path / "out.bin"
        await store.download(KEY, dest, size=len(data))
        assert dest.read_bytes() == data
        with pytest.raises(ObjectNotFoundError, match=f"{url}/missing"):
            await store.read("missing")
        assert store._direct is not None and not store._sdk_keys
        # Every read went the direct way: aiobotocore never had to build a client.
        assert store._client is None
        assert store.retries == 0


async def test_requester_pays_reads_are_signed_with_their_header(signed_moto: MotoS3) -> None:
    url = f"s3://{signed_moto.create_bucket()}/rp"
    await _put(signed_moto, url, "k", b"paid for")
    options = {**signed_moto.store_options(), "requester_pays": True}
    async with open_store(url, **options) as store:
        assert isinstance(store, S3Store)
        assert await store.read_range("k", 0, 4) == b"paid"
        assert store._direct is not None and not store._sdk_keys


async def test_a_wrong_secret_is_refused_by_both_paths(signed_moto: MotoS3) -> None:
    url = f"s3://{signed_moto.create_bucket()}/w"
    await _put(signed_moto, url, "k", b"secret data")
    options = {**signed_moto.store_options(), "aws_secret_access_key": "wrong"}
    async with open_store(url, **options) as store:
        assert isinstance(store, S3Store)
        with pytest.raises(StoragePermissionError, match=f"{url}/k"):
            await store.read("k")
        assert store.retries == 0
        # The SDK was refused too: nothing says the direct path signs differently.
        assert store._direct is not None and not store._sdk_keys


async def test_a_proxy_in_the_environment_leaves_reads_to_the_sdk(
    moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # the SDK may go straight there
    url = f"s3://{moto_s3.create_bucket()}/proxy"
    await _put(moto_s3, url, "k", b"through the sdk")
    async with open_store(url, **moto_s3.store_options()) as store:
        assert isinstance(store, S3Store)
        assert await store.read("k") == b"through the sdk"
        assert store._direct is None
        assert "HTTP_PROXY" in (store._direct_state or "")


def _direct(**options: object) -> DirectReads:
    defaults: dict[str, object] = {
        "bucket": "bkt",
        "region": "us-east-1",
        "endpoint_url": None,
        "addressing_style": None,
        "credentials": None,
        "requester_pays": False,
        "ca_bundle": None,
        "connections": 4,
        "connect_timeout": 1.0,
        "read_timeout": 1.0,
    }
    return DirectReads(**{**defaults, **options})  # type: ignore[arg-type]


def test_urls_are_those_the_sdk_addresses() -> None:
    assert _direct(region="eu-west-1").url("a b/c") == (
        "https://bkt.s3.eu-west-1.amazonaws.com/a%20b/c"
    )
    # A dotted name breaks the TLS wildcard: path style, as botocore does.
    assert _direct(bucket="my.bkt").url("k") == "https://s3.us-east-1.amazonaws.com/my.bkt/k"
    assert _direct(region="cn-north-1").url("k") == "https://bkt.s3.cn-north-1.amazonaws.com.cn/k"
    # Custom endpoints: path style, host lower-cased and the default port left out, as signed.
    assert _direct(endpoint_url="http://MinIO.local:80").url("k") == "http://minio.local/bkt/k"
    assert _direct(endpoint_url="https://r2.example:8443/base/").url("k") == (
        "https://r2.example:8443/base/bkt/k"
    )
    virtual = _direct(endpoint_url="http://127.0.0.1:9000", addressing_style="virtual")
    assert virtual.url("k") == "http://bkt.127.0.0.1:9000/k"


@pytest.mark.parametrize(
    ("bucket", "endpoint", "env", "reason"),
    [
        ("bkt", None, {}, None),
        ("Upper", None, {}, "bucket name"),
        ("arn:aws:s3:us-east-1:123:accesspoint/ap", None, {}, "bucket name"),
        ("zone--use1-az4--x-s3", None, {}, "bucket name"),
        ("bkt", None, {"HTTPS_PROXY": "http://proxy:3128"}, "HTTPS_PROXY"),
        ("bkt", None, {"AWS_USE_FIPS_ENDPOINT": "true"}, "use_fips_endpoint"),
        ("bkt", None, {"AWS_USE_DUALSTACK_ENDPOINT": "true"}, "use_dualstack_endpoint"),
        ("bkt", "ftp://host", {}, "not a plain http(s) URL"),
        ("bkt", None, {"AWS_ENDPOINT_URL_S3": "http://minio:9000"}, "endpoint is configured"),
        ("bkt", "http://minio:9000", {"AWS_ENDPOINT_URL_S3": "http://other:9000"}, None),
    ],
)
def test_what_leaves_reads_to_the_sdk(
    bucket: str,
    endpoint: str | None,
    env: dict[str, str],
    reason: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    blocker = direct_blocker(botocore.session.Session(), bucket, endpoint)
    if reason is None:
        assert blocker is None
    else:
        assert blocker is not None and reason in blocker


@pytest.mark.parametrize(
    ("url", "headers", "token"),
    [
        (
            "http://127.0.0.1:9000/bkt/dir/a%20b%2Bc%3Dd~e%25f%20%C3%A9.bin",
            {"Range": "bytes=0-99"},
            None,
        ),
        (
            "https://bkt.s3.eu-west-1.amazonaws.com/k/shard.00000.mds",
            {"Range": "bytes=1048576-2097151", "x-amz-request-payer": "requester"},
            "session-token/with+odd=chars",
        ),
        ("https://s3.us-east-1.amazonaws.com/my.bkt/index.json", {}, None),
    ],
)
def test_our_signature_is_botocores(
    url: str, headers: dict[str, str], token: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datetime

    import botocore.auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    now = datetime.datetime(2026, 11, 30, 12, 34, 56, tzinfo=datetime.timezone.utc)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: now.replace(tzinfo=None))
    region = "eu-west-1" if "eu-west-1" in url else "us-east-1"
    request = AWSRequest(method="GET", url=url, headers=dict(headers))
    credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    botocore.auth.S3SigV4Auth(credentials.get_frozen_credentials(), "s3", region).add_auth(request)
    theirs = {name.lower(): value for name, value in request.headers.items()}

    frozen = credentials.get_frozen_credentials()
    keys = StaticCredentials(frozen.access_key, frozen.secret_key, frozen.token)
    assert sign_v4(url, headers, keys, region, now=now) == theirs


def test_keys_in_the_environment_need_no_botocore(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "absent"))
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_CREDENTIAL_EXPIRATION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "env-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "env-token")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    options = {"aws_access_key_id": None, "aws_secret_access_key": None}
    got = resolve(
        bucket="bkt", endpoint_url=None, region=None, profile=None, explicit=options, unsigned=False
    )
    assert isinstance(got, Resolved)
    assert got.region == "ap-south-1"
    assert got.credentials == StaticCredentials("env-key", "env-secret", "env-token")
    # Explicit keys come before the environment's, as for the SDK.
    options = {"aws_access_key_id": "opt-key", "aws_secret_access_key": "opt-secret"}
    got = resolve(
        bucket="bkt", endpoint_url=None, region="us-west-2", profile=None, explicit=options,
        unsigned=False,
    )  # fmt: skip
    assert isinstance(got, Resolved)
    assert got.credentials == StaticCredentials("opt-key", "opt-secret")
    assert got.region == "us-west-2"


def test_a_config_file_is_read_through_botocore(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config"
    config.write_text("[default]\nregion = eu-north-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "env-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    got = resolve(
        bucket="bkt", endpoint_url=None, region=None, profile=None, explicit={}, unsigned=False
    )
    assert isinstance(got, Resolved)
    assert got.region == "eu-north-1"  # from the profile, as the SDK reads it
    frozen = got.credentials.get_frozen_credentials()
    assert (frozen.access_key, frozen.secret_key) == ("env-key", "env-secret")
    # A profile that asks for a FIPS endpoint leaves reads to the SDK.
    config.write_text("[default]\nregion = us-east-1\nuse_fips_endpoint = true\n")
    import astream.storage._s3direct as direct

    monkeypatch.setattr(direct, "_sessions", {})
    got = resolve(
        bucket="bkt", endpoint_url=None, region=None, profile=None, explicit={}, unsigned=False
    )
    assert got == "use_fips_endpoint is configured"


def test_a_fork_while_credentials_resolve_does_not_deadlock_the_child() -> None:
    import os
    import warnings

    import astream.storage._s3direct as direct
    import astream.storage.s3 as s3

    # Held here as another thread would hold them mid-walk when a DataLoader forks.
    with direct._resolve_lock, direct._sessions_lock, s3._sessions_lock, warnings.catch_warnings():
        # Python 3.12+ warns about fork() in a process with threads (the test servers'): the
        # child here only takes locks and exits.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
        if pid == 0:  # the child: every lock must be free
            free = all(
                lock.acquire(timeout=2)
                for lock in (direct._resolve_lock, direct._sessions_lock, s3._sessions_lock)
            )
            os._exit(0 if free else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
