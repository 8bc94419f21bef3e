"""Digests of shard files: ``hashlib`` algorithms (not shake) and xxHash, as hex strings."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import xxhash

from astream.errors import ConfigError

__all__ = ["hash_bytes", "hash_file", "hash_names", "is_hash"]

# Reading in 1 MiB pieces keeps memory flat for multi-GB shards and is large enough that the
# per-call overhead of the digest objects does not show.
_CHUNK = 1 << 20


class _Digest(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...
    def hexdigest(self) -> str: ...


def _collect() -> dict[str, Callable[[], Any]]:
    makers: dict[str, Callable[[], Any]] = {}
    # Only the algorithms hashlib exposes as attributes (as mosaicml-streaming accepts), so the
    # set does not change with the OpenSSL build. Shake digests need a length: not usable here.
    for name in sorted(hashlib.algorithms_guaranteed):
        if not name.startswith("shake_") and hasattr(hashlib, name):
            makers[name] = getattr(hashlib, name)
    for name in ("xxh32", "xxh64", "xxh3_64", "xxh3_128", "xxh128"):
        makers[name] = getattr(xxhash, name)
    return makers


_MAKERS = _collect()


def hash_names() -> frozenset[str]:
    """Return the names of every supported hash algorithm."""
    return frozenset(_MAKERS)


def is_hash(algo: str) -> bool:
    """Return whether ``algo`` names a supported hash algorithm."""
    return algo in _MAKERS


def _new(algo: str) -> _Digest:
    maker = _MAKERS.get(algo)
    if maker is None:
        known = ", ".join(sorted(_MAKERS))
        raise ConfigError(f"unknown hash algorithm {algo!r}; use one of {known}")
    digest: _Digest = maker()
    return digest


def hash_bytes(algo: str, data: bytes | memoryview) -> str:
    """Return the hex digest of ``data`` under ``algo``.

    :raises ConfigError: for an unknown algorithm.
    """
    digest = _new(algo)
    digest.update(data)
    return digest.hexdigest()


def hash_file(algo: str, path: Path | str) -> str:
    """Return the hex digest of the file at ``path``, read in chunks (never whole in memory).

    :raises ConfigError: for an unknown algorithm.
    :raises OSError: when the file cannot be read.
    """
    digest = _new(algo)
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while True:
            count = handle.readinto(buffer)
            if not count:
                break
            digest.update(view[:count])
    return digest.hexdigest()
