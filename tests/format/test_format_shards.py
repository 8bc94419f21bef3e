"""Writers and shard readers: round-trips, shard splitting, corruption, interruption."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from astream.errors import ShardCorruptError
from astream.format import (
    DatasetIndex,
    Encoding,
    LocalCSVWriter,
    LocalJSONLWriter,
    LocalJSONWriter,
    LocalMDSWriter,
    LocalTSVWriter,
    LocalXSVWriter,
    ShardInfo,
    decode_sample,
    decompress_file,
    encoding_names,
    hash_file,
    load_index,
    offsets_range,
    open_shard,
    parse_offsets,
    payload_basename,
    register_encoding,
)


def read_index(root: Path) -> DatasetIndex:
    return load_index((root / "index.json").read_bytes(), source=str(root / "index.json"))


def read_all(root: Path, **kwargs: Any) -> list[dict[str, Any]]:
    """Every sample of the dataset at ``root``, decompressing (and hash-checking) shards."""
    samples: list[dict[str, Any]] = []
    for shard in read_index(root).shards:
        for raw, packed in ((shard.raw, shard.zip), (shard.raw_meta, shard.zip_meta)):
            if raw is None:
                continue
            stored = packed or raw
            for algo, digest in stored.hashes.items():
                assert hash_file(algo, root / stored.basename) == digest
            if packed is not None:
                assert shard.compression is not None
                decompress_file(shard.compression, root / packed.basename, root / raw.basename)
            assert (root / raw.basename).stat().st_size == raw.bytes
        with open_shard(shard, root, **kwargs) as reader:
            samples += [reader[i] for i in range(len(reader))]
    return samples


_TEXT_ROWS = [{"s": f"row {i}", "i": i * 7 - 20, "f": i / 3} for i in range(40)]
_TEXT_COLUMNS = {"s": "str", "i": "int", "f": "float"}


@pytest.mark.parametrize(
    "compression", [None, "zstd", "zstd:9", "lz4", "gz:1", "bz2", "br:4", "snappy"]
)
def test_mds_roundtrip_with_every_codec(tmp_path: Path, compression: str | None) -> None:
    columns = {"x": "ndarray:float32", "t": "str", "n": "int", "u": "uint8", "j": "json"}
    rows = [
        {"x": np.arange(i + 1, dtype=np.float32), "t": "é" * i, "n": -i, "u": i, "j": [i]}
        for i in range(30)
    ]
    with LocalMDSWriter(out=tmp_path, columns=columns, compression=compression,
                   hashes=["md5", "xxh3_64"], size_limit="1kb") as writer:  # fmt: skip
        for row in rows:
            writer.write(row)
    index = read_index(tmp_path)
    assert len(index.shards) > 1 and index.samples == 30
    got = read_all(tmp_path)
    for want, have in zip(rows, got, strict=True):
        np.testing.assert_array_equal(have.pop("x"), want["x"])
        assert have == {k: v for k, v in want.items() if k != "x"}
    if compression is not None:
        assert not (tmp_path / "shard.00000.mds").exists() or index.shards[0].zip is not None


@pytest.mark.parametrize(
    "writer_class,kwargs,fmt",
    [
        (LocalJSONLWriter, {}, "json"),
        (LocalJSONWriter, {"newline": "\r\n"}, "json"),
        (LocalCSVWriter, {}, "csv"),
        (LocalTSVWriter, {}, "tsv"),
        (LocalXSVWriter, {"separator": "|~", "newline": "\n\n"}, "xsv"),
    ],
)
@pytest.mark.parametrize("compression", [None, "zstd"])
def test_text_formats_roundtrip(
    tmp_path: Path, writer_class: Any, kwargs: dict[str, Any], fmt: str, compression: str | None
) -> None:
    with writer_class(out=tmp_path, columns=_TEXT_COLUMNS, size_limit=300, compression=compression,
                      hashes=["sha256"], **kwargs) as writer:  # fmt: skip
        for row in _TEXT_ROWS:
            writer.write(row)
    index = read_index(tmp_path)
    assert {shard.format for shard in index.shards} == {fmt}
    assert len(index.shards) > 1
    assert read_all(tmp_path) == _TEXT_ROWS


def test_xsv_refuses_values_with_the_separator(tmp_path: Path) -> None:
    from astream.errors import EncodingError

    with LocalCSVWriter(out=tmp_path, columns={"s": "str"}) as writer:
        with pytest.raises(EncodingError, match=r"column 's'.*separator"):
            writer.write({"s": "a,b"})
        with pytest.raises(EncodingError, match=r"column 's'.*int"):
            writer.write({"s": 3})
    with pytest.raises(ValueError, match="separator"):
        LocalCSVWriter(out=tmp_path / "x", columns={"a,b": "str"})


def _reference_split(sizes: list[int], limit: int, per_shard: int, per_sample: int) -> list[int]:
    """Sample counts per shard, by the rule FORMAT.md states, written out independently."""
    counts: list[int] = []
    current, size = 0, per_shard
    for sample in sizes:
        if limit < size + sample + per_sample:
            counts.append(current)
            current, size = 0, per_shard
        current += 1
        size += sample + per_sample
    if current:
        counts.append(current)
    return counts


@pytest.mark.parametrize("limit", [60, 200, 333, 1000, 5000])
def test_mds_splits_shards_exactly_as_the_reference_accounts(tmp_path: Path, limit: int) -> None:
    lengths = [(i * 37) % 150 for i in range(60)]
    with LocalMDSWriter(out=tmp_path, columns={"b": "bytes"}, size_limit=limit) as writer:
        for n in lengths:
            writer.write({"b": b"z" * n})
        config = len(json.dumps(writer.get_config(), sort_keys=True))
    # Each sample: its bytes plus one uint32 size (variable column); plus its offset.
    expected = _reference_split([n + 4 for n in lengths], limit, 8 + config, 4)
    index = read_index(tmp_path)
    assert [shard.samples for shard in index.shards] == expected
    for shard in index.shards:
        # Every shard stays under the limit, except one holding a single oversized sample.
        assert shard.raw.bytes <= limit or shard.samples <= 1
    assert [row["b"] for row in read_all(tmp_path)] == [b"z" * n for n in lengths]


def test_oversized_first_sample_leaves_an_empty_shard_as_the_reference(tmp_path: Path) -> None:
    with LocalMDSWriter(out=tmp_path, columns={"b": "bytes"}, size_limit=100) as writer:
        writer.write({"b": b"x" * 500})
        writer.write({"b": b"y"})
    index = read_index(tmp_path)
    assert [shard.samples for shard in index.shards] == [0, 1, 1]
    with open_shard(index.shards[0], tmp_path) as reader:
        assert len(reader) == 0
        with pytest.raises(IndexError):
            reader[0]
    assert read_all(tmp_path) == [{"b": b"x" * 500}, {"b": b"y"}]


def test_empty_dataset_and_empty_jsonl_shard(tmp_path: Path) -> None:
    with LocalMDSWriter(out=tmp_path / "mds", columns={"a": "int"}):
        pass
    assert read_index(tmp_path / "mds").shards == ()
    with LocalJSONLWriter(out=tmp_path / "j", columns={"a": "int"}, size_limit=10) as writer:
        writer.write({"a": 12345678901234})
    index = read_index(tmp_path / "j")
    assert index.shards[0].samples == 0 and index.shards[0].raw.bytes == 0
    assert read_all(tmp_path / "j") == [{"a": 12345678901234}]


def test_size_limit_spellings_and_bounds(tmp_path: Path) -> None:
    writer = LocalMDSWriter(out=tmp_path / "a", columns={"a": "int"}, size_limit="64mb")
    assert writer.size_limit == 64 << 20
    assert (
        LocalMDSWriter(out=tmp_path / "b", columns={"a": "int"}, size_limit=None).size_limit is None
    )
    with pytest.raises(ValueError, match="2\\*\\*32"):
        LocalMDSWriter(out=tmp_path / "c", columns={"a": "int"}, size_limit=1 << 32)
    with pytest.raises(ValueError, match="sorted"):
        LocalMDSWriter(out=tmp_path / "d", columns={"a": "int"}, hashes=["sha1", "md5"])
    with pytest.raises(ValueError, match="compression"):
        LocalMDSWriter(out=tmp_path / "e", columns={"a": "int"}, compression="zstd:99")


def test_exist_ok(tmp_path: Path) -> None:
    (tmp_path / "stale.txt").write_text("x")
    with pytest.raises(FileExistsError, match=str(tmp_path)):
        LocalMDSWriter(out=tmp_path, columns={"a": "int"})
    with LocalMDSWriter(out=tmp_path, columns={"a": "int"}, exist_ok=True) as writer:
        writer.write({"a": 1})
    assert sorted(os.listdir(tmp_path)) == ["index.json", "shard.00000.mds"]


class _RecordingWriter(LocalMDSWriter):
    def __init__(self, **kwargs: Any) -> None:
        self.published: list[tuple[str, bool]] = []
        super().__init__(**kwargs)

    def _publish(self, basename: str, local_path: Path) -> None:
        self.published.append((basename, local_path.is_file()))


def test_publish_is_called_once_per_file_with_index_last(tmp_path: Path) -> None:
    with _RecordingWriter(
        out=tmp_path, columns={"b": "bytes"}, size_limit=200, compression="gz"
    ) as w:
        for _ in range(5):
            w.write({"b": b"q" * 80})
    names = [name for name, _ in w.published]
    assert names[-1] == "index.json"
    assert names[:-1] == [shard.zip.basename for shard in read_index(tmp_path).shards if shard.zip]
    assert all(existed for _, existed in w.published)


def test_exception_inside_with_writes_no_index(tmp_path: Path) -> None:
    with (
        pytest.raises(RuntimeError, match="boom"),
        LocalMDSWriter(out=tmp_path, columns={"b": "bytes"}, size_limit=100) as writer,
    ):
        for _ in range(10):
            writer.write({"b": b"x" * 50})
        raise RuntimeError("boom")
    assert not (tmp_path / "index.json").exists()
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


def test_sigkill_mid_write_leaves_no_index_naming_partial_shards(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    script = textwrap.dedent(
        f"""
        import sys
        from astream.format import LocalMDSWriter
        with LocalMDSWriter(out={str(out)!r}, columns={{"b": "bytes"}}, size_limit=1 << 20) as w:
            for i in range(10**9):
                w.write({{"b": bytes(4096)}})
                if i == 2000:
                    print("ready", flush=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    # Let it finish a few more shards, then kill it mid-write (without a sleep: wait for files).
    while len([n for n in os.listdir(out) if n.endswith(".mds")]) < 4:
        assert proc.poll() is None, "the writer exited before it was killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert not (out / "index.json").exists()
    # Every shard under its final name is complete: a reader accepts it.
    for name in sorted(n for n in os.listdir(out) if n.endswith(".mds")):
        data = (out / name).read_bytes()
        count = int.from_bytes(data[:4], "little")
        end = int.from_bytes(data[4 + 4 * count : 8 + 4 * count], "little")
        assert end == len(data), name


def _one_shard(tmp_path: Path, rows: int = 5) -> ShardInfo:
    with LocalMDSWriter(out=tmp_path, columns={"b": "bytes", "n": "int"}) as writer:
        for i in range(rows):
            writer.write({"b": bytes([i]) * (i + 3), "n": i})
    return read_index(tmp_path).shards[0]


def test_offsets_range_and_decode_sample_read_like_the_reader(tmp_path: Path) -> None:
    shard = _one_shard(tmp_path)
    basename, start, end = offsets_range(shard)
    assert (basename, start, end) == ("shard.00000.mds", 0, 4 + 4 * 6)
    data = (tmp_path / payload_basename(shard)).read_bytes()
    offsets = parse_offsets(shard, data[start:end])
    assert offsets.dtype == np.uint32 and len(offsets) == 6
    with open_shard(shard, tmp_path) as reader:
        # What the window reads many samples of a shard with, without a call per sample.
        decode, buffer, starts, source = reader.decoding()
        for i in range(5):
            payload = memoryview(data)[offsets[i] : offsets[i + 1]]
            assert decode_sample(shard, payload) == reader[i] == {"b": bytes([i]) * (i + 3), "n": i}
            assert decode(buffer, starts[i], starts[i + 1], source) == reader[i]
        assert reader[-1] == reader[4]
        with pytest.raises(IndexError):
            reader[5]


def test_split_format_offsets_live_in_the_meta_file(tmp_path: Path) -> None:
    with LocalCSVWriter(out=tmp_path, columns={"a": "str"}) as writer:
        writer.write({"a": "hello"})
        writer.write({"a": "world"})
    shard = read_index(tmp_path).shards[0]
    basename, start, end = offsets_range(shard)
    assert basename == "shard.00000.csv.meta"
    offsets = parse_offsets(shard, (tmp_path / basename).read_bytes()[start:end])
    data = (tmp_path / payload_basename(shard)).read_bytes()
    assert data[: offsets[0]] == b"a\n"
    assert decode_sample(shard, data[offsets[1] : offsets[2]]) == {"a": "world"}
    with open_shard(shard, tmp_path) as reader:
        decode, buffer, starts, source = reader.decoding()
        assert decode(buffer, starts[1], starts[2], source) == reader[1] == {"a": "world"}


def test_truncated_shard_is_refused_naming_the_file(tmp_path: Path) -> None:
    shard = _one_shard(tmp_path)
    path = tmp_path / shard.raw.basename
    data = path.read_bytes()
    path.write_bytes(data[:-3])
    with pytest.raises(ShardCorruptError, match=r"shard\.00000\.mds.*truncated"):
        open_shard(shard, tmp_path)
    path.write_bytes(data[:10])
    with pytest.raises(ShardCorruptError, match=r"shard\.00000\.mds"):
        open_shard(shard, tmp_path)
    path.write_bytes(b"")
    with pytest.raises(ShardCorruptError, match=r"shard\.00000\.mds"):
        open_shard(shard, tmp_path)


def test_tampered_headers_are_refused(tmp_path: Path) -> None:
    shard = _one_shard(tmp_path)
    path = tmp_path / shard.raw.basename
    data = bytearray(path.read_bytes())
    wrong_count = bytearray(data)
    wrong_count[0] = 9
    path.write_bytes(wrong_count)
    with pytest.raises(ShardCorruptError, match="header says 9 samples, the index says 5"):
        open_shard(shard, tmp_path)
    swapped = bytearray(data)
    swapped[8:12], swapped[12:16] = data[12:16], data[8:12]
    path.write_bytes(swapped)
    with pytest.raises(ShardCorruptError, match="not increasing"):
        open_shard(shard, tmp_path)
    inside = bytearray(data)
    inside[4:8] = (3).to_bytes(4, "little")
    path.write_bytes(inside)
    with pytest.raises(ShardCorruptError, match="inside the header"):
        open_shard(shard, tmp_path)
    with pytest.raises(ShardCorruptError, match=r"shard\.00000\.mds"):
        parse_offsets(shard, bytes(inside[:12]))


def test_tampered_sample_body_is_a_shard_error(tmp_path: Path) -> None:
    shard = _one_shard(tmp_path)
    path = tmp_path / shard.raw.basename
    data = bytearray(path.read_bytes())
    first = int.from_bytes(data[4:8], "little")
    data[first : first + 4] = (1000).to_bytes(4, "little")  # column size past the sample end
    path.write_bytes(data)
    with open_shard(shard, tmp_path) as reader:
        with pytest.raises(ShardCorruptError, match=r"shard\.00000\.mds.*'b'.*runs past"):
            reader[0]
        assert reader[1]["n"] == 1


def test_missing_shard_file(tmp_path: Path) -> None:
    shard = _one_shard(tmp_path)
    (tmp_path / shard.raw.basename).unlink()
    with pytest.raises(FileNotFoundError, match=r"shard\.00000\.mds"):
        open_shard(shard, tmp_path)


def test_undecodable_column_is_named(tmp_path: Path) -> None:
    with LocalMDSWriter(out=tmp_path, columns={"t": "str"}) as writer:
        writer.write({"t": "ok"})
    shard = read_index(tmp_path).shards[0]
    path = tmp_path / shard.raw.basename
    data = bytearray(path.read_bytes())
    data[-2:] = b"\xff\xfe"  # not UTF-8
    path.write_bytes(data)
    with (
        open_shard(shard, tmp_path) as reader,
        pytest.raises(ShardCorruptError, match=r"shard\.00000\.mds: column 't'.*as str"),
    ):
        reader[0]


def test_any_column_name_reads_back(tmp_path: Path) -> None:
    # Readers compile a decoder per column layout: names never enter its source.
    names = ["x'}; raise SystemExit #", 'q"\n', "k0", "p1", "", "ünï"]
    encodings = ["bytes", "int", "str", "bytes", "int", "json"]
    columns = dict(zip(names, encodings, strict=True))
    samples = [
        {
            names[0]: b"a" * i,
            names[1]: -i,
            names[2]: "s" * i,
            names[3]: b"",
            names[4]: i,
            names[5]: [i],
        }
        for i in range(4)
    ]
    with LocalMDSWriter(out=tmp_path, columns=columns) as writer:
        for sample in samples:
            writer.write(sample)
    index = read_index(tmp_path)
    with open_shard(index.shards[0], tmp_path) as reader:
        assert [reader[i] for i in range(len(reader))] == samples


class _Buggy(Encoding):
    """A user's encoding whose decode has a bug."""

    def encode(self, value: Any) -> bytes:
        return str(value).encode()

    def decode(self, data: bytes) -> Any:
        return int(data) // 0


def test_a_registered_encodings_error_goes_up_with_the_column_named(tmp_path: Path) -> None:
    if "test_buggy" not in encoding_names():
        register_encoding("test_buggy", _Buggy())
    with LocalMDSWriter(out=tmp_path, columns={"n": "int", "b": "test_buggy"}) as writer:
        writer.write({"n": 1, "b": 7})
    shard = read_index(tmp_path).shards[0]
    with open_shard(shard, tmp_path) as reader, pytest.raises(ZeroDivisionError) as caught:
        reader[0]
    if sys.version_info >= (3, 11):
        assert caught.value.__notes__ == [
            "decoding column 'b' (test_buggy) of " + str(tmp_path / "shard.00000.mds")
        ]
    # The generated decoder's frame shows its source, under a name that says what it is.
    [frame] = [f for f in traceback.extract_tb(caught.tb) if f.filename.startswith("<astream")]
    assert frame.filename == "<astream MDS decoder: test_buggy, int[8]>"
    assert frame.line == "return checked(buf, begin, end, source)"
