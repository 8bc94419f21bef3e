"""Codecs and hashes: round-trips, streaming file helpers, clear errors."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from astream.errors import MissingDependencyError, ShardCorruptError
from astream.format import (
    compress,
    compression_extension,
    compression_names,
    decompress,
    decompress_file,
    hash_bytes,
    hash_file,
    hash_names,
    is_compression,
    parse_compression,
)

_FAMILIES = ["zstd", "lz4", "gz", "bz2", "br", "snappy"]
_SPELLINGS = [*_FAMILIES, "zstd:1", "zstd:22", "gz:0", "gz:1", "bz2:1", "br:0", "br:5", "lz4:12"]


@pytest.mark.parametrize("spec", _SPELLINGS)
@settings(max_examples=20)
@given(data=st.binary(max_size=4096))
def test_compress_roundtrips(spec: str, data: bytes) -> None:
    assert decompress(spec, compress(spec, data)) == data


@pytest.mark.parametrize("spec", _FAMILIES)
def test_decompress_file_streams_large_input(tmp_path: Path, spec: str) -> None:
    # Several chunks' worth, with enough structure that every codec actually compresses it.
    data = os.urandom(1 << 16) * 40 + bytes(range(256)) * 1000
    src, dst = tmp_path / "in", tmp_path / "out"
    src.write_bytes(compress(spec, data))
    decompress_file(spec, src, dst)
    assert dst.read_bytes() == data


@pytest.mark.parametrize("spec", _FAMILIES)
def test_corrupt_compressed_file_names_the_file(tmp_path: Path, spec: str) -> None:
    src = tmp_path / "shard.00000.mds.bad"
    packed = compress(spec, b"hello world" * 1000)
    src.write_bytes(packed[: len(packed) // 2] + b"\xff" * 7)
    with pytest.raises(ShardCorruptError, match=r"shard\.00000\.mds\.bad"):
        decompress_file(spec, src, tmp_path / "out")
    with pytest.raises(ShardCorruptError, match=r"nowhere\.zst"):
        decompress(spec, b"\x00garbage\x01" * 3, source="nowhere.zst")


def test_gzip_output_is_deterministic() -> None:
    assert compress("gz", b"x" * 100) == compress("gz", b"x" * 100)


def test_zstd_frames_are_standard() -> None:
    import zstandard

    data = b"abc" * 1000
    assert zstandard.ZstdDecompressor().decompress(compress("zstd:7", data)) == data


def test_spellings() -> None:
    assert parse_compression("zstd").level == 3
    assert parse_compression("zstd:7").level == 7
    assert parse_compression("gz").level == 9
    assert parse_compression("br").level == 11
    assert compression_extension("zstd:7") == "zstd"
    assert "bz2:9" in compression_names() and "snappy" in compression_names()
    for bad in ["zstd:0", "zstd:23", "gz:x", "snappy:1", "xz", "", None]:
        assert not is_compression(bad)
    with pytest.raises(ValueError, match="zstd takes levels 1-22"):
        parse_compression("zstd:99")
    with pytest.raises(ValueError, match="unknown compression 'xz'"):
        compress("xz", b"")


def test_missing_optional_codec_names_the_extra(tmp_path: Path) -> None:
    # Run in a subprocess with the package hidden: a real import failure, not a patched one.
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['brotli'] = None; sys.modules['snappy'] = None\n"
        "from astream.errors import MissingDependencyError\n"
        "from astream.format import compress\n"
        "for name, extra in (('br', 'astream[brotli]'), ('snappy', 'astream[snappy]')):\n"
        "    try:\n"
        "        compress(name, b'x')\n"
        "    except MissingDependencyError as exc:\n"
        "        assert extra in str(exc), exc\n"
        "    else:\n"
        "        raise SystemExit('no error')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert issubclass(MissingDependencyError, ImportError)


_ALGOS = sorted(hash_names())


def test_hash_names_are_hashlib_and_xxhash_without_shake() -> None:
    assert {"md5", "sha1", "sha256", "blake2b", "sha3_256"} <= set(_ALGOS)
    assert {"xxh32", "xxh64", "xxh3_64", "xxh3_128", "xxh128"} <= set(_ALGOS)
    assert not any(name.startswith("shake") for name in _ALGOS)


@pytest.mark.parametrize("algo", _ALGOS)
def test_hash_file_streams_and_matches_the_library(tmp_path: Path, algo: str) -> None:
    data = os.urandom((1 << 20) + 12345)  # crosses a chunk boundary
    path = tmp_path / "f"
    path.write_bytes(data)
    expected = (
        getattr(xxhash, algo)(data).hexdigest()
        if algo.startswith("xxh")
        else hashlib.new(algo, data).hexdigest()
    )
    assert hash_file(algo, path) == expected == hash_bytes(algo, data)


def test_unknown_hash_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shake_128"):
        hash_bytes("shake_128", b"")


def test_zstd_reads_every_frame_and_refuses_a_cut_one(tmp_path: Path) -> None:
    joined = compress("zstd", b"first ") + compress("zstd:19", b"second")
    assert decompress("zstd", joined) == b"first second"
    src = tmp_path / "two.zstd"
    src.write_bytes(joined)
    decompress_file("zstd", src, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == b"first second"
    src.write_bytes(joined[:-2])
    with pytest.raises(ShardCorruptError, match=r"two\.zstd.*truncated"):
        decompress_file("zstd", src, tmp_path / "out")
