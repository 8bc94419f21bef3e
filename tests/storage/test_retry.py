"""The shared retry loop: backoff bounds (property tests) and error classification."""

from __future__ import annotations

import asyncio
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from astream.errors import (
    ObjectNotFoundError,
    StorageError,
    StoragePermissionError,
    StorageTimeoutError,
)
from astream.storage import RetryConfig
from astream.storage._retry import (
    TruncatedBody,
    backoff_delay,
    call_with_retries,
    classify,
    error_for_status,
)

URL = "s3://bucket/key.bin"


@given(
    initial=st.floats(0.001, 5),
    cap=st.floats(0.001, 60),
    jitter=st.floats(0, 1),
    retry=st.integers(1, 200),
)
def test_backoff_is_capped_exponential_with_jitter(
    initial: float, cap: float, jitter: float, retry: int
) -> None:
    config = RetryConfig(backoff_initial=initial, backoff_max=cap, jitter=jitter)
    ceiling = min(cap, initial * 2.0 ** (retry - 1))
    delay = backoff_delay(config, retry)
    assert ceiling * (1 - jitter) - 1e-12 <= delay <= ceiling + 1e-12


@given(status=st.integers(400, 599))
def test_status_classification(status: int) -> None:
    error = error_for_status(status, URL)
    if status >= 500 or status in (408, 429):
        assert error is None
    else:
        assert isinstance(error, StorageError)
        assert URL in str(error)
        assert isinstance(error, ObjectNotFoundError) == (status == 404)
        assert isinstance(error, StoragePermissionError) == (status in (401, 403))


class FakeClientError(Exception):
    """The shape of botocore's ClientError (a ``response`` dict), without importing it."""

    def __init__(self, code: str, status: int) -> None:
        super().__init__(code)
        self.response = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}


def test_botocore_style_errors() -> None:
    for code in ("SlowDown", "RequestTimeout", "InternalError"):
        assert classify(FakeClientError(code, 503), URL) is None
    assert isinstance(classify(FakeClientError("NoSuchKey", 404), URL), ObjectNotFoundError)
    assert isinstance(classify(FakeClientError("AccessDenied", 403), URL), StoragePermissionError)
    assert isinstance(classify(FakeClientError("InvalidRange", 416), URL), StorageError)


def test_transport_errors_are_transient() -> None:
    import aiohttp

    for exc in (
        ConnectionResetError(),
        asyncio.TimeoutError(),
        TruncatedBody("short"),
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientPayloadError("cut"),
    ):
        assert classify(exc, URL) is None, exc


@pytest.mark.anyio
async def test_loop_counts_retries_and_names_the_cause() -> None:
    calls = 0
    retries = 0

    def on_retry() -> None:
        nonlocal retries
        retries += 1

    async def flaky() -> bytes:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionResetError("reset by peer")
        return b"ok"

    config = RetryConfig(attempts=3, backoff_initial=0.001, backoff_max=0.002)
    assert await call_with_retries(flaky, config=config, url=URL, on_retry=on_retry) == b"ok"
    assert (calls, retries) == (3, 2)

    async def always_timeout() -> bytes:
        raise asyncio.TimeoutError

    with pytest.raises(StorageTimeoutError, match=r"s3://bucket/key\.bin: gave up after 3") as info:
        await call_with_retries(always_timeout, config=config, url=URL)
    assert isinstance(info.value.__cause__, asyncio.TimeoutError)
    # Astream errors pickle with their type (DataLoader workers re-raise them).
    assert type(pickle.loads(pickle.dumps(info.value))) is StorageTimeoutError


@pytest.mark.anyio
async def test_final_errors_are_raised_at_once() -> None:
    calls = 0

    async def denied() -> None:
        nonlocal calls
        calls += 1
        raise FakeClientError("AccessDenied", 403)

    with pytest.raises(StoragePermissionError, match="s3://bucket/key") as info:
        await call_with_retries(denied, config=RetryConfig(attempts=5), url=URL)
    assert calls == 1
    assert isinstance(info.value.__cause__, FakeClientError)
