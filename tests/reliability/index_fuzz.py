"""Seeded mutations of ``index.json`` and shard headers, each read through the whole engine.

Run as a script (``python index_fuzz.py WORKDIR SEED COUNT``) in a process with an address-space
limit: it writes small datasets, applies ``COUNT`` mutations drawn from ``SEED`` one at a time,
streams each mutated dataset from a local "remote" into a fresh cache, and prints one JSON line
per mutation: ``{"mutation": ..., "outcome": ...}`` where the outcome is ``"exact"`` (the same
samples as the unmutated dataset), ``"error:<AstreamError subclass>"``, or anything else
(``"bad:<type>: <message>"``, ``"different"``): a failure the caller reports.

Used by ``test_index_fuzz.py`` and the ``soak`` nox session.
"""

from __future__ import annotations

import copy
import json
import random
import shutil
import signal
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Values a hostile or broken index may hold where a number or a string belongs.
NUMBERS: list[Any] = [
    -1,
    0,
    1,
    3,
    2**31,
    2**32 - 1,
    2**32,
    2**33,
    2**63,
    2**64,
    10**30,
    2_000_000_000,
    1e30,
    -1e30,
    0.5,
    float("nan"),
    "7",
    None,
    True,
    [],
    {},
]
STRINGS: list[Any] = [
    "",
    ".",
    "..",
    "../x",
    "/etc/passwd",
    "C:x",
    "a\\b",
    "x\x00y",
    ".astream/shards/x.json",
    ".astream/locks/a.lock",
    "index.json",
    "shard.00000.mds/inner",
    "sub/../../x",
    "a" * 5000,
    "pkl",
    "str",
    "int",
    "bytes",
    "ndarray:float32:999999999999",
    "str_int",
    "zstd",
    "gz",
    "br",
    "snappy",
    "zstd:99",
    "sha1",
    "nope",
    "\n",
    ",",
    7,
    None,
    [],
    {},
]
INDEX_TEXTS = [
    "",
    "null",
    "[]",
    "{}",
    '{"version": 2}',
    '{"version": 2, "shards": {}}',
    "[" * 100_000 + "]" * 100_000,
    '{"version": 2, "shards": [' + "{}," * 10 + "{}]}",
]

Mutation = tuple[str, Callable[[Path], None]]


