"""The one retry loop every backend runs its requests through, and the error classification.

A backend wraps each request (one GET, one HEAD, one part upload) in :func:`call_with_retries`.
The loop decides from the exception alone whether a failure is transient (retry after an
exponential, jittered delay) or final (translate to an astream error now):

* transient: HTTP 5xx, 429 and 408; S3 ``SlowDown``/``RequestTimeout``/``InternalError``;
  connection resets and refusals; bodies shorter than announced (:class:`TruncatedBody`);
  asyncio/aiohttp/SDK timeouts;
* final: 401/403 (:class:`~astream.errors.StoragePermissionError`), 404 and missing-object
  codes (:class:`~astream.errors.ObjectNotFoundError`), other 4xx
  (:class:`~astream.errors.StorageError`), a TLS certificate that does not verify (a wrong
  host name, an untrusted CA: asking again gets the same certificate), and any astream error a
  backend raised itself.

Classification is by duck typing (an integer ``status``/``status_code`` attribute, a botocore
style ``response`` dict, exception class names) so this module imports no SDK: every backend,
present and future, shares it.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from astream.errors import (
    AstreamError,
    ObjectNotFoundError,
    StorageError,
    StoragePermissionError,
    StorageTimeoutError,
)
from astream.storage._transfer import LocalWriteError
from astream.storage.base import RetryConfig

__all__ = [
    "RateFloor",
    "TransientError",
    "TruncatedBody",
    "backoff_delay",
    "call_with_retries",
    "classify",
    "error_for_status",
]

T = TypeVar("T")

#: S3 (and S3-compatible) error codes that mean "try again later".
RETRYABLE_CODES = frozenset(
    {
        "SlowDown",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "InternalError",
        "ServiceUnavailable",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequests",
        "TooManyRequestsException",
        "OperationAborted",
    }
)
#: Error codes that mean the object (or its bucket/container) does not exist.
NOT_FOUND_CODES = frozenset(
    {"NoSuchKey", "NoSuchBucket", "NotFound", "404", "BlobNotFound", "ContainerNotFound"}
)
#: Error codes that mean access is refused.
DENIED_CODES = frozenset(
    {"AccessDenied", "Forbidden", "403", "401", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
)
# Exception class names (anywhere in the MRO) of SDK transport failures worth another try:
# botocore's HTTPClientError family, azure-core's ServiceRequest/ServiceResponseError,
# aiohttp's connection and payload errors. Named, not imported: no SDK is a hard dependency.
_TRANSIENT_CLASS_NAMES = frozenset(
    {
        "HTTPClientError",
        "EndpointConnectionError",
        "ConnectionClosedError",
        "ReadTimeoutError",
        "ConnectTimeoutError",
        "IncompleteReadError",
        "ResponseStreamingError",
        "ServiceRequestError",
        "ServiceResponseError",
        "ClientConnectionError",
        "ClientPayloadError",
        "ServerDisconnectedError",
        "ContentLengthError",
        "TransferEncodingError",
    }
)


class TransientError(Exception):
    """Raised by a backend for a failure it knows is worth another attempt."""


class TruncatedBody(TransientError):
    """A response body shorter than its announced length (the connection closed early)."""


class RateFloor:
    """:attr:`RetryConfig.min_rate` for a body read in chunks: :meth:`check` after each chunk.

    Started when the answer's head arrived; the body's first ``n`` bytes must then have come
    within ``RetryConfig.deadline(n)`` seconds. Silence is the HTTP client's
    ``read_timeout``; together they bound every body: a server that drips a byte just before
    each ``read_timeout`` runs out falls behind the rate and the read is abandoned.
    """

    def __init__(self, config: RetryConfig, url: str) -> None:
        self._config = config
        self._url = url
        self._start = time.monotonic()

    def check(self, received: int) -> None:
        """Raise :class:`TimeoutError` (retried) when ``received`` bytes came too slowly."""
        elapsed = time.monotonic() - self._start
        if elapsed > self._config.deadline(received):
            raise TimeoutError(
                f"{self._url}: {received} bytes in {elapsed:.1f} s, slower than the minimum "
                f"rate of {self._config.min_rate:.0f} bytes/s after "
                f"{self._config.read_timeout} s (RetryConfig.min_rate)"
            )


def error_for_status(status: int, url: str, detail: str = "") -> StorageError | None:
    """The final astream error for an HTTP status, or ``None`` when the status is transient."""
    suffix = f": {detail}" if detail else ""
    if status in (408, 429) or status >= 500:
        return None
    if status == 404:
        return ObjectNotFoundError(f"no such object: {url} (HTTP 404){suffix}")
    if status in (401, 403):
        return StoragePermissionError(f"access denied to {url} (HTTP {status}){suffix}")
    if status == 416:
        return StorageError(f"requested range is past the end of {url} (HTTP 416){suffix}")
    return StorageError(f"request for {url} failed with HTTP {status}{suffix}")


def _certificate_failure(exc: BaseException) -> bool:
    """Whether ``exc`` or what it wraps is a TLS certificate that did not verify."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLCertVerificationError) or (
            "CERTIFICATE_VERIFY_FAILED" in str(current)
        ):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _int_attr(exc: BaseException, *names: str) -> int | None:
    for name in names:
        value = getattr(exc, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and 100 <= value < 600:
            return value
    return None


def _botocore_error(exc: BaseException) -> tuple[str, int | None] | None:
    response: Any = getattr(exc, "response", None)
    if not isinstance(response, dict) or "Error" not in response:
        return None
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code, status if isinstance(status, int) else None


def classify(exc: BaseException, url: str) -> StorageError | None:
    """The final astream error for ``exc``, or ``None`` when another attempt may succeed."""
    if isinstance(exc, TransientError):
        return None
    if isinstance(exc, AstreamError):
        # Raised deliberately by a backend (a range past the end, a read-only store): final.
        return exc if isinstance(exc, StorageError) else StorageError(f"{url}: {exc}")
    boto = _botocore_error(exc)
    if boto is not None:
        code, status = boto
        if code in RETRYABLE_CODES:
            return None
        if code in NOT_FOUND_CODES:
            return ObjectNotFoundError(f"no such object: {url} ({code})")
        if code in DENIED_CODES:
            return StoragePermissionError(f"access denied to {url} ({code})")
        if status is not None:
            return error_for_status(status, url, code)
        return StorageError(f"request for {url} failed: {code or exc}")
    if _certificate_failure(exc):
        return StorageError(f"the TLS certificate of {url} does not verify: {exc}")
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError, ConnectionError)):
        return None
    names = {cls.__name__ for cls in type(exc).__mro__}
    status = _int_attr(exc, "status", "status_code")
    if status is not None:
        return error_for_status(status, url, str(getattr(exc, "message", "")) or "")
    if names & _TRANSIENT_CLASS_NAMES:
        return None
    if isinstance(exc, FileNotFoundError):
        return ObjectNotFoundError(f"no such object: {url}")
    if isinstance(exc, PermissionError):
        return StoragePermissionError(f"access denied to {url}: {exc}")
    return StorageError(f"request for {url} failed: {type(exc).__name__}: {exc}")


