"""One asyncio event loop per process, in a daemon thread, started on first use.

Sync code (a training loop, a DataLoader worker) hands coroutines to this loop and waits on
``concurrent.futures`` results: one thread handoff per shard, never per sample. The loop does I/O
only; decoding stays in the consumer's thread.

Fork safety: a forked child inherits the parent's loop object but not its thread. The child must
never touch it (closing it would close file descriptors the parent still uses), so an at-fork hook
drops the inherited state and a pid check guards every access; the child's first use builds a
fresh loop. Shutdown is bounded: :func:`shutdown` runs registered async closers (HTTP sessions,
SDK clients) with a timeout, cancels what is left, stops the loop and joins the thread with a
timeout. It runs from ``atexit`` in the main process and from a ``multiprocessing`` finalizer in
worker processes (where ``atexit`` does not run); the thread is a daemon, so even a stuck closer
cannot hang interpreter exit.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import logging
import multiprocessing
import multiprocessing.util
import os
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["IOLoop", "io_loop", "shutdown"]

_log = logging.getLogger(__name__)
T = TypeVar("T")

#: Seconds :func:`shutdown` gives closers, then pending tasks, then the thread.
SHUTDOWN_TIMEOUT = 5.0


class IOLoop:
    """An asyncio loop running in a daemon thread of this process.

    Use :func:`io_loop` to get the process's instance rather than building one.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self._closed = False
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._main, name="astream-io", daemon=True)

    def start(self) -> None:
        """Start the thread and wait until its loop runs."""
        self._thread.start()
        self._started.wait()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.set)
        try:
            self.loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran (a closed loop is never reused)."""
        return self._closed

    @property
    def thread(self) -> threading.Thread:
        """The loop's thread."""
        return self._thread

    def in_loop_thread(self) -> bool:
        """Whether the caller runs on this loop's own thread."""
        return threading.current_thread() is self._thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop; return a future the caller may wait on from any thread."""
        if self._closed:
            coro.close()
            raise RuntimeError("the astream IO loop is closed")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result (raises what it raised).

        :raises RuntimeError: when called from the loop's own thread, where waiting would
            deadlock.
        """
        if self.in_loop_thread():
            coro.close()
            raise RuntimeError("IOLoop.run() called from the IO loop thread; await instead")
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except BaseException:
            future.cancel()
            raise

    def add_closer(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Run ``await closer()`` on the loop when it shuts down (closes sessions, clients).

        The loop holds ``closer`` (and what it refers to) until then: an owner that goes away
        before the loop must take it back with :meth:`remove_closer`, or it is never collected.
        """
        self._closers.append(closer)

    def remove_closer(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Forget a closer given to :meth:`add_closer` (compared by ``==``); no-op if absent."""
        with contextlib.suppress(ValueError):
            self._closers.remove(closer)

    @staticmethod
    async def _close_one(closer: Callable[[], Awaitable[None]], timeout: float) -> None:
        try:
            await asyncio.wait_for(closer(), timeout)
        except Exception as exc:  # shutdown goes on: one bad closer must not leak the rest
            _log.debug("astream IO loop closer %r failed: %r", closer, exc)

    async def _shutdown(self, timeout: float) -> None:
        closers, self._closers = self._closers, []
        for closer in reversed(closers):
            await self._close_one(closer, timeout)
        current = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    def close(self, timeout: float = SHUTDOWN_TIMEOUT) -> None:
        """Close sessions, cancel pending work, stop the loop and join the thread, bounded."""
        if self._closed or self.pid != os.getpid():
            return
        self._closed = True
        if not self._thread.is_alive():
            return
        if self.in_loop_thread():  # cannot wait on ourselves: just stop
            self.loop.stop()
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(timeout), self.loop)
        with contextlib.suppress(Exception):
            future.result(2 * timeout + 1)
        with contextlib.suppress(RuntimeError):  # the loop may be closed already
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)


_lock = threading.Lock()
_current: IOLoop | None = None
_hooks_pid: int | None = None


def _register_exit_hooks() -> None:
    """Arrange for :func:`shutdown` at exit, once per process."""
    global _hooks_pid
    if _hooks_pid == os.getpid():
        return
    _hooks_pid = os.getpid()
    if multiprocessing.parent_process() is None:
        atexit.register(shutdown)
    else:
        # multiprocessing children leave through os._exit(): atexit never runs there, but
        # finalizers with an exit priority do.
        multiprocessing.util.Finalize(None, shutdown, exitpriority=100)


def io_loop() -> IOLoop:
    """The running IO loop of this process, started on first call (and anew after a fork)."""
    global _current
    with _lock:
        current = _current
        if current is None or current.closed or current.pid != os.getpid():
            current = IOLoop()
            current.start()
            _current = current
            _register_exit_hooks()
        return current


def current_io_loop() -> IOLoop | None:
    """This process's IO loop if one runs, without starting one."""
    current = _current
    if current is None or current.closed or current.pid != os.getpid():
        return None
    return current


def shutdown(timeout: float = SHUTDOWN_TIMEOUT) -> None:
    """Close this process's IO loop if it runs; a later use starts a new one."""
    global _current
    with _lock:
        current, _current = _current, None
    if current is not None:
        current.close(timeout)


def _after_fork_in_child() -> None:
    # The parent's loop thread does not exist here and its lock may have been held at the fork:
    # drop both, never close them (their file descriptors are shared with the parent).
    global _current, _lock
    _lock = threading.Lock()
    _current = None


os.register_at_fork(after_in_child=_after_fork_in_child)
