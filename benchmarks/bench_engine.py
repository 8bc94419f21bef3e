"""astream's ``StreamingDataset`` as training runs it, against mosaicml-streaming, LitData and
WebDataset, every side in the same run, on the same samples.

The headline rows are shuffled epochs through each side's DataLoader (batch 256, a collate,
``num_workers`` 0 and 2), local and cold from S3 (moto and s3rver), on 64 MiB and on 4 MiB
shards; unshuffled rows are context. How each side is run: :mod:`benchmarks.peers`.

Parts (``-o parts=...``, comma-separated; all by default):

- ``loader``: local disk, warm page cache, through the DataLoader.
- ``bare``: local, no DataLoader, ``num_workers=0``, samples (the loader-less targets).
- ``remote``: cold epochs (a fresh cache directory per run) from moto and s3rver.
- ``async``: astream's ``async for`` with a 5 ms ticker task beside it (lateness p50/p99/max),
  cold from s3rver and from an aiohttp file server, and warm local; sync epochs beside them.
- ``resume``: first sample after ``load_state_dict`` at 50% against a fresh start.
- ``rss``: RSS flatness over one long epoch of small samples.

Each row reports time to first batch (TTFB, from construction), samples/s over the epoch
(construction included), steady samples/s (from 20% of the epoch on) and the peak PSS of the
process tree (the process and its DataLoader workers; "anon" counts anonymous and shared
memory only, not mapped shard files). Targets are checked in the same run; a missed one says by
how much. The bench reports; it asserts nothing. A child that fails leaves its error in the notes.

Options (``python -m benchmarks engine -o KEY=VALUE ...``): ``samples`` (default 100,000;
20,000 with ``--quick``), ``shards`` (MiB, default ``64,4``; ``0.25`` gives 100,000 samples in 1,588 shards), ``parts``, ``stores``
(``moto,s3rver``), ``workers`` (``0,2``), ``sides``, ``repeats`` (local runs per row, best
kept; default 2, 1 with ``--quick``), ``data`` (a directory that keeps the written datasets
between invocations), ``max_seconds`` (per epoch, default 60; a slower side reports a partial
epoch).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks import peers
from benchmarks.peers import PEERS, SIDES, WRITERS, spawn, write_mds

LONG_RUN = 20.0
RSS_EVERY = 1000
RSS_SAMPLE_BYTES = 256
CHILD_TIMEOUT = 300.0
MODULE = "benchmarks.bench_engine"
COMMAND = "nox -s bench -- engine"

TableRows = list[dict[str, Any]]

# -- targets ----------------------------------------------------------------------------------


def target(label: str, value: float | None, op: str, goal: float) -> dict[str, Any]:
    """One target: its value, whether it is met, and by how much it is missed."""
    entry: dict[str, Any] = {"target": label, "goal": f"{op} {goal:g}", "value": value}
    if value is None:
        entry.update(met=None, by="not measured")
    elif op == ">=":
        entry["met"] = value >= goal
        entry["by"] = "" if entry["met"] else f"missed: {1 - value / goal:.0%} short of {goal:g}"
    else:
        entry["met"] = value <= goal
        entry["by"] = "" if entry["met"] else f"missed: {value / goal - 1:.0%} over {goal:g}"
    return entry


def _rate(got: dict[str, Any] | None) -> float | None:
    if not got or "error" in got or not got.get("seconds"):
        return None
    return float(got["samples"]) / float(got["seconds"])


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


# -- the datasets -----------------------------------------------------------------------------


class Data:
    """The same ``n`` samples in each side's format, per shard size (MiB), written on demand."""

    def __init__(self, root: Path, n: int, notes: list[str]) -> None:
        self.root, self.n, self.notes = root, n, notes
        self.made: dict[float, dict[str, Path]] = {}

    def dirs(self, mib: float) -> dict[str, Path]:
        """Directories by side (astream and mosaicml-streaming share the MDS files)."""
        if mib in self.made:
            return self.made[mib]
        base = self.root / f"n{self.n}-{mib:g}mib"
        mds = base / "mds"
        if not (mds / "index.json").exists():
            shutil.rmtree(mds, ignore_errors=True)
            write_mds(mds, self.n, _shard_bytes(mib))
        out = {"astream": mds, "mosaicml-streaming": mds}
        for kind in WRITERS:
            directory = base / kind
            done = directory / ".complete"
            if not done.exists():
                shutil.rmtree(directory, ignore_errors=True)
                args = {"task": "write", "kind": kind, "out": str(directory), "n": self.n}
                made = spawn(MODULE, {**args, "shard_bytes": _shard_bytes(mib)}, timeout=1800)
                if "error" in made:
                    self.notes.append(f"data: writing the {kind} copy failed: {made['error']}")
                    continue
                done.touch()
            out[kind] = directory
        os.sync()
        self.made[mib] = out
        return out


