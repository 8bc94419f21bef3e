"""Decode every sample of a local MDS dataset: astream's shard reader against mosaicml-streaming's.

The dataset: 100,000 samples (20,000 with ``--quick``) of two columns, ``data`` (4,096 bytes, half
of them random, so that zstd has something to do) and ``id`` (int), in shards of the default
64 MiB limit; written once by astream's ``LocalMDSWriter``, uncompressed and as zstd. Both readers then
decode every sample in order over the same files:

- astream: ``open_shard`` per shard, ``reader[i]`` per sample (one mmap per shard);
- mosaicml-streaming: its ``MDSReader`` (built with ``reader_from_json``), ``get_item(i)`` per
  sample, which opens the shard file for each sample.

For zstd each side first decompresses the shards next to them with its own codec (astream's
``decompress_file``, the reference's ``decompress``); that time is reported apart and in the
end-to-end rate. Files are read with a warm page cache (just written and synced). Each
measurement is the best of ``REPEATS`` rounds, in which the two sides take turns. If
``streaming`` does not import, astream is measured alone.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

REPEATS = 3
SAMPLE_BYTES = 4096
COLUMNS = {"data": "bytes", "id": "int"}


def _write(out: Path, n: int, compression: str | None) -> None:
    from astream.format import LocalMDSWriter

    rng = np.random.default_rng(0)
    half = SAMPLE_BYTES // 2
    # Rows of half random, half repeated bytes: zstd about halves them.
    pool = rng.integers(0, 256, size=(1024, half), dtype=np.uint8)
    with LocalMDSWriter(out=str(out), columns=COLUMNS, compression=compression) as writer:
        for i in range(n):
            row = pool[i % 1024].tobytes()
            writer.write({"data": row + bytes([i % 251]) * half, "id": i})
    # Let writeback finish, so that it does not compete with the first measurement.
    os.sync()


def _shards(directory: Path) -> list[dict[str, Any]]:
    shards: list[dict[str, Any]] = json.loads((directory / "index.json").read_bytes())["shards"]
    return shards


def _remove_raw(directory: Path) -> None:
    for shard in _shards(directory):
        if shard["zip_data"]:
            (directory / shard["raw_data"]["basename"]).unlink(missing_ok=True)


def _astream_decompress(directory: Path) -> None:
    from astream.format import decompress_file

    for shard in _shards(directory):
        if shard["zip_data"]:
            decompress_file(
                shard["compression"],
                directory / shard["zip_data"]["basename"],
                directory / shard["raw_data"]["basename"],
            )


def _astream_read(directory: Path) -> tuple[int, int]:
    from astream.format import load_index, open_shard

    path = directory / "index.json"
    index = load_index(path.read_bytes(), source=str(path))
    count = checksum = 0
    for info in index.shards:
        with open_shard(info, directory) as reader:
            for i in range(len(reader)):
                sample = reader[i]
                checksum += sample["id"] + len(sample["data"])
                count += 1
    return count, checksum


def _reference_decompress(directory: Path) -> None:
    from streaming.base.compression import decompress

    for shard in _shards(directory):
        if shard["zip_data"]:
            data = (directory / shard["zip_data"]["basename"]).read_bytes()
            (directory / shard["raw_data"]["basename"]).write_bytes(
                decompress(shard["compression"], data)
            )


def _reference_read(directory: Path) -> tuple[int, int]:
    from streaming.base.format import reader_from_json

    count = checksum = 0
    for shard in _shards(directory):
        reader = reader_from_json(str(directory), None, shard)
        for i in range(reader.samples):
            sample = reader.get_item(i)
            checksum += sample["id"] + len(sample["data"])
            count += 1
    return count, checksum


class _Side(NamedTuple):
    name: str
    read: Callable[[Path], tuple[int, int]]
    decompress: Callable[[Path], None]


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def _measure(
    sides: list[_Side], directory: Path, n: int, compressed: bool
) -> list[tuple[dict[str, Any], int]]:
    """Best-of-REPEATS rows per side; the sides take turns in each round, so that both see the
    same machine load. A compressed round decompresses with the side's own codec, then reads."""
    best_unzip = [float("inf")] * len(sides)
    best_read = [float("inf")] * len(sides)
    checksums = [0] * len(sides)
    for _ in range(REPEATS):
        for k, side in enumerate(sides):
            if compressed:
                _remove_raw(directory)
                unzip_s, _ = _timed(lambda side=side: side.decompress(directory))
                best_unzip[k] = min(best_unzip[k], unzip_s)
            read_s, (count, checksums[k]) = _timed(lambda side=side: side.read(directory))
            if count != n:
                raise RuntimeError(f"{side.name}: read {count} samples, expected {n}")
            best_read[k] = min(best_read[k], read_s)
    results = []
    for k, side in enumerate(sides):
        unzip_s = best_unzip[k] if compressed else 0.0
        row: dict[str, Any] = {"name": side.name}
        if compressed:
            row["decompress_s"] = unzip_s
        row["read_s"] = best_read[k]
        row["samples_per_s"] = n / best_read[k]
        row["end_to_end_samples_per_s"] = n / (best_read[k] + unzip_s)
        results.append((row, checksums[k]))
    return results


def run(workdir: Path, quick: bool) -> dict[str, Any]:
    """Samples per second decoding a local MDS dataset, astream vs mosaicml-streaming."""
    n = 20_000 if quick else 100_000
    try:
        import streaming  # noqa: F401
    except ImportError:
        have_reference = False
    else:
        have_reference = True
    notes = [
        f"{n:,} samples of a {SAMPLE_BYTES}-byte bytes column and an int column, "
        "default 64 MiB shards, written by astream's LocalMDSWriter",
        f"best of {REPEATS} rounds (the readers take turns) over a warm page cache; zstd rows decompress every shard first "
        "(decompress_s, its own codec each) and end_to_end counts that time",
    ]
    if not have_reference:
        notes.append("mosaicml-streaming does not import here: astream measured alone")
    rows: list[dict[str, Any]] = []
    ratios: dict[str, float] = {}
    for compression in (None, "zstd"):
        label = compression or "uncompressed"
        directory = workdir / label
        _write(directory, n, compression)
        sides = [_Side(f"astream {label}", _astream_read, _astream_decompress)]
        if have_reference:
            sides.append(
                _Side(f"mosaicml-streaming {label}", _reference_read, _reference_decompress)
            )
        measured = _measure(sides, directory, n, compressed=compression is not None)
        rows.extend(row for row, _ in measured)
        if not have_reference:
            continue
        (ours, our_sum), (theirs, their_sum) = measured
        if our_sum != their_sum:
            raise RuntimeError(f"{label}: the two readers decoded different samples")
        ratios[f"read {label}"] = ours["samples_per_s"] / theirs["samples_per_s"]
        if compression:
            ratios[f"end to end {label}"] = (
                ours["end_to_end_samples_per_s"] / theirs["end_to_end_samples_per_s"]
            )
    return {
        "title": "format: decode every sample of a local MDS dataset",
        "rows": rows,
        "ratios": ratios,
        "notes": notes,
    }
