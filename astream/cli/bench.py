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

    with tempfile.TemporaryDirectory(prefix="astream-bench-") as cache:
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
        try:
            with progress(total, "bench", unit="sample") as bar:
                for _sample in dataset:
                    if first is None:
                        first = time.perf_counter() - start
                    samples += 1
                    bar.update()
                    if samples >= total:
                        break
            elapsed = time.perf_counter() - start
            stats = dataset.statistics()
        finally:
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
