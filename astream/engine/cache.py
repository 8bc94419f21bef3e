"""The node-local shard cache: each shard on local disk once per node, bounded by an LRU limit.

One cache directory per stream (its ``local`` dir) is shared by every rank and DataLoader worker
of a node. There is no daemon, no shared memory and no database: every piece of cross-process
state is a file under the root, guarded by ``flock`` locks that the kernel releases when a
process dies, so a process killed with SIGKILL at any point leaves nothing that blocks or
corrupts the next run.

Layout under ``root``::

    index.json                      the stream's index (fetch_index)
    shard.00000.mds                 raw shards, at their index basenames (subfolders allowed)
    shard.00000.mds.zstd            compressed files, only with keep_zip (or already there)
    .shard.00000.mds.astream-tmp-*  a download or decompression in progress (or killed)
    .astream/cache.lock             serialises evictors
    .astream/source.json            the remote (and split) this directory caches (claim_source)
    .astream/source.lock            serialises claims
    .astream/index-*.lock           one per index file name
    .astream/locks/<shard>.lock     one per shard: exclusive to download or evict it, shared to
                                    read it (a "pin")
    .astream/shards/<shard>.json    one per shard on disk: the files it consists of; its mtime
                                    is the shard's last use (LRU)
    .astream/downloads/<shard>.<pid>  one per download under way (or killed): its holder may have
                                    temporary files, which the next holder of the shard's lock
                                    removes (only then is the shard's folder listed for them)
    .astream/verified/<file>.<algo>.json
                                    a raw file whose hash matched the index: its inode, size and
                                    mtime when checked (check_hash)

Invariants:

- A raw file at its final name is complete: it only ever arrives there by ``os.replace`` from a
  temporary file that had the exact size (and hash, when asked) of the index. So "present with
  the index's size" (:meth:`ShardCache.is_ready`) means ready, with no lock needed to check.
- Only the holder of a shard's exclusive lock writes, renames or deletes that shard's files;
  temporary files of a shard are therefore garbage whenever one holds its lock, and the holder
  removes those a killed process left behind (a download's marker in ``.astream/downloads/``
  outlives it only then: a normal download never lists the shard's folder, which holds every
  shard of a dataset). One exception: when a shard's files are deleted
  from outside while only readers hold it (shared locks), a process that needs it again fetches
  it under a shared lock of its own, writing only its own temporary files and renaming complete
  files into place (several such may rename the same bytes; eviction still needs the exclusive
  lock, which none of them leaves free).
- Eviction deletes a shard only while holding its exclusive lock, taken without waiting: a
  shard that any process pins (shared lock) or downloads (exclusive lock) is skipped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import threading
import time
import urllib.parse
import warnings
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio.to_thread

from astream.engine._locks import FileLock
from astream.errors import (
    AstreamError,
    CacheConflictError,
    CachedIndexWarning,
    CacheError,
    CacheLimitError,
    FormatError,
    ObjectNotFoundError,
    ShardCorruptError,
    StorageError,
)
from astream.format.codecs import decompress_file
from astream.format.hashing import hash_file
from astream.format.index import META_DIR, FileInfo, ShardInfo, check_basename, load_index
from astream.storage.base import ProgressCallback, Store
from astream.units import parse_bytes

__all__ = [
    "CacheStatistics",
    "ShardCache",
    "ShardPin",
    "claim_source",
    "fetch_index",
    "folder_bytes",
    "peak_bytes",
]

_META_DIR = META_DIR
# Marker of temporary files, as LocalStore's atomic writes use: a dot-file beside its target.
_TMP_MARKER = ".astream-tmp-"
# How many times acquire() re-fetches a shard that another process evicted between our fetch and
# our pin. Only a limit far below the working set makes this happen twice in a row.
_ACQUIRE_TRIES = 4
# A stamp lists a shard's few file names; anything much larger was not written by a cache.
_MAX_STAMP_BYTES = 1 << 16
# Room a fetch makes beyond the shard's files for the LRU stamp it writes (a few dozen bytes),
# since the limit counts every byte of the directory. Its reservation (below) is left out.
_STAMP_ALLOWANCE = 256
# A download that has to evict frees this fraction of the limit beyond its needs (see _evict).
_HEADROOM_DIVISOR = 32
# The longest a download trusts the ledger (see _read_ledger) before walking the directory.
_LEDGER_SECONDS = 5


@dataclasses.dataclass(frozen=True, kw_only=True)
class CacheStatistics:
    """What one :class:`ShardCache` object did, since it was created in this process."""

    #: fetch() calls that found the shard ready (at once, or after another process fetched it).
    hits: int = 0
    #: fetch() calls that downloaded the shard (this process held the lock and did the work).
    misses: int = 0
    #: Bytes received from the store (compressed bytes for compressed shards).
    bytes_downloaded: int = 0
    #: Shards this process deleted to stay under the limit.
    evictions: int = 0
    #: Bytes those evictions freed.
    bytes_evicted: int = 0


def _temp_name(final: Path) -> Path:
    # pid and a random token: unique across processes and across retries within one.
    return final.with_name(f".{final.name}{_TMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}")


def _has_size(path: str | Path, size: int) -> bool:
    try:
        return os.stat(path).st_size == size
    except (FileNotFoundError, NotADirectoryError):
        return False


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _belongs(raw: str, file: str) -> bool:
    """Whether ``file`` is one a stamp of raw basename ``raw`` may list: itself, or a name
    that extends it with a suffix (``.zstd``, ``.meta``, ``.meta.zstd``) in the same folder."""
    return file == raw or (file.startswith(f"{raw}.") and "/" not in file[len(raw) :])


def _stamp_files(name: str, data: bytes) -> list[str] | None:
    """The basenames a stamp lists, or ``None`` when it is not one a cache could have written.

    Stamps are files under the cache root, which anything may have written (an older version,
    another tool, an attacker): eviction deletes what they list, so a stamp is trusted only
    when it names files of its own shard, ``<raw basename>`` and ``<raw basename>.<suffix>``
    (meta, compressed), each a basename an index could hold.
    """
    try:
        files = json.loads(data)["files"]
    except (ValueError, KeyError, TypeError, RecursionError):
        return None
    raw = urllib.parse.unquote(name.removesuffix(".json"))
    if not isinstance(files, list) or not files:
        return None
    for file in files:
        if not isinstance(file, str):
            return None
        if not _belongs(raw, file):
            return None  # another shard's file: its lock is not the one eviction holds
        try:
            check_basename(file, "stamp")
        except FormatError:
            return None
    return files


def _replace_json(path: Path, value: object) -> None:
    """Write ``value`` as JSON to ``path`` whole: a temporary file renamed into place."""
    tmp = _temp_name(path)
    try:
        tmp.write_text(json.dumps(value), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        _unlink(tmp)


def _verify_file(shard: ShardInfo, info: FileInfo, path: Path, algo: str) -> None:
    """Check file ``info`` of ``shard``, at ``path``, against the index's ``algo`` hash."""
    expected = info.hashes.get(algo)
    if expected is None:
        known = ", ".join(sorted(info.hashes)) or "none"
        raise FormatError(
            f"shard {shard.raw.basename}: validate_hash={algo!r} but the index records "
            f"no {algo} hash of {info.basename} (it has: {known})"
        )
    actual = hash_file(algo, path)
    if actual != expected:
        raise ShardCorruptError(
            f"shard {shard.raw.basename}: {algo} of {info.basename} is {actual}, "
            f"the index says {expected}"
        )


