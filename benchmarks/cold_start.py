"""Time to first batch of a cold epoch, shuffled and unshuffled, from a loopback S3 server.

Not one of the ``bench_*`` suites: a focused check of the cold start (issue 10's "the first
batch of a shuffled epoch does not wait for whole shards"). Writes an MDS dataset, uploads it
to s3rver or moto, then for each mode runs one cold epoch in a fresh process through
``StreamingDataLoader`` (batch 256, a collate, N workers) into an empty cache, and prints the
first batch's time, the epoch's time and samples/s::

    python benchmarks/cold_start.py --server s3rver --shard-mb 64
    python benchmarks/cold_start.py --server moto --shard-mb 4 --range-reads on
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MB = 1 << 20


def _write(out: Path, samples: int, size: int, shard_bytes: int) -> None:
    import numpy as np

    from astream import MDSWriter

    pool = np.random.default_rng(0).integers(0, 256, size=(256, size), dtype=np.uint8)
    with MDSWriter(
        out=str(out), columns={"data": "bytes", "id": "int"}, size_limit=shard_bytes
    ) as writer:
        for i in range(samples):
            writer.write({"data": pool[i % 256].tobytes(), "id": i})


async def _upload(paths: list[Path], url: str, options: dict[str, Any]) -> None:
    from astream.storage import open_store

    async with open_store(url, **options) as store:
        for path in paths:
            await store.upload(path, path.name)


@contextlib.contextmanager
def s3_serving(server: str, folder: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """``(url, env)``: ``folder``'s files uploaded to a loopback ``server`` (``"s3rver"`` or
    ``"moto"``), and the environment through which a child process reaches them."""
    from tests.servers.moto_s3 import moto_s3_server
    from tests.servers.s3rver import s3rver_server

    context: Any = s3rver_server(buckets=("cold",)) if server == "s3rver" else moto_s3_server()
    with context as running:
        bucket = "cold" if server == "s3rver" else running.create_bucket()
        store_options = running.store_options()
        url = f"s3://{bucket}/data"
        asyncio.run(_upload(sorted(folder.iterdir()), url, store_options))
        yield (
            url,
            {
                "S3_ENDPOINT_URL": store_options["endpoint_url"],
                "AWS_ACCESS_KEY_ID": store_options["aws_access_key_id"],
                "AWS_SECRET_ACCESS_KEY": store_options["aws_secret_access_key"],
                "AWS_DEFAULT_REGION": store_options["region"],
            },
        )


def run_child(argv: list[str], args: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """Run ``python *argv --child <args as JSON>`` with ``env`` added; its last line, parsed."""
    out = subprocess.run(
        [sys.executable, *argv, "--child", json.dumps(args)],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )
    if out.returncode:
        raise SystemExit(f"the child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def collate(batch: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {"id": [int(s["id"]) for s in batch], "data": [s["data"] for s in batch]}


def _child(args: dict[str, Any]) -> dict[str, Any]:
    from astream import StreamingDataLoader, StreamingDataset

    dataset = StreamingDataset(
        remote=args["url"],
        local=args["cache"],
        batch_size=args["batch"],
        shuffle=args["shuffle"],
        cold_range_reads=args["range_reads"] == "on",
    )
    loader = StreamingDataLoader(
        dataset, batch_size=args["batch"], num_workers=args["workers"], collate_fn=collate
    )
    started = time.perf_counter()
    first = None
    seen: list[int] = []
    for batch in loader:
        if first is None:
            first = time.perf_counter() - started
        seen.extend(batch["id"])
    seconds = time.perf_counter() - started
    if sorted(seen) != list(range(len(dataset))):
        raise RuntimeError("the epoch did not yield every sample once")
    return {"first": first, "seconds": seconds, "samples": len(seen)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=("s3rver", "moto"), default="s3rver")
    parser.add_argument("--shard-mb", type=int, default=64)
    parser.add_argument("--samples", type=int, default=60_000)
    parser.add_argument("--sample-bytes", type=int, default=5600)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument(
        "--range-reads",
        choices=("on", "off", "both"),
        default="both",
        help="shuffled rows with range reads on, off (whole shards only), or both",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        print(json.dumps(_child(json.loads(options.child))))
        return

    with tempfile.TemporaryDirectory(prefix="astream-cold-") as work:
        data = Path(work) / "data"
        _write(data, options.samples, options.sample_bytes, options.shard_mb * MB)
        shards = len(list(data.glob("shard.*")))
        total = sum(p.stat().st_size for p in data.iterdir())
        with s3_serving(options.server, data) as (url, env):
            print(
                f"{options.server}: {options.samples} samples of {options.sample_bytes} B in "
                f"{shards} shards of {options.shard_mb} MiB ({total / 1e6:.0f} MB); "
                f"StreamingDataLoader batch {options.batch}, {options.workers} workers"
            )
            modes = [(False, "on")]
            modes += [
                (True, ranges)
                for ranges in ("on", "off")
                if options.range_reads in (ranges, "both")
            ]
            for repeat in range(options.repeat):
                for shuffle, ranges in modes:
                    args = {
                        "url": url,
                        "cache": str(Path(work) / f"cache-{repeat}-{shuffle}-{ranges}"),
                        "batch": options.batch,
                        "workers": options.workers,
                        "shuffle": shuffle,
                        "range_reads": ranges,
                    }
                    row = run_child([__file__], args, env)
                    label = f"shuffled, range reads {ranges}" if shuffle else "unshuffled"
                    print(
                        f"  {label:26s} first batch "
                        f"{row['first']:.2f} s, epoch {row['seconds']:.2f} s, "
                        f"{row['samples'] / row['seconds']:,.0f} samples/s"
                    )


if __name__ == "__main__":
    main()
