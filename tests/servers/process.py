"""Start a server subprocess on a free loopback port, wait until it answers, stop it surely.

The recipe (shared/TESTING.md): ``start_new_session=True`` so the server and its children form
their own process group; readiness polled every 50 ms; a server that exits while we wait fails
at once with its output; stop = SIGTERM to the group, SIGKILL after 10 s. The server runs under
``_leash.py``, which stops the group if the test process dies without stopping it (killed).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

__all__ = ["ServerProcess", "ServerUnavailable", "free_port", "require_executable", "run_server"]

POLL_INTERVAL = 0.05
_LEASH = Path(__file__).with_name("_leash.py")
STOP_GRACE = 10.0


class ServerUnavailable(RuntimeError):
    """The server cannot run here (missing executable or package); tests skip with this reason."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_executable(name: str, *search: Path) -> str:
    """The path of executable ``name`` (in ``search`` dirs first, then PATH), else skip."""
    for directory in search:
        candidate = directory / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise ServerUnavailable(
            f"{name} is not installed (looked in {[*map(str, search)]} and PATH)"
        )
    return found


class ServerProcess:
    """A running server: its ``port``, base ``url`` and process; :meth:`stop` ends it."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log

    def output(self) -> str:
        """The last 4 KB of the server's combined stdout and stderr."""
        try:
            return self.log.read_bytes()[-4096:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM the process group; SIGKILL it if still alive after 10 s."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.log.unlink(missing_ok=True)


def _http_ready(url: str, ok: Callable[[int], bool]) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return ok(response.status)
    except urllib.error.HTTPError as exc:
        return ok(exc.code)
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def run_server(
    argv: Sequence[str],
    *,
    port: int,
    ready_path: str = "/",
    ready: Callable[[int], bool] = lambda status: status < 400,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout: float = 30.0,
) -> Iterator[ServerProcess]:
    """Run ``argv`` (which must listen on 127.0.0.1:``port``) until the block exits.

    :param ready_path: polled with GET every 50 ms until ``ready(status)`` is true.
    :raises RuntimeError: the process exited, or was not ready within ``timeout`` seconds.
    """
    log_fd, log_name = tempfile.mkstemp(prefix="astream-server-", suffix=".log")
    full_env = {**os.environ, **(env or {})}
    try:
        process = subprocess.Popen(
            [sys.executable, str(_LEASH), *argv],
            stdin=subprocess.PIPE,  # held open for as long as this process lives
            stdout=log_fd,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
        )
    finally:
        os.close(log_fd)
    server = ServerProcess(process, port, Path(log_name))
    try:
        deadline = time.monotonic() + timeout
        url = server.url + ready_path
        while not _http_ready(url, ready):
            if process.poll() is not None:
                raise RuntimeError(
                    f"server {argv[0]} exited with {process.returncode} before it was ready:\n"
                    f"{server.output()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"server {argv[0]} not ready at {url} after {timeout} s:\n{server.output()}"
                )
            time.sleep(POLL_INTERVAL)
        yield server
    finally:
        server.stop()
