"""Datasets cross between astream and mosaicml-streaming 0.13 unchanged.

Each test writes its datasets with both libraries into its own temporary folders:

- what the reference writes (every MDS encoding and compression codec both libraries know,
  several shards, empty shards, merged indexes, JSONL/CSV/TSV/XSV) reads back through astream
  (``load_index`` + ``open_shard`` over files decompressed by ``decompress_file``) as the
  reference itself reads it;
- what astream writes reads back through the reference's own shard readers
  (``reader_from_json``, ``LocalDataset``) over files decompressed by the reference;
- given the same samples and options, both write the same shard files and the same index.json,
  byte for byte. The one exception is gzip's header, which records the writer's clock (mtime):
  those 4 bytes, and so the hashes of ``.gz`` files, are compared after zeroing them. (So is
  the header's OS byte, for now: see ``test_gzip_header_matches_reference_but_for_mtime``.)
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = [pytest.mark.interop, pytest.mark.usefixtures("reference_tempdir")]

streaming = pytest.importorskip("streaming")
Image = pytest.importorskip("PIL.Image")

from streaming.base.compression import decompress as reference_decompress  # noqa: E402
from streaming.base.dataset import StreamingDataset  # noqa: E402
from streaming.base.format import CSVWriter as RefCSVWriter  # noqa: E402
from streaming.base.format import JSONWriter as RefJSONWriter  # noqa: E402
from streaming.base.format import MDSWriter as RefMDSWriter  # noqa: E402
from streaming.base.format import TSVWriter as RefTSVWriter  # noqa: E402
from streaming.base.format import XSVWriter as RefXSVWriter  # noqa: E402
from streaming.base.format import reader_from_json  # noqa: E402
from streaming.base.local import LocalDataset  # noqa: E402
from streaming.base.util import merge_index as reference_merge_index  # noqa: E402

from astream.errors import UnsafeTypeError  # noqa: E402
from astream.format import (  # noqa: E402
    LocalCSVWriter,
    LocalJSONLWriter,
    LocalJSONWriter,
    LocalMDSWriter,
    LocalTSVWriter,
    LocalXSVWriter,
    decode_sample,
    decompress_file,
    hash_file,
    load_index,
    merge_index,
    offsets_range,
    open_shard,
    parse_offsets,
    payload_basename,
)

Sample = dict[str, Any]
Decompress = Callable[[str, Path, Path], None]

# ---------------------------------------------------------------------------------------------
# Samples: every MDS encoding, with values that reach each branch of its layout.

SCALARS = [
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "int8",
    "int16",
    "int32",
    "int64",
    "float16",
    "float32",
    "float64",
]
NDARRAY_DTYPES = [
    "uint8",
    "int8",
    "uint16",
    "int16",
    "float16",
    "uint32",
    "int32",
    "float32",
    "uint64",
    "int64",
    "float64",
]

ALL_ENCODINGS: dict[str, str] = {
    "bytes": "bytes",
    "str": "str",
    "int": "int",
    **{name: name for name in SCALARS},
    "str_int": "str_int",
    "str_float": "str_float",
    "str_decimal": "str_decimal",
    "pil": "pil",
    "jpeg": "jpeg",
    "png": "png",
    "jpeg_array": "jpeg_array",
    "jpegarray": "jpegarray",
    "list_pil": "list[pil]",
    "list_jpeg": "list[jpeg]",
    "list_png": "list[png]",
    "json": "json",
    "nd": "ndarray",
    "nd_dtype": "ndarray:int16",
    "nd_fixed": "ndarray:float32:3,4",
    "nd_fixed_big": "ndarray:uint16:300",
}

PKL_ENCODINGS: dict[str, str] = {"id": "int", "obj": "pkl"}

SIMPLE_ENCODINGS: dict[str, str] = {"id": "int", "data": "bytes", "text": "str"}

LOSSY = {"jpeg", "jpeg_array", "jpegarray", "list_jpeg"}


def _image(rng: np.random.Generator, mode: str, size: tuple[int, int]) -> Any:
    bands = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    return Image.frombytes(mode, size, rng.bytes(size[0] * size[1] * bands))


def _jpeg_bytes(image: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG")
    return out.getvalue()


def _nd(rng: np.random.Generator, i: int) -> np.ndarray:
    dtype = NDARRAY_DTYPES[i % len(NDARRAY_DTYPES)]
    # Shapes whose largest dim needs a uint8, uint16 and uint32 shape header; the last is large,
    # so it comes once.
    shapes = [(3,), (2, 3, 2), (1, 300)]
    shape = (65_536,) if i == 7 else shapes[i % len(shapes)]
    values = rng.integers(0, 100, size=shape)
    return values.astype(dtype)


def _all_encodings_sample(rng: np.random.Generator, i: int) -> Sample:
    return {
        "bytes": rng.bytes(int(rng.integers(0, 64))),
        "str": f"sample {i} \u00e9\u4e2d\U0001f600 " + "x" * int(rng.integers(0, 20)),
        "int": int(rng.integers(-(2**63), 2**63 - 1)),
        **{
            name: getattr(np, name)(rng.integers(0, 100) * (1.5 if "float" in name else 1))
            for name in SCALARS
        },
        "str_int": 10**30 + i * 7919 - 500,
        "str_float": float(rng.standard_normal()) * 1e6,
        "str_decimal": Decimal("3.14159265358979323846264338327950288") + i,
        "pil": _image(rng, ("L", "RGB", "RGBA")[i % 3], (5, 4)),
        "jpeg": _image(rng, "RGB", (8, 8)),
        "png": _image(rng, ("L", "RGBA")[i % 2], (6, 3)),
        "jpeg_array": [_jpeg_bytes(_image(rng, "RGB", (4, 4))) for _ in range(1 + i % 3)],
        "jpegarray": [_jpeg_bytes(_image(rng, "L", (3, 5)))],
        "list_pil": [_image(rng, "RGB", (2, 3)) for _ in range(i % 3)],
        "list_jpeg": [_image(rng, "RGB", (4, 4)) for _ in range(1 + i % 2)],
        "list_png": [_image(rng, "L", (3, 3)) for _ in range(i % 2)],
        "json": {"i": i, "l": [1.5, None, "x"], "nested": {"ok": i % 2 == 0}},
        "nd": _nd(rng, i),
        "nd_dtype": rng.integers(-100, 100, size=(1 + i % 4, 2)).astype(np.int16),
        "nd_fixed": rng.standard_normal((3, 4)).astype(np.float32),
        "nd_fixed_big": rng.integers(0, 60_000, size=300).astype(np.uint16),
    }


def all_encodings_samples(n: int, seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    return [_all_encodings_sample(rng, i) for i in range(n)]


def pkl_samples(n: int) -> list[Sample]:
    return [{"id": i, "obj": {"i": i, "t": (1, "a"), "s": {i, i + 1}}} for i in range(n)]


def simple_samples(n: int, seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    return [
        {"id": i, "data": rng.bytes(int(rng.integers(0, 300))), "text": f"row {i}"}
        for i in range(n)
    ]


TEXT_COLUMNS: dict[str, str] = {"name": "str", "count": "int", "score": "float"}


def text_samples(n: int) -> list[Sample]:
    return [{"name": f"item-{i} \u00e9", "count": i * 3 - 7, "score": i / 7} for i in range(n)]


# ---------------------------------------------------------------------------------------------
# Values in a form that compares exactly, types included.


def canon(value: Any) -> Any:
    """A comparable stand-in for a decoded value: equal only if type and content are equal."""
    if isinstance(value, Image.Image):
        return ("image", value.mode, value.size, value.tobytes())
    if isinstance(value, np.ndarray):
        return ("ndarray", value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, np.generic):
        return ("scalar", value.dtype.str, value.tobytes())
    if isinstance(value, dict):
        return ("dict", sorted((k, canon(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [canon(v) for v in value])
    if isinstance(value, (set, frozenset)):
        return (type(value).__name__, sorted(value))
    if isinstance(value, float):
        return ("float", value.hex())
    return (type(value).__name__, value)


def canon_samples(samples: Iterable[Sample]) -> list[Any]:
    return [canon(s) for s in samples]


def expected_lossless(samples: list[Sample], columns: dict[str, str]) -> list[Any]:
    """What a reader must return for the columns that decode to what was written."""
    out = []
    for sample in samples:
        row = {}
        for name in columns:
            if name in LOSSY:
                continue
            value = sample[name]
            if columns[name] == "json" and isinstance(value, np.ndarray):
                value = value.tolist()
            row[name] = value
        out.append(canon(row))
    return out


def lossless_part(samples: list[Sample]) -> list[Any]:
    return canon_samples({k: v for k, v in s.items() if k not in LOSSY} for s in samples)


# ---------------------------------------------------------------------------------------------
# Writing and reading with either library.


def write(writer: Any, out: Path, samples: Iterable[Sample], **kwargs: Any) -> Path:
    with writer(out=str(out), **kwargs) as w:
        for sample in samples:
            w.write(sample)
    return out


def write_simple(writer: Any, out: Path, samples: list[Sample], **options: Any) -> Path:
    """``samples`` of SIMPLE_ENCODINGS in shards of at most 4 KiB unless ``options`` say else."""
    return write(
        writer, out, samples, **{"columns": SIMPLE_ENCODINGS, "size_limit": 4096, **options}
    )


def inflate(directory: Path, index: dict[str, Any], decompress: Decompress) -> None:
    """Decompress every shard file the index names compressed, next to it."""
    for shard in index["shards"]:
        for raw_key, zip_key in (("raw_data", "zip_data"), ("raw_meta", "zip_meta")):
            zipped = shard.get(zip_key)
            if zipped:
                raw = directory / shard[raw_key]["basename"]
                decompress(shard["compression"], directory / zipped["basename"], raw)


def astream_decompress(codec: str, src: Path, dst: Path) -> None:
    decompress_file(codec, src, dst)


def reference_decompress_file(codec: str, src: Path, dst: Path) -> None:
    dst.write_bytes(reference_decompress(codec, src.read_bytes()))


def read_astream(directory: Path, *, allow_unsafe_types: bool = False) -> list[Sample]:
    """Every sample of a local dataset, in order, through astream's index and shard readers."""
    path = directory / "index.json"
    data = path.read_bytes()
    index = load_index(data, source=str(path))
    inflate(directory, json.loads(data), astream_decompress)
    samples: list[Sample] = []
    for info in index.shards:
        with open_shard(info, directory, allow_unsafe_types=allow_unsafe_types) as reader:
            assert len(reader) == info.samples
            samples.extend(reader[i] for i in range(len(reader)))
    return samples


