"""S3 reads at the edges where astream's direct path could differ from aiobotocore's: the TLS
trust store, objects only the SDK can read, checksums and missing credentials. Both paths run
against real servers on loopback: moto (behind a TLS front with a CA made at test time) and,
for checksums, a small S3-shaped aiohttp server."""

from __future__ import annotations

import base64
import hashlib
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from conformance import payload

from astream.errors import StorageError, StoragePermissionError
from astream.storage import RetryConfig
from astream.storage.s3 import S3Store
from tests.servers.edge_http import TLSRelay, private_ca, serve_app
from tests.servers.moto_s3 import MotoS3

pytestmark = pytest.mark.anyio

DATA = payload(200_003, seed=21)
ONCE = RetryConfig(attempts=2, backoff_initial=0.01, connect_timeout=5.0, read_timeout=10.0)
_CA_VARIABLES = ("AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR")


@pytest.fixture(autouse=True)
def _plain_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No profile, config file, proxy or CA setting from outside; never the instance
    metadata service (nothing may leave loopback)."""
    for name in (
        *_CA_VARIABLES,
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_ENDPOINT_URL_S3",
        "AWS_CREDENTIAL_EXPIRATION",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "absent-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "absent-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    import astream.storage._s3direct as direct
    import astream.storage.s3 as s3

    # botocore sessions cache what they read: each test starts from its own environment.
    monkeypatch.setattr(direct, "_sessions", {})
    monkeypatch.setattr(s3, "_sessions", {})
    yield


async def _bucket_with(moto: MotoS3, key: str, data: bytes, **put: str) -> str:
    bucket = moto.create_bucket()
    async with S3Store(f"s3://{bucket}", **moto.store_options()) as store:
        client = await store._get_client()
        await client.put_object(Bucket=bucket, Key=key, Body=data, **put)
    return bucket


# -- TLS: the certificates botocore trusts, on both paths ------------------------------------


@pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "AWS_CA_BUNDLE"])
@pytest.mark.parametrize("direct", [True, False], ids=["direct", "sdk"])
async def test_a_private_ca_from_the_environment_is_trusted_on_both_paths(
    variable: str,
    direct: bool,
    moto_s3: MotoS3,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bucket = await _bucket_with(moto_s3, "k.bin", DATA)
    ca, context = private_ca(tmp_path)
    monkeypatch.setenv(variable, str(ca))
    async with TLSRelay(moto_s3.server.port, context) as relay:
        options = {**moto_s3.store_options(), "endpoint_url": relay.url}
        async with S3Store(f"s3://{bucket}", retry=ONCE, direct_reads=direct, **options) as store:
            assert await store.read("k.bin") == DATA
            assert await store.read_range("k.bin", 7, 70_007) == DATA[7:70_007]
            # The direct path read it itself: the SDK was never needed.
            assert (store._client is None) == direct
    assert relay.connections >= 1


@pytest.mark.parametrize(
    "case", ["self-signed", "wrong-hostname", "ssl-cert-file"], ids=lambda case: case
)
@pytest.mark.parametrize("direct", [True, False], ids=["direct", "sdk"])
async def test_a_certificate_botocore_would_refuse_is_refused_on_both_paths(
    case: str,
    direct: bool,
    moto_s3: MotoS3,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bucket = await _bucket_with(moto_s3, "k.bin", DATA)
    if case == "wrong-hostname":
        ca, context = private_ca(tmp_path, "localhost")  # not valid for 127.0.0.1
        monkeypatch.setenv("AWS_CA_BUNDLE", str(ca))
    else:
        ca, context = private_ca(tmp_path)
        if case == "ssl-cert-file":  # OpenSSL's default store: botocore does not read it
            monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    async with TLSRelay(moto_s3.server.port, context) as relay:
        options = {**moto_s3.store_options(), "endpoint_url": relay.url}
        async with S3Store(f"s3://{bucket}", retry=ONCE, direct_reads=direct, **options) as store:
            with pytest.raises(StorageError, match=r"TLS certificate of .*k\.bin does not verify"):
                await store.read("k.bin")
            assert store.retries == 0  # final: the same certificate would come again
            # A TLS failure on the direct path is handed to the SDK, whose error is final.
            assert store._client is not None


# -- one odd object does not turn fast reads off for the store -------------------------------


async def test_an_object_only_the_sdk_reads_sends_only_that_key_to_the_sdk(
    moto_s3: MotoS3,
) -> None:
    # Content-Encoding in an object's metadata comes back on every GET: the direct path does
    # not take a coded body, the SDK returns the stored bytes.
    bucket = await _bucket_with(moto_s3, "coded.bin", DATA, ContentEncoding="gzip")
    async with S3Store(f"s3://{bucket}", retry=ONCE, **moto_s3.store_options()) as store:
        await store.write("plain.bin", DATA[:1000])
        answered: list[str] = []
        direct = await store._get_direct()
        assert direct is not None
        get_bytes = direct.get_bytes

        async def spy(object_key: str, *args: int | None) -> bytes | None:
            body = await get_bytes(object_key, *args)
            answered.append(f"{object_key}:{'direct' if body is not None else 'refused'}")
            return body

        direct.get_bytes = spy  # type: ignore[method-assign]
        assert await store.read("coded.bin") == DATA
        assert await store.read("plain.bin") == DATA[:1000]
        assert await store.read_range("coded.bin", 5, 50) == DATA[5:50]
        assert await store.read_range("plain.bin", 5, 50) == DATA[5:50]
    # The coded key went to the SDK once refused; the plain one stayed on the direct path.
    assert answered == ["coded.bin:refused", "plain.bin:direct", "plain.bin:direct"]


# -- checksums of whole reads ----------------------------------------------------------------


def _checksums(body: bytes) -> dict[str, str]:
    return {
        "x-amz-checksum-crc32": base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode(),
        "x-amz-checksum-sha256": base64.b64encode(hashlib.sha256(body).digest()).decode(),
    }


def _s3_shaped_app(objects: dict[str, tuple[bytes, dict[str, str]]]) -> web.Application:
    async def get(request: web.Request) -> web.StreamResponse:
        body, headers = objects[request.match_info["key"]]
        return web.Response(body=body, headers=headers)

    app = web.Application()
    app.router.add_get("/bkt/{key}", get)
    return app


@pytest.mark.parametrize("name", ["x-amz-checksum-crc32", "x-amz-checksum-sha256"])
async def test_a_whole_read_whose_checksum_does_not_match_is_refused(name: str) -> None:
    index = b'{"version": 2, "shards": []}'
    damaged = index.replace(b"2", b"3")
    objects = {
        "good.json": (index, _checksums(index)),
        "bad.json": (damaged, {name: _checksums(index)[name]}),
        # A multipart upload's checksum is one of its parts' checksums: not the body's.
        "parts.json": (index, {name: "AAAAAA==-3", "x-amz-checksum-type": "COMPOSITE"}),
    }
    async with (
        serve_app(_s3_shaped_app(objects)) as url,
        S3Store("s3://bkt", endpoint_url=url, unsigned=True, retry=ONCE) as store,
    ):
        assert await store.read("good.json") == index
        assert await store.read("parts.json") == index
        with pytest.raises(StorageError, match=r"checksum .* S3 sent"):
            await store.read("bad.json")
        assert store.retries == 1  # damaged on the way: asked again, then given up
        assert store._client is None  # all on the direct path


# -- missing credentials ---------------------------------------------------------------------


async def test_no_credentials_fail_at_once_naming_where_they_were_looked_for(
    moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_NO_SIGN_REQUEST",
    ):
        monkeypatch.delenv(name, raising=False)
    bucket = moto_s3.create_bucket()
    store = S3Store(f"s3://{bucket}/p", endpoint_url=moto_s3.endpoint_url)
    async with store:
        for call in (store.read("index.json"), store.list(), store.write("k", b"x")):
            with pytest.raises(StoragePermissionError) as refused:
                await call
            message = str(refused.value)
            assert message.startswith(f"s3://{bucket}/p")
            assert "no AWS credentials found" in message and "AWS_ACCESS_KEY_ID" in message
            assert "\n" not in message
        assert store.retries == 0
