"""``astream info``, ``astream ls`` and ``astream verify``: looking at a dataset in a store."""

from __future__ import annotations

import argparse
import functools
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio.to_thread

from astream.cli.output import format_bytes, plural, print_json, print_table, progress
from astream.convert.copy import DEFAULT_CONCURRENCY, read_index, run_limited, stored_files
from astream.engine.loop import io_loop
from astream.errors import AstreamError, ObjectNotFoundError
from astream.format import INDEX_BASENAME, DatasetIndex, FileInfo, ShardInfo
from astream.format.codecs import decompress_file
from astream.format.hashing import hash_file
from astream.storage import Store, open_store
from astream.storage.local import LocalStore

__all__ = ["run_info", "run_ls", "run_verify", "summarize"]


async def _load(url: str) -> tuple[bytes, DatasetIndex]:
    store = open_store(url)
    try:
        return await read_index(store)
    finally:
        await store.aclose()


def _files_of(shard: ShardInfo, compressed: bool) -> list[FileInfo]:
    pair = (shard.zip, shard.zip_meta) if compressed else (shard.raw, shard.raw_meta)
    return [info for info in pair if info is not None]


def summarize(url: str, index: DatasetIndex) -> dict[str, Any]:
    """The facts ``astream info`` shows, as a JSON-ready dict."""
    first = index.shards[0] if index.shards else None
    columns = dict(zip(first.column_names, first.column_encodings, strict=True)) if first else {}
    varies = any(
        (s.column_names, s.column_encodings) != (first.column_names, first.column_encodings)
        for s in index.shards
        if first is not None
    )
    files = [info for shard in index.shards for info in _files_of(shard, False)]
    zipped = [info for shard in index.shards for info in _files_of(shard, True)]
    every = files + zipped
    hashes = sorted({algo for info in every for algo in info.hashes})
    return {
        "url": url,
        "samples": index.samples,
        "shards": len(index.shards),
        "formats": sorted({shard.format for shard in index.shards}),
        "columns": columns,
        "columns_vary": varies,
        "compression": sorted({shard.compression for shard in index.shards if shard.compression}),
        "size_limit": sorted({s.size_limit for s in index.shards if s.size_limit is not None}),
        "raw_bytes": sum(info.bytes for info in files),
        "zip_bytes": sum(info.bytes for info in zipped),
        "stored_bytes": sum(info.bytes for info in stored_files(index)),
        "hashes": hashes,
        "hashes_on_every_file": all(set(hashes) <= set(info.hashes) for info in every),
    }


def _join(items: list[Any], empty: str = "none") -> str:
    return ", ".join(str(item) for item in items) or empty


def run_info(args: argparse.Namespace) -> int:
    """``astream info URL``."""
    _data, index = io_loop().run(_load(args.url))
    facts = summarize(args.url, index)
    if args.json:
        print_json(facts)
        return 0
    columns = ", ".join(f"{name}: {spec}" for name, spec in facts["columns"].items())
    if facts["columns_vary"]:
        columns += " (first shard; other shards differ)"
    hashes = _join(facts["hashes"])
    if facts["hashes"] and not facts["hashes_on_every_file"]:
        hashes += " (not on every file)"
    rows = [
        ("dataset", args.url),
        ("samples", f"{facts['samples']:,}"),
        ("shards", f"{facts['shards']:,} ({_join(facts['formats'])})"),
        ("columns", columns or "none"),
        ("compression", _join(facts["compression"])),
        ("size limit", _join([format_bytes(n) for n in facts["size_limit"]])),
        ("raw size", format_bytes(facts["raw_bytes"])),
        ("compressed size", format_bytes(facts["zip_bytes"]) if facts["compression"] else "-"),
        ("stored size", format_bytes(facts["stored_bytes"])),
        ("hashes", hashes),
    ]
    print_table(rows)
    return 0


async def _listing(url: str) -> list[tuple[str, int]]:
    store = open_store(url)
    try:
        keys = await store.list("")
        if not keys:
            raise ObjectNotFoundError(f"nothing is stored under {url}")
        jobs = [functools.partial(store.stat, key) for key in keys]
        infos = await run_limited(jobs, DEFAULT_CONCURRENCY * 4)
        return [(info.key, info.size) for info in infos]
    finally:
        await store.aclose()


def run_ls(args: argparse.Namespace) -> int:
    """``astream ls URL``: the dataset's files, or with ``--store`` every object there."""
    entries: list[dict[str, Any]] = []
    if not args.store:
        try:
            data, index = io_loop().run(_load(args.url))
        except ObjectNotFoundError:
            index = None
        if index is not None:
            entries.append({"path": INDEX_BASENAME, "bytes": len(data), "shard": None})
            entries.extend(
                {"path": info.basename, "bytes": info.bytes, "shard": number}
                for number, shard in enumerate(index.shards)
                for info in stored_files(DatasetIndex((shard,)))
            )
    if not entries:
        listing = io_loop().run(_listing(args.url))
        entries = [{"path": key, "bytes": size, "shard": None} for key, size in listing]
    if args.json:
        print_json(entries)
        return 0
    rows = [(format_bytes(e["bytes"]), e["path"]) for e in entries]
    total = sum(e["bytes"] for e in entries)
    rows.append((format_bytes(total), f"total ({plural(len(entries), 'file')})"))
    print_table(rows, right=(0,))
    return 0


