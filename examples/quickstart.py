"""Write a sample dataset, serve it over HTTP on loopback, and stream it.

Run with ``nox -s demo`` or ``python examples/quickstart.py [--samples N] [--workdir DIR]``.
Everything stays on this machine: the "remote" is an aiohttp file server on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from aiohttp import web

from astream import MDSWriter, StreamingDataLoader, StreamingDataset


def write_dataset(out: Path, samples: int) -> None:
    """Samples of a 32x32 RGB image, a label and a caption, as zstd-compressed MDS shards."""
    rng = np.random.default_rng(0)
    columns = {"image": "ndarray:uint8:32,32,3", "label": "int", "caption": "str"}
    with MDSWriter(
        out=str(out), columns=columns, compression="zstd", hashes=["xxh64"], size_limit="1mb"
    ) as writer:
        for i in range(samples):
            writer.write(
                {
                    "image": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
                    "label": i % 10,
                    "caption": f"sample {i}",
                }
            )


@contextlib.contextmanager
def serve(root: Path) -> Iterator[str]:
    """Serve ``root`` read-only over HTTP (with Range support) on a free loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_static("/", root)
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.run_until_complete(runner.cleanup())
        loop.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--num-workers", type=int, default=2)
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        data = workdir / "remote" / "demo"
        began = time.perf_counter()
        write_dataset(data, args.samples)
        shards = len(list(data.glob("*.mds.zstd")))
        print(f"wrote {args.samples} samples in {shards} shards to {data}")
        print(f"  ({time.perf_counter() - began:.2f} s)")
        url = stack.enter_context(serve(data.parent)) + "/demo"
        print(f"serving it at {url}")

        dataset = StreamingDataset(
            remote=url, local=workdir / "cache", shuffle=True, batch_size=64, validate_hash="xxh64"
        )
        loader = StreamingDataLoader(dataset, batch_size=64, num_workers=args.num_workers)
        began = time.perf_counter()
        seen = 0
        labels = np.zeros(10, dtype=np.int64)
        for batch in loader:
            seen += len(batch["label"])
            labels += np.bincount(batch["label"].numpy(), minlength=10)
        elapsed = time.perf_counter() - began
        print(
            f"streamed {seen} samples with {args.num_workers} workers in {elapsed:.2f} s "
            f"({seen / elapsed:,.0f} samples/s); label counts {labels.tolist()}"
        )
        assert seen == args.samples, "every sample once per epoch"
        state = loader.state_dict()
        print(f"state dict at the end of the epoch: {state}")


if __name__ == "__main__":
    main()