def read_astream_ranged(directory: Path, *, allow_unsafe_types: bool = False) -> list[Sample]:
    """Every sample through the byte ranges a remote read fetches, not through a shard reader.

    The offsets come from ``offsets_range``'s slice of the header (or ``.meta``) file, each
    sample from its own ``[off[i], off[i+1])`` slice of the payload file.
    """
    path = directory / "index.json"
    index = load_index(path.read_bytes(), source=str(path))
    inflate(directory, json.loads(path.read_bytes()), astream_decompress)
    samples: list[Sample] = []
    for info in index.shards:
        basename, start, end = offsets_range(info)
        offsets = parse_offsets(info, (directory / basename).read_bytes()[start:end])
        payload = (directory / payload_basename(info)).read_bytes()
        for i in range(info.samples):
            data = payload[offsets[i] : offsets[i + 1]]
            samples.append(decode_sample(info, data, allow_unsafe_types=allow_unsafe_types))
    return samples


def read_reference(directory: Path) -> list[Sample]:
    """Every sample of a local dataset, in order, through the reference's shard readers."""
    obj = json.loads((directory / "index.json").read_bytes())
    inflate(directory, obj, reference_decompress_file)
    samples: list[Sample] = []
    for shard in obj["shards"]:
        reader = reader_from_json(str(directory), None, shard)
        reader.validate(allow_unsafe_types=True)
        samples.extend(reader.get_item(i) for i in range(reader.samples))
    return samples