def _file_key(path: Path) -> list[int]:
    """What tells a file changed since it was hashed: its inode, size and mtime (ns)."""
    stat = os.stat(path)
    return [stat.st_ino, stat.st_size, stat.st_mtime_ns]


def _verified_name(raw: FileInfo, algo: str) -> str:
    """The name of the record that raw file ``raw`` matched its ``algo`` hash."""
    return f"{urllib.parse.quote(raw.basename, safe='')}.{algo}.json"


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _temps_of(final: Path) -> list[os.DirEntry[str]]:
    """The temporary files of ``final`` (see :func:`_temp_name`) now in its folder."""
    prefix = f".{final.name}{_TMP_MARKER}"
    try:
        entries = list(os.scandir(final.parent))
    except FileNotFoundError:
        return []
    return [entry for entry in entries if entry.name.startswith(prefix)]


def _marker_prefix(shard: ShardInfo) -> str:
    """The start of the names of ``shard``'s download markers (then a pid)."""
    return f"{urllib.parse.quote(shard.raw.basename, safe='')}."


def _remove_temps(final: Path) -> None:
    """Delete temporary files of ``final`` (the caller holds the lock that guards it)."""
    for entry in _temps_of(final):
        _unlink(Path(entry.path))


def _bytes_with_temps(final: Path) -> int:
    """Bytes of ``final`` and of its temporary files (a download or decompression under way)."""
    total = 0
    with contextlib.suppress(OSError):
        total += os.lstat(final).st_size
    try:
        temps = _temps_of(final)
    except OSError:
        return total
    for entry in temps:
        with contextlib.suppress(OSError):
            total += entry.stat(follow_symlinks=False).st_size
    return total


def folder_bytes(root: Path) -> int:
    """Bytes of every file under ``root``: shards, the index, temporary files, astream's own
    metadata and anything else the directory holds (what ``cache_limit`` bounds)."""
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def _file_pairs(shard: ShardInfo) -> list[tuple[FileInfo, FileInfo | None]]:
    """(raw, compressed) pairs of a shard's files: the meta file first (JSON/CSV), data last.

    The data file comes last so that its temporary file, which the engine may read while it
    downloads, is only announced once the meta file (with the sample offsets) is in place.
    """
    pairs: list[tuple[FileInfo, FileInfo | None]] = []
    if shard.raw_meta is not None:
        pairs.append((shard.raw_meta, shard.zip_meta))
    pairs.append((shard.raw, shard.zip))
    return pairs


def peak_bytes(shard: ShardInfo) -> int:
    """Bytes a shard occupies in the cache at its peak: its raw files plus their compressed
    ones, which lie beside the raw files while they decompress (kept afterwards or not)."""
    return sum(raw.bytes + (0 if z is None else z.bytes) for raw, z in _file_pairs(shard))


def _complete_in(folder: str, shard: ShardInfo) -> bool:
    """Whether every raw file of ``shard`` is in ``folder`` at its index size. Plain strings,
    not paths: the window asks this of every shard it passes, thousands of times an epoch."""
    return all(_has_size(f"{folder}/{raw.basename}", raw.bytes) for raw, _ in _file_pairs(shard))


class ShardPin:
    """A shared lock on one shard: while held, no process evicts it.

    Use as a context manager (``with cache.pin(shard) as path:``) or call :meth:`release`.
    """

    def __init__(self, path: Path, lock: FileLock | None) -> None:
        #: The raw shard's local path.
        self.path = path
        self._lock = lock

    def release(self) -> None:
        """Release the pin; idempotent."""
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> Path:
        return self.path

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"ShardPin({str(self.path)!r})"