def _index(root: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((root / "index.json").read_text())
    return loaded


def _save(root: Path, index: Any) -> None:
    (root / "index.json").write_text(json.dumps(index))


def _leaves(obj: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths of every value in the JSON tree (containers included)."""
    out = [path] if path else []
    if isinstance(obj, dict):
        for key, value in obj.items():
            out += _leaves(value, (*path, key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            out += _leaves(value, (*path, i))
    return out


def _get(obj: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        obj = obj[key]
    return obj


def _set(value: Any, path: tuple[Any, ...], delete: bool = False) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        index = _index(root)
        parent = _get(index, path[:-1])
        if delete:
            del parent[path[-1]]
        else:
            parent[path[-1]] = copy.deepcopy(value)
        _save(root, index)

    return apply


def _text(text: str) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        (root / "index.json").write_text(text)

    return apply


def _raw_edit(edit: Callable[[bytearray], bytes], name: str) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        path = root / name
        path.write_bytes(edit(bytearray(path.read_bytes())))

    return apply


def _u32(offset: int, value: int) -> Callable[[bytearray], bytes]:
    def edit(data: bytearray) -> bytes:
        struct.pack_into("<I", data, offset, value % 2**32)
        return bytes(data)

    return edit


def mutations(base: Path, rng: random.Random, count: int) -> list[Mutation]:
    """``count`` mutations of the dataset at ``base`` (each applies to a fresh copy)."""
    index = _index(base)
    leaves = _leaves(index)
    shards = index["shards"]
    out: list[Mutation] = []
    while len(out) < count:
        kind = rng.random()
        if kind < 0.45:
            path = rng.choice(leaves)
            current = _get(index, path)
            pool = NUMBERS if isinstance(current, int | float) else STRINGS
            value = rng.choice(pool + NUMBERS if rng.random() < 0.2 else pool)
            if path[-1] == "samples" and value == 0:
                continue  # an empty shard is a valid index: its samples are simply gone
            if value == "shard.00000.mds/inner" and len(shards) > 1:
                value = shards[0]["raw_data"]["basename"] + "/inner"
            out.append((f"set {path} = {str(value)[:40]!r}", _set(value, path)))
        elif kind < 0.55:
            path = rng.choice(leaves)
            if path[:1] == ("shards",) and len(path) == 2:
                continue  # a shard left out of a valid index: its samples are simply gone
            if isinstance(path[-1], str) or isinstance(_get(index, path[:-1]), list):
                out.append((f"delete {path}", _set(None, path, delete=True)))
        elif kind < 0.62:
            i, j = rng.randrange(len(shards)), rng.randrange(len(shards))
            key = rng.choice(["raw_data", "samples", "zip_data", "column_names"])
            if key in shards[i] and key in shards[j]:
                out.append(
                    (
                        f"shards[{i}].{key} = shards[{j}].{key}",
                        _set(shards[j][key], ("shards", i, key)),
                    )
                )
        elif kind < 0.68:
            i = rng.randrange(len(shards))
            copied = [*shards[: i + 1], shards[i], *shards[i + 1 :]]
            out.append((f"duplicate shards[{i}]", _set(copied, ("shards",))))
        elif kind < 0.76:
            text = (base / "index.json").read_text()
            cut = rng.randrange(len(text))
            choice = rng.random()
            if choice < 0.4:
                out.append((f"truncate index at {cut}", _text(text[:cut])))
            elif choice < 0.7:
                flipped = text[:cut] + chr(rng.randrange(32, 127)) + text[cut + 1 :]
                out.append((f"replace index char {cut}", _text(flipped)))
            else:
                body = rng.choice(INDEX_TEXTS)
                out.append((f"index text {body[:30]!r}", _text(body)))
        else:
            # A shard's header (the file with the count and offsets) or its length.
            i = rng.randrange(len(shards))
            shard = shards[i]
            info = shard.get("raw_meta") or shard["raw_data"]
            if shard.get("zip_data") is not None:
                continue  # compressed files: the header lies inside the compressed stream
            name, samples = info["basename"], shard["samples"]
            where = rng.choice(["count", "first", "last", "middle", "truncate", "extend"])
            if where == "count":
                value = rng.choice([0, 1, samples - 1, samples + 1, 2**31, 2**32 - 1])
                edit = _u32(0, value)
            elif where in ("first", "last", "middle"):
                slot = {"first": 0, "last": samples, "middle": max(samples // 2, 1)}[where]
                if where == "middle":
                    continue  # a reordered boundary inside the payload: only a hash sees it
                value = rng.choice([0, 1, 7, 2**31, 2**32 - 1, rng.randrange(2**32)])
                edit = _u32(4 + 4 * slot, value)
            elif where == "truncate":
                size = info["bytes"]
                keep = rng.randrange(size)
                edit = lambda data, keep=keep: bytes(data[:keep])  # noqa: E731
            else:
                edit = lambda data: bytes(data) + b"\x00" * 17  # noqa: E731
            out.append((f"{name} {where} {locals().get('value', '')!s}", _raw_edit(edit, name)))
    return out


def _canonical(samples: list[dict[str, Any]]) -> list[str]:
    return sorted(repr(sorted((k, repr(v)) for k, v in s.items())) for s in samples)


def _read(remote: Path, cache: Path) -> list[str]:
    from astream import StreamingDataset

    dataset = StreamingDataset(remote=str(remote), local=str(cache), batch_size=1)
    return _canonical(list(dataset))


def _bases(work: Path) -> list[Path]:
    from astream import JSONLWriter, MDSWriter

    bases = []
    for name, compression in (("mds", None), ("mds-zstd", "zstd")):
        root = work / f"base-{name}"
        with MDSWriter(
            out=root,
            columns={"id": "int", "data": "bytes", "label": "str", "vec": "ndarray:int16:3"},
            size_limit=700,
            compression=compression,
            hashes=["sha1"],
        ) as writer:
            for i in range(40):
                vec = [i, -i, 7]
                import numpy as np

                writer.write(
                    {
                        "id": i,
                        "data": bytes([i]) * (i % 9),
                        "label": f"s{i}",
                        "vec": np.array(vec, dtype=np.int16),
                    }
                )
        bases.append(root)
    root = work / "base-jsonl"
    with JSONLWriter(out=root, columns={"id": "int", "text": "str"}, size_limit=300) as writer:
        for i in range(40):
            writer.write({"id": i, "text": "t" * (i % 5)})
    bases.append(root)
    return bases


class _Hang(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise _Hang("no result within 30 s")


def run(work: Path, seed: int, count: int, emit: Callable[[dict[str, Any]], None]) -> None:
    """Apply ``count`` mutations drawn from ``seed``; call ``emit`` with each outcome."""
    from astream.errors import AstreamError

    rng = random.Random(seed)
    bases = _bases(work)
    expected = {base: _read(base, work / f"cache-{base.name}") for base in bases}
    per_base = [count // len(bases) + (k < count % len(bases)) for k in range(len(bases))]
    signal.signal(signal.SIGALRM, _alarm)
    n = 0
    for base, k in zip(bases, per_base, strict=True):
        for label, apply in mutations(base, rng, k):
            trial = work / f"m{n}"
            n += 1
            remote = trial / "remote"
            shutil.copytree(base, remote)
            apply(remote)
            signal.alarm(30)
            try:
                got = _read(remote, trial / "cache")
                outcome = "exact" if got == expected[base] else "different"
            except AstreamError as exc:
                outcome = f"error:{type(exc).__name__}"
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt):
                    raise
                outcome = f"bad:{type(exc).__name__}: {str(exc)[:200]}"
            finally:
                signal.alarm(0)
            emit({"base": base.name, "mutation": label, "outcome": outcome})
            shutil.rmtree(trial, ignore_errors=True)


def main() -> None:
    work, seed, count = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    if len(sys.argv) > 4:
        import resource

        limit = int(sys.argv[4])
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    run(work, seed, count, lambda row: print(json.dumps(row), flush=True))


if __name__ == "__main__":
    main()