def shard_counts(directory: Path) -> list[int]:
    obj = json.loads((directory / "index.json").read_bytes())
    return [shard["samples"] for shard in obj["shards"]]


# ---------------------------------------------------------------------------------------------
# Reference-written datasets read through astream.

CODECS_BOTH_KNOW = [
    None,
    "zstd",
    "zstd:1",
    "zstd:19",
    "gz",
    "gz:0",
    "bz2",
    "bz2:1",
    "br",
    "br:0",
    "snappy",
]


def test_every_encoding_written_by_reference_reads_the_same(tmp_path: Path) -> None:
    samples = all_encodings_samples(30)
    out = write(RefMDSWriter, tmp_path / "ref", samples, columns=ALL_ENCODINGS, size_limit=32_768)
    assert len(shard_counts(out)) > 3
    ours = read_astream(out)
    assert canon_samples(ours) == canon_samples(read_reference(out))
    assert canon_samples(read_astream_ranged(out)) == canon_samples(ours)
    assert lossless_part(ours) == expected_lossless(samples, ALL_ENCODINGS)
    # jpeg columns decode to images of the written size.
    assert [s["jpeg"].size for s in ours] == [(8, 8)] * len(samples)


@pytest.mark.parametrize("codec", CODECS_BOTH_KNOW, ids=str)
def test_each_codec_written_by_reference_reads_the_same(tmp_path: Path, codec: str | None) -> None:
    samples = simple_samples(120)
    out = write_simple(RefMDSWriter, tmp_path / "ref", samples, compression=codec)
    assert len(shard_counts(out)) > 3
    ours = read_astream(out)
    assert canon_samples(ours) == canon_samples(samples)
    assert canon_samples(ours) == canon_samples(read_reference(out))


