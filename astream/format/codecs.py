"""Compression codecs for shard files, spelled ``name`` or ``name:level`` as in an index.

``zstd``, ``lz4``, ``gz`` and ``bz2`` are always available; ``br`` needs ``astream[brotli]`` and
``snappy`` needs ``astream[snappy]``. The codec's family name is also the compressed file's
extension (``shard.00000.mds.zstd``).
"""

from __future__ import annotations

import bz2
import gzip
import io
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import lz4.frame
import zstandard

from astream.errors import ConfigError, MissingDependencyError, ShardCorruptError

__all__ = [
    "Codec",
    "compress",
    "compression_extension",
    "compression_names",
    "decompress",
    "decompress_file",
    "is_compression",
    "parse_compression",
]

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Codec:
    """A compression family and the level one spelling selects.

    :param family: the family name, also the file extension (``"zstd"``).
    :param level: the level used to compress (decompression ignores it).
    """

    family: str
    level: int | None


# family -> (allowed levels, default level). ``None`` levels: the family takes no level.
_FAMILIES: dict[str, tuple[range | None, int | None]] = {
    "br": (range(0, 12), 11),
    "bz2": (range(1, 10), 9),
    "gz": (range(0, 10), 9),
    "lz4": (range(0, 17), 0),
    "snappy": (None, None),
    "zstd": (range(1, 23), 3),
}


def compression_names() -> frozenset[str]:
    """Return every accepted spelling (each family, and ``family:level`` for its levels)."""
    names: set[str] = set()
    for family, (levels, _default) in _FAMILIES.items():
        names.add(family)
        if levels is not None:
            names.update(f"{family}:{level}" for level in levels)
    return frozenset(names)


def parse_compression(spec: str) -> Codec:
    """Return the codec that ``spec`` (``"zstd"``, ``"zstd:7"``) names.

    :raises ConfigError: for an unknown family or a level out of the family's range.
    """
    family, colon, level_text = spec.partition(":")
    entry = _FAMILIES.get(family)
    if entry is None:
        raise ConfigError(
            f"unknown compression {spec!r}; use one of {', '.join(sorted(_FAMILIES))} "
            "optionally followed by ':level'"
        )
    levels, default = entry
    if not colon:
        return Codec(family, default)
    if levels is None or not level_text.isdigit() or int(level_text) not in levels:
        allowed = "no level" if levels is None else f"levels {levels.start}-{levels.stop - 1}"
        raise ConfigError(f"bad compression {spec!r}: {family} takes {allowed}")
    return Codec(family, int(level_text))


def is_compression(spec: str | None) -> bool:
    """Return whether ``spec`` is an accepted compression spelling."""
    if not spec:
        return False
    try:
        parse_compression(spec)
    except ValueError:
        return False
    return True


def compression_extension(spec: str) -> str:
    """Return the file extension for compression ``spec`` (its family name)."""
    return parse_compression(spec).family


def _optional(module: str, extra: str) -> ModuleType:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{module} compression needs the {module} package: pip install 'astream[{extra}]'"
        ) from exc


def _gzip_compress(data: bytes | memoryview, level: int) -> bytes:
    """One gzip member with a zero timestamp and OS byte 255 ("unknown").

    The header is the one Python's own ``gzip.compress`` writes for a non-zero ``mtime``, so
    the bytes equal mosaicml-streaming's but for its timestamp, and the same input always
    gives the same file. (``gzip.compress(mtime=0)`` hands the header to zlib, which writes
    OS 3 instead.)
    """
    extra_flags = 2 if level == 9 else 4 if level == 1 else 0
    header = struct.pack("<BBBBLBB", 0x1F, 0x8B, 8, 0, 0, extra_flags, 255)
    deflate = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)  # a raw deflate stream
    body = deflate.compress(data) + deflate.flush()
    trailer = struct.pack("<LL", zlib.crc32(data), len(data) & 0xFFFFFFFF)
    return header + body + trailer


def compress(spec: str | None, data: bytes | memoryview) -> bytes:
    """Compress ``data`` with the codec ``spec`` names (``None``: ``data`` as it is).

    gzip output has a zero timestamp, so the same input always gives the same bytes.

    :raises ConfigError: for an unknown spelling.
    :raises MissingDependencyError: when the codec's package is not installed.
    """
    if spec is None:
        return bytes(data)
    codec = parse_compression(spec)
    level = codec.level
    if codec.family == "zstd":
        return bytes(zstandard.ZstdCompressor(level=level or 3).compress(data))
    if codec.family == "lz4":
        return bytes(lz4.frame.compress(data, compression_level=level or 0))
    if codec.family == "gz":
        return _gzip_compress(data, 9 if level is None else level)
    if codec.family == "bz2":
        return bz2.compress(data, level or 9)
    if codec.family == "br":
        brotli: Any = _optional("brotli", "brotli")
        return bytes(brotli.compress(bytes(data), quality=11 if level is None else level))
    snappy: Any = _optional("snappy", "snappy")
    return bytes(snappy.compress(bytes(data)))


