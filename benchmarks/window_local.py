"""Local read speed of the prefetch window, shuffled vs unshuffled, no DataLoader (issue 10).

60k samples of 2-6 KB in ~115 shards of 2 MiB, read from a local dataset with num_workers=0:
samples per CPU-second of one epoch, shuffled (default py1e) and unshuffled, in one run, for
sync iteration and ``async for`` (asyncio, trio).

    python -m benchmarks.window_local [--dir DIR] [--epochs N] [--modes sync,asyncio,trio]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import anyio
import numpy as np

from astream import MDSWriter, StreamingDataset


def write(root: Path, samples: int = 60_000) -> Path:
    if (root / "index.json").exists():
        return root
    rng = np.random.default_rng(0)
    with MDSWriter(
        out=str(root), columns={"id": "int", "data": "bytes"}, size_limit=2 << 20
    ) as writer:
        for i in range(samples):
            writer.write({"id": i, "data": rng.bytes(int(rng.integers(2048, 6144)))})
    return root


def epoch(root: Path, shuffle: bool, mode: str) -> float:
    dataset = StreamingDataset(local=str(root), shuffle=shuffle)
    # CPU time of this process: the machine is shared, and the read is CPU-bound once local.
    began = time.process_time()
    if mode == "sync":
        count = sum(1 for _ in dataset)
    else:

        async def run() -> int:
            return sum([1 async for _ in dataset])

        count = anyio.run(run, backend=mode)
    return count / (time.process_time() - began)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", default="/tmp/astream-window-local")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--modes", default="sync,asyncio,trio", help="sync, asyncio, trio")
    args = parser.parse_args()
    root = write(Path(args.dir))
    for mode in args.modes.split(","):
        for shuffle in (False, True):
            rates = [epoch(root, shuffle, mode) for _ in range(args.epochs)]
            shown = ", ".join(f"{r:,.0f}" for r in rates)
            print(f"{mode:7} shuffle={shuffle!s:5} best {max(rates):10,.0f} samples/s  ({shown})")


if __name__ == "__main__":
    main()