def test_pickle_written_by_reference_is_refused_unless_allowed(tmp_path: Path) -> None:
    samples = pkl_samples(10)
    out = write(RefMDSWriter, tmp_path / "ref", samples, columns=PKL_ENCODINGS)
    with pytest.raises(UnsafeTypeError, match="obj"):
        read_astream(out)
    ours = read_astream(out, allow_unsafe_types=True)
    assert canon_samples(ours) == canon_samples(samples)


def test_empty_shards_written_by_reference_read_as_empty(tmp_path: Path) -> None:
    # A sample bigger than size_limit makes the reference flush the shard it has so far first,
    # empty when nothing came before: shard 0 has no samples, then one sample per shard.
    samples = [{"id": i, "data": bytes([i]) * 500, "text": str(i)} for i in range(5)]
    out = write_simple(RefMDSWriter, tmp_path / "ref", samples, compression="zstd", size_limit=100)
    assert shard_counts(out) == [0, 1, 1, 1, 1, 1]
    assert canon_samples(read_astream(out)) == canon_samples(samples)
    assert canon_samples(read_astream_ranged(out)) == canon_samples(samples)


@pytest.mark.parametrize(
    "hashes",
    [
        ["md5", "sha1", "sha256", "sha512"],
        ["blake2b", "blake2s", "sha3_256", "sha3_512", "sha224"],
        ["xxh128", "xxh32", "xxh3_128", "xxh3_64", "xxh64"],
    ],
    ids=["sha", "blake-sha3", "xxhash"],
)
def test_hashes_written_by_reference_match_astream(tmp_path: Path, hashes: list[str]) -> None:
    out = write_simple(
        RefMDSWriter,
        tmp_path / "ref",
        simple_samples(40),
        compression="zstd:5",
        hashes=sorted(hashes),
    )
    obj = json.loads((out / "index.json").read_bytes())
    checked = 0
    for shard in obj["shards"]:
        for key in ("raw_data", "zip_data"):
            info = shard[key]
            path = out / info["basename"]
            if not path.exists():  # the raw file of a compressed shard
                continue
            assert sorted(info["hashes"]) == sorted(hashes)
            for algo, digest in info["hashes"].items():
                assert hash_file(algo, path) == digest, (algo, info["basename"])
                checked += 1
    assert checked >= len(hashes) * 3


@pytest.mark.usefixtures("allow_reference_file_leaks")
def test_merged_index_written_by_reference_reads_the_same(tmp_path: Path) -> None:
    # Two writers (say two processes) write into subfolders; merge_index joins their indexes.
    root = tmp_path / "ref"
    parts = [simple_samples(50, seed=1), simple_samples(30, seed=2), simple_samples(40, seed=3)]
    for i, part in enumerate(parts):
        write_simple(RefMDSWriter, root / f"part{i}", part, compression="zstd" if i != 1 else None)
    reference_merge_index([str(root / f"part{i}" / "index.json") for i in range(3)], str(root))
    basenames = [
        s["raw_data"]["basename"] for s in json.loads((root / "index.json").read_text())["shards"]
    ]
    assert basenames[0] == "part0/shard.00000.mds"
    ours = read_astream(root)
    assert canon_samples(ours) == canon_samples([s for part in parts for s in part])
    assert canon_samples(ours) == canon_samples(read_reference(root))


