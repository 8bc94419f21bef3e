"""The one async interface every object store implements, and its retry configuration.

A :class:`Store` is rooted at a URL prefix (``s3://bucket/datasets/c4``) and takes keys relative
to it (``shard.00000.mds``, ``sub/index.json``). Stores are cheap to construct and hold no live
resource until first used: HTTP sessions and SDK clients are created lazily *inside* the running
event loop and closed by :meth:`Store.aclose` on that loop. A store object is therefore bound to
one loop; pickling drops its live resources (a worker builds its own).
"""

from __future__ import annotations

import abc
import dataclasses
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from astream.errors import ConfigError

if TYPE_CHECKING:
    from astream.errors import StorageError

__all__ = ["ObjectInfo", "ProgressCallback", "RetryConfig", "Store", "TransferConfig"]

#: Called as ``callback(start, end)`` each time bytes ``[start, end)`` of a download are on disk.
ProgressCallback = Callable[[int, int], None]

T = TypeVar("T")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RetryConfig:
    """How a store retries and times out requests.

    Retried: HTTP 5xx, 429, S3 ``SlowDown``/``RequestTimeout``, connection resets, truncated
    bodies and timeouts. Never retried: 4xx other than 408/429 (a 403 or 404 is final).
    """

    #: Total tries of one request, the first included (so 1 means no retry).
    attempts: int = 5
    #: Delay before the first retry, in seconds; doubles each retry.
    backoff_initial: float = 0.2
    #: Ceiling of the delay between two tries, in seconds.
    backoff_max: float = 10.0
    #: Full jitter: each delay is drawn uniformly from ``[delay * (1 - jitter), delay]``.
    jitter: float = 1.0
    #: Seconds to establish a connection (TCP + TLS).
    connect_timeout: float = 10.0
    #: Seconds without receiving a byte on an open connection before the read is abandoned
    #: (measured from the last byte received: silence never lasts longer than this).
    read_timeout: float = 60.0
    #: The slowest average transfer a request may keep up, in bytes per second: ``read_timeout``
    #: seconds after a request was sent, it fails unless ``min_rate`` bytes per second arrived on
    #: average since. A body of ``n`` bytes therefore has ``deadline(n)``, that is
    #: ``read_timeout + n / min_rate`` seconds (the default: 188 s for an 8 MiB part), and a
    #: server that drips bytes just fast enough to beat ``read_timeout`` cannot stall a read.
    min_rate: float = 64 << 10

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ConfigError(f"RetryConfig.attempts must be >= 1, got {self.attempts}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ConfigError(f"RetryConfig.jitter must be within [0, 1], got {self.jitter}")
        for name in (
            "backoff_initial",
            "backoff_max",
            "connect_timeout",
            "read_timeout",
            "min_rate",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"RetryConfig.{name} must be > 0")

    def deadline(self, size: int) -> float:
        """Seconds one try of a request for ``size`` bytes may take once it is sent."""
        return self.read_timeout + size / self.min_rate

    def budget(self, size: int) -> float:
        """The longest a request for ``size`` bytes can take before the retry loop gives up:
        every try waiting for its connection (``connect_timeout``) and its whole
        :meth:`deadline`, plus the longest delay before each retry. With the defaults, a server
        that accepts connections and then never answers is given up on after
        ``5 * 60 s + 0.2 + 0.4 + 0.8 + 1.6 s = 303 s``: each try is abandoned after
        ``read_timeout`` of silence."""
        waits = sum(
            min(self.backoff_max, self.backoff_initial * 2.0**retry)
            for retry in range(self.attempts - 1)
        )
        return self.attempts * (self.connect_timeout + self.deadline(size)) + waits


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransferConfig:
    """How large transfers are split into concurrent requests."""

    #: Bytes per range request of a download, and per part of a multipart upload.
    part_size: int = 8 << 20
    #: Range requests (or upload parts) of one object in flight at once.
    concurrency: int = 8
    #: Objects at least this large are uploaded in parts (where the store supports it).
    multipart_threshold: int = 16 << 20
    #: When a download reports progress (a consumer reads samples as they land), its first
    #: bytes are fetched alone, in a part this large, before the others start: the shard's
    #: header and first samples then arrive in one small request's time, not in a share of all
    #: parts' bandwidth. 0 turns this off.
    head_part_size: int = 1 << 20

    #: Downloads start as one streaming GET of the whole object, and range requests join it
    #: only where they pay: when a probe range beside the stream raises their combined rate
    #: (see :mod:`astream.storage._transfer`). Servers that copy the whole object for every
    #: range then cost one GET, servers that serve ranges in parallel get them. Only stores
    #: that write a body as it arrives (:meth:`Store.streams_into`) do this; others, and
    #: ``False`` here, split every download into ``part_size`` ranges from the start.
    adaptive: bool = True

    def __post_init__(self) -> None:
        if self.part_size < 1 or self.concurrency < 1 or self.multipart_threshold < 1:
            raise ConfigError("TransferConfig sizes and concurrency must be >= 1")
        if self.head_part_size < 0:
            raise ConfigError("TransferConfig.head_part_size must be >= 0")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ObjectInfo:
    """What :meth:`Store.stat` knows of one object."""

    key: str
    size: int
    etag: str | None = None


class Store(abc.ABC):
    """An object store rooted at a URL prefix; every method is a coroutine on one event loop.

    Keys are ``/``-separated paths relative to :attr:`url`. Errors are astream errors
    (:mod:`astream.errors`): a missing object raises :class:`~astream.errors.ObjectNotFoundError`
    (a ``FileNotFoundError``) naming the full URL, with the SDK's error as ``__cause__``.
    """

    #: URL schemes this class serves (``("s3",)``); used by the registry.
    schemes: tuple[str, ...] = ()

    def __init__(
        self,
        url: str,
        *,
        retry: RetryConfig | None = None,
        transfer: TransferConfig | None = None,
    ) -> None:
        self.url = url.rstrip("/") if not url.endswith("://") else url
        self.retry = retry or RetryConfig()
        self.transfer = transfer or TransferConfig()
        #: Retries (attempts after the first) this store has made, over all its requests; the
        #: engine reports it in its statistics. One store lives on one loop: no lock needed.
        self.retries = 0

    def _count_retry(self) -> None:
        self.retries += 1

    async def _retrying(self, key: str, operation: Callable[[], Awaitable[T]]) -> T:
        """Run one request through the shared retry loop (:mod:`astream.storage._retry`).

        ``operation`` issues a fresh request each call; its failures are classified, retried
        per :attr:`retry`, and final ones raised as astream errors naming :meth:`join`\\(key).
        """
        from astream.storage._retry import call_with_retries

        return await call_with_retries(
            operation,
            config=self.retry,
            url=self.join(key),
            on_retry=self._count_retry,
            classifier=self._classify,
        )

    def _classify(self, exc: BaseException, url: str) -> StorageError | None:
        """The final error for ``exc``, or ``None`` to retry (backends add their own cases)."""
        from astream.storage._retry import classify

        return classify(exc, url)

    def join(self, key: str) -> str:
        """The full URL of ``key``, for messages and for other stores."""
        return f"{self.url}/{key.lstrip('/')}" if key else self.url

    # -- reading ---------------------------------------------------------------------------

    @abc.abstractmethod
    async def stat(self, key: str) -> ObjectInfo:
        """Size (and etag where known) of one object."""

    @abc.abstractmethod
    async def read_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of an object; exactly ``end - start`` bytes or an error.

        A range that runs past the end of the object raises
        :class:`~astream.errors.StorageError`: a short read is never returned.
        """

    @abc.abstractmethod
    async def read(self, key: str) -> bytes:
        """The whole object."""

    async def download(
        self,
        key: str,
        dest: str | os.PathLike[str],
        *,
        size: int | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> int:
        """Write the object into the file ``dest`` (created or truncated) and return its size.

        One streaming GET, joined by range requests where they pay
        (:attr:`TransferConfig.adaptive`), or parts of :attr:`TransferConfig.part_size` fetched
        concurrently (at most :attr:`TransferConfig.concurrency` at once), written in place with
        ``pwrite``; landed bytes are reported to ``on_progress``. The file has exactly the object's bytes when
        this returns; on error its contents are undefined and the caller discards it.
        """
        from astream.storage._transfer import ranged_download

        return await ranged_download(self, key, Path(dest), size=size, on_progress=on_progress)

    async def streams_into(self) -> bool:
        """Whether :meth:`fetch_range_into` writes a body as it arrives (with a bounded buffer).

        Such a store may be asked for a whole object in one request by an adaptive
        :meth:`download` (:attr:`TransferConfig.adaptive`); the default, which buffers a range
        in memory, is not.
        """
        return False

    async def fetch_range_into(self, key: str, start: int, end: int, fd: int) -> None:
        """Write bytes ``[start, end)`` of an object at offset ``start`` of file ``fd``.

        One part of :meth:`download`. The default fetches with :meth:`read_range` and
        ``pwrite``\\ s the result; backends that can stream a body override it to write chunks
        as they arrive (less memory, one copy fewer). A retried attempt rewrites the same
        offsets, so a part is complete and exact when this returns, or it raises.
        """
        from astream.errors import StorageError
        from astream.storage._transfer import write_part

        data = await self.read_range(key, start, end)
        if len(data) != end - start:
            raise StorageError(
                f"{self.join(key)}: range [{start}, {end}) returned {len(data)} bytes, "
                f"expected {end - start}"
            )
        await write_part(fd, data, start)

    # -- writing ---------------------------------------------------------------------------

    @abc.abstractmethod
    async def write(self, key: str, data: bytes) -> None:
        """Create or replace an object with ``data``."""

    @abc.abstractmethod
    async def upload(self, src: str | os.PathLike[str], key: str) -> None:
        """Upload a local file, in parts when it exceeds the multipart threshold."""

    # -- listing ---------------------------------------------------------------------------

    @abc.abstractmethod
    async def list(self, prefix: str = "", *, limit: int | None = None) -> list[str]:
        """Every key under ``prefix`` (relative to the store root), sorted.

        :param limit: at most this many keys, the first in sorted order; listing stops as soon
            as it has them (one small request to see whether a prefix holds anything).
        """

    async def exists(self, key: str) -> bool:
        """Whether the object exists."""
        from astream.errors import ObjectNotFoundError

        try:
            await self.stat(key)
        except ObjectNotFoundError:
            return False
        return True

    # -- lifetime --------------------------------------------------------------------------

    async def aclose(self) -> None:  # noqa: B027 - stores without live resources need nothing
        """Close sessions and clients this store opened (on the loop that opened them)."""

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __getstate__(self) -> dict[str, Any]:
        # Live sessions belong to one loop; a pickled copy starts without them.
        state = dict(self.__dict__)
        for name in getattr(self, "_live_attributes", ()):
            state[name] = None
        return state

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"
