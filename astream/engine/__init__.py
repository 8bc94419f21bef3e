"""The IO side: the per-process loop thread, the node-local shard cache, fetching, prefetching.

Nothing here starts at import or construction. The first sync use of the engine starts one
asyncio loop in a daemon thread per process (:func:`astream.engine.loop.io_loop`); async users
run the same coroutines on their own loop with no thread at all.
"""

from __future__ import annotations