@dataclass(frozen=True)
class _Problem:
    shard: int
    file: str
    problem: str


def _check_bytes(path: Path, info: FileInfo, algos: list[str] | None) -> list[str]:
    """What is wrong with the file at ``path`` against ``info``: its size, then its hashes."""
    size = path.stat().st_size
    if size != info.bytes:
        return [f"is {size} bytes, the index says {info.bytes}"]
    problems = []
    for algo, expected in sorted(info.hashes.items()):
        if algos is not None and algo not in algos:
            continue
        digest = hash_file(algo, path)
        if digest != expected:
            problems.append(f"{algo} is {digest}, the index says {expected}")
    return problems


async def _verify_shard(
    store: Store, number: int, shard: ShardInfo, algos: list[str] | None, scratch: Path
) -> list[_Problem]:
    problems: list[_Problem] = []
    stored = [info for info in (shard.zip or shard.raw, shard.zip_meta or shard.raw_meta) if info]
    raws = [shard.raw, shard.raw_meta]
    for info, raw in zip(stored, raws, strict=False):
        if isinstance(store, LocalStore):
            path = store.path(info.basename)
            if not path.is_file():
                problems.append(_Problem(number, info.basename, "is missing"))
                continue
        else:
            path = scratch / f"{number}-{Path(info.basename).name}"
            try:
                await store.download(info.basename, path)
            except ObjectNotFoundError:
                problems.append(_Problem(number, info.basename, "is missing"))
                continue
        try:
            found = await anyio.to_thread.run_sync(_check_bytes, path, info, algos)
            problems.extend(_Problem(number, info.basename, p) for p in found)
            if not found and shard.compression and raw is not None:
                # The decompressed bytes have their own size and hashes in the index.
                plain = scratch / f"{number}-{Path(raw.basename).name}.raw"
                try:
                    await anyio.to_thread.run_sync(decompress_file, shard.compression, path, plain)
                    found = await anyio.to_thread.run_sync(_check_bytes, plain, raw, algos)
                except AstreamError as exc:
                    found = [f"does not decompress: {exc}"]
                finally:
                    plain.unlink(missing_ok=True)
                problems.extend(_Problem(number, info.basename, f"decompressed {p}") for p in found)
        finally:
            if path.parent == scratch:
                path.unlink(missing_ok=True)
    return problems


async def _verify(
    url: str, index: DatasetIndex, algos: list[str] | None, on_shard: Callable[[int], None]
) -> list[_Problem]:
    store = open_store(url)
    try:
        with tempfile.TemporaryDirectory(prefix="astream-verify-") as scratch:

            async def one(number: int, shard: ShardInfo) -> list[_Problem]:
                found = await _verify_shard(store, number, shard, algos, Path(scratch))
                on_shard(1)
                return found

            jobs = [functools.partial(one, n, shard) for n, shard in enumerate(index.shards)]
            results = await run_limited(jobs, DEFAULT_CONCURRENCY)
        return [problem for found in results for problem in found]
    finally:
        await store.aclose()


def run_verify(args: argparse.Namespace) -> int:
    """``astream verify URL``: every file's size and hashes; 1 when anything is wrong."""
    algos = [args.hash] if args.hash else None
    _data, index = io_loop().run(_load(args.url))
    present = sorted({algo for info in stored_files(index) for algo in info.hashes})
    if args.hash and args.hash not in present:
        raise AstreamError(
            f"{args.url}: the index records no {args.hash} hashes (it has: {_join(present)})"
        )
    with progress(len(index.shards), "verify", unit="shard") as bar:
        problems = io_loop().run(_verify(args.url, index, algos, bar.update))
    checked = algos or present
    if args.json:
        print_json(
            {
                "url": args.url,
                "shards": len(index.shards),
                "files": len(stored_files(index)),
                "hashes": checked,
                "ok": not problems,
                "problems": [vars(p) for p in problems],
            }
        )
        return 1 if problems else 0
    for p in problems:
        print(f"shard {p.shard}: {p.file} {p.problem}")
    what = f"sizes and {_join(checked)} hashes" if checked else "sizes only (no hashes in index)"
    verdict = plural(len(problems), "problem") if problems else "all ok"
    print(f"{args.url}: {plural(len(index.shards), 'shard')}, {what}: {verdict}")
    return 1 if problems else 0