def _write_parts(root: Path, writer: Any, parts: list[list[Sample]], **options: Any) -> list[str]:
    """Each part into its own subfolder of ``root``, as several processes would; their indexes."""
    for i, part in enumerate(parts):
        write(writer, root / f"part{i}", part, **options)
    return [str(root / f"part{i}" / "index.json") for i in range(len(parts))]


@pytest.mark.usefixtures("allow_reference_file_leaks")
@pytest.mark.parametrize("listed", [False, True], ids=["from-root", "listed"])
def test_merge_index_writes_the_reference_merged_index(tmp_path: Path, listed: bool) -> None:
    parts = [simple_samples(20, seed=i) for i in range(3)]
    options: dict[str, Any] = {
        "columns": SIMPLE_ENCODINGS,
        "compression": "zstd",
        "hashes": ["sha1"],
        "size_limit": 2048,
    }
    ours_indexes = _write_parts(tmp_path / "ours", RefMDSWriter, parts, **options)
    ref_indexes = _write_parts(tmp_path / "ref", RefMDSWriter, parts, **options)
    if listed:
        # The list's order is the dataset's order: give it reversed.
        reference_merge_index(ref_indexes[::-1], str(tmp_path / "ref"))
        merge_index(tmp_path / "ours", index_files=ours_indexes[::-1])
        expected = [s for part in parts[::-1] for s in part]
    else:
        reference_merge_index(str(tmp_path / "ref"))
        merge_index(tmp_path / "ours")
        expected = [s for part in parts for s in part]
    ours = (tmp_path / "ours" / "index.json").read_bytes()
    assert ours == (tmp_path / "ref" / "index.json").read_bytes()
    assert canon_samples(read_astream(tmp_path / "ours")) == canon_samples(expected)


def test_merge_index_takes_the_reference_call_form(tmp_path: Path) -> None:
    indexes = _write_parts(
        tmp_path,
        LocalMDSWriter,
        [simple_samples(5, seed=i) for i in range(2)],
        columns=SIMPLE_ENCODINGS,
    )
    merge_index(indexes, str(tmp_path))
    assert shard_counts(tmp_path) == [5, 5]


TEXT_WRITERS = [
    pytest.param(RefJSONWriter, LocalJSONLWriter, {}, id="jsonl"),
    pytest.param(RefCSVWriter, LocalCSVWriter, {}, id="csv"),
    pytest.param(RefTSVWriter, LocalTSVWriter, {}, id="tsv"),
    pytest.param(RefXSVWriter, LocalXSVWriter, {"separator": "|"}, id="xsv"),
    pytest.param(RefCSVWriter, LocalCSVWriter, {"newline": "\r\n"}, id="csv-crlf"),
    pytest.param(RefJSONWriter, LocalJSONLWriter, {"newline": "\r\n"}, id="jsonl-crlf"),
]


def write_text(writer: Any, out: Path, codec: str | None, extra: dict[str, Any]) -> Path:
    """200 text samples in shards of at most 2 KiB; checks there are several."""
    write(
        writer,
        out,
        text_samples(200),
        columns=TEXT_COLUMNS,
        compression=codec,
        size_limit=2048,
        **extra,
    )
    assert len(shard_counts(out)) > 2
    return out


@pytest.mark.parametrize(("ref_writer", "our_writer", "extra"), TEXT_WRITERS)
@pytest.mark.parametrize("codec", [None, "zstd", "gz:1"], ids=str)
def test_text_formats_written_by_reference_read_the_same(
    tmp_path: Path, ref_writer: Any, our_writer: Any, extra: dict[str, Any], codec: str | None
) -> None:
    out = write_text(ref_writer, tmp_path / "ref", codec, extra)
    ours = read_astream(out)
    assert canon_samples(ours) == canon_samples(text_samples(200))
    assert canon_samples(ours) == canon_samples(read_reference(out))
    assert canon_samples(read_astream_ranged(out)) == canon_samples(ours)


# ---------------------------------------------------------------------------------------------
# astream-written datasets read through the reference.


