"""The per-process IO loop: lazy start, fork safety, bounded shutdown, no hang at exit."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import subprocess
import sys
import threading

import pytest

from astream.engine import loop as loop_mod
from astream.engine.loop import current_io_loop, io_loop, shutdown


def test_nothing_starts_at_import() -> None:
    code = (
        "import threading, astream, astream.engine.loop as l\n"
        "assert l.current_io_loop() is None\n"
        "assert not [t for t in threading.enumerate() if t.name == 'astream-io']\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "ok"


def test_runs_coroutines_on_its_own_thread() -> None:
    loop = io_loop()

    async def where() -> str:
        await asyncio.sleep(0)
        return threading.current_thread().name

    assert loop.run(where()) == "astream-io"
    assert io_loop() is loop  # one loop per process


def test_exceptions_propagate_with_their_type() -> None:
    async def boom() -> None:
        raise KeyError("missing")

    with pytest.raises(KeyError, match="missing"):
        io_loop().run(boom())


def test_run_from_the_loop_thread_is_refused() -> None:
    loop = io_loop()

    async def nested() -> str:
        try:
            loop.run(asyncio.sleep(0))
        except RuntimeError as exc:
            return str(exc)
        return "no error"

    assert "IO loop thread" in loop.run(nested())


def test_shutdown_runs_closers_and_restarts_on_next_use() -> None:
    loop = io_loop()
    closed = []

    async def closer() -> None:
        closed.append(threading.current_thread().name)

    loop.add_closer(closer)
    shutdown()
    assert closed == ["astream-io"]
    assert loop.closed and not loop.thread.is_alive()
    assert current_io_loop() is None
    fresh = io_loop()
    assert fresh is not loop and fresh.run(asyncio.sleep(0, "again")) == "again"


def test_shutdown_is_bounded_by_a_stuck_closer_and_task() -> None:
    loop = io_loop()

    async def stuck() -> None:
        await asyncio.Event().wait()

    loop.add_closer(stuck)
    loop.submit(stuck())
    loop.close(timeout=0.2)
    assert not loop.thread.is_alive()


def _child_uses_loop(queue: multiprocessing.Queue[object]) -> None:
    inherited = loop_mod._current
    loop = io_loop()
    queue.put((inherited is None, loop.pid == os.getpid(), loop.run(asyncio.sleep(0, 42))))


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_child_processes_get_their_own_loop(method: str) -> None:
    parent = io_loop()
    parent.run(asyncio.sleep(0))
    ctx = multiprocessing.get_context(method)
    queue: multiprocessing.Queue[object] = ctx.Queue()
    proc = ctx.Process(target=_child_uses_loop, args=(queue,))
    proc.start()
    result = queue.get(timeout=60)
    proc.join(60)
    assert proc.exitcode == 0
    # After a fork the at-fork hook dropped the parent's loop; the child built its own.
    assert result == (True, True, 42)
    # The parent's loop is untouched by the child's exit.
    assert parent.run(asyncio.sleep(0, "parent")) == "parent"


def test_pid_check_without_the_fork_hook() -> None:
    # A loop object whose pid is not ours (as after a fork that bypassed the hook) is replaced.
    loop = io_loop()
    loop_mod._current = loop
    real_pid = loop.pid
    loop.pid = real_pid + 1_000_000
    try:
        fresh = io_loop()
        assert fresh is not loop and fresh.pid == os.getpid()
    finally:
        loop.pid = real_pid
        loop.close()


def test_interpreter_exits_promptly_with_a_busy_loop() -> None:
    code = (
        "import asyncio, astream.engine.loop as l\n"
        "loop = l.io_loop()\n"
        "loop.submit(asyncio.sleep(3600))\n"
        "print('started')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "started"
