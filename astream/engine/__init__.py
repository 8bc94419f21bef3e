"""The IO side: the per-process loop thread, the node-local shard cache, fetching, prefetching.

Nothing here starts a thread or does I/O at import or construction. The first use of the engine
starts one asyncio loop in a daemon thread per process (:func:`astream.engine.loop.io_loop`),
which runs every download; ``async for`` runs the sample window in anyio worker threads and
awaits them from the caller's loop (asyncio or trio), see docs/concepts.md.

Importing this package loads anyio's asyncio backend (and its trio backend when trio is already
imported): anyio imports a backend on its first use, which is the first ``await`` of a worker
thread, on the caller's loop, where the import (about 25 ms) would stall every other task.
"""

from __future__ import annotations

import contextlib
import importlib
import sys


def _load_anyio_backends() -> None:
    for name in ("asyncio", "trio"):
        if name == "asyncio" or name in sys.modules:
            with contextlib.suppress(ImportError):
                importlib.import_module(f"anyio._backends._{name}")


_load_anyio_backends()
