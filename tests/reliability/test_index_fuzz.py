"""Index fuzzing: seeded mutations of index.json and shard headers, under an address-space limit.

Every mutated dataset, streamed through the whole engine from a local remote into a fresh
cache, must end in an astream error or the exact samples of the original: never a bare
``MemoryError``/``OverflowError``/``NotADirectoryError`` (all seen before sample counts were
checked against file sizes and a basename could use a shard file as a folder), never a hang,
and never more memory than the limit (a 2 MB shard claiming 2e9 samples once reached 23 GB).
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SEED = 13
MUTATIONS = 240
ADDRESS_SPACE = 4 << 30  # far below what a count of 2e9 samples asks for


def run_fuzz(work: Path, seed: int, count: int) -> list[dict[str, str]]:
    """Run ``index_fuzz.py`` in a child with ``RLIMIT_AS``; its rows."""
    got = subprocess.run(
        [
            sys.executable,
            str(HERE / "index_fuzz.py"),
            str(work),
            str(seed),
            str(count),
            str(ADDRESS_SPACE),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert got.returncode == 0, got.stderr[-3000:]
    return [json.loads(line) for line in got.stdout.splitlines()]


def test_every_mutation_ends_in_an_astream_error_or_exact_data(tmp_path: Path) -> None:
    rows = run_fuzz(tmp_path, SEED, MUTATIONS)
    assert len(rows) == MUTATIONS
    failures = [
        row
        for row in rows
        if not (row["outcome"] == "exact" or row["outcome"].startswith("error:"))
    ]
    outcomes = collections.Counter(row["outcome"] for row in rows)
    assert failures == [], f"{outcomes}\n" + "\n".join(map(str, failures))
    # The mutations reach every layer: the index checks, the shard checks and the download.
    assert outcomes["error:IndexFormatError"] > MUTATIONS // 4
    assert outcomes["error:ShardCorruptError"] > 10
    assert outcomes["exact"] > 10


@pytest.mark.parametrize(
    ("field", "value"),
    [("samples", 2_000_000_000), ("samples", 10**30), ("raw_data.bytes", 10**30)],
)
def test_counts_beyond_the_files_are_refused_before_any_allocation(
    tmp_path: Path, field: str, value: int
) -> None:
    from reliability_data import write_dataset

    from astream import StreamingDataset
    from astream.errors import IndexFormatError

    write_dataset(tmp_path / "remote", 50)
    index = json.loads((tmp_path / "remote" / "index.json").read_text())
    entry = index["shards"][0]
    if field == "samples":
        entry["samples"] = value
    else:
        entry["raw_data"]["bytes"] = value
    (tmp_path / "remote" / "index.json").write_text(json.dumps(index))
    with pytest.raises(IndexFormatError, match=r"shards\[0\]\.(samples|raw_data\.bytes)"):
        StreamingDataset(remote=str(tmp_path / "remote"), local=tmp_path / "cache")


def test_json_nested_thousands_deep_is_an_astream_error(tmp_path: Path) -> None:
    """Found by the soak: json.loads raises RecursionError, which is not a ValueError."""
    from reliability_data import write_dataset

    from astream.engine.cache import ShardCache
    from astream.errors import IndexFormatError, ShardCorruptError
    from astream.format import open_shard
    from astream.format.index import load_index

    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(IndexFormatError, match="not valid JSON"):
        load_index(deep, source="i")
    # A JSONL sample nested as deep.
    from astream import JSONLWriter

    with JSONLWriter(out=tmp_path / "jsonl", columns={"a": "str"}) as writer:
        writer.write({"a": "x"})
    meta = json.loads((tmp_path / "jsonl" / "index.json").read_text())["shards"][0]
    data = tmp_path / "jsonl" / meta["raw_data"]["basename"]
    line = ("[" * 20_000 + "]" * 20_000 + "\n").encode()
    data.write_bytes(line)
    meta["raw_data"]["bytes"] = len(line)
    index = load_index(json.dumps({"version": 2, "shards": [meta]}), source="i")
    header = (tmp_path / "jsonl" / meta["raw_meta"]["basename"]).read_bytes()
    (tmp_path / "jsonl" / meta["raw_meta"]["basename"]).write_bytes(
        header[:8] + len(line).to_bytes(4, "little") + header[12:]
    )
    with (
        open_shard(index.shards[0], tmp_path / "jsonl") as reader,
        pytest.raises(ShardCorruptError, match="not valid JSON"),
    ):
        reader[0]
    # A planted LRU stamp nested as deep is ignored.
    write_dataset(tmp_path / "remote", 10)
    stamps = tmp_path / "cache" / ".astream" / "shards"
    stamps.mkdir(parents=True)
    (stamps / "x.json").write_text('{"files": ' + "[" * 30_000 + "]" * 30_000 + "}")
    assert ShardCache(tmp_path / "cache", limit=1).trim() == 0
