"""Where a cold first batch's time goes: a timeline of one iteration, request by request.

Not one of the ``bench_*`` suites: a diagnostic for issue 10's first-batch target. Uploads an
MDS directory (the engine bench's ``<data>/n<N>-<M>mib/mds``, or any) to s3rver or moto, then in
a fresh process runs the first batch of one epoch through ``StreamingDataLoader`` (batch 256, a
collate, ``num_workers=0``) into an empty cache, with the library's request and shard methods
wrapped to stamp every step: index load, epoch plan, window plan, each request (what, when it
was issued, when it ended), each shard opened, and when each of the first batch's samples was
handed over. ``--local`` reads the directory in place instead (no download)::

    python benchmarks/cold_timeline.py /tmp/bench-work/data/n100000-64mib/mds --server s3rver
    python benchmarks/cold_timeline.py /tmp/bench-work/data/n100000-64mib/mds --local
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.cold_start import collate, run_child, s3_serving  # noqa: E402

BATCH = 256


def _child(args: dict[str, Any]) -> dict[str, Any]:
    import torch.utils.data  # noqa: F401  (imported before the clock, as a training job has)

    import astream.engine.prefetch as prefetch
    import astream.storage.s3  # noqa: F401  (the store class, to wrap its methods)
    from astream import StreamingDataLoader, StreamingDataset
    from astream.engine.fetch import Fetcher
    from astream.engine.window import WindowPlan
    from astream.storage.base import Store

    t0 = time.perf_counter()
    events: list[tuple[float, float, str]] = []  # (start, end, what)

    def stamp(what: str, began: float) -> None:
        events.append((began - t0, time.perf_counter() - t0, what))

    def wrap_async(owner: Any, name: str, label: Any) -> None:
        original = getattr(owner, name)

        async def wrapper(*a: Any, **k: Any) -> Any:
            began = time.perf_counter()
            try:
                return await original(*a, **k)
            finally:
                stamp(label(*a, **k), began)

        setattr(owner, name, wrapper)

    def wrap_sync(owner: Any, name: str, label: Any) -> None:
        original = getattr(owner, name)

        def wrapper(*a: Any, **k: Any) -> Any:
            began = time.perf_counter()
            try:
                return original(*a, **k)
            finally:
                stamp(label(*a, **k), began)

        setattr(owner, name, wrapper)

    for cls in Store.__subclasses__():
        for method in ("read_range", "fetch_range_into"):
            if method in vars(cls):
                wrap_async(
                    cls,
                    method,
                    lambda _s, key, start, end, *r, m=method: (
                        f"{m} {key.rsplit('/', 1)[-1]} [{start}, {end}) {end - start} B"
                    ),
                )
        for method in ("read", "stat"):
            if method in vars(cls):
                wrap_async(cls, method, lambda _s, key, m=method: f"{m} {key}")
    wrap_async(Fetcher, "fetch_shard", lambda _f, shard, **k: f"shard {shard} whole (fetch_shard)")
    wrap_sync(prefetch, "open_shard", lambda info, *a, **k: f"open_shard {info.raw.basename}")
    wrap_sync(WindowPlan, "__init__", lambda *a, **k: "WindowPlan")
    wrap_sync(StreamingDataset, "worker_sample_ids", lambda *a, **k: "epoch plan (sample ids)")

    began = time.perf_counter()
    dataset = StreamingDataset(
        remote=args.get("remote"),
        local=args["local"],
        batch_size=BATCH,
        shuffle=args["shuffle"],
        **args.get("options", {}),
    )
    stamp("StreamingDataset() (index load, checks)", began)
    # Which shard each of the first batch's samples lives in, and when it was handed over.
    handed: list[float] = []
    original_iter = StreamingDataset.__iter__

    def iterate(self: Any) -> Any:
        for sample in original_iter(self):
            if len(handed) < BATCH:
                handed.append(time.perf_counter() - t0)
            yield sample

    StreamingDataset.__iter__ = iterate  # type: ignore[method-assign]
    loader = StreamingDataLoader(dataset, batch_size=BATCH, num_workers=0, collate_fn=collate)
    began = time.perf_counter()
    iterator = iter(loader)
    stamp("iter(loader)", began)
    began = time.perf_counter()
    batch = next(iterator)
    stamp("first batch", began)
    first = time.perf_counter() - t0
    for k in range(1, args.get("batches", 1)):
        began = time.perf_counter()
        next(iterator)
        stamp(f"batch {k + 1}", began)
    ids = batch["id"]
    shards = [int(dataset.table.locate([i])[0][0]) for i in ids]
    statistics = repr(dataset.statistics())
    del iterator
    return {
        "first": first,
        "events": sorted(events),
        "handed": handed,
        "shards": shards,
        "statistics": statistics,
    }


def _report(row: dict[str, Any], label: str) -> None:
    print(f"\n== {label}: first batch at {row['first'] * 1e3:.0f} ms")
    events = row["events"]
    requests = [e for e in events if e[2].startswith(("read_range", "fetch_range_into"))]
    other = [e for e in events if e not in requests]
    for start, end, what in other:
        print(f"  {start * 1e3:8.1f} -> {end * 1e3:8.1f} ms  {what}")
    if requests:
        sizes = collections.Counter(
            "range (<1 MiB)" if int(e[2].split()[-2]) < (1 << 20) else "bulk (>=1 MiB)"
            for e in requests
        )
        print(f"  requests: {len(requests)} {dict(sizes)}")
        for start, end, what in requests[:12]:
            print(f"  {start * 1e3:8.1f} -> {end * 1e3:8.1f} ms  {what}")
        if len(requests) > 12:
            print(f"  ... ({len(requests) - 12} more; last ends at {requests[-1][1] * 1e3:.0f} ms)")
    handed = row["handed"]
    shards = row["shards"]
    if handed:
        marks = [0, 1, 7, 31, 63, 127, 191, 255]
        text = ", ".join(f"#{m + 1} {handed[m] * 1e3:.0f}" for m in marks if m < len(handed))
        print(f"  samples handed over (ms): {text}")
        print(f"  first batch spans {len(set(shards))} shards")
    print(f"  {row['statistics']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mds", type=Path, help="an MDS directory (index.json + shards)")
    parser.add_argument("--server", choices=("s3rver", "moto"), default="s3rver")
    parser.add_argument("--local", action="store_true", help="read the directory in place")
    parser.add_argument("--unshuffled", action="store_true", help="also the unshuffled order")
    parser.add_argument("--option", action="append", default=[], help="KEY=JSON for the dataset")
    parser.add_argument("--batches", type=int, default=1, help="batches to stamp (default 1)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        print(json.dumps(_child(json.loads(options.child))))
        return
    extra = {k: json.loads(v) for k, v in (o.split("=", 1) for o in options.option)}
    modes = [True, False] if options.unshuffled else [True]

    def run(args: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
        return run_child([__file__, str(options.mds)], args, env)

    if options.local:
        for shuffle in modes:
            args = {"local": str(options.mds), "shuffle": shuffle, "options": extra}
            args["batches"] = options.batches
            _report(run(args, {}), f"local, {'shuffled' if shuffle else 'unshuffled'}")
        return

    with (
        s3_serving(options.server, options.mds) as (url, env),
        tempfile.TemporaryDirectory(prefix="astream-timeline-") as work,
    ):
        for k, shuffle in enumerate(modes):
            args = {
                "remote": url,
                "local": str(Path(work) / f"cache-{k}"),
                "shuffle": shuffle,
                "options": extra,
                "batches": options.batches,
            }
            label = f"{options.server} cold, {'shuffled' if shuffle else 'unshuffled'}"
            _report(run(args, env), label)


if __name__ == "__main__":
    main()