def _is_timeout(exc: BaseException) -> bool:
    names = {cls.__name__ for cls in type(exc).__mro__}
    return isinstance(exc, (TimeoutError, asyncio.TimeoutError)) or bool(
        names & {"ReadTimeoutError", "ConnectTimeoutError", "ServerTimeoutError"}
    )


def backoff_delay(config: RetryConfig, retry: int, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number ``retry`` (1-based): capped exponential, jittered.

    The un-jittered delay is ``min(backoff_max, backoff_initial * 2 ** (retry - 1))``; the
    result is drawn uniformly from ``[delay * (1 - jitter), delay]`` (``jitter=1`` is AWS's
    "full jitter", which spreads the retries of many clients the most).
    """
    delay = min(config.backoff_max, config.backoff_initial * 2.0 ** (retry - 1))
    draw = (rng or random).random()
    return delay * (1.0 - config.jitter * draw)


async def call_with_retries(
    operation: Callable[[], Awaitable[T]],
    *,
    config: RetryConfig,
    url: str,
    on_retry: Callable[[], None] | None = None,
    classifier: Callable[[BaseException, str], StorageError | None] = classify,
) -> T:
    """Await ``operation()`` until it succeeds, a failure is final, or attempts run out.

    ``operation`` must be safe to repeat (each call issues a fresh request). Final failures
    raise the classifier's astream error chained to the original exception. After
    ``config.attempts`` transient failures this raises
    :class:`~astream.errors.StorageTimeoutError` (when the last failure was a timeout) or
    :class:`~astream.errors.StorageError`, naming ``url``, the attempt count and the last cause.

    :param on_retry: called once per retry (before its delay), for the engine's statistics.
    :param classifier: maps an exception to its final error, or ``None`` for "retry".
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            return await operation()
        except (asyncio.CancelledError, LocalWriteError):
            # A local write that failed is the caller's to report, not a request failure.
            raise
        except Exception as exc:
            final = classifier(exc, url)
            if final is exc:
                raise
            if final is not None:
                raise final from exc
            if attempt >= config.attempts:
                cause = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                message = f"{url}: gave up after {attempt} attempt(s); last error: {cause}"
                if _is_timeout(exc):
                    raise StorageTimeoutError(message) from exc
                raise StorageError(message) from exc
        if on_retry is not None:
            on_retry()
        await asyncio.sleep(backoff_delay(config, attempt))
