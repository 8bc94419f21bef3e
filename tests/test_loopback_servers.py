"""The loopback servers the tests start do not outlive a test process that is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_CHILD = """
import sys, time
from tests.servers.http_files import http_file_server
with http_file_server(sys.argv[1]) as server:
    print(server.url, flush=True)
    time.sleep(600)
"""


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/-/ready", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def test_a_server_stops_when_the_test_process_is_killed(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(tmp_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        url = child.stdout.readline().strip()
        assert _answers(url)
        os.kill(child.pid, signal.SIGKILL)  # no cleanup runs: no context manager exit
        child.wait()
        deadline = time.monotonic() + 30
        while _answers(url) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _answers(url), f"the server at {url} outlived its killed test process"
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