def test_every_encoding_written_by_astream_reads_the_same_in_reference(tmp_path: Path) -> None:
    samples = all_encodings_samples(30, seed=5)
    out = write(
        LocalMDSWriter, tmp_path / "ours", samples, columns=ALL_ENCODINGS, size_limit=32_768
    )
    assert len(shard_counts(out)) > 3
    theirs = read_reference(out)
    assert lossless_part(theirs) == expected_lossless(samples, ALL_ENCODINGS)
    assert canon_samples(theirs) == canon_samples(read_astream(out))


@pytest.mark.parametrize("codec", CODECS_BOTH_KNOW, ids=str)
def test_each_codec_written_by_astream_reads_the_same_in_reference(
    tmp_path: Path, codec: str | None
) -> None:
    samples = simple_samples(120, seed=9)
    out = write_simple(LocalMDSWriter, tmp_path / "ours", samples, compression=codec)
    assert len(shard_counts(out)) > 3
    assert canon_samples(read_reference(out)) == canon_samples(samples)


def test_pickle_written_by_astream_reads_in_reference(tmp_path: Path) -> None:
    samples = pkl_samples(10)
    out = write(LocalMDSWriter, tmp_path / "ours", samples, columns=PKL_ENCODINGS)
    assert canon_samples(read_reference(out)) == canon_samples(samples)


@pytest.mark.usefixtures("allow_reference_file_leaks")
def test_local_dataset_of_reference_reads_astream_dataset(tmp_path: Path) -> None:
    samples = simple_samples(300, seed=4)
    out = write(
        LocalMDSWriter, tmp_path / "ours", samples, columns=SIMPLE_ENCODINGS, size_limit="8kb"
    )
    dataset = LocalDataset(local=str(out))
    assert len(dataset) == len(samples)
    assert canon_samples(dataset[i] for i in range(len(dataset))) == canon_samples(samples)


@pytest.mark.usefixtures("allow_reference_file_leaks")
@pytest.mark.parametrize("codec", [None, "zstd:9", "br:5"], ids=str)
def test_streaming_dataset_of_reference_reads_astream_dataset(
    tmp_path: Path, codec: str | None
) -> None:
    # The reference's whole local read path: it checks the hash of each compressed file,
    # decompresses it with its own codec and reads the shard.
    samples = simple_samples(200, seed=6)
    out = write_simple(
        LocalMDSWriter, tmp_path / "ours", samples, compression=codec, hashes=["sha1", "xxh64"]
    )
    dataset = StreamingDataset(
        local=str(out), remote=None, shuffle=False, batch_size=4, validate_hash="xxh64"
    )
    assert len(dataset) == len(samples)
    assert canon_samples(dataset) == canon_samples(samples)


def test_merged_index_written_by_astream_reads_in_reference(tmp_path: Path) -> None:
    root = tmp_path / "ours"
    parts = [simple_samples(25, seed=i) for i in range(3)]
    _write_parts(
        root, LocalMDSWriter, parts, columns=SIMPLE_ENCODINGS, compression="zstd", size_limit=2048
    )
    merge_index(root)
    assert canon_samples(read_reference(root)) == canon_samples([s for p in parts for s in p])


@pytest.mark.parametrize(("ref_writer", "our_writer", "extra"), TEXT_WRITERS)
@pytest.mark.parametrize("codec", [None, "bz2"], ids=str)
def test_text_formats_written_by_astream_read_the_same_in_reference(
    tmp_path: Path, ref_writer: Any, our_writer: Any, extra: dict[str, Any], codec: str | None
) -> None:
    out = write_text(our_writer, tmp_path / "ours", codec, extra)
    assert canon_samples(read_reference(out)) == canon_samples(text_samples(200))


def test_json_writer_is_jsonl_writer() -> None:
    assert LocalJSONWriter is LocalJSONLWriter


# ---------------------------------------------------------------------------------------------
# The same samples and options give the same bytes.


# The gzip header's bytes 4-7 hold the writer's clock (mtime) and byte 9 the OS that wrote it.
GZ_MTIME = slice(4, 8)
GZ_OS = 9


def _gz_comparable(data: bytes, *, os_byte: bool = True) -> bytes:
    """gzip bytes with the mtime (and, unless ``os_byte`` is false, the OS byte) zeroed."""
    assert data[:2] == b"\x1f\x8b"
    out = bytearray(data)
    out[GZ_MTIME] = bytes(4)
    if os_byte:
        out[GZ_OS] = 0
    return bytes(out)