def _shard_bytes(mib: float) -> int:
    """A shard size given in MiB (``0.25`` for thousands of shards) in bytes."""
    return int(mib * (1 << 20))


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and not p.name.startswith("."))


# -- one matrix of runs -----------------------------------------------------------------------


class Config:
    """The options of one invocation."""

    def __init__(self, quick: bool, options: dict[str, str]) -> None:
        def listed(key: str, default: str) -> list[str]:
            return [v.strip() for v in options.get(key, default).split(",") if v.strip()]

        self.quick = quick
        self.n = int(options.get("samples", 20_000 if quick else 100_000))
        self.shards = [float(v) for v in listed("shards", "64,4")]
        self.parts = listed("parts", "loader,bare,remote,async,resume,rss")
        self.stores = listed("stores", "moto,s3rver")
        self.workers = [int(v) for v in listed("workers", "0,2")]
        self.sides = [s for s in SIDES if s in listed("sides", ",".join(SIDES))]
        self.repeats = int(options.get("repeats", 1 if quick else 2))
        self.max_seconds = float(options.get("max_seconds", 60))
        self.data = Path(options["data"]) if "data" in options else None


def _run_label(shuffle: bool) -> str:
    return "shuffled" if shuffle else "unshuffled"


def _row(name: str, got: dict[str, Any], best_peer: float | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "name": name,
        "samples/s": _rate(got),
        "steady samples/s": got.get("steady"),
        "TTFB s": got.get("first"),
        "PSS MB": got.get("pss MB"),
        "PSS anon MB": got.get("pss anon MB"),
    }
    if best_peer is not None:
        row["x best peer"] = _ratio(_rate(got), best_peer)
    if got.get("partial"):
        row["name"] += f" (partial: {got['samples']} samples in {got['seconds']:.0f} s)"
    return row


def _best_peer(results: dict[str, dict[str, Any]]) -> tuple[str | None, float | None]:
    rates = {k: _rate(v) for k, v in results.items() if k in PEERS}
    rated = {k: r for k, r in rates.items() if r}
    if not rated:
        return None, None
    best = max(rated, key=lambda k: rated[k])
    return best, rated[best]


def _matrix(
    where: str,
    cfg: Config,
    notes: list[str],
    run: Callable[[str, bool, int], dict[str, Any]],
) -> tuple[TableRows, dict[tuple[bool, int], dict[str, dict[str, Any]]]]:
    """Every side x shuffle x workers at one place; rows with ratios to the best peer."""
    rows: TableRows = []
    found: dict[tuple[bool, int], dict[str, dict[str, Any]]] = {}
    for shuffle in (True, False):
        for workers in cfg.workers:
            results: dict[str, dict[str, Any]] = {}
            for kind in cfg.sides:
                got = run(kind, shuffle, workers)
                label = f"{where}, {_run_label(shuffle)}, w{workers}: {kind}"
                if "error" in got:
                    notes.append(f"{label} failed: {got['error']}")
                    continue
                if got["samples"] != cfg.n and not got.get("partial"):
                    notes.append(f"{label} yielded {got['samples']} samples, not {cfg.n}")
                results[kind] = got
            found[(shuffle, workers)] = results
            best, best_rate = _best_peer(results)
            for kind, got in results.items():
                row = _row(f"{where}, {_run_label(shuffle)}, w{workers}: {kind}", got)
                if kind == "astream":
                    row["x best peer"] = _ratio(_rate(got), best_rate)
                    row["best peer"] = best
                rows.append(row)
    return rows, found


