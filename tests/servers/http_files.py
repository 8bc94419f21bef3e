"""A static file server with Range support (aiohttp ``web.static``), run as a subprocess.

``python -m tests.servers.http_files --root DIR --port PORT`` (from the repository root) serves ``DIR`` at ``/``: 206 for
ranges (suffix ranges too), 416 past the end. ``GET /-/ready`` answers 200 once it listens.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.servers.process import ServerProcess, free_port, run_server

__all__ = ["HTTPFiles", "http_file_server"]

REPO_ROOT = Path(__file__).resolve().parents[2]


class HTTPFiles:
    """A running static file server: files written under :attr:`root` are served at :attr:`url`."""

    def __init__(self, server: ServerProcess, root: Path) -> None:
        self.server = server
        self.root = root
        self.url = server.url


@contextlib.contextmanager
def http_file_server(root: str | Path) -> Iterator[ServerProcess]:
    """Serve ``root`` over HTTP on 127.0.0.1; yields the running server (``.url``)."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "tests.servers.http_files",
        "--root",
        str(root),
        "--port",
        str(port),
    ]
    with run_server(argv, port=port, ready_path="/-/ready", cwd=REPO_ROOT) as server:
        yield server


def _main() -> None:
    from aiohttp import web

    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()

    async def ready(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    # The readiness route goes first: the router tries routes in the order they were added.
    app.router.add_get("/-/ready", ready)
    app.router.add_static("/", args.root, follow_symlinks=False)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    _main()