def _comparable_files(directory: Path) -> dict[str, bytes]:
    """Every file under a dataset folder, by relative path, gzip headers made comparable."""
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = _gz_comparable(data)
        files[path.relative_to(directory).as_posix()] = data
    return files


def _comparable_index(directory: Path) -> dict[str, Any]:
    """The index, with the digests of gzip files replaced by those of their comparable bytes."""
    obj = json.loads((directory / "index.json").read_bytes())
    for shard in obj["shards"]:
        for key in ("zip_data", "zip_meta"):
            info = shard.get(key)
            if info and info["basename"].endswith(".gz"):
                data = (directory / info["basename"]).read_bytes()
                for algo in info["hashes"]:
                    # The recorded digest is of the file as written.
                    assert hash_file(algo, directory / info["basename"]) == info["hashes"][algo]
                    info["hashes"][algo] = hashlib.sha256(_gz_comparable(data)).hexdigest()
    return obj


def assert_same_bytes(ours: Path, theirs: Path) -> None:
    assert sorted(p.name for p in ours.iterdir()) == sorted(p.name for p in theirs.iterdir())
    has_gz = any(p.suffix == ".gz" for p in theirs.rglob("*"))
    if not has_gz:
        # Nothing to normalise: the files, index.json included, are equal as written.
        assert _comparable_files(ours).keys() == _comparable_files(theirs).keys()
        for name, data in _comparable_files(theirs).items():
            assert (ours / name).read_bytes() == data, name
        return
    ours_files, theirs_files = _comparable_files(ours), _comparable_files(theirs)
    ours_files.pop("index.json")
    theirs_files.pop("index.json")
    assert ours_files.keys() == theirs_files.keys()
    for name in theirs_files:
        assert ours_files[name] == theirs_files[name], name
    assert _comparable_index(ours) == _comparable_index(theirs)


def write_both_same(
    tmp_path: Path,
    our_writer: Any,
    ref_writer: Any,
    samples: list[Sample],
    columns: dict[str, str],
    **options: Any,
) -> None:
    """Write ``samples`` with both libraries and the same options; check the bytes agree."""
    ours = write(our_writer, tmp_path / "ours", samples, columns=columns, **options)
    theirs = write(ref_writer, tmp_path / "ref", samples, columns=columns, **options)
    assert_same_bytes(ours, theirs)


SAME_BYTES_CASES = [
    pytest.param(ALL_ENCODINGS, None, [], 1 << 26, id="all-encodings"),
    pytest.param(ALL_ENCODINGS, "zstd", ["sha1", "xxh64"], 32_768, id="all-encodings-zstd-sharded"),
    pytest.param(SIMPLE_ENCODINGS, None, [], None, id="no-size-limit"),
    pytest.param(SIMPLE_ENCODINGS, None, ["md5"], 100, id="empty-shards"),
    pytest.param(SIMPLE_ENCODINGS, "zstd:7", ["sha256"], "4kb", id="zstd7-size-string"),
    pytest.param(SIMPLE_ENCODINGS, "zstd:22", [], 3000, id="zstd22"),
    pytest.param(SIMPLE_ENCODINGS, "gz", ["sha1"], 4096, id="gz"),
    pytest.param(SIMPLE_ENCODINGS, "gz:3", ["md5", "xxh3_64"], 4096, id="gz3"),
    pytest.param(SIMPLE_ENCODINGS, "bz2", ["xxh128"], 4096, id="bz2"),
    pytest.param(SIMPLE_ENCODINGS, "bz2:2", [], 4096, id="bz2-2"),
    pytest.param(SIMPLE_ENCODINGS, "br", ["blake2b"], 4096, id="br"),
    pytest.param(SIMPLE_ENCODINGS, "br:4", ["sha3_256", "xxh32"], 4096, id="br4"),
    pytest.param(SIMPLE_ENCODINGS, "snappy", ["xxh3_128"], 4096, id="snappy"),
    pytest.param(
        SIMPLE_ENCODINGS,
        "zstd",
        ["blake2s", "md5", "sha1", "sha224", "sha384", "sha512", "xxh128", "xxh64"],
        5000,
        id="many-hashes",
    ),
]


