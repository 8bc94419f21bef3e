"""The commit protocol and the Arrow column mapping without an engine (fast, pure parts)."""

from __future__ import annotations

import decimal
import json
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")

from astream.errors import EncodingError  # noqa: E402
from astream.format import load_index, open_shard  # noqa: E402
from astream.integrations.parts import (  # noqa: E402
    PartResult,
    PartWriter,
    arrow_columns,
    arrow_encoding,
    arrow_rows,
    attempt_prefix,
    commit,
    prepare_out,
)


@pytest.mark.parametrize(
    ("typ", "encoding"),
    [
        (pa.int8(), "int8"),
        (pa.uint16(), "uint16"),
        (pa.int64(), "int64"),
        (pa.float16(), "float16"),
        (pa.float32(), "float32"),
        (pa.float64(), "float64"),
        (pa.string(), "str"),
        (pa.large_string(), "str"),
        (pa.binary(), "bytes"),
        (pa.large_binary(), "bytes"),
        (pa.decimal128(10, 2), "str_decimal"),
        (pa.bool_(), "json"),
        (pa.list_(pa.float32()), "ndarray:float32"),
        (pa.large_list(pa.int32()), "ndarray:int32"),
        (pa.list_(pa.list_(pa.float64())), "ndarray:float64"),
        (pa.list_(pa.int16(), 4), "ndarray:int16:4"),
        (pa.list_(pa.list_(pa.uint8(), 3), 2), "ndarray:uint8:2,3"),
        (pa.list_(pa.string()), "json"),
        (pa.struct([("a", pa.int32()), ("b", pa.list_(pa.string()))]), "json"),
    ],
    ids=str,
)
def test_arrow_types_map_to_encodings(typ: object, encoding: str) -> None:
    assert arrow_encoding("c", typ) == encoding


@pytest.mark.parametrize(
    "typ", [pa.date32(), pa.timestamp("us"), pa.map_(pa.string(), pa.int32()), pa.null()], ids=str
)
def test_types_without_an_encoding_are_refused_naming_the_column(typ: object) -> None:
    with pytest.raises(EncodingError, match="column 'when'"):
        arrow_encoding("when", typ)


def test_overrides_replace_and_must_name_columns() -> None:
    schema = pa.schema([("a", pa.int64()), ("d", pa.date32())])
    assert arrow_columns(schema, {"d": "str"}) == {"a": "int64", "d": "str"}
    with pytest.raises(EncodingError, match="nope"):
        arrow_columns(schema, {"nope": "int", "d": "str"})


def test_arrow_rows_are_to_pylist_with_arrays() -> None:
    batch = pa.record_batch(
        {
            "id": pa.array([1, 2, 3]),
            "fixed": pa.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], pa.list_(pa.float32())),
            "ragged": pa.array([[1], [2, 3], [4, 5, 6]], pa.list_(pa.int32())),
            "sized": pa.array([[1, 2], [3, 4], [5, 6]], pa.list_(pa.int8(), 2)),
            "holey": pa.array([[1.0], None, [2.0]], pa.list_(pa.float64())),
            "money": pa.array([decimal.Decimal("1.50")] * 3, pa.decimal128(5, 2)),
        }
    )
    rows = list(arrow_rows(batch.slice(1)))  # a slice: offsets that do not start at 0
    expected = batch.slice(1).to_pylist()
    assert len(rows) == 2
    for row, want in zip(rows, expected, strict=True):
        assert row.keys() == want.keys()
        for name in ("fixed", "ragged", "sized"):
            assert isinstance(row[name], np.ndarray)
            assert row[name].tolist() == want[name]
        assert row["fixed"].dtype == np.float32 and row["ragged"].dtype == np.int32
        assert row["holey"] == want["holey"] and row["money"] == want["money"]


COLUMNS = {"id": "int64", "vec": "ndarray:float32"}


def samples(start: int, count: int) -> list[dict[str, object]]:
    return [{"id": i, "vec": [float(i), 0.5]} for i in range(start, start + count)]


