"""``astream bench URL``: stream a dataset once, as training would, and time it."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from typing import Any

from astream.cli.output import format_bytes, print_json, progress

__all__ = ["run_bench"]


def run_bench(args: argparse.Namespace) -> int:
    """Read every sample (or ``--limit``) through :class:`~astream.StreamingDataset`."""
    from astream.dataset import StreamingDataset  # the engine loads only for this command

    # ignore_cleanup_errors: a shard the engine prefetched past the last sample read may land
    # while the folder is removed.
    with tempfile.TemporaryDirectory(prefix="astream-bench-", ignore_cleanup_errors=True) as cache:
        start = time.perf_counter()
        dataset = StreamingDataset(
            remote=args.url,
            local=cache,
            validate_hash=args.validate_hash,
            shuffle=args.shuffle,
        )
        total = dataset.num_samples if args.limit is None else min(args.limit, dataset.num_samples)
        first: float | None = None
        samples = 0
        samples_iter = iter(dataset)
        try:
            with progress(total, "bench", unit="sample") as bar:
                for _sample in samples_iter:
                    if first is None:
                        first = time.perf_counter() - start
                    samples += 1
                    bar.update()
                    if samples >= total:
                        break
            elapsed = time.perf_counter() - start
            stats = dataset.statistics()
        finally:
            close = getattr(samples_iter, "close", None)
            if close is not None:
                close()  # stops the prefetcher now, not when the generator is collected
            dataset.close()
    result: dict[str, Any] = {
        "url": args.url,
        "samples": samples,
        "seconds": elapsed,
        "samples_per_s": samples / elapsed if elapsed > 0 else 0.0,
        "bytes_downloaded": stats.bytes_downloaded,
        "mb_per_s": stats.bytes_downloaded / elapsed / 1e6 if elapsed > 0 else 0.0,
        "first_sample_s": first,
        "consumer_wait_s": stats.consumer_wait_s,
        "retries": stats.retries,
    }
    if args.json:
        print_json(result)
        return 0
    sys.stdout.write(
        f"{args.url}: {samples:,} samples in {elapsed:.2f} s: "
        f"{result['samples_per_s']:,.0f} samples/s, "
        f"{format_bytes(stats.bytes_downloaded)} at {result['mb_per_s']:.1f} MB/s; "
        f"first sample after {first if first is not None else float('nan'):.3f} s\n"
    )
    return 0