def _first_batch_targets(
    where: str, found: dict[tuple[bool, int], dict[str, dict[str, Any]]], workers: list[int]
) -> list[dict[str, Any]]:
    out = []
    for w in workers:
        shuffled = found.get((True, w), {})
        unshuffled = found.get((False, w), {})
        ours = shuffled.get("astream", {}).get("first")
        base = unshuffled.get("astream", {}).get("first")
        wds = shuffled.get("webdataset", {}).get("first")
        out.append(
            target(
                f"{where}, w{w}: astream shuffled first batch / its unshuffled first batch",
                _ratio(ours, base),
                "<=",
                1.5,
            )
        )
        out.append(
            target(
                f"{where}, w{w}: astream shuffled first batch / WebDataset's shuffled",
                _ratio(ours, wds),
                "<=",
                1.0,
            )
        )
    return out


def _vs_best_targets(
    where: str,
    found: dict[tuple[bool, int], dict[str, dict[str, Any]]],
    goal: float,
    shuffles: tuple[bool, ...],
) -> list[dict[str, Any]]:
    out = []
    for (shuffle, w), results in found.items():
        if shuffle not in shuffles:
            continue
        best, best_rate = _best_peer(results)
        value = _ratio(_rate(results.get("astream")), best_rate)
        label = f"{where}, {_run_label(shuffle)}, w{w}: astream samples/s / best peer ({best})"
        out.append(target(label, value, ">=", goal))
    return out


# -- the parts --------------------------------------------------------------------------------


def _part_loader(cfg: Config, data: Data, notes: list[str]) -> tuple[TableRows, list[Any]]:
    rows: TableRows = []
    targets: list[dict[str, Any]] = []
    for mib in cfg.shards:
        dirs = data.dirs(mib)
        where = f"local {mib:g} MiB"

        def run(kind: str, shuffle: bool, workers: int, dirs: dict[str, Path] = dirs) -> Any:
            if kind not in dirs:
                return {"error": "no data"}
            best: dict[str, Any] | None = None
            for _ in range(cfg.repeats):
                args: dict[str, Any] = {"task": "epoch", "kind": kind, "local": str(dirs[kind])}
                args |= {"shuffle": shuffle, "loader": True, "workers": workers}
                got = spawn(MODULE, {**args, "max_seconds": cfg.max_seconds}, None, CHILD_TIMEOUT)
                if "error" in got or best is None or (_rate(got) or 0) > (_rate(best) or 0):
                    best = got
                if "error" in got or got["seconds"] > LONG_RUN:
                    break
            assert best is not None
            return best

        part_rows, found = _matrix(where, cfg, notes, run)
        rows += part_rows
        targets += _vs_best_targets(where + " DataLoader", found, 1.5, (True,))
        targets += _first_batch_targets(where + " DataLoader", found, cfg.workers)
        for w in cfg.workers:
            ours = found.get((True, w), {}).get("astream")
            base = found.get((False, w), {}).get("astream")
            label = f"{where} DataLoader, w{w}: astream shuffled / astream unshuffled samples/s"
            targets.append(target(label, _ratio(_rate(ours), _rate(base)), ">=", 0.5))
    return rows, targets


