"""What the bucket-and-prefix stores (GCS, Azure, OCI) share: key naming under the URL's
prefix, the exact-range contract, and uploading a file as concurrent parts."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Iterator

import anyio

from astream.errors import ConfigError, StorageError
from astream.storage._retry import RateFloor
from astream.storage._transfer import pwrite_all
from astream.storage.base import RetryConfig, Store, TransferConfig

__all__ = ["BucketStore", "part_plan", "run_parts", "write_body"]


class BucketStore(Store):
    """A store rooted at ``scheme://bucket/prefix``: keys are object names below ``prefix``."""

    def __init__(
        self,
        url: str,
        bucket: str,
        prefix: str,
        *,
        retry: RetryConfig | None = None,
        transfer: TransferConfig | None = None,
    ) -> None:
        super().__init__(url, retry=retry, transfer=transfer)
        #: The bucket (GCS, OCI) or container (Azure).
        self.bucket = bucket
        #: Object-name prefix every key lives under, without slashes at either end.
        self.prefix = prefix.strip("/")

    def _name(self, key: str) -> str:
        """The object name of ``key``."""
        key = key.lstrip("/")
        return f"{self.prefix}/{key}" if self.prefix else key

    def _list_prefix(self, prefix: str) -> str:
        """The object-name prefix to list for keys starting with ``prefix``."""
        root = f"{self.prefix}/" if self.prefix else ""
        return root + prefix.lstrip("/")

    def _relative(self, names: Iterable[str]) -> list[str]:
        """Object names from a listing as sorted keys."""
        cut = len(self.prefix) + 1 if self.prefix else 0
        return sorted(name[cut:] for name in names)

    def _check_range(self, key: str, start: int, end: int) -> bool:
        """Validate ``[start, end)``; true when it is empty (no request is needed)."""
        if start < 0 or end < start:
            raise ConfigError(f"bad byte range [{start}, {end}) for {self.join(key)}")
        return start == end

    def _exact(self, key: str, start: int, end: int, data: bytes) -> bytes:
        """``data`` if it is the whole range; services clip a range that runs past the end of
        an object, and the store contract turns that into an error, never a short read."""
        if len(data) != end - start:
            raise StorageError(
                f"range [{start}, {end}) of {self.join(key)} gave {len(data)} bytes"
                f" instead of {end - start}: the object is shorter"
            )
        return data


async def write_body(
    chunks: AsyncIterable[bytes],
    fd: int,
    start: int,
    end: int,
    url: str,
    retry: RetryConfig | None = None,
) -> None:
    """Write a range response's body at its offsets of ``fd`` as it arrives (no part-sized
    buffer); exactly ``end - start`` bytes, or :class:`~astream.errors.StorageError`. With
    ``retry``, the body is held to its :attr:`~RetryConfig.min_rate` (:class:`RateFloor`).

    A body cut off mid-way fails inside the iteration (aiohttp's payload error, retried by the
    caller's loop); a complete body that is short means the service clipped the range because
    the object is shorter, which is final.
    """
    offset = start
    floor = RateFloor(retry, url) if retry is not None else None
    async for chunk in chunks:
        if offset + len(chunk) > end:
            raise StorageError(f"{url}: more than the {end - start} bytes asked for")
        # A page-cache write of one chunk costs less than a thread hop.
        pwrite_all(fd, chunk, offset)
        offset += len(chunk)
        if floor is not None:
            floor.check(offset - start)
    if offset != end:
        raise StorageError(
            f"range [{start}, {end}) of {url} gave {offset - start} bytes"
            f" instead of {end - start}: the object is shorter"
        )


def part_plan(size: int, transfer: TransferConfig, max_parts: int) -> list[tuple[int, int]]:
    """``[start, end)`` parts of an upload of ``size`` bytes: the configured part size, grown
    only where the service's part-count limit would otherwise be exceeded."""
    part_size = max(transfer.part_size, -(-size // max_parts))
    return [(start, min(start + part_size, size)) for start in range(0, size, part_size)]


async def run_parts(
    src: str,
    size: int,
    transfer: TransferConfig,
    max_parts: int,
    send: Callable[[int, bytes], Awaitable[None]],
) -> None:
    """Read file ``src`` in parts and ``await send(part_number, data)`` for each (numbered from
    1), at most :attr:`TransferConfig.concurrency` at once. The first failure cancels the rest
    and propagates as itself."""
    pending: Iterator[tuple[int, tuple[int, int]]] = iter(
        enumerate(part_plan(size, transfer, max_parts), start=1)
    )
    fd = os.open(src, os.O_RDONLY)
    try:

        async def worker() -> None:
            # Workers share one iterator: their number bounds the parts in flight, and so the
            # memory held (concurrency * part_size), without a semaphore.
            for number, (start, end) in pending:
                data = await anyio.to_thread.run_sync(os.pread, fd, end - start, start)
                if len(data) != end - start:
                    raise StorageError(f"{src} shrank while it was being uploaded")
                await send(number, data)

        workers = [
            asyncio.ensure_future(worker())
            for _ in range(max(1, min(transfer.concurrency, -(-size // transfer.part_size))))
        ]
        try:
            await asyncio.gather(*workers)
        finally:
            # Every worker has stopped before the descriptor closes: no late pread on it.
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
    finally:
        os.close(fd)
