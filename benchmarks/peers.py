"""How the engine benchmark runs astream and each peer, the way their own users run them.

Every side reads the same samples (a 4,096-byte ``data`` column, half random, and an ``int``
``id``), written once per shard size into each side's own format, and is driven as a training
job drives it:

- **astream**: ``StreamingDataset(remote=..., local=<cache>, batch_size=256, shuffle=...)``
  through ``astream.StreamingDataLoader(batch_size=256, num_workers=N, collate_fn=collate)``.
- **mosaicml-streaming** 0.13.0: the same keyword arguments on its ``StreamingDataset``, through
  its own ``StreamingDataLoader`` (its README's training loop); S3 through boto3 with
  ``S3_ENDPOINT_URL``, as its docs configure an S3-compatible store.
- **LitData**: its ``optimize()`` output, ``StreamingDataset(input_dir, shuffle=...)`` (remote:
  ``cache_dir`` and ``storage_options`` with the endpoint and keys, its README's way), through
  its ``StreamingDataLoader``.
- **WebDataset**: tar shards, ``WebDataset(urls, shardshuffle=<number of shards>)`` +
  ``.shuffle(1000)`` (the sample buffer of its docs) + ``.batched(256, collation_fn=collate)``,
  through ``WebLoader(batch_size=None, num_workers=N)`` (batching in the workers, as its docs
  recommend). Remote shards are read with ``pipe:curl`` from presigned URLs (WebDataset has no
  S3 client; ``pipe:`` + curl is its documented way to stream from object stores).

Each measurement runs in a fresh interpreter (:func:`spawn`); the parent samples the child's
process tree (the child, its DataLoader workers, curl) for PSS from ``/proc/PID/smaps_rollup``
every :data:`PSS_EVERY` seconds while it runs, so the measured process does no sampling itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SAMPLE_BYTES = 4096
BATCH = 256
WDS_BUFFER = 1000
PSS_EVERY = 0.2
#: The share of the epoch after which "steady" samples/s is counted (start-up excluded).
STEADY_FROM = 0.2
TICK = 0.005

PEERS = ("mosaicml-streaming", "litdata", "webdataset")
SIDES = ("astream", *PEERS)
MODULES = {
    "astream": "astream",
    "mosaicml-streaming": "streaming",
    "litdata": "litdata",
    "webdataset": "webdataset",
}

# -- the samples, in each side's format ------------------------------------------------------

_POOL: np.ndarray[Any, Any] | None = None


def sample(i: int, size: int = SAMPLE_BYTES) -> dict[str, Any]:
    """Sample ``i``: half random bytes (from a fixed pool), half one repeated byte; and its id."""
    global _POOL
    if _POOL is None:
        _POOL = np.random.default_rng(0).integers(0, 256, size=(1024, 2048), dtype=np.uint8)
    half = size // 2
    row = _POOL[i % 1024, :half].tobytes()
    return {"data": row + bytes([i % 251]) * half, "id": i}


def write_mds(out: Path, n: int, shard_bytes: int, size: int = SAMPLE_BYTES) -> None:
    from astream import MDSWriter

    columns = {"data": "bytes", "id": "int"}
    with MDSWriter(out=str(out), columns=columns, size_limit=shard_bytes) as writer:
        for i in range(n):
            writer.write(sample(i, size))


def litdata_sample(i: int) -> dict[str, Any]:
    """litdata's ``optimize`` needs a top-level function."""
    return sample(i)


def write_litdata(out: Path, n: int, shard_bytes: int) -> None:
    from litdata import optimize

    optimize(
        fn=litdata_sample,
        inputs=list(range(n)),
        output_dir=str(out),
        chunk_bytes=shard_bytes,
        num_workers=1,
        verbose=False,
    )


def write_wds(out: Path, n: int, shard_bytes: int) -> None:
    import webdataset as wds

    out.mkdir(parents=True, exist_ok=True)
    pattern = str(out / "shard-%06d.tar")
    with wds.ShardWriter(pattern, maxsize=shard_bytes, maxcount=10**9, verbose=0) as sink:
        for i in range(n):
            s = sample(i)
            sink.write({"__key__": f"{i:08d}", "data": s["data"], "id": str(i).encode()})


