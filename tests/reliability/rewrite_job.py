"""A writer that rewrites a dataset (``exist_ok=True``) at a set pace, to be killed mid-write.

``python rewrite_job.py OUT GENERATION PACE [zstd]``: writes generation ``GENERATION`` (see
``reliability_data.generation_shape``) into ``OUT`` (a folder or a URL; S3 settings from the
environment), sleeping ``PACE`` seconds after every 25 samples, and prints ``started T`` once the
writer exists (the old index is retired by then) and ``done T`` at the end (``T``: the
system-wide monotonic clock). With
``KILL_AT_REMOVE=K`` in the environment it SIGKILLs itself as it deletes its K-th file.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[2])]

from reliability_data import generation_shape, payload  # noqa: E402

from astream import MDSWriter  # noqa: E402


def _kill_at_remove(count: int) -> None:
    """SIGKILL this process as it deletes its ``count``-th file (a point inside the removal of
    the old dataset that a timer would almost never hit)."""
    seen = 0

    def hook(event: str, args: tuple[object, ...]) -> None:
        nonlocal seen
        if event == "os.remove":
            seen += 1
            if seen >= count:
                os.kill(os.getpid(), signal.SIGKILL)

    sys.addaudithook(hook)


def main() -> None:
    out, generation, pace = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    if os.environ.get("KILL_AT_REMOVE"):
        _kill_at_remove(int(os.environ["KILL_AT_REMOVE"]))
    extra = {"compression": "zstd", "hashes": ["sha1"]} if "zstd" in sys.argv[4:] else {}
    count, size = generation_shape(generation)
    with MDSWriter(
        out=out,
        columns={"id": "int", "gen": "int", "data": "bytes"},
        size_limit=2048,
        exist_ok=True,
        **extra,
    ) as writer:
        print("started", time.monotonic(), flush=True)
        for i in range(count):
            writer.write({"id": i, "gen": generation, "data": payload(i, size, generation)})
            if i % 25 == 24:
                time.sleep(pace)
    print("done", time.monotonic(), flush=True)


if __name__ == "__main__":
    main()