def _part_bare(cfg: Config, data: Data, notes: list[str]) -> tuple[TableRows, list[Any]]:
    rows: TableRows = []
    targets: list[dict[str, Any]] = []
    for mib in cfg.shards:
        dirs = data.dirs(mib)
        rates: dict[tuple[str, bool], float | None] = {}
        for shuffle in (True, False):
            for kind in cfg.sides:
                if kind not in dirs:
                    continue
                best: dict[str, Any] | None = None
                for _ in range(cfg.repeats):
                    args: dict[str, Any] = {"task": "epoch", "kind": kind, "local": str(dirs[kind])}
                    args |= {"shuffle": shuffle, "loader": False, "max_seconds": cfg.max_seconds}
                    got = spawn(MODULE, args, None, CHILD_TIMEOUT)
                    if "error" in got:
                        notes.append(f"bare {mib:g} MiB {kind} failed: {got['error']}")
                        break
                    if best is None or (_rate(got) or 0) > (_rate(best) or 0):
                        best = got
                    if got["seconds"] > LONG_RUN:
                        break
                if best is None:
                    continue
                rates[(kind, shuffle)] = _rate(best)
                row = _row(f"local {mib:g} MiB, no DataLoader, {_run_label(shuffle)}: {kind}", best)
                row["TTFB s"] = best.get("first")  # the first sample here, not a batch
                rows.append(row)
        ours_s, ours_u = rates.get(("astream", True)), rates.get(("astream", False))
        where = f"local {mib:g} MiB, no DataLoader, w0"
        targets.append(
            target(
                f"{where}: astream shuffled / astream unshuffled samples/s",
                _ratio(ours_s, ours_u),
                ">=",
                0.5,
            )
        )
        targets.append(
            target(
                f"{where}: astream shuffled / mosaicml-streaming shuffled samples/s",
                _ratio(ours_s, rates.get(("mosaicml-streaming", True))),
                ">=",
                10.0,
            )
        )
    notes.append(
        "bare: no DataLoader, num_workers=0, samples counted one by one; TTFB is the first "
        "sample's; mosaicml-streaming's __iter__ hands samples over from its worker threads, "
        "which poll with time.sleep(0.007), so its epochs stop at max_seconds (partial rows)"
    )
    return rows, targets


async def _upload(root: Path, prefix: str, url: str, options: dict[str, Any]) -> None:
    from astream.storage import open_store

    async with open_store(url, **options) as store:
        for path in _files(root):
            await store.upload(path, f"{prefix}/{path.relative_to(root).as_posix()}")


class Store:
    """A running S3 server with a bucket: what each side needs to reach it."""

    def __init__(self, name: str, endpoint: str, key_id: str, secret: str, bucket: str) -> None:
        self.name, self.endpoint, self.bucket = name, endpoint, bucket
        self.key_id, self.secret = key_id, secret
        self.options = {
            "endpoint_url": endpoint,
            "aws_access_key_id": key_id,
            "aws_secret_access_key": secret,
            "region": "us-east-1",
        }
        # astream and mosaicml-streaming read S3-compatible endpoints from the environment.
        self.env = {
            "AWS_ACCESS_KEY_ID": key_id,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_DEFAULT_REGION": "us-east-1",
            "S3_ENDPOINT_URL": endpoint,
        }
        # LitData takes them as storage_options (boto3 client arguments), its README's way.
        self.litdata = {
            "endpoint_url": endpoint,
            "aws_access_key_id": key_id,
            "aws_secret_access_key": secret,
            "region_name": "us-east-1",
        }


@contextlib.contextmanager
def _server(name: str) -> Iterator[tuple[Store, Callable[[], Store]]]:
    """Start ``name`` (moto or s3rver); yields the store and a function that empties it."""
    if name == "moto":
        from tests.servers.moto_s3 import moto_s3_server

        with moto_s3_server() as moto:

            def fresh() -> Store:
                moto.reset()  # moto holds objects in memory: drop the last shard size's
                bucket = moto.create_bucket()
                return Store(name, moto.endpoint_url, moto.key_id, moto.secret, bucket)

            yield fresh(), fresh
    else:
        from tests.servers.s3rver import s3rver_server

        with s3rver_server(("bench",)) as s3:
            options = s3.store_options()
            store = Store(
                name,
                s3.endpoint_url,
                options["aws_access_key_id"],
                options["aws_secret_access_key"],
                "bench",
            )
            yield store, lambda: store