WRITERS: dict[str, Callable[[Path, int, int], None]] = {
    "litdata": write_litdata,
    "webdataset": write_wds,
}


def wds_urls(directory: Path) -> list[str]:
    return sorted(str(p) for p in directory.glob("shard-*.tar"))


# -- what every side hands the training loop --------------------------------------------------


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """A training collate: the ids as one int64 tensor, the payloads as one uint8 tensor."""
    import torch

    ids = torch.tensor([int(s["id"]) for s in samples], dtype=torch.int64)
    data = torch.frombuffer(bytearray(b"".join(s["data"] for s in samples)), dtype=torch.uint8)
    return {"id": ids, "data": data.view(len(samples), -1)}


def wds_decode(s: dict[str, Any]) -> dict[str, Any]:
    """A WebDataset sample as the others give it: ``data`` bytes and an ``int`` id."""
    return {"data": s["data"], "id": int(s["id"])}


def _import(kind: str) -> None:
    """Import ``kind``'s library (and torch) outside the timed region, as a training job has."""
    import torch.utils.data  # noqa: F401

    module = __import__(MODULES[kind])
    if kind == "webdataset":
        module.WebLoader  # noqa: B018
    else:
        module.StreamingDataset  # noqa: B018
        module.StreamingDataLoader  # noqa: B018


def open_side(args: dict[str, Any]) -> Iterable[Any]:
    """The iterable a training loop of ``args["kind"]`` runs: batches, or samples without a loader.

    ``args``: ``kind``, ``shuffle``, ``loader`` (through the side's DataLoader), ``workers``,
    and where the data is: ``local`` (a directory read in place), or ``remote`` + ``cache``
    (``urls`` for WebDataset, ``storage_options`` for LitData).
    """
    kind, shuffle, workers = args["kind"], args["shuffle"], args.get("workers", 0)
    module: Any = sys.modules[MODULES[kind]]
    if kind == "webdataset":
        urls = args["urls"] if "urls" in args else wds_urls(Path(args["local"]))
        pipeline = module.WebDataset(
            urls, shardshuffle=len(urls) if shuffle else False, empty_check=False
        )
        if shuffle:
            pipeline = pipeline.shuffle(WDS_BUFFER)
        pipeline = pipeline.map(wds_decode)
        if not args["loader"]:
            return pipeline  # type: ignore[no-any-return]
        batched = pipeline.batched(BATCH, collation_fn=collate, partial=True)
        return module.WebLoader(batched, batch_size=None, num_workers=workers)  # type: ignore[no-any-return]
    if kind == "litdata":
        options: dict[str, Any] = {"shuffle": shuffle}
        if args.get("remote"):
            options["cache_dir"] = args["cache"]
            options["storage_options"] = args.get("storage_options", {})
            # Its chunk downloads go through obstore, whose client refuses http:// endpoints
            # unless told (a real S3 endpoint is https://, where this is not needed); LitData
            # exposes no setting for it, so the benchmark sets it in LitData's client options.
            downloader = sys.modules["litdata.streaming.downloader"]
            with contextlib.suppress(AttributeError, TypeError):
                downloader._OBSTORE_CLIENT_OPTIONS["allow_http"] = "true"
        dataset = module.StreamingDataset(args.get("remote") or args["local"], **options)
    else:  # astream and mosaicml-streaming: the same keyword arguments
        remote = args.get("remote")
        local = args["cache"] if remote else args["local"]
        dataset = module.StreamingDataset(
            remote=remote, local=local, batch_size=BATCH, shuffle=shuffle
        )
    if not args["loader"]:
        return dataset  # type: ignore[no-any-return]
    return module.StreamingDataLoader(  # type: ignore[no-any-return]
        dataset, batch_size=BATCH, num_workers=workers, collate_fn=collate
    )


def _count(item: Any) -> tuple[int, int]:
    """(samples, payload bytes) of a batch (a collated dict) or of one sample."""
    data = item["data"]
    if hasattr(data, "numel"):
        return int(data.shape[0]), int(data.numel())
    return 1, len(data)


# -- what a child measures --------------------------------------------------------------------


