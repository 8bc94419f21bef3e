"""Advisory ``flock`` locks on files in the cache directory, held by one open file description.

Why ``flock`` (and not POSIX ``fcntl``/``lockf`` record locks): an ``flock`` belongs to the open
file description, so two descriptors of the same lock file conflict even inside one process (a
process that pins a shard cannot evict it through another descriptor), and the kernel drops it
when the last descriptor closes, including when the process is killed with SIGKILL. POSIX record
locks belong to the process instead: a second ``open``/``close`` of the same file anywhere in the
process silently releases them.

Lock files are created on first use and never deleted: unlinking a lock file while another
process has it open would let a third process create a fresh inode and "hold" the same lock at the
same time.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import overload

import anyio

__all__ = ["FileLock"]

# Backoff of the asynchronous wait (see FileLock.acquire_async): first retry after 1 ms, doubling
# up to 50 ms. A shard download takes far longer than 50 ms, so the extra latency after a release
# is noise, and a few hundred waiters polling at 20 Hz cost nothing measurable.
_POLL_FIRST = 0.001
_POLL_MAX = 0.05


def _open(path: Path) -> int:
    # O_CLOEXEC: a subprocess exec'd by the user must not inherit (and so keep alive) our locks.
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)


class FileLock:
    """A held ``flock`` on ``path`` (shared or exclusive); released by :meth:`release`."""

    __slots__ = ("_fd", "path", "shared")

    def __init__(self, path: Path, fd: int, *, shared: bool) -> None:
        self.path = path
        self.shared = shared
        self._fd: int | None = fd

    @classmethod
    def try_acquire(cls, path: Path, *, shared: bool = False) -> FileLock | None:
        """Take the lock if no other holder conflicts with it, else return ``None`` at once."""
        fd = _open(path)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return None
            raise
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, shared=shared)

    @classmethod
    def acquire(cls, path: Path, *, shared: bool = False) -> FileLock:
        """Take the lock, blocking the calling thread until it is free.

        Only for threads that may block (the consumer's thread, a worker thread); never on the
        event loop.
        """
        fd = _open(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, shared=shared)

    @overload
    @classmethod
    async def acquire_async(cls, path: Path, *, shared: bool = False) -> FileLock: ...

    @overload
    @classmethod
    async def acquire_async(
        cls, path: Path, *, shared: bool = False, until: Callable[[], bool]
    ) -> FileLock | None: ...

    @classmethod
    async def acquire_async(
        cls, path: Path, *, shared: bool = False, until: Callable[[], bool] | None = None
    ) -> FileLock | None:
        """Take the lock without blocking the event loop: non-blocking tries with backoff.

        Chosen over a blocking ``flock`` in a worker thread because a thread blocked in ``flock``
        cannot be interrupted: a cancelled waiter would leave it behind to take the lock later
        with nobody to release it, each waiting shard would hold a thread-pool slot (two
        processes whose pools fill up waiting on each other's shards could deadlock, since
        decompression needs a slot too), and a thread stuck on a lock held by a hung process
        would stall interpreter exit. Polling is cancellable at every await and holds nothing
        while it waits; the cost is up to ``_POLL_MAX`` of latency after the holder releases.

        ``until``: give up and return ``None`` as soon as it returns true. A process waiting to
        download a shard passes "the shard is ready": the holder it waits for may finish the
        download and then keep a shared pin on it indefinitely (a parked DataLoader worker),
        so the exclusive lock might never come, while the shard it wants is already there.
        """
        delay = _POLL_FIRST
        while True:
            lock = cls.try_acquire(path, shared=shared)
            if lock is not None:
                return lock
            if until is not None and until():
                return None
            await anyio.sleep(delay)
            delay = min(delay * 2, _POLL_MAX)

    @property
    def held(self) -> bool:
        """Whether this object still holds its lock."""
        return self._fd is not None

    def release(self) -> None:
        """Release the lock (closing the descriptor releases the ``flock``); idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> FileLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __del__(self) -> None:
        # A lock object dropped without release (an exception path we did not foresee) must not
        # leak its descriptor and so keep the lock for the life of the process.
        self.release()

    def __repr__(self) -> str:
        kind = "shared" if self.shared else "exclusive"
        state = "held" if self.held else "released"
        return f"FileLock({str(self.path)!r}, {kind}, {state})"