def _remote_args(kind: str, store: Store, prefix: str, dirs: dict[str, Path]) -> dict[str, Any]:
    """Where ``kind`` reads its copy of the data under ``prefix`` in ``store``."""
    if kind == "webdataset":
        keys = [f"{prefix}/webdataset/{p.name}" for p in _files(dirs[kind])]
        urls = peers.presigned(store.endpoint, store.key_id, store.secret, store.bucket, keys)
        return {"urls": urls}
    if kind == "litdata":
        return {
            "remote": f"s3://{store.bucket}/{prefix}/litdata",
            "storage_options": store.litdata,
        }
    return {"remote": f"s3://{store.bucket}/{prefix}/mds"}


def _part_remote(
    cfg: Config, data: Data, workdir: Path, notes: list[str]
) -> tuple[TableRows, list[Any]]:
    rows: TableRows = []
    targets: list[dict[str, Any]] = []
    runs = 0
    for name in cfg.stores:
        try:
            server = _server(name)
            store, fresh = server.__enter__()
        except Exception as exc:  # a missing server skips its rows, with the reason
            notes.append(f"remote {name}: not run: {type(exc).__name__}: {exc}")
            continue
        try:
            for k, mib in enumerate(cfg.shards):
                dirs = data.dirs(mib)
                if k:
                    store = fresh()
                prefix = f"s{mib:g}"
                started = time.perf_counter()
                for kind in [d for d in ("astream", "litdata", "webdataset") if d in dirs]:
                    folder = "mds" if kind == "astream" else kind
                    root = dirs[kind]
                    asyncio.run(
                        _upload(root, f"{prefix}/{folder}", f"s3://{store.bucket}", store.options)
                    )
                notes.append(
                    f"remote {name} {mib:g} MiB: uploaded every copy in "
                    f"{time.perf_counter() - started:.0f} s"
                )
                where = f"cold {name} {mib:g} MiB"

                def run(
                    kind: str,
                    shuffle: bool,
                    workers: int,
                    store: Store = store,
                    dirs: dict[str, Path] = dirs,
                    prefix: str = prefix,
                ) -> dict[str, Any]:
                    nonlocal runs
                    if kind not in dirs:
                        return {"error": "no data"}
                    runs += 1
                    cache = workdir / f"cache-{runs}"  # fresh and empty for every run
                    args: dict[str, Any] = {"task": "epoch", "kind": kind, "cache": str(cache)}
                    args |= {"shuffle": shuffle, "loader": True, "workers": workers}
                    args |= {"max_seconds": cfg.max_seconds}
                    args |= _remote_args(kind, store, prefix, dirs)
                    try:
                        return spawn(MODULE, args, store.env, CHILD_TIMEOUT)
                    finally:
                        shutil.rmtree(cache, ignore_errors=True)

                part_rows, found = _matrix(where, cfg, notes, run)
                rows += part_rows
                targets += _vs_best_targets(where + " DataLoader", found, 1.2, (True, False))
                targets += _first_batch_targets(where + " DataLoader", found, cfg.workers)
        finally:
            server.__exit__(None, None, None)
    notes.append(
        "remote: every run starts with an empty cache directory; time counts from construction "
        "(each side's library imported before, its S3 client not); WebDataset streams each "
        "shard with pipe:curl from a presigned URL and caches nothing; moto copies the whole "
        "object for every ranged GET (shared/TESTING.md), s3rver is the throughput server"
    )
    return rows, targets