class ShardCache:
    """The shards of one stream on local disk, shared by every process of the node.

    The object holds no open file or lock between calls, so it pickles into DataLoader workers;
    each copy counts its own :meth:`statistics`.

    :param root: the stream's local directory. Created on first use, not here.
    :param limit: bytes of shard files the directory may hold (an int or ``"100gb"``); ``None``
        for no limit. Least recently used shards are evicted to stay under it.
    :param evictable: ``False`` when nothing may be deleted (a local-only dataset's cache):
        then no LRU stamps or read locks are kept.
    :param origin: a local-only dataset's own folder, only ever read: a shard whose raw files
        are there at their index sizes is read in place, and a compressed file there is
        decompressed into ``root`` without a copy. Nothing is written into it: locks, stamps
        and decompressed shards all go under ``root``.
    """

    def __init__(
        self,
        root: Path | str,
        *,
        limit: int | str | None = None,
        evictable: bool = True,
        origin: Path | str | None = None,
    ) -> None:
        self.root = Path(root)
        self.origin = None if origin is None else Path(origin)
        self.limit = None if limit is None else parse_bytes(limit)
        self.evictable = evictable
        self._meta = self.root / _META_DIR
        self._counts_lock = threading.Lock()
        self._counts: dict[str, int] = {}
        # Stamp contents by (name, inode, size): a touch keeps all three, a rewrite makes a new
        # inode, and the only lists one shard's stamp can hold (with or without its compressed
        # files) differ in size even if an inode number is reused; so each stamp is parsed once.
        self._stamp_files: dict[tuple[str, int, int], list[Path]] = {}
        # Files whose hash check_hash has seen match: record name -> _file_key.
        self._verified: dict[str, list[int]] = {}

    # -- paths and readiness -----------------------------------------------------------------

    def directory_of(self, shard: ShardInfo) -> Path:
        """The folder holding the shard's raw files: :attr:`origin` when they are all there
        (read in place), else :attr:`root`."""
        origin = self.origin
        if origin is not None and _complete_in(str(origin), shard):
            return origin
        return self.root

    def raw_path(self, shard: ShardInfo) -> Path:
        """Where the shard's raw (decompressed) data file lives."""
        return self.directory_of(shard) / shard.raw.basename

    def is_ready(self, shard: ShardInfo) -> bool:
        """Whether the shard's raw files (data, and meta for JSON/CSV) are present at their
        index sizes, which in this cache means complete (see the module invariants)."""
        # The origin first: a local-only dataset's shards are there, unless compressed.
        origin = self.origin
        return (origin is not None and _complete_in(str(origin), shard)) or _complete_in(
            str(self.root), shard
        )

    def _lock_path(self, shard: ShardInfo) -> Path:
        return self._lock_named(f"{urllib.parse.quote(shard.raw.basename, safe='')}.json")

    def _lock_named(self, record: str) -> Path:
        """The lock file of the shard whose stamp or reservation is named ``record``."""
        return self._meta / "locks" / f"{record.removesuffix('.json')}.lock"

    def _stamp_path(self, shard: ShardInfo) -> Path:
        return self._meta / "shards" / f"{urllib.parse.quote(shard.raw.basename, safe='')}.json"

    def _reservation_path(self, shard: ShardInfo) -> Path:
        return self._meta / "reserved" / f"{urllib.parse.quote(shard.raw.basename, safe='')}.json"

    def _inside(self, path: Path) -> bool:
        """Whether ``path``'s folder, symlinks resolved, lies in the root and outside the
        cache's own ``.astream/`` (``path`` itself may be a symlink: unlinking removes the link).
        """
        root = os.path.realpath(self.root)
        folder = os.path.realpath(path.parent)
        return _within(folder, root) and not _within(folder, os.path.join(root, _META_DIR))

    def _ensure_dirs(self) -> None:
        (self._meta / "locks").mkdir(parents=True, exist_ok=True)
        (self._meta / "shards").mkdir(parents=True, exist_ok=True)

    # -- statistics ----------------------------------------------------------------------------

    def _count(self, **increments: int) -> None:
        # fetch runs on the loop thread, pin/evict may run on the consumer's: keep counts exact.
        with self._counts_lock:
            for name, value in increments.items():
                self._counts[name] = self._counts.get(name, 0) + value

    def statistics(self) -> CacheStatistics:
        """A snapshot of this object's counters."""
        with self._counts_lock:
            return CacheStatistics(**self._counts)

    #: The same as :meth:`statistics`.
    stats = statistics

    # -- fetching ------------------------------------------------------------------------------

    async def fetch(
        self,
        store: Store,
        shard: ShardInfo,
        *,
        validate_hash: str | None = None,
        keep_zip: bool = False,
        on_raw_started: Callable[[Path], None] | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Path:
        """Make sure the shard is on local disk, downloading it at most once per node.

        Another process fetching the same shard makes this one wait on the shard's lock (without
        blocking the event loop) and then return its result. A compressed shard is downloaded,
        checked, decompressed, then renamed into place; a compressed file already in the
        directory (a dataset stored compressed locally) is decompressed without a download.

        :param store: where the shard's files live, under their index basenames.
        :param validate_hash: a hash algorithm of the index to check the downloaded file with
            (the compressed file when there is one, else the raw file).
        :param keep_zip: keep the downloaded compressed file beside the raw one.
        :param on_raw_started: for an uncompressed shard that is downloaded here, called with the
            temporary file's path once it exists at its full size and before any byte lands. The
            file is renamed into place when complete, so a descriptor opened on it stays valid.
        :param on_progress: with ``on_raw_started``: called as ``(start, end)`` on the loop
            thread for each byte range of the raw data file now on disk. Not called for
            compressed shards (their ranges are not raw ranges).
        :returns: :meth:`raw_path` of the shard.
        :raises ShardCorruptError: a downloaded file with the wrong size or hash, or that does
            not decompress; nothing is left in place.
        :raises CacheError: the limit cannot make room for the shard.
        :raises StorageError: the store failed (after its retries).
        """
        path = self.raw_path(shard)
        if self.is_ready(shard):
            self._count(hits=1)
            self.touch(shard)
            return path
        self._ensure_dirs()
        lock_path = self._lock_path(shard)
        orphaned: list[FileLock] = []

        def ready_or_orphaned() -> bool:
            if self.is_ready(shard):
                return True
            # Only readers hold the lock (a shared one is free) yet the shard is missing: its
            # files were deleted under them (by hand, or a cleaner). They may keep their pins
            # for as long as they like (a parked DataLoader worker), so waiting for the
            # exclusive lock could wait forever: fetch it again under a shared lock instead.
            pin = FileLock.try_acquire(lock_path, shared=True)
            if pin is None:
                return False
            orphaned.append(pin)
            return True

        marker: Path | None = None
        lock = await FileLock.acquire_async(lock_path, until=ready_or_orphaned)
        if lock is None and orphaned:
            lock = orphaned[0]
        if lock is None:  # another process completed it while we waited
            self._count(hits=1)
            self.touch(shard)
            return path
        try:
            # Whoever held the lock before us may have completed the shard.
            if self.is_ready(shard):
                self._count(hits=1)
                self.touch(shard)
                return path
            # A download's marker outlives it only when its process was killed: then (and only
            # then: listing the folder costs as much as the shards in it) its temporary files
            # are removed. Under a shared lock another reader may be fetching too: its
            # temporary files and marker are its own.
            left = [] if orphaned else self._download_markers(shard)
            if left:
                for raw, zip_info in _file_pairs(shard):
                    for info in (raw, zip_info):
                        # Not through a folder that resolves outside (_fetch_file refuses).
                        if info is not None and self._inside(self.root / info.basename):
                            _remove_temps(self.root / info.basename)
                for stale in left:
                    _unlink(stale)
            marker = self._meta / "downloads" / f"{_marker_prefix(shard)}{os.getpid()}"
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
            if self.evictable and self.limit is not None:
                # Makes room and reserves it until this download's files hold it (below).
                await anyio.to_thread.run_sync(
                    self._evict, peak_bytes(shard) + _STAMP_ALLOWANCE, shard
                )
            for raw, zip_info in _file_pairs(shard):
                is_data = raw is shard.raw
                try:
                    await self._fetch_file(
                        store,
                        shard,
                        raw,
                        zip_info,
                        validate_hash=validate_hash,
                        keep_zip=keep_zip,
                        on_raw_started=on_raw_started if is_data else None,
                        on_progress=on_progress if is_data else None,
                    )
                except OSError as exc:
                    if isinstance(exc, AstreamError):
                        raise
                    # A local write failed (a full disk, a quota, a read-only cache): say
                    # where, and which shard; _fetch_file has removed its temporary files.
                    raise CacheError(
                        f"cannot write shard {raw.basename} into the cache at {self.root}: "
                        f"{exc.strerror or exc}"
                    ) from exc
            self._count(misses=1)
            self.touch(shard)
        finally:
            # _fetch_file removed its temporary files (renamed, or deleted on failure).
            if marker is not None:
                _unlink(marker)
            _unlink(self._reservation_path(shard))
            lock.release()
        return path

    def _download_markers(self, shard: ShardInfo) -> list[Path]:
        """The markers of downloads of ``shard`` under way or killed (see the module's layout):
        a listing of the downloads folder, which holds only those."""
        folder = self._meta / "downloads"
        prefix = _marker_prefix(shard)
        try:
            with os.scandir(folder) as entries:
                return [
                    Path(e.path)
                    for e in entries
                    if e.name.startswith(prefix) and e.name[len(prefix) :].isdigit()
                ]
        except FileNotFoundError:
            return []

    async def _fetch_file(
        self,
        store: Store,
        shard: ShardInfo,
        raw: FileInfo,
        zip_info: FileInfo | None,
        *,
        validate_hash: str | None,
        keep_zip: bool,
        on_raw_started: Callable[[Path], None] | None,
        on_progress: ProgressCallback | None,
    ) -> None:
        dest = self.root / raw.basename
        if _has_size(dest, raw.bytes):
            return  # the meta file of a shard whose data file was evicted or lost
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not self._inside(dest):
            raise CacheError(
                f"shard {shard.raw.basename}: {dest.parent} resolves outside the cache at "
                f"{self.root} (a symlinked folder?); refusing to write there"
            )
        temps: list[Path] = []
        try:
            if zip_info is None:
                tmp = _temp_name(dest)
                temps.append(tmp)
                # Full size before any byte lands: a reader may open it now and read each range
                # once on_progress reports it (ranged_download preallocates the same way).
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                try:
                    os.ftruncate(fd, raw.bytes)
                finally:
                    os.close(fd)
                if on_raw_started is not None:
                    on_raw_started(tmp)
                await self._download(store, shard, raw, tmp, on_progress)
                await self._check_hash(shard, raw, tmp, validate_hash)
                os.replace(tmp, dest)
                if validate_hash is not None:
                    self._record_verified(_verified_name(raw, validate_hash), _file_key(dest))
                return
            zip_dest = self.root / zip_info.basename
            in_origin = None if self.origin is None else self.origin / zip_info.basename
            local_zip = _has_size(zip_dest, zip_info.bytes)
            if in_origin is not None and _has_size(in_origin, zip_info.bytes):
                src, local_zip = in_origin, True  # read where it is, never copied
            elif local_zip:
                src = zip_dest
            else:
                src = _temp_name(zip_dest)
                temps.append(src)
                await self._download(store, shard, zip_info, src, None)
            await self._check_hash(shard, zip_info, src, validate_hash)
            raw_tmp = _temp_name(dest)
            temps.append(raw_tmp)
            codec = shard.compression or ""
            try:
                await anyio.to_thread.run_sync(decompress_file, codec, src, raw_tmp)
            except ShardCorruptError as exc:
                raise ShardCorruptError(
                    f"shard {raw.basename}: {zip_info.basename} does not decompress as {codec}"
                ) from exc
            size = os.stat(raw_tmp).st_size
            if size != raw.bytes:
                raise ShardCorruptError(
                    f"shard {raw.basename}: {zip_info.basename} decompresses to {size} bytes, "
                    f"the index says {raw.bytes}"
                )
            if not local_zip:
                if keep_zip:
                    os.replace(src, zip_dest)
                else:
                    _unlink(src)
            os.replace(raw_tmp, dest)
            if validate_hash is not None:
                # Decompressed from a checked file: as good as checked itself.
                self._record_verified(_verified_name(raw, validate_hash), _file_key(dest))
        finally:
            # After a success each temp was renamed or deleted and this finds nothing.
            for tmp in temps:
                _unlink(tmp)

    async def _download(
        self,
        store: Store,
        shard: ShardInfo,
        info: FileInfo,
        tmp: Path,
        on_progress: ProgressCallback | None,
    ) -> None:
        await store.download(info.basename, tmp, size=info.bytes, on_progress=on_progress)
        size = os.stat(tmp).st_size
        self._count(bytes_downloaded=size)
        if size != info.bytes:
            raise ShardCorruptError(
                f"shard {shard.raw.basename}: downloaded {store.join(info.basename)} is "
                f"{size} bytes, the index says {info.bytes}"
            )

    @staticmethod
    async def _check_hash(shard: ShardInfo, info: FileInfo, path: Path, algo: str | None) -> None:
        if algo is not None:
            await anyio.to_thread.run_sync(_verify_file, shard, info, path, algo)

    def check_hash(self, shard: ShardInfo, algo: str | None) -> None:
        """Make sure the raw files ``shard`` is read from match the index's ``algo`` hashes,
        before any of its samples is served.

        A file this cache downloaded with ``algo`` (or decompressed from a file so checked) was
        checked on its way in, by :meth:`fetch`, which recorded it. Any other file is hashed
        here: one read in place from :attr:`origin`, or one a run without ``validate_hash`` left
        in the cache. A record under ``.astream/verified/`` holds each checked file's inode,
        size and mtime, so a file is hashed once per node while it stays the same, and again
        once it changes. Blocks while it hashes: call it from the consumer's thread.

        :param algo: the stream's ``validate_hash``; ``None`` checks nothing.
        :raises ShardCorruptError: a file's hash is not the index's.
        :raises FormatError: the index records no ``algo`` hash of a file.
        :raises FileNotFoundError: a file went away (evicted) since :meth:`is_ready`.
        """
        if algo is None:
            return
        folder = self.directory_of(shard)
        for raw, _ in _file_pairs(shard):
            path = folder / raw.basename
            key = _file_key(path)
            name = _verified_name(raw, algo)
            if self._verified.get(name) == key:
                continue
            try:
                known = json.loads((self._meta / "verified" / name).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                known = None
            if known != key:
                _verify_file(shard, raw, path, algo)
                # The key read before hashing: a file changed meanwhile is checked again.
                self._record_verified(name, key)
            self._verified[name] = key

    def _record_verified(self, name: str, key: list[int]) -> None:
        """Record, as ``name`` (:func:`_verified_name`), that the file whose :func:`_file_key`
        is ``key`` matches its hash. Best effort: without the record (a full disk), the next
        reader only hashes it again."""
        with contextlib.suppress(OSError):
            record = self._meta / "verified" / name
            record.parent.mkdir(parents=True, exist_ok=True)
            _replace_json(record, key)

    # -- reading: pins -------------------------------------------------------------------------

    def pin(self, shard: ShardInfo) -> ShardPin:
        """Hold the shard against eviction while reading it: ``with cache.pin(shard) as path:``.

        Takes a shared lock on the shard, blocking the calling thread while another process
        downloads or evicts it (call it from the consumer's thread; on an event loop use
        :meth:`pin_async` or :meth:`acquire`), and marks the shard used. A pin does not bring
        the shard: check :meth:`is_ready` under it, since the shard may have been evicted after
        it was fetched (:meth:`acquire` fetches and pins with that check).
        """
        if not self.evictable:
            return ShardPin(self.raw_path(shard), None)
        self._ensure_dirs()
        lock = FileLock.acquire(self._lock_path(shard), shared=True)
        self.touch(shard)
        return ShardPin(self.raw_path(shard), lock)

    async def pin_async(self, shard: ShardInfo) -> ShardPin:
        """:meth:`pin` for an event loop: waits for the shared lock without blocking the loop."""
        if not self.evictable:
            return ShardPin(self.raw_path(shard), None)
        self._ensure_dirs()
        lock = await FileLock.acquire_async(self._lock_path(shard), shared=True)
        self.touch(shard)
        return ShardPin(self.raw_path(shard), lock)

    async def acquire(
        self,
        store: Store,
        shard: ShardInfo,
        *,
        validate_hash: str | None = None,
        keep_zip: bool = False,
        on_raw_started: Callable[[Path], None] | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> ShardPin:
        """:meth:`fetch` the shard and pin it, with no window for eviction in between.

        The arguments are :meth:`fetch`'s. Release the returned pin when done reading.
        """
        for _ in range(_ACQUIRE_TRIES):
            await self.fetch(
                store,
                shard,
                validate_hash=validate_hash,
                keep_zip=keep_zip,
                on_raw_started=on_raw_started,
                on_progress=on_progress,
            )
            pin = await self.pin_async(shard)
            if self.is_ready(shard):
                return pin
            pin.release()  # evicted between fetch and pin: fetch again
        raise CacheLimitError(
            f"shard {shard.raw.basename} was evicted from {self.root} {_ACQUIRE_TRIES} times "
            f"right after it was fetched; cache_limit={self.limit} is too small for the shards "
            "in use at once: raise cache_limit"
        )

    # -- LRU stamps ----------------------------------------------------------------------------
    # A shard's last use is the mtime of a tiny per-shard stamp file rather than of the shard
    # itself: the stamp also lists the files that make up the shard (raw, compressed, meta), so
    # eviction and usage need neither the index nor a guess from file names; and the data files
    # are never written to after their rename (their mtime stays the download time, and they
    # may be read-only).

    def touch(self, shard: ShardInfo) -> None:
        """Mark the shard used now (the LRU order of eviction)."""
        if not self.evictable:
            return
        stamp = self._stamp_path(shard)
        now = time.time_ns()
        try:
            os.utime(stamp, ns=(now, now))
        except FileNotFoundError:
            if self.is_ready(shard):
                # A shard that was already in the directory (or whose fetch was killed between
                # its rename and its stamp): adopt it.
                self._write_stamp(shard)

    def _write_stamp(self, shard: ShardInfo) -> None:
        files = []
        for raw, zip_info in _file_pairs(shard):
            files.append(raw.basename)
            if zip_info is not None and (self.root / zip_info.basename).exists():
                files.append(zip_info.basename)
        # Only names a stamp may list (see _stamp_files): an index whose meta file is named
        # otherwise leaves that file to stay, rather than its whole stamp being ignored.
        files = [name for name in files if _belongs(shard.raw.basename, name)]
        self._ensure_dirs()
        _replace_json(self._stamp_path(shard), {"files": files})

    def _entries(self) -> list[tuple[int, str, list[Path], int]]:
        """(last use ns, stamp name, files, bytes on disk) of every stamped shard."""
        entries = []
        try:
            stamps = list(os.scandir(self._meta / "shards"))
        except FileNotFoundError:
            return []
        for entry in stamps:
            if _TMP_MARKER in entry.name or not entry.name.endswith(".json"):
                continue
            try:
                stat = entry.stat(follow_symlinks=False)
                if not entry.is_file(follow_symlinks=False) or stat.st_size > _MAX_STAMP_BYTES:
                    continue  # not a stamp this cache wrote
                key = (entry.name, stat.st_ino, stat.st_size)
                files = self._stamp_files.get(key)
                if files is None:
                    with open(entry.path, "rb") as handle:
                        names = _stamp_files(entry.name, handle.read(_MAX_STAMP_BYTES + 1))
                    if names is None:
                        continue  # torn, from an older layout, or hostile: not ours
                    files = [self.root / name for name in names]
                    self._stamp_files[key] = files
            except OSError:
                continue  # removed meanwhile, or unreadable
            mtime = stat.st_mtime_ns
            size = 0
            for path in files:
                with contextlib.suppress(OSError):
                    size += os.stat(path).st_size
            entries.append((mtime, entry.name, files, size))
        return entries

    def usage(self) -> int:
        """Bytes of every file in the cache directory: shards, the index, temporary files,
        astream's own metadata and anything else it holds (what ``limit`` bounds)."""
        return folder_bytes(self.root)

    def shard_usage(self) -> int:
        """Bytes of the shards this cache fetched or used (their stamped files only)."""
        return sum(size for *_, size in self._entries())

    # -- eviction ------------------------------------------------------------------------------

    def evict(self, needed: int = 0) -> int:
        """Delete least recently used, unpinned shards until ``usage() + needed <= limit``.

        Serialised across processes by a cache-wide lock (this call blocks the calling thread
        while another process evicts). A no-op without a limit or when not evictable. Never
        deletes the index, a pinned shard or a shard being downloaded.

        :returns: bytes freed.
        :raises CacheError: ``needed`` alone exceeds the limit, or too much is pinned to make
            room.
        """
        if not self.evictable or self.limit is None:
            return 0
        return self._evict(needed, None)

    def trim(self) -> int:
        """Evict down to the limit now, as far as unpinned shards allow (never raises for
        pinned ones). Called when a process starts using the cache, so a cache left over its
        limit (by a smaller ``cache_limit`` than last run's) shrinks before anything downloads.

        :returns: bytes freed.
        """
        if not self.evictable or self.limit is None or not self._meta.is_dir():
            return 0
        with contextlib.suppress(CacheError):
            return self._evict(0, None)
        return 0

    def _evict(self, needed: int, for_shard: ShardInfo | None) -> int:
        limit = self.limit
        if limit is None:
            return 0
        what = f"shard {for_shard.raw.basename}" if for_shard else "the request"
        if needed > limit:
            raise CacheLimitError(
                f"{what} needs {needed} bytes on disk, more than cache_limit={limit} bytes at "
                f"{self.root}: raise cache_limit"
            )
        self._ensure_dirs()
        with FileLock.acquire(self._meta / "cache.lock"):
            if for_shard is not None:
                ledger = self._read_ledger()
                if ledger is not None and ledger[0] + needed <= limit:
                    # Room without a walk: the ledger bounds the directory from above.
                    self._write_ledger(ledger[0] + needed, ledger[1])
                    self._reserve(for_shard, needed)
                    return 0
            walked = time.time_ns()
            entries = self._entries()
            # Every byte of the directory counts, not only the shards that can be evicted, and
            # so does the room other downloads reserved that their files do not fill yet.
            usage = folder_bytes(self.root) + self._reserved_unfilled()
            # A download that must evict frees a little more than it needs (1/32 of the limit),
            # so that the next ones find room in the ledger instead of walking the directory
            # again; as far as pins allow (only the limit itself is a must).
            target = limit - (limit // _HEADROOM_DIVISOR if for_shard is not None else 0)
            freed = 0
            # Oldest stamp first; the name breaks ties so the order is the same in every process.
            if usage + needed > limit:
                for _, name, files, size in sorted(entries, key=lambda e: (e[0], e[1])):
                    if usage + needed <= target:
                        break
                    if not self._delete_unheld(name, files, size):
                        continue  # pinned or downloading
                    usage -= size
                    freed += size
            if usage + needed > limit:
                raise CacheLimitError(
                    f"cannot make room for {what} ({needed} bytes) in {self.root}: "
                    f"cache_limit={limit} bytes, {usage} bytes in use by the index, astream's "
                    "files and shards that are pinned or downloading: raise cache_limit (the "
                    "minimum: the index plus, per consumer of the node, 1 + prefetch_shards "
                    "times the largest shard; see astream.dataset.cache_limit_minimum)"
                )
            if for_shard is not None:
                self._reserve(for_shard, needed)
            self._write_ledger(usage + needed, walked)
            return freed

    # -- the ledger: an upper bound of the directory's bytes, so that most passes do not walk --
    #
    # Walking the directory costs a stat per file: with thousands of shards cached that is a
    # tenth of a second or more, under the lock every download of the node takes. So a full pass
    # (walk, evict, reserve) writes down the bytes it found plus those it reserved, and a
    # download whose room fits under that figure only adds its own reservation to it. The
    # figure only overestimates what astream itself does (a reservation is a shard's peak; a
    # failed download or an eviction outside a pass leaves its bytes counted): the next full
    # pass corrects it. Bytes written by anything else are seen by the next walk, which happens
    # at least every _LEDGER_SECONDS.

    def _read_ledger(self) -> tuple[int, int] | None:
        """``(bytes the ledger bounds the directory by, when it was walked)``, or ``None``
        when a walk is due."""
        try:
            with open(self._meta / "usage.json", "rb") as handle:
                data = json.loads(handle.read(_MAX_STAMP_BYTES))
            known, walked = data["bytes"], data["walked_ns"]
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            return None
        if not isinstance(known, int) or not isinstance(walked, int) or known < 0:
            return None
        age = time.time_ns() - walked
        if not 0 <= age <= _LEDGER_SECONDS * 1_000_000_000:
            return None
        return known, walked

    def _write_ledger(self, known: int, walked: int) -> None:
        _replace_json(self._meta / "usage.json", {"bytes": known, "walked_ns": walked})

    # -- reservations: room made for a download before its files exist -------------------------
    #
    # A download makes room (above) before its files exist. Without a record, another
    # process's eviction pass that runs meanwhile would not see that room taken and would fill
    # it too, and concurrent downloads would overshoot the limit together. So the room is
    # written down, under the cache lock, as ``.astream/reserved/<shard>.json``; every pass
    # counts a reservation's bytes that its shard's files (and their temporary files) do not
    # hold yet. The fetch deletes it when it ends, however it ends; one left by a killed
    # process is deleted by the next pass that finds its shard's lock free.

    def _reserve(self, shard: ShardInfo, needed: int) -> None:
        files = [name for name in shard.basenames if _belongs(shard.raw.basename, name)]
        path = self._reservation_path(shard)
        path.parent.mkdir(exist_ok=True)
        _replace_json(path, {"files": files, "bytes": needed})

    def _reserved_unfilled(self) -> int:
        """Bytes that downloads in flight reserved and their files do not hold yet. The caller
        holds the cache-wide lock."""
        folder = self._meta / "reserved"
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            return 0
        total = 0
        for entry in entries:
            if _TMP_MARKER in entry.name or not entry.name.endswith(".json"):
                continue
            try:
                free = FileLock.try_acquire(self._lock_named(entry.name))
            except OSError:
                continue  # a name no shard of ours has (too long for a lock file)
            if free is not None:
                # Nobody downloads (or reads) that shard: left by a killed process.
                with free:
                    _unlink(Path(entry.path))
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                with open(entry.path, "rb") as handle:
                    data = handle.read(_MAX_STAMP_BYTES + 1)
                reserved = json.loads(data)["bytes"]
            except (OSError, ValueError, KeyError, TypeError, RecursionError):
                continue  # torn or not ours
            files = _stamp_files(entry.name, data)
            if (
                files is None
                or not isinstance(reserved, int)
                or not 0 < reserved <= (self.limit or 0)
            ):
                continue  # not one a cache could have written
            held = sum(_bytes_with_temps(self.root / name) for name in files)
            total += max(0, reserved - held)
        return total

    def _delete_unheld(self, name: str, files: list[Path], size: int) -> bool:
        """Delete one stamped shard (its files, then its stamp) unless a process pins or
        downloads it; whether it was deleted. The caller holds the cache-wide lock."""
        lock = FileLock.try_acquire(self._lock_named(name))
        if lock is None:
            return False
        with lock:
            # Raw files first: once one is gone the shard is no longer ready, and a stamp left
            # by a kill right here is harmless (its files count 0 bytes).
            for path in files:
                # Basenames are checked, but a folder on the way may be a symlink.
                if self._inside(path):
                    _unlink(path)
            _unlink(self._meta / "shards" / name)
        if size:
            self._count(evictions=1, bytes_evicted=size)
        return True

    def evict_one(self, shard: ShardInfo) -> int:
        """Delete one shard's files now (mosaicml-streaming's ``evict_shard``).

        :returns: bytes freed (0 when the shard was not on disk).
        :raises CacheError: the directory is the dataset itself (no remote), or a process is
            reading or downloading the shard.
        """
        if not self.evictable:
            raise CacheError(
                f"{self.root} is the dataset itself (its stream has no remote): its shards are "
                "never evicted"
            )
        self._ensure_dirs()
        lock = FileLock.try_acquire(self._lock_path(shard))
        if lock is None:
            raise CacheError(
                f"shard {shard.raw.basename} in {self.root} is being read or downloaded; it "
                "cannot be evicted now"
            )
        with lock:
            freed = 0
            for raw, zip_info in _file_pairs(shard):
                for info in (raw, zip_info):
                    if info is None:
                        continue
                    path = self.root / info.basename
                    if not self._inside(path):
                        continue  # a symlinked folder on the way: not ours to delete
                    with contextlib.suppress(FileNotFoundError):
                        freed += os.stat(path).st_size
                        _unlink(path)
            _unlink(self._stamp_path(shard))
        if freed:
            self._count(evictions=1, bytes_evicted=freed)
        return freed

    def coldest(self) -> tuple[int, str] | None:
        """``(last use ns, stamp name)`` of the least recently used shard on disk, if any."""
        entries = [(mtime, name) for mtime, name, _, size in self._entries() if size]
        return min(entries) if entries else None

    def evict_coldest(self) -> int:
        """Evict the least recently used shard that no process holds; bytes freed (0: none)."""
        if not self.evictable:
            return 0
        self._ensure_dirs()
        with FileLock.acquire(self._meta / "cache.lock"):
            for _, name, files, size in sorted(self._entries(), key=lambda e: (e[0], e[1])):
                if size and self._delete_unheld(name, files, size):
                    return size
        return 0

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["_counts_lock"]
        state["_counts"] = {}
        state["_stamp_files"] = {}
        state["_verified"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._counts_lock = threading.Lock()

    def __repr__(self) -> str:
        origin = "" if self.origin is None else f", origin={str(self.origin)!r}"
        return (
            f"ShardCache({str(self.root)!r}, limit={self.limit!r}, "
            f"evictable={self.evictable!r}{origin})"
        )


async def fetch_index(store: Store, root: Path | str, *, name: str = "index.json") -> bytes:
    """The bytes of a stream's index, downloaded into ``root`` afresh by every call.

    As mosaicml-streaming does at every start, the index is read from the store each time (one
    process of the node at a time, under a lock), so that a cache never pairs the index of an
    earlier version of the remote with the shards of a rewritten one. When the remote's index
    differs from the one the cache holds, the shards whose entries changed or went are deleted
    from the cache before the new index replaces the old (:func:`_forget_changed_shards`). A
    rewrite that leaves an entry byte-identical (same sizes, no hashes recorded) cannot be told
    apart: record hashes in the index to make every rewrite visible.

    When the store cannot be reached (after its retries) and the cache holds an index, that
    index is used, with a :class:`~astream.errors.CachedIndexWarning`.

    :raises StorageError: the store failed and the cache holds no index
        (:class:`~astream.errors.ObjectNotFoundError` when the index does not exist).
    :raises CacheConflictError: a changed shard is being read by another process.
    :raises IndexFormatError: the remote's new index does not load (the cache is left as it was).
    """
    path = Path(root) / name
    meta = Path(root) / _META_DIR
    meta.mkdir(parents=True, exist_ok=True)
    lock = await FileLock.acquire_async(meta / f"index-{urllib.parse.quote(name, safe='')}.lock")
    try:
        try:
            cached: bytes | None = await anyio.to_thread.run_sync(path.read_bytes)
        except FileNotFoundError:
            cached = None
        _remove_temps(path)
        try:
            # One whole GET (an index is small): no stat round trip before the download.
            data = await store.read(name)
        except ObjectNotFoundError:
            raise
        except StorageError as exc:
            if cached is None:
                raise
            warnings.warn(
                f"cannot read {store.join(name)} ({exc}); using the index the cache at {root} "
                "holds, which may be older than the remote's",
                CachedIndexWarning,
                stacklevel=2,
            )
            return cached
        if data == cached:
            return data
        if cached is not None:
            await anyio.to_thread.run_sync(
                _forget_changed_shards, Path(root), cached, data, store.join(name)
            )
        tmp = _temp_name(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            await anyio.to_thread.run_sync(tmp.write_bytes, data)
            os.replace(tmp, path)
        except OSError as exc:
            # A full disk, a quota, a read-only cache: say which file, as for shards.
            raise CacheError(
                f"cannot write the index {path} into the cache: {exc.strerror or exc}"
            ) from exc
        finally:
            _unlink(tmp)
        return data
    finally:
        lock.release()


def _forget_changed_shards(root: Path, cached: bytes, data: bytes, source: str) -> None:
    """Delete from the cache at ``root`` every shard whose entry in the index it holds
    (``cached``) differs from, or is missing in, the remote's new index (``data``).

    :raises IndexFormatError: ``data`` does not load (nothing is deleted).
    :raises CacheConflictError: a changed shard is pinned or being downloaded by another
        process (one still reading the old version).
    """
    new = {shard.raw.basename: shard for shard in load_index(data, source=source).shards}
    try:
        old = list(load_index(cached, source=str(root)).shards)
    except FormatError:
        old = list(new.values())  # unreadable: none of its shards can be trusted
        new = {}
    cache = ShardCache(root)
    for shard in old:
        if new.get(shard.raw.basename) == shard:
            continue
        try:
            cache.evict_one(shard)
        except CacheError as exc:
            raise CacheConflictError(
                f"{source} was rewritten since the cache at {root} was filled, and shard "
                f"{shard.raw.basename} of the earlier version is being read or downloaded by "
                "another process: let it finish, or give this dataset another local directory"
            ) from exc


def claim_source(root: Path | str, remote: str, split: str = "") -> None:
    """Record that ``root`` caches ``remote`` (with ``split``), or check that it already does.

    The record (``.astream/source.json``) outlives the process, so a later run, another job or
    another process of the node that points a dataset of another remote at the same directory
    is refused rather than served the first one's shards. A directory without a record (a cache
    of an earlier astream, or of mosaicml-streaming) is adopted by its first claim.

    :raises CacheConflictError: ``root`` caches another remote or split; names both.
    """
    meta = Path(root) / _META_DIR
    meta.mkdir(parents=True, exist_ok=True)
    record = meta / "source.json"
    wanted = {"remote": remote, "split": split}
    with FileLock.acquire(meta / "source.lock"):
        try:
            with open(record, encoding="utf-8") as handle:
                held = json.load(handle)
        except FileNotFoundError:
            held = None
        except ValueError:
            held = None  # not ours (it is renamed into place whole): claim the directory
        if isinstance(held, dict) and "remote" in held:
            if held.get("remote") != remote or held.get("split", "") != split:
                theirs = held.get("remote")
                raise CacheConflictError(
                    f"local directory {root} already caches remote {theirs!r} "
                    f"(split {held.get('split', '')!r}); this dataset's remote is {remote!r} "
                    f"(split {split!r}). Give this dataset another local directory (or delete "
                    f"{root} to reuse it)"
                )
            return
        _replace_json(record, wanted)