@pytest.mark.parametrize(("columns", "codec", "hashes", "size_limit"), SAME_BYTES_CASES)
def test_mds_same_options_write_same_bytes(
    tmp_path: Path,
    columns: dict[str, str],
    codec: str | None,
    hashes: list[str],
    size_limit: int | str | None,
) -> None:
    if columns is ALL_ENCODINGS:
        samples = all_encodings_samples(25, seed=11)
    else:
        samples = simple_samples(150, seed=12)
    options = {"compression": codec, "hashes": hashes, "size_limit": size_limit}
    write_both_same(tmp_path, LocalMDSWriter, RefMDSWriter, samples, columns, **options)


def test_mds_pickle_writes_same_bytes(tmp_path: Path) -> None:
    write_both_same(tmp_path, LocalMDSWriter, RefMDSWriter, pkl_samples(20), PKL_ENCODINGS)


def test_jpeg_opened_from_file_keeps_its_bytes_in_both(tmp_path: Path) -> None:
    # An image opened from a JPEG file is written as that file's bytes, not re-encoded.
    rng = np.random.default_rng(3)
    path = tmp_path / "photo.jpg"
    _image(rng, "RGB", (16, 16)).save(path, quality=55)
    for writer, name in ((LocalMDSWriter, "ours"), (RefMDSWriter, "ref")):
        with Image.open(path) as image:
            write(writer, tmp_path / name, [{"img": image}], columns={"img": "jpeg"})
    assert_same_bytes(tmp_path / "ours", tmp_path / "ref")
    shard = (tmp_path / "ours" / "shard.00000.mds").read_bytes()
    assert shard.endswith(path.read_bytes())


@pytest.mark.parametrize(("ref_writer", "our_writer", "extra"), TEXT_WRITERS)
@pytest.mark.parametrize(
    ("codec", "hashes", "size_limit"),
    [(None, [], 1 << 26), ("zstd", ["sha1"], 2048), ("gz", ["md5", "xxh64"], "1kb")],
    ids=["plain", "zstd", "gz"],
)
def test_text_formats_same_options_write_same_bytes(
    tmp_path: Path,
    ref_writer: Any,
    our_writer: Any,
    extra: dict[str, Any],
    codec: str | None,
    hashes: list[str],
    size_limit: int | str,
) -> None:
    options = {"compression": codec, "hashes": hashes, "size_limit": size_limit, **extra}
    write_both_same(tmp_path, our_writer, ref_writer, text_samples(150), TEXT_COLUMNS, **options)


def test_exist_ok_replaces_an_old_dataset_in_both(tmp_path: Path) -> None:
    samples = simple_samples(60, seed=8)
    for writer in (LocalMDSWriter, RefMDSWriter):
        (tmp_path / "full").mkdir(exist_ok=True)
        (tmp_path / "full" / "keep.txt").write_text("mine")
        with pytest.raises(FileExistsError):
            write(writer, tmp_path / "full", samples, columns=SIMPLE_ENCODINGS)
        assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    options: dict[str, Any] = {
        "columns": SIMPLE_ENCODINGS,
        "compression": "zstd",
        "size_limit": 2048,
        "exist_ok": True,
        "progress_bar": False,
        "keep_local": True,
    }
    for writer, name in ((LocalMDSWriter, "ours"), (RefMDSWriter, "ref")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "shard.00099.mds").write_bytes(b"stale")
        write(writer, tmp_path / name, samples, **options)
    assert_same_bytes(tmp_path / "ours", tmp_path / "ref")
    assert not (tmp_path / "ours" / "shard.00099.mds").exists()


def test_gzip_header_matches_reference_but_for_mtime(tmp_path: Path) -> None:
    samples = simple_samples(40)
    options: dict[str, Any] = {"columns": SIMPLE_ENCODINGS, "compression": "gz", "size_limit": 4096}
    ours = write(LocalMDSWriter, tmp_path / "ours", samples, **options)
    theirs = write(RefMDSWriter, tmp_path / "ref", samples, **options)
    names = sorted(p.name for p in theirs.glob("*.gz"))
    assert names
    for name in names:
        ours_data = _gz_comparable((ours / name).read_bytes(), os_byte=False)
        assert ours_data == _gz_comparable((theirs / name).read_bytes(), os_byte=False), name