def child_epoch(args: dict[str, Any]) -> dict[str, Any]:
    """One epoch of ``open_side(args)``: TTFB, samples/s, steady samples/s (clock: construction).

    Stops early after ``max_seconds`` (then ``partial``). Without a loader a timestamp is taken
    every :data:`BATCH` samples, so both modes record the same resolution.
    """
    kind = args["kind"]
    _import(kind)
    budget = args.get("max_seconds") or float("inf")
    started = time.perf_counter()
    iterable = open_side(args)
    iterator = iter(iterable)
    constructed = time.perf_counter() - started
    first: float | None = None
    samples = total = 0
    stamps: list[tuple[float, int]] = []
    partial = False
    per_stamp = 1 if args["loader"] else BATCH
    for k, item in enumerate(iterator):
        count, size = _count(item)
        samples += count
        total += size
        if k % per_stamp == 0:
            now = time.perf_counter() - started
            if first is None:
                first = now
            stamps.append((now, samples))
            if now > budget:
                partial = True
                break
    seconds = time.perf_counter() - started
    stamps.append((seconds, samples))
    steady = _steady(stamps, samples)
    result: dict[str, Any] = {
        "samples": samples,
        "bytes": total,
        "seconds": seconds,
        "first": first,
        "construct": constructed,
        "steady": steady,
        "partial": partial,
    }
    if kind == "astream":
        dataset: Any = getattr(iterable, "dataset", iterable)
        with contextlib.suppress(Exception):
            result["statistics"] = repr(dataset.statistics())
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if partial and shutdown is not None:
        shutdown()
    return result


def _steady(stamps: list[tuple[float, int]], samples: int) -> float | None:
    """samples/s from the stamp where :data:`STEADY_FROM` of the samples were out, to the end."""
    start = next(((t, s) for t, s in stamps if s >= STEADY_FROM * samples), None)
    end = stamps[-1]
    if start is None or end[0] <= start[0] or end[1] <= start[1]:
        return None
    return (end[1] - start[1]) / (end[0] - start[0])


def child_async(args: dict[str, Any]) -> dict[str, Any]:
    """astream's ``async for`` over one epoch, with a :data:`TICK` ticker task beside it.

    The dataset is constructed inside the running loop (as an async program does), so the
    ticker also sees construction. Lateness of a tick: when it woke minus when it was due.

    Python's cyclic garbage collector stops every thread while it runs, and its first full
    collection after ``import torch`` (about 170,000 objects) takes about 90 ms on the 2-core
    machine, whatever runs the loop. A program that has been running has made it; so does this
    child, before the loop starts. Collections during the epoch are reported (``gc max ms``).
    """
    import gc

    import astream

    _import("astream")
    gc.collect()
    pauses: list[float] = []
    started_gc: list[float] = []

    def on_gc(phase: str, _info: dict[str, Any]) -> None:
        if phase == "start":
            started_gc[:] = [time.perf_counter()]
        elif started_gc:
            pauses.append(time.perf_counter() - started_gc[0])

    gc.callbacks.append(on_gc)

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        late: list[float] = []
        stop = asyncio.Event()

        async def ticker() -> None:
            woke = loop.time()
            while not stop.is_set():
                await asyncio.sleep(TICK)
                now = loop.time()
                late.append(now - woke - TICK)
                woke = now

        task = asyncio.create_task(ticker()) if args.get("ticker", True) else None
        await asyncio.sleep(0)
        started = time.perf_counter()
        remote = args.get("remote")
        dataset = astream.StreamingDataset(
            remote=remote,
            local=args["cache"] if remote else args["local"],
            batch_size=BATCH,
            shuffle=args["shuffle"],
        )
        first: float | None = None
        samples = 0
        stamps: list[tuple[float, int]] = []
        async for s in dataset:
            samples += 1
            _ = len(s["data"]), int(s["id"])
            if samples % BATCH == 1:
                now = time.perf_counter() - started
                if first is None:
                    first = now
                stamps.append((now, samples))
        seconds = time.perf_counter() - started
        stamps.append((seconds, samples))
        stop.set()
        if task is not None:
            await task
        result: dict[str, Any] = {
            "samples": samples,
            "seconds": seconds,
            "first": first,
            "steady": _steady(stamps, samples),
            "statistics": repr(dataset.statistics()),
        }
        if late:
            ms = np.array(late) * 1e3
            result["ticks"] = len(late)
            result["ticks due"] = int(seconds / TICK)
            result["late p50 ms"] = float(np.percentile(ms, 50))
            result["late p99 ms"] = float(np.percentile(ms, 99))
            result["late max ms"] = float(ms.max())
        result["gc max ms"] = max(pauses, default=0.0) * 1e3
        return result

    return asyncio.run(main())


