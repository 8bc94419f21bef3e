"""index.json: loading, hostile input, byte-identical re-dump, merging."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from astream.errors import IndexFormatError
from astream.format import LocalMDSWriter, load_index, merge_index, open_shard


def _mds_entry(i: int, samples: int = 3, compression: str | None = None) -> dict[str, Any]:
    raw = {"basename": f"shard.{i:05}.mds", "bytes": 100 + i, "hashes": {"sha1": "ab"}}
    zip_ = None
    if compression:
        zip_ = {"basename": f"shard.{i:05}.mds.zstd", "bytes": 50, "hashes": {}}
    return {
        "column_encodings": ["int", "str"],
        "column_names": ["a", "b"],
        "column_sizes": [8, None],
        "compression": compression,
        "format": "mds",
        "hashes": ["sha1"],
        "raw_data": raw,
        "samples": samples,
        "size_limit": 1 << 26,
        "version": 2,
        "zip_data": zip_,
    }


def _index(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"shards": list(entries), "version": 2}


def test_load_index_models_every_field() -> None:
    obj = _index(_mds_entry(0), _mds_entry(1, samples=0, compression="zstd:7"))
    index = load_index(json.dumps(obj), source="mem")
    assert index.samples == 3
    first, second = index.shards
    assert first.format == "mds" and first.samples == 3 and first.zip is None
    assert first.raw.basename == "shard.00000.mds" and first.raw.bytes == 100
    assert first.raw.hashes == {"sha1": "ab"}
    assert first.column_names == ("a", "b") and first.column_sizes == (8, None)
    assert second.samples == 0  # tolerated
    assert second.compression == "zstd:7" and second.zip is not None
    assert second.zip.basename == "shard.00001.mds.zstd"


def test_to_json_redumps_as_the_reference_writes() -> None:
    obj = _index(_mds_entry(0), _mds_entry(1))
    text = json.dumps(obj, sort_keys=True).encode()
    assert load_index(text, source="mem").to_json() == text


_HOSTILE = [
    (lambda o: o.update(version=3), "mem: version: unsupported index version 3"),
    (lambda o: o.update(version="2"), "version: expected int, got str"),
    (lambda o: o.pop("shards"), "shards: missing"),
    (lambda o: o.update(shards={}), "shards: expected array"),
    (lambda o: o["shards"].append([]), r"shards\[2\]: expected object, got list"),
    (lambda o: o["shards"][1]["raw_data"].update(basename="/etc/passwd"), "absolute"),
    (lambda o: o["shards"][1]["raw_data"].update(basename="../../x.mds"), r"'\.\.'"),
    (lambda o: o["shards"][1]["raw_data"].update(basename="a/../../x"), r"'\.\.'"),
    (lambda o: o["shards"][1]["raw_data"].update(basename="a\\b.mds"), "backslash"),
    (lambda o: o["shards"][1]["raw_data"].update(basename="C:x.mds"), "drive"),
    (lambda o: o["shards"][1]["raw_data"].update(basename=""), "empty"),
    (lambda o: o["shards"][1]["raw_data"].update(basename="a//b"), "empty or '.'"),
    (lambda o: o["shards"][1]["raw_data"].update(basename=7), "basename: expected string"),
    (lambda o: o["shards"][1]["raw_data"].update(bytes=-1), r"raw_data\.bytes: cannot be neg"),
    (lambda o: o["shards"][1]["raw_data"].update(bytes=True), "boolean"),
    (lambda o: o["shards"][1].update(samples=-2), r"shards\[1\]\.samples: cannot be negative"),
    (lambda o: o["shards"][1].update(samples=1.5), "expected int, got float"),
    (lambda o: o["shards"][1].update(format="parquet"), "unknown shard format"),
    (lambda o: o["shards"][1].update(version=1), r"shards\[1\]\.version"),
    (lambda o: o["shards"][1].update(compression="xz"), "unknown compression 'xz'"),
    (lambda o: o["shards"][1].update(compression="zstd"), "zip_data: must be present"),
    (lambda o: o["shards"][1].update(hashes=["nope"]), r"hashes\[0\]: unknown hash"),
    (lambda o: o["shards"][1].update(column_sizes=[8]), "differ in length"),
    (lambda o: o["shards"][1].pop("raw_data"), r"shards\[1\]\.raw_data: missing"),
    (lambda o: o["shards"][1]["raw_data"].update(basename="shard.00000.mds"), "also used"),
]


@pytest.mark.parametrize("mutate,message", _HOSTILE)
def test_hostile_indexes_are_refused_naming_source_and_field(mutate: Any, message: str) -> None:
    obj = _index(_mds_entry(0), _mds_entry(1))
    mutate(obj)
    with pytest.raises(IndexFormatError, match=message) as info:
        load_index(json.dumps(obj).encode(), source="mem")
    assert str(info.value).startswith("mem: ")


def test_hostile_basename_error_names_the_field_path() -> None:
    obj = _index(_mds_entry(0), _mds_entry(1), _mds_entry(2), _mds_entry(3))
    obj["shards"][3]["raw_data"]["basename"] = "../evil"
    with pytest.raises(
        IndexFormatError, match=r"^s3://b/index\.json: shards\[3\]\.raw_data\.basename"
    ):
        load_index(json.dumps(obj), source="s3://b/index.json")


@pytest.mark.parametrize("text", [b"", b"{", b"[]", b"\xff\xfe", b"null"])
def test_non_index_json_is_refused(text: bytes) -> None:
    with pytest.raises(IndexFormatError, match=r"^idx: "):
        load_index(text, source="idx")


def _jsonl_entry(basename: str) -> dict[str, Any]:
    return {
        "columns": {"a": "str"},
        "compression": None,
        "format": "json",
        "hashes": [],
        "newline": "\n",
        "raw_data": {"basename": basename, "bytes": 3, "hashes": {}},
        "raw_meta": {"basename": basename + ".meta", "bytes": 40, "hashes": {}},
        "samples": 1,
        "size_limit": None,
        "version": 2,
        "zip_data": None,
        "zip_meta": None,
    }


def test_split_formats_need_meta_and_check_it() -> None:
    entry = _jsonl_entry("shard.00000.json")
    index = load_index(json.dumps(_index(entry)), source="m")
    assert index.shards[0].raw_meta is not None
    assert index.shards[0].raw_meta.basename == "shard.00000.json.meta"
    bad = copy.deepcopy(entry)
    bad["raw_meta"]["basename"] = "/abs.meta"
    with pytest.raises(IndexFormatError, match=r"raw_meta\.basename.*absolute"):
        load_index(json.dumps(_index(bad)), source="m")
    del bad["raw_meta"]
    with pytest.raises(IndexFormatError, match=r"raw_meta: missing"):
        load_index(json.dumps(_index(bad)), source="m")
    csv = {**entry, "format": "xsv", "column_names": ["a"], "column_encodings": ["str"]}
    with pytest.raises(IndexFormatError, match=r"separator: missing"):
        load_index(json.dumps(_index(csv)), source="m")


def _write_part(path: Path, start: int, count: int) -> None:
    with LocalMDSWriter(out=path, columns={"n": "int"}, size_limit=200) as writer:
        for n in range(start, start + count):
            writer.write({"n": n})


def test_merge_index_prefixes_subfolders_and_reads_back(tmp_path: Path) -> None:
    _write_part(tmp_path / "part1", 0, 20)
    _write_part(tmp_path / "part0", 100, 5)
    merged = merge_index(tmp_path)
    on_disk = (tmp_path / "index.json").read_bytes()
    assert load_index(on_disk, source="merged") == merged
    # mosaicml-streaming writes the merged index with "version" first and no sorting.
    assert on_disk.startswith(b'{"version": 2, "shards": [')
    basenames = [shard.raw.basename for shard in merged.shards]
    assert basenames[0] == "part0/shard.00000.mds"
    assert all(name.startswith(("part0/", "part1/")) for name in basenames)
    values = []
    for shard in merged.shards:
        with open_shard(shard, tmp_path) as reader:
            values += [reader[i]["n"] for i in range(len(reader))]
    assert values == [*range(100, 105), *range(20)]
    # Merging again ignores the merged index at the root.
    assert merge_index(tmp_path) == merged


def test_merge_index_from_a_list_and_outside_files(tmp_path: Path) -> None:
    _write_part(tmp_path / "a", 0, 3)
    _write_part(tmp_path / "b", 3, 3)
    merged = merge_index(tmp_path, [tmp_path / "b" / "index.json", tmp_path / "a" / "index.json"])
    parts = [shard.raw.basename.split("/")[0] for shard in merged.shards]
    assert list(dict.fromkeys(parts)) == ["b", "a"]
    _write_part(tmp_path.parent / f"{tmp_path.name}-outside", 0, 1)
    with pytest.raises(IndexFormatError, match="under"):
        merge_index(tmp_path, [tmp_path.parent / f"{tmp_path.name}-outside" / "index.json"])