def _part_async(
    cfg: Config, data: Data, workdir: Path, notes: list[str]
) -> tuple[TableRows, list[Any]]:
    """Ticker lateness beside ``async for`` (cold remote, warm local); sync epochs beside."""
    from tests.servers.http_files import http_file_server

    mib = min(cfg.shards)
    dirs = data.dirs(mib)
    mds = dirs["astream"]
    rows: TableRows = []
    targets: list[dict[str, Any]] = []
    runs = 0

    def pair(where: str, place: dict[str, Any], env: dict[str, str] | None, cold: bool) -> None:
        nonlocal runs
        got: dict[str, dict[str, Any]] = {}
        for task in ("async", "epoch"):
            runs += 1
            cache = workdir / f"async-cache-{runs}"
            args: dict[str, Any] = {
                "task": task,
                "kind": "astream",
                "shuffle": True,
                "loader": False,
            }
            args |= {"cache": str(cache), "max_seconds": cfg.max_seconds, **place}
            try:
                got[task] = spawn(MODULE, args, env, CHILD_TIMEOUT)
            finally:
                shutil.rmtree(cache, ignore_errors=True)
            if "error" in got[task]:
                notes.append(f"async {where} {task} failed: {got[task]['error']}")
        a, s = got.get("async", {}), got.get("epoch", {})
        if "error" not in a:
            row = _row(f"{where}, shuffled, w0: astream async for + 5 ms ticker", a)
            for key in ("late p50 ms", "late p99 ms", "late max ms", "gc max ms", "ticks"):
                row[key] = a.get(key)
            rows.append(row)
        if "error" not in s:
            rows.append(_row(f"{where}, shuffled, w0: astream sync for", s))
        if cold:
            targets.append(
                target(f"{where}: ticker lateness p99 ms", a.get("late p99 ms"), "<=", 10)
            )
            targets.append(
                target(f"{where}: ticker lateness max ms", a.get("late max ms"), "<=", 50)
            )
        targets.append(
            target(
                f"{where}: async for / sync samples/s, w0", _ratio(_rate(a), _rate(s)), ">=", 0.8
            )
        )

    if "s3rver" in cfg.stores:
        try:
            with _server("s3rver") as (store, _fresh):
                asyncio.run(_upload(mds, "async/mds", f"s3://{store.bucket}", store.options))
                place = {"remote": f"s3://{store.bucket}/async/mds"}
                pair(f"cold s3rver {mib:g} MiB", place, store.env, cold=True)
        except Exception as exc:
            notes.append(f"async s3rver: not run: {type(exc).__name__}: {exc}")
    with http_file_server(mds.parent) as server:
        pair(f"cold HTTP (aiohttp) {mib:g} MiB", {"remote": f"{server.url}/mds"}, None, cold=True)
    pair(f"local {mib:g} MiB", {"local": str(mds)}, None, cold=False)
    notes.append(
        "async: the dataset is constructed inside the running loop (the ticker sees that too); "
        "a tick's lateness is when it woke minus when it was due (5 ms after the last wake); "
        "each child runs a full gc.collect() after its imports (the first full collection "
        "after importing torch stops every thread for ~90 ms); gc max ms is the longest "
        "garbage collection during the epoch"
    )
    return rows, targets


def _child_resume(args: dict[str, Any]) -> dict[str, Any]:
    """Time to the first sample, fresh or resumed at ``at``, then 1,000 samples on."""
    kind, at = args["kind"], args["at"]
    peers._import(kind)
    started = time.perf_counter()
    dataset: Any = peers.open_side({**args, "shuffle": False, "loader": False})
    if at:
        # The same state dict for both: astream's is mosaicml-streaming's format.
        dataset.load_state_dict(args["state"])
    it = iter(dataset)
    sample = next(it)
    first = time.perf_counter() - started
    for _ in range(999):
        next(it)
    return {"first": first, "id": int(sample["id"]), "thousand": time.perf_counter() - started}