def test_commit_names_only_committed_attempts_in_order(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    writer = PartWriter.checked(str(out), COLUMNS, {"size_limit": 256}, None)
    second = writer.write(1, 5, samples(10, 10))
    first = writer.write(0, 4, samples(0, 10))
    lost = writer.write(0, 9, samples(0, 3))  # a speculative copy that lost: never committed
    empty = writer.write(2, 6, [])
    assert empty.index == json.dumps({"shards": [], "version": 2})
    assert not (out / attempt_prefix(2, 6)).exists()  # an empty part writes nothing
    index = commit(writer, [second, first, empty], merge=True)
    assert index.samples == 20
    assert not (out / lost.prefix).exists()  # removed: out is local
    merged = load_index((out / "index.json").read_bytes(), source="merged")
    read = []
    for shard in merged.shards:
        with open_shard(shard, out) as reader:
            read.extend(int(reader[i]["id"]) for i in range(len(reader)))
    assert read == list(range(20))


def test_commit_refuses_two_attempts_of_one_part_and_disagreeing_columns(tmp_path: Path) -> None:
    writer = PartWriter.checked(str(tmp_path / "ds"), COLUMNS, {}, None)
    a, b = writer.write(0, 1, samples(0, 2)), writer.write(0, 2, samples(0, 2))
    with pytest.raises(RuntimeError, match="two committed attempts"):
        commit(writer, [a, b], merge=True)
    other = PartWriter.checked(str(tmp_path / "ds"), {"id": "int32", "vec": "ndarray"}, {}, None)
    c = other.write(1, 3, samples(2, 2))
    with pytest.raises(EncodingError, match="different columns"):
        commit(writer, [a, c], merge=True)
    assert not (tmp_path / "ds" / "index.json").exists()


def test_merge_false_returns_the_index_and_writes_none(tmp_path: Path) -> None:
    writer = PartWriter.checked(str(tmp_path), COLUMNS, {}, None)
    result = writer.write(0, 1, samples(0, 4))
    assert isinstance(result, PartResult) and result.samples == 4
    assert commit(writer, [result], merge=False).samples == 4
    assert not (tmp_path / "index.json").exists()
    assert (tmp_path / result.prefix / "index.json").exists()


def test_options_are_checked_before_any_task(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="colour"):
        PartWriter.checked(str(tmp_path), COLUMNS, {"colour": 1}, None)
    with pytest.raises(ValueError, match="compression"):
        PartWriter.checked(str(tmp_path), COLUMNS, {"compression": "nope"}, None)
    with pytest.raises(EncodingError, match="'vec'"):
        PartWriter.checked(str(tmp_path), {"vec": "ndarray:nope"}, {}, None)
    writer = PartWriter.checked(str(tmp_path), COLUMNS, {"hashes": ["xxh64", "sha1"]}, None)
    assert writer.options["hashes"] == ["sha1", "xxh64"]
    (tmp_path / "x").write_text("x")
    with pytest.raises(FileExistsError, match="exist_ok"):
        prepare_out(str(tmp_path), exist_ok=False, storage_options=None)
    prepare_out(str(tmp_path), exist_ok=True, storage_options=None)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_a_local_and_remote_pair_commits_to_the_remote(tmp_path: Path) -> None:
    # mosaicml-streaming's out=(local, remote): each part is staged locally and uploaded.
    stage, final = tmp_path / "stage", tmp_path / "final"
    writer = PartWriter.checked((str(stage), f"file://{final}"), COLUMNS, {}, None)
    results = [writer.write(part, 1, samples(part * 5, 5)) for part in range(2)]
    index = commit(writer, results, merge=True)
    assert index.samples == 10
    assert (final / "index.json").exists() and not (stage / "index.json").exists()
    for shard in index.shards:
        assert (final / shard.raw.basename).exists()
        assert not (stage / shard.raw.basename).exists()  # keep_local is off