def decompress(spec: str | None, data: bytes | memoryview, *, source: str = "<bytes>") -> bytes:
    """Decompress ``data`` compressed with the codec ``spec`` names (``None``: ``data`` as it is).

    :param source: the file or URL the data came from, named in errors.
    :raises ShardCorruptError: when the data is not valid for the codec.
    :raises MissingDependencyError: when the codec's package is not installed.
    """
    if spec is None:
        return bytes(data)
    family = parse_compression(spec).family
    try:
        if family == "zstd":
            out = io.BytesIO()
            _copy_zstd(io.BytesIO(data), out)
            return out.getvalue()
        if family == "lz4":
            return bytes(lz4.frame.decompress(data))
        if family == "gz":
            return gzip.decompress(data)
        if family == "bz2":
            return bz2.decompress(data)
        if family == "br":
            brotli: Any = _optional("brotli", "brotli")
            return bytes(brotli.decompress(bytes(data)))
        snappy: Any = _optional("snappy", "snappy")
        return bytes(snappy.decompress(bytes(data)))
    except MissingDependencyError:
        raise
    except Exception as exc:
        raise ShardCorruptError(f"{source}: cannot decompress as {spec}: {exc}") from exc


def _copy_zstd(src: Any, dst: Any) -> None:
    """Decompress every zstd frame of ``src`` into ``dst``; a frame cut short is an error.

    (zstandard's stream reader and ``copy_stream`` return short output silently on a
    truncated frame, so the frame ends are tracked here.)
    """
    context = zstandard.ZstdDecompressor()
    frame = context.decompressobj()
    frames = 0
    in_frame = False
    while chunk := src.read(_CHUNK):
        while chunk:
            dst.write(frame.decompress(chunk))
            in_frame = True
            if not frame.eof:
                break
            frames += 1
            in_frame = False
            chunk = frame.unused_data
            frame = context.decompressobj()
    if in_frame or frames == 0:
        raise ValueError("zstd data ends inside a frame (truncated?)")


def _copy_brotli(src: Any, dst: Any) -> None:
    brotli: Any = _optional("brotli", "brotli")
    decompressor = brotli.Decompressor()
    while chunk := src.read(_CHUNK):
        dst.write(decompressor.process(chunk))
    if not decompressor.is_finished():
        raise ValueError("brotli stream ends early")


def decompress_file(codec: str, src: Path | str, dst: Path | str) -> None:
    """Decompress the file ``src`` into ``dst`` in chunks (snappy's block format: whole).

    ``dst`` is created or truncated; on failure it may hold partial data, so callers write to a
    temporary name and rename it when this returns.

    :raises ShardCorruptError: naming ``src`` when its bytes are not valid for the codec.
    :raises MissingDependencyError: when the codec's package is not installed.
    """
    family = parse_compression(codec).family
    if family == "br":
        _optional("brotli", "brotli")
    if family == "snappy":
        _optional("snappy", "snappy")
    try:
        with open(src, "rb") as inp, open(dst, "wb") as out:
            if family == "zstd":
                _copy_zstd(inp, out)
            elif family == "lz4":
                with lz4.frame.open(inp, "rb") as stream:
                    shutil.copyfileobj(stream, out, _CHUNK)
            elif family == "gz":
                with gzip.open(inp, "rb") as stream:
                    shutil.copyfileobj(stream, out, _CHUNK)
            elif family == "bz2":
                with bz2.open(inp, "rb") as stream:
                    shutil.copyfileobj(stream, out, _CHUNK)
            elif family == "br":
                _copy_brotli(inp, out)
            else:
                out.write(decompress(codec, inp.read(), source=str(src)))
    except (MissingDependencyError, ShardCorruptError):
        raise
    except Exception as exc:
        # An OSError with an errno is the disk or the file system (missing file, disk full),
        # not bad data: let it through as it is. Codec errors carry no errno.
        if isinstance(exc, OSError) and exc.errno is not None:
            raise
        raise ShardCorruptError(f"{src}: cannot decompress as {codec}: {exc}") from exc