def _part_resume(cfg: Config, data: Data, notes: list[str]) -> tuple[TableRows, list[Any]]:
    from astream import StreamingDataset

    mds = data.dirs(max(cfg.shards))["astream"]
    n = cfg.n
    state = StreamingDataset(local=str(mds), batch_size=1, shuffle=False).state_dict(
        num_samples=n // 2, from_beginning=True
    )
    rows: TableRows = []
    targets: list[dict[str, Any]] = []
    for kind in ("astream", "mosaicml-streaming"):
        best: dict[int, float] = {}
        for _ in range(max(2, cfg.repeats)):
            for at in (0, n // 2):
                task: dict[str, Any] = {
                    "task": "resume",
                    "kind": kind,
                    "local": str(mds),
                    "at": at,
                    "state": state,
                }
                got = spawn(MODULE, task, None, CHILD_TIMEOUT)
                if "error" in got:
                    notes.append(f"resume: {kind} at {at} failed: {got['error']}")
                    continue
                if at and got["id"] != at:
                    notes.append(f"resume: {kind} resumed at sample {got['id']}, not {at}")
                best[at] = min(best.get(at, float("inf")), got["first"])
        if len(best) < 2:
            continue
        fresh, resumed = best[0], best[n // 2]
        rows.append(
            {
                "name": f"resume at 50%: {kind}",
                "first sample s": resumed,
                "fresh first sample s": fresh,
                "resume - fresh s": resumed - fresh,
            }
        )
        if kind == "astream":
            targets.append(
                target("resume first sample - fresh, seconds", resumed - fresh, "<=", 0.2)
            )
    notes.append("resume: times from construction to the first sample (best of 2), local dataset")
    return rows, targets


def _child_rss(args: dict[str, Any]) -> dict[str, Any]:
    import psutil

    import astream

    process = psutil.Process()

    def anon_kb() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
        return 0

    dataset = astream.StreamingDataset(local=args["local"], batch_size=1, shuffle=False)
    rss: list[int] = []
    anon: list[int] = []
    started = time.perf_counter()
    count = 0
    for _ in dataset:
        count += 1
        if count % RSS_EVERY == 0:
            rss.append(process.memory_info().rss)
            anon.append(anon_kb() * 1024)
    return {"samples": count, "seconds": time.perf_counter() - started, "rss": rss, "anon": anon}


def _part_rss(cfg: Config, workdir: Path, notes: list[str]) -> tuple[TableRows, list[Any]]:
    n = 300_000 if cfg.quick else 1_000_000
    small = workdir / "small"
    write_mds(small, n, 1 << 22, size=RSS_SAMPLE_BYTES)
    got = spawn(MODULE, {"task": "rss", "local": str(small)}, None, CHILD_TIMEOUT)
    if "error" in got:
        notes.append(f"rss: failed: {got['error']}")
        return [], []
    quarter = max(1, len(got["rss"]) // 4)
    rows: TableRows = []
    targets: list[dict[str, Any]] = []
    for key, label in (("rss", "RSS"), ("anon", "anonymous RSS")):
        first, last = max(got[key][:quarter]), max(got[key][-quarter:])
        rows.append(
            {
                "name": f"peak {label}, 1 epoch x {n} samples of {RSS_SAMPLE_BYTES} B",
                "first quarter MB": first / 1e6,
                "last quarter MB": last / 1e6,
                "last / first": last / first,
            }
        )
        targets.append(target(f"peak {label} last quarter / first", last / first, "<=", 1.10))
    notes.append(
        f"rss: astream alone, local, 4 MiB shards, sampled every {RSS_EVERY} samples; RSS "
        "counts the mapped pages of the shards a reader holds open, anonymous RSS only the "
        f"process's own memory; {got['samples'] / got['seconds']:,.0f} samples/s while sampling"
    )
    return rows, targets


def _child_write(args: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    WRITERS[args["kind"]](Path(args["out"]), args["n"], args["shard_bytes"])
    return {"seconds": time.perf_counter() - started}


CHILDREN: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    **peers.CHILDREN,
    "resume": _child_resume,
    "rss": _child_rss,
    "write": _child_write,
}

TABLES = {
    "loader": "Local disk, warm, through each side's DataLoader (batch 256 + collate)",
    "bare": "Local disk, warm, no DataLoader (num_workers=0), samples",
    "remote": "Cold epoch from S3 (empty cache), through each side's DataLoader",
    "async": "async for with a 5 ms ticker beside it, against sync iteration (astream)",
    "resume": "Resume at mid-epoch (local)",
    "rss": "Memory over one long epoch (astream)",
}


def _load() -> str:
    try:
        return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "load average unknown"


def _warm_up(cfg: Config, data: Data, notes: list[str]) -> None:
    """One short untimed epoch per side first, its result dropped: the side's library and the
    data come into the page cache, so that no timed row (the first of a fresh checkout most of
    all) reads them from disk, which a training job's second step never does."""
    dirs = data.dirs(min(cfg.shards))
    for kind in cfg.sides:
        if kind in dirs:
            args = {"task": "epoch", "kind": kind, "local": str(dirs[kind]), "shuffle": True}
            spawn(MODULE, {**args, "loader": True, "workers": 0, "max_seconds": 1.0})
    for mib in cfg.shards:  # every copy's bytes, once
        for directory in set(data.dirs(mib).values()):
            for path in _files(directory):
                with path.open("rb") as handle:
                    while handle.read(1 << 20):
                        pass
    notes.append("warm-up: one untimed 1 s epoch per side, and every data file read once, first")


def run(workdir: Path, quick: bool, options: dict[str, str] | None = None) -> dict[str, Any]:
    cfg = Config(quick, options or {})
    extra = " ".join(f"-o {k}={v}" for k, v in sorted((options or {}).items()))
    notes = [
        f"machine: {os.cpu_count()} cores shared with other work (figures noisy); "
        f"python {sys.version.split()[0]}; {_load()} at the start",
        f"command: {COMMAND}" + (" --quick" if quick else "") + (f" {extra}" if extra else ""),
        f"dataset: {cfg.n} samples of {peers.SAMPLE_BYTES} B data (half random) + int id; "
        f"shards of {', '.join(f'{m} MiB' for m in cfg.shards)} (the same bytes limit for every "
        "side's writer)",
    ]
    data = Data(cfg.data or workdir / "data", cfg.n, notes)
    if set(cfg.parts) & {"loader", "bare", "remote", "async", "resume"}:
        _warm_up(cfg, data, notes)
    parts: dict[str, Callable[[], tuple[TableRows, list[Any]]]] = {
        "loader": lambda: _part_loader(cfg, data, notes),
        "bare": lambda: _part_bare(cfg, data, notes),
        "remote": lambda: _part_remote(cfg, data, workdir, notes),
        "async": lambda: _part_async(cfg, data, workdir, notes),
        "resume": lambda: _part_resume(cfg, data, notes),
        "rss": lambda: _part_rss(cfg, workdir, notes),
    }
    tables = []
    targets: list[dict[str, Any]] = []
    for name in cfg.parts:
        if name not in parts:
            notes.append(f"unknown part {name!r} (known: {', '.join(parts)})")
            continue
        started = time.perf_counter()
        part_rows, part_targets = parts[name]()
        tables.append(
            {
                "title": f"{TABLES[name]} ({time.perf_counter() - started:.0f} s; {_load()})",
                "rows": part_rows,
            }
        )
        targets += part_targets
    notes.append(f"{_load()} at the end")
    return {
        "title": f"engine: StreamingDataset as training runs it, {cfg.n} samples, vs the peers",
        "tables": tables,
        "targets": targets,
        "notes": notes,
    }


if __name__ == "__main__":
    peers.child_main(CHILDREN)