CHILDREN: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "epoch": child_epoch,
    "async": child_async,
}


def child_main(children: dict[str, Callable[[dict[str, Any]], dict[str, Any]]]) -> None:
    """The entry point of a child: run the task of the JSON file named by ``argv[1]``, print its
    result, skip teardown."""
    args = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    result = children[args["task"]](args)
    sys.stdout.flush()
    print("\n@@RESULT@@" + json.dumps(result))
    sys.stdout.flush()
    # Skip interpreter teardown: peers' threads and finalizers are not what we measure.
    os._exit(0)


# -- the parent: run a child, sample its process tree's memory --------------------------------


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (from /proc/PID/task/*/children)."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError):
                    text = Path(f"/proc/{p}/task/{task}/children").read_text()
                    todo.extend(int(c) for c in text.split())
    return pids


def _pss(pids: Iterable[int]) -> tuple[int, int]:
    """(PSS, PSS of anonymous + shared memory) of ``pids`` in bytes, from smaps_rollup."""
    pss = private = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                key, _, rest = line.partition(":")
                if key == "Pss":
                    pss += int(rest.split()[0]) * 1024
                elif key in ("Pss_Anon", "Pss_Shmem"):
                    private += int(rest.split()[0]) * 1024
    return pss, private


def spawn(
    module: str, args: dict[str, Any], env: dict[str, str] | None = None, timeout: float = 600.0
) -> dict[str, Any]:
    """Run one task in a fresh interpreter (``python -m module``); its result with the peak PSS
    of its process tree (``pss MB``, ``pss anon MB``), or ``{"error": ...}``."""
    full_env = {**os.environ, **(env or {})}
    with tempfile.TemporaryDirectory(prefix="bench-child-") as tmp:
        # Its own temp dir: mosaicml-streaming leaves lock files there (shared/TESTING.md).
        full_env["TMPDIR"] = tmp
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        # In a file, not on the command line: thousands of shard URLs pass argv's limit.
        task = Path(tmp) / "task.json"
        task.write_text(json.dumps(args), encoding="utf-8")
        with out.open("wb") as stdout, err.open("wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", module, str(task)],
                cwd=ROOT,
                env=full_env,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
            )
            peak = peak_private = 0
            seen: set[int] = set()
            deadline = time.monotonic() + timeout
            timed_out = False
            while process.poll() is None:
                pids = _tree(process.pid)
                seen.update(pids)
                pss, private = _pss(pids)
                peak, peak_private = max(peak, pss), max(peak_private, private)
                if time.monotonic() > deadline:
                    timed_out = True
                    break
                time.sleep(PSS_EVERY)
            # The child exits with os._exit: end what it left (its DataLoader workers, curl).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        stdout_text = out.read_text(errors="replace")
        stderr_text = err.read_text(errors="replace")
    if timed_out:
        return {"error": f"timed out after {timeout:.0f} s"}
    marker = stdout_text.rfind("@@RESULT@@")
    if process.returncode != 0 or marker < 0:
        tail = (stderr_text or stdout_text).strip().splitlines()[-3:]
        return {"error": f"exit {process.returncode}: {' | '.join(tail)}"}
    result: dict[str, Any] = json.loads(stdout_text[marker + len("@@RESULT@@") :])
    result["pss MB"] = peak / 1e6
    result["pss anon MB"] = peak_private / 1e6
    return result


# -- remote stores ----------------------------------------------------------------------------


def presigned(endpoint: str, key_id: str, secret: str, bucket: str, keys: list[str]) -> list[str]:
    """WebDataset's shard URLs: ``pipe:curl`` of a presigned GET of each key."""
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )
    urls = [
        client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=24 * 3600
        )
        for key in keys
    ]
    return [f"pipe:curl -s -f -L {shlex.quote(url)}" for url in urls]
