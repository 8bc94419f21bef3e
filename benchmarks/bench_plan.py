"""One worker's sample ids for an epoch: astream's plan against mosaicml-streaming's epoch generation.

World: 8 nodes x 8 ranks x 8 DataLoader workers, per-device batch 32, shuffle ``py1e`` (the
default), shards of 10,000 samples, default canonical nodes (8) and block size. Each side runs in
its own subprocess and reports wall time and peak traced memory (tracemalloc traces numpy's
allocations) for computing worker (node 3, rank 5, worker 2)'s ids, plus the growth of the
process's peak RSS. The reference builds the epoch as its dataset does (``get_partitions`` +
``get_shuffle`` + the two id maps) and slices the worker out. Both sides' ids are compared.

The reference interpreter is ``$ASTREAM_REFERENCE_PYTHON``, else this one when it has
mosaicml-streaming (``nox -s bench``); its stand-in torchvision/transformers modules come from
``tests/interop/_stubs``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NODE, RANK, WORKER = 3, 5, 2

_COMMON = """
import json, resource, sys, time, tracemalloc, warnings
import numpy as np
n, out = int(sys.argv[1]), sys.argv[2]
warnings.simplefilter("ignore")
"""

_ASTREAM = (
    _COMMON
    + """
from astream.plan import EpochPlan, OrderConfig, StreamWeighting, World
cfg = OrderConfig(
    streams=(StreamWeighting(shard_sizes=(10_000,) * (n // 10_000)),), shuffle=True, batch_size=32
)
plan = EpochPlan(cfg)
world = World(num_nodes=8, ranks_per_node=8, workers_per_rank=8, node=3, rank_in_node=5, worker=2)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tracemalloc.start()
t = time.perf_counter()
ids = plan.worker_ids(world, 1, 0)
seconds = time.perf_counter() - t
peak = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
np.save(out, ids)
print(json.dumps({"seconds": seconds, "peak": peak, "rss_kib": rss}))
"""
)

_REFERENCE = (
    _COMMON
    + """
from streaming.base.partition import get_partitions
from streaming.base.shuffle import get_shuffle
units = np.full(n // 10_000, 10_000, np.int64)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tracemalloc.start()
t = time.perf_counter()
# As StreamingDataset.resample_streams + generate_work_random_batching do for one stream.
small_per_big = np.concatenate([o + np.arange(s) for o, s in zip(units.cumsum() - units, units)])
big = get_partitions("relaxed", n, 8, 8, 8, 8, 32, 0, None)
shuffle = get_shuffle("py1e", units, 8, 9176, 1, max(4_000_000 // 8, 1 << 18))
big = np.where(big != -1, shuffle[big], -1)
epoch = np.where(big != -1, small_per_big[big], -1)
ids = epoch[3, 5, 2].flatten()
seconds = time.perf_counter() - t
peak = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
np.save(out, ids)
print(json.dumps({"seconds": seconds, "peak": peak, "rss_kib": rss}))
"""
)


def _reference_python() -> str | None:
    """``$ASTREAM_REFERENCE_PYTHON``, else this interpreter when it has mosaicml-streaming (as
    in ``nox -s bench``)."""
    path = os.environ.get("ASTREAM_REFERENCE_PYTHON")
    if path:
        return path if Path(path).exists() else None
    import importlib.util

    return sys.executable if importlib.util.find_spec("streaming") is not None else None


def _measure(python: str, code: str, n: int, out: Path, env: dict[str, str]) -> dict[str, Any]:
    proc = subprocess.run(
        [python, "-c", code, str(n), str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(ROOT),
        check=False,
    )
    if proc.returncode:
        raise RuntimeError(f"{python} failed for n={n}: {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _row(name: str, n: int, result: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": f"{name} {n // 1_000_000}M",
        "seconds": result["seconds"],
        "peak_mb": result["peak"] / 1e6,
        "bytes_per_sample": result["peak"] / n,
        "rss_mb": result["rss_kib"] / 1024,
    }


def run(workdir: Path, quick: bool) -> dict[str, Any]:
    """Time and peak memory of one worker's ids for epochs of 10M (and 100M) samples."""
    import numpy as np

    sizes = [10_000_000] if quick else [10_000_000, 100_000_000]
    reference = _reference_python()
    ref_env = dict(os.environ)
    stubs = str(ROOT / "tests" / "interop" / "_stubs")
    ref_env["PYTHONPATH"] = os.pathsep.join(p for p in (stubs, ref_env.get("PYTHONPATH")) if p)
    rows: list[dict[str, Any]] = []
    ratios: dict[str, float] = {}
    notes = [
        "world 8 nodes x 8 ranks x 8 workers, batch 32, py1e, shards of 10k samples",
        "peak = tracemalloc peak while computing one worker's ids; rss = growth of peak RSS",
    ]
    if reference is None:
        notes.append("reference interpreter not found: astream measured alone")
    for n in sizes:
        ours = _measure(sys.executable, _ASTREAM, n, workdir / f"astream-{n}.npy", dict(os.environ))
        rows.append(_row("astream", n, ours))
        if reference is None:
            continue
        theirs = _measure(reference, _REFERENCE, n, workdir / f"reference-{n}.npy", ref_env)
        same = bool(
            np.array_equal(
                np.load(workdir / f"astream-{n}.npy"), np.load(workdir / f"reference-{n}.npy")
            )
        )
        rows.append(_row("mosaicml-streaming", n, theirs))
        label = f"{n // 1_000_000}M"
        ratios[f"speed vs reference {label}"] = theirs["seconds"] / ours["seconds"]
        ratios[f"memory vs reference {label}"] = theirs["peak"] / ours["peak"]
        notes.append(f"{label}: worker ids identical to the reference's: {same}")
    return {
        "title": "sample order: one worker's ids",
        "rows": rows,
        "ratios": ratios,
        "notes": notes,
    }
