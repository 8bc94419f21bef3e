"""Run a server, and stop its process group when the test process that started it dies.

``python _leash.py ARGV...`` runs ``ARGV`` in this process's group (:func:`run_server` made it
a session of its own), then reads its stdin until end of file. The test process holds the
other end of that pipe for as long as it lives, so end of file means it exited or was killed,
even by SIGKILL, which runs no cleanup: the group then gets SIGTERM, and SIGKILL 5 s later.
A normal stop sends the group SIGTERM: this process ignores it and exits with the server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time


def _when_orphaned() -> None:
    with __import__("contextlib").suppress(OSError):
        while os.read(0, 4096):
            pass
    os.killpg(0, signal.SIGTERM)
    time.sleep(5)
    os.killpg(0, signal.SIGKILL)


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: None)  # the group has it: wait for the server
    server = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL)
    threading.Thread(target=_when_orphaned, daemon=True).start()
    return server.wait()


if __name__ == "__main__":
    sys.exit(main())
