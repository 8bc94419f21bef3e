"""Dataset writers that upload to a store while they write.

:class:`MDSWriter`, :class:`JSONLWriter` (alias :data:`JSONWriter`), :class:`CSVWriter`,
:class:`TSVWriter` and :class:`XSVWriter` take the keyword arguments of mosaicml-streaming's
writers of the same names. ``out`` is one of:

- a local directory: exactly the local writer of :mod:`astream.format.writer`;
- a URL that :func:`~astream.storage.open_store` serves (``"s3://bucket/prefix"``): files are
  written into a temporary local directory and uploaded; the directory is removed at the end
  unless ``keep_local=True``;
- a tuple ``(local_dir, remote_url)``: files are written into ``local_dir`` and uploaded.

Each finished file is uploaded on the process's IO loop thread while writing goes on; with
``keep_local=False`` it is deleted locally once uploaded. ``index.json`` is uploaded only after
every other upload has succeeded, so a reader never finds an index naming shards that are not
there. A failed upload (after the store's retries) is raised from the next :meth:`write`,
:meth:`finish` or ``with`` exit as a :class:`~astream.errors.StorageError` naming the file and
its URL, and then no index is uploaded. An exception inside the ``with`` block cancels the
uploads in flight and uploads no index (shards already uploaded stay). With ``exist_ok=True``
over an existing dataset, its ``index.json`` is first replaced by a placeholder that readers
refuse, so no reader pairs the old index with new shards, even after a kill.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import functools
import json
import os
import secrets
import shutil
import stat
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import anyio.to_thread

from astream.engine.loop import IOLoop, io_loop
from astream.errors import ConfigError, ObjectNotFoundError, StorageError
from astream.format import writer as _format
from astream.format.index import INCOMPLETE_KEY, INDEX_BASENAME
from astream.storage import RetryConfig, Store, open_store

__all__ = [
    "CSVWriter",
    "JSONLWriter",
    "JSONWriter",
    "MDSWriter",
    "TSVWriter",
    "XSVWriter",
]

#: Uploads in flight per writer when ``max_workers`` is not given.
DEFAULT_MAX_WORKERS = 8

PathLike = str | os.PathLike[str]
#: What ``out`` may be: a local directory, a remote URL, or ``(local_dir, remote_url)``.
Out = PathLike | tuple[PathLike, str]

_W = TypeVar("_W", bound="_UploadingWriter")


#: Folder of the system temp dir (suffixed ``-<uid>``) that holds the temporary directories of
#: remote-only writers.
SCRATCH_FOLDER = "astream-writers"


def _scratch_parent() -> Path:
    """``<tempdir>/astream-writers-<uid>``: this user's own folder, never one planted by another
    user of a shared temp dir (a symlink or someone else's folder is refused)."""
    parent = Path(tempfile.gettempdir()) / f"{SCRATCH_FOLDER}-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        parent.mkdir(mode=0o700)
    info = os.lstat(parent)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise PermissionError(
            f"{parent} is not a folder of this user's; remove it (or set TMPDIR) so that "
            "writers can keep their temporary files there"
        )
    return parent


class _Scratch:
    """The temporary local directory of a writer whose ``out`` is only a remote URL.

    It lives in ``<tempdir>/astream-writers-<uid>/astream-writer-<token>`` beside a lock file
    ``astream-writer-<token>.lock`` that its writer holds (``flock``) for its whole life. The
    kernel drops the lock when the process dies, even by SIGKILL, so the next writer to start
    finds directories whose lock it can take and removes them: a killed writer's files last
    until the next run, never forever. A kept directory (``keep_local=True``) loses its lock
    file and so is never taken for an orphan.
    """

    def __init__(self) -> None:
        parent = _scratch_parent()
        _remove_orphans(parent)
        while True:
            name = f"astream-writer-{secrets.token_hex(6)}"
            lock_path = parent / f"{name}.lock"
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            # A cleaner may have taken the new file between its creation and our flock, and
            # unlinked it: then it is not ours to trust, start over with a new name.
            if _same_file(lock_path, fd):
                break
            os.close(fd)
        self.path = parent / name
        self._lock_path = lock_path
        self._fd: int | None = fd
        self.path.mkdir(mode=0o700)

    def close(self, *, remove: bool) -> None:
        """Remove the directory (or keep it, no longer held) and drop the lock; idempotent."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if remove:
            shutil.rmtree(self.path, ignore_errors=True)
        with contextlib.suppress(OSError):
            self._lock_path.unlink()
        os.close(fd)  # releases the flock


def _same_file(path: Path, fd: int) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _remove_orphans(parent: Path) -> None:
    """Remove the directories of writers that died without cleaning up (their lock is free)."""
    try:
        names = [n for n in os.listdir(parent) if n.startswith("astream-writer-")]
    except OSError:
        return
    for name in names:
        if not name.endswith(".lock"):
            continue
        lock_path = parent / name
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            continue  # removed meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # a live writer holds it
        try:
            # Still the lock file of that name (not unlinked by its writer or another cleaner)?
            if _same_file(lock_path, fd):
                shutil.rmtree(parent / name.removesuffix(".lock"), ignore_errors=True)
                with contextlib.suppress(OSError):
                    lock_path.unlink()
        finally:
            os.close(fd)


def _split_out(out: Out) -> tuple[PathLike | None, str | None]:
    """``(local directory or None for a temporary one, remote URL or None)``."""
    if isinstance(out, tuple):
        local, remote = out
        return local, remote
    if isinstance(out, str) and "://" in out:  # any scheme, file:// included
        return None, out
    return out, None


class _Uploads:
    """The uploads of one writer: started from the writer's thread, run on the IO loop.

    Bound: at most ``max_workers`` uploads are in flight (submitted and not yet settled).
    :meth:`submit` takes a slot first and *blocks the writer's thread* until one is free, so
    when uploads fall behind the writer waits instead of filling the disk with finished shards
    (with ``keep_local=False`` at most ``max_workers + 1`` finished files exist locally at once).
    A settled upload frees its slot from its done callback, success or not, so a failure never
    leaves the writer waiting.
    """

    def __init__(
        self,
        store: Store,
        *,
        max_workers: int,
        keep_local: bool,
        progress_bar: bool,
    ) -> None:
        self.store = store
        self.keep_local = keep_local
        self.loop: IOLoop = io_loop()
        self._slots = threading.Semaphore(max_workers)
        self._lock = threading.Lock()
        self._pending: set[concurrent.futures.Future[None]] = set()
        # Tasks of the uploads, touched on the loop thread only (to cancel them on abort).
        self._tasks: set[asyncio.Task[Any]] = set()
        self._failure: StorageError | None = None
        self._closed = False
        self._bar = _progress_bar(store.url) if progress_bar else None

    # -- the writer's thread ---------------------------------------------------------------

    def check(self) -> None:
        """Raise the first upload failure, if any (and from then on, every time)."""
        with self._lock:
            failure = self._failure
        if failure is not None:
            self.close(cancel=True)
            raise failure

    def require_empty(self) -> None:
        """Raise :class:`FileExistsError` if the remote already holds objects."""

        async def keys() -> list[str]:
            try:
                # Two keys say "one" or "more than one": no need to list a large prefix.
                return await self.store.list(limit=2)
            except ObjectNotFoundError:  # no bucket or container yet: nothing in it either
                return []

        found = self.loop.run(keys())
        if found:
            more = " and more" if len(found) > 1 else ""
            raise FileExistsError(
                f"remote is not empty: {self.store.url} holds {found[0]!r}{more} "
                "(pass exist_ok=True to write over it)"
            )

    def retire_index(self) -> None:
        """Replace the remote's ``index.json`` by a placeholder that readers refuse.

        Stores have no delete in astream's interface, and an overwrite is as good here: the
        placeholder says a writer is at work (or died), and the new index replaces it last.
        """
        marker = json.dumps(
            {"version": 2, INCOMPLETE_KEY: "an astream writer started writing over it"}
        ).encode("utf-8")

        async def retire() -> None:
            if await self.store.exists(INDEX_BASENAME):
                await self.store.write(INDEX_BASENAME, marker)

        try:
            self.loop.run(retire())
        except Exception as exc:
            raise StorageError(
                f"cannot retire the old index at {self.store.join(INDEX_BASENAME)}: {exc}"
            ) from exc

    def submit(self, basename: str, path: Path) -> None:
        """Start uploading ``path`` as ``basename``; blocks while ``max_workers`` are in flight."""
        self.check()
        self._slots.acquire()  # the backpressure: see the class docstring
        try:
            self.check()
            future = self.loop.submit(self._upload(basename, path))
        except BaseException:
            self._slots.release()
            raise
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._settled)

    def upload_last(self, basename: str, path: Path) -> None:
        """Wait for every upload, then upload ``path`` (the index) and close the store."""
        with self._lock:
            pending = set(self._pending)
        concurrent.futures.wait(pending)
        self.check()
        try:
            self.loop.run(self._upload(basename, path, track=False))
        except StorageError as exc:
            with self._lock:
                self._failure = exc
            raise
        self._count_done()
        self.close(cancel=False)

    def close(self, *, cancel: bool) -> None:
        """Cancel (or wait for) the uploads in flight, then close the store on the loop."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            pending = set(self._pending)
        # Closing must not hide the error being raised (nor fail on a loop shut down at exit).
        if cancel:
            with contextlib.suppress(Exception):
                self.loop.run(self._cancel_all())
        concurrent.futures.wait(pending)
        with contextlib.suppress(Exception):
            self.loop.run(self.store.aclose())
        if self._bar is not None:
            self._bar.close()

    # -- the loop's thread -----------------------------------------------------------------

    async def _upload(self, basename: str, path: Path, *, track: bool = True) -> None:
        task = asyncio.current_task()
        if track and task is not None:
            self._tasks.add(task)
        try:
            await self.store.upload(path, basename)
        except Exception as exc:
            raise StorageError(
                f"cannot upload {path} to {self.store.join(basename)}: {exc}"
            ) from exc
        finally:
            if task is not None:
                self._tasks.discard(task)
        if not self.keep_local:
            await anyio.to_thread.run_sync(functools.partial(path.unlink, missing_ok=True))

    async def _cancel_all(self) -> None:
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _settled(self, future: concurrent.futures.Future[None]) -> None:
        with self._lock:
            self._pending.discard(future)
            exc = None if future.cancelled() else future.exception()
            if exc is None:
                if not future.cancelled():
                    self._count_done()
            elif self._failure is None:
                # _upload raises StorageError for every Exception; anything else is wrapped.
                self._failure = (
                    exc if isinstance(exc, StorageError) else StorageError(f"upload: {exc!r}")
                )
        self._slots.release()

    def _count_done(self) -> None:
        if self._bar is not None:
            self._bar.update(1)


def _progress_bar(url: str) -> Any:
    """A tqdm bar counting uploaded files, or ``None`` when tqdm is not installed."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(desc=f"uploading to {url}", unit="file")


class _UploadingWriter(_format.ShardWriter):
    """What the uploading writers add to the local ones (see the module docstring).

    :param out: a local directory, a remote URL, or ``(local_dir, remote_url)``.
    :param keep_local: with a remote, keep the local files after they are uploaded (and the
        temporary directory of a remote-only ``out``); otherwise each is deleted once uploaded.
    :param max_workers: uploads in flight at once (default :data:`DEFAULT_MAX_WORKERS`); the
        writer waits when that many are running.
    :param retry: retries of each upload request after the first try
        (``RetryConfig(attempts=retry + 1)``).
    :param progress_bar: show a tqdm bar of uploaded files (when tqdm is installed).
    :param storage_options: keyword options for :func:`~astream.storage.open_store`
        (``endpoint_url``, credentials, ...).

    The other keyword arguments are the format writer's.
    """

    def __init__(
        self,
        *,
        out: Out,
        keep_local: bool = False,
        max_workers: int | None = None,
        retry: int = 2,
        progress_bar: bool = False,
        storage_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if max_workers is not None and max_workers < 1:
            raise ConfigError(f"max_workers must be >= 1, got {max_workers}")
        if retry < 0:
            raise ConfigError(f"retry must be >= 0, got {retry}")
        local, remote = _split_out(out)
        #: The remote URL the dataset is uploaded to (``None`` for a local writer).
        self.remote = remote
        self._discard_local = remote is not None and not keep_local
        # A temporary directory of ours for a remote-only ``out`` (removed at the end).
        self._temporary: _Scratch | None = None
        if local is None:
            self._temporary = _Scratch()
            local = self._temporary.path
        self._uploads: _Uploads | None = None
        try:
            if remote is not None:
                store = open_store(
                    remote, retry=RetryConfig(attempts=retry + 1), **dict(storage_options or {})
                )
                self._uploads = _Uploads(
                    store,
                    max_workers=max_workers or DEFAULT_MAX_WORKERS,
                    keep_local=keep_local,
                    progress_bar=progress_bar,
                )
                if not kwargs.get("exist_ok", False):
                    # As for a local ``out``: never mix a new dataset into an old one.
                    self._uploads.require_empty()
                else:
                    # Before any shard is overwritten: no reader may pair the old index with
                    # new shards, nor a killed rewrite leave it naming them.
                    self._uploads.retire_index()
            super().__init__(
                out=local,
                keep_local=keep_local,
                max_workers=max_workers,
                retry=retry,
                progress_bar=progress_bar,
                **kwargs,
            )
        except BaseException:
            self._discard(cancel=True)
            raise

    def _publish(self, basename: str, local_path: Path) -> None:
        if self._uploads is None:
            return
        if basename == INDEX_BASENAME:
            # Last, and only once every shard upload has succeeded.
            self._uploads.upload_last(basename, local_path)
        else:
            # Blocks the writer while max_workers uploads are in flight (the backpressure).
            self._uploads.submit(basename, local_path)

    def write(self, sample: Mapping[str, Any]) -> None:
        """Add one sample (see the format writer's ``write``).

        :raises StorageError: an earlier upload failed; it names the file and URL.
        """
        if self._uploads is not None:
            self._uploads.check()
        super().write(sample)

    def finish(self) -> None:
        """Write the last shard, wait for every upload, then upload ``index.json``.

        :raises StorageError: an upload failed (no index is uploaded then).
        """
        if self._finished:
            if self._uploads is not None:
                self._uploads.check()
            return
        try:
            super().finish()
        except BaseException:
            self._finished = True
            self._discard(cancel=True)
            raise
        self._discard(cancel=False)

    def _discard(self, *, cancel: bool) -> None:
        """Stop the uploads and close the store; remove the local files that are not kept."""
        if self._uploads is not None:
            self._uploads.close(cancel=cancel)
        if self._temporary is not None:
            self._temporary.close(remove=self._discard_local)
        elif self._discard_local and not cancel:
            # A directory the caller named: its files were deleted as they were uploaded;
            # remove it when nothing else is left in it.
            with contextlib.suppress(OSError):
                self.local.rmdir()

    def __enter__(self: _W) -> _W:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self._discard(cancel=True)
        super().__exit__(exc_type, exc, tb)


# The public writers spell out every argument (so their docs and IDEs show them) and pass them
# on to _UploadingWriter (the upload ones) and the format writer (the rest).


class MDSWriter(_UploadingWriter, _format.LocalMDSWriter):
    """Write an MDS dataset to a local directory or a store (see :mod:`astream.writers`).

    ::

        with MDSWriter(out="s3://bucket/c4", columns={"text": "str"}, compression="zstd") as w:
            for text in texts:
                w.write({"text": text})

    :param columns: column name -> encoding (``{"x": "ndarray:float32", "y": "int"}``).
    :param out: a local directory, a store URL (``"s3://bucket/prefix"``), or
        ``(local_dir, remote_url)``: see :mod:`astream.writers`.
    :param keep_local: with a remote, keep the local files once uploaded (and the temporary
        directory of a remote-only ``out``); otherwise each is deleted once uploaded.
    :param compression: ``None`` or a codec spelling (``"zstd"``, ``"zstd:7"``).
    :param hashes: hash algorithms to record for every file, unique and sorted.
    :param size_limit: start a new shard before one would exceed this many bytes (an int or
        ``"64mb"``); ``None`` or ``0`` puts every sample in one shard. Default 64 MiB.
    :param exist_ok: when ``out`` holds files: delete them (``True``) or raise
        :class:`FileExistsError` (``False``).
    :param progress_bar: show a tqdm bar of uploaded files (when tqdm is installed).
    :param max_workers: uploads in flight at once (default :data:`DEFAULT_MAX_WORKERS`); the
        writer waits when that many are running.
    :param retry: retries of each upload request after the first try.
    :param storage_options: keyword options for :func:`~astream.storage.open_store`
        (``endpoint_url``, credentials, ...).
    """

    def __init__(
        self,
        *,
        columns: Mapping[str, str],
        out: Out,
        keep_local: bool = False,
        compression: str | None = None,
        hashes: list[str] | None = None,
        size_limit: int | str | None = 1 << 26,
        exist_ok: bool = False,
        progress_bar: bool = False,
        max_workers: int | None = None,
        retry: int = 2,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            columns=columns,
            out=out,
            keep_local=keep_local,
            compression=compression,
            hashes=hashes,
            size_limit=size_limit,
            exist_ok=exist_ok,
            progress_bar=progress_bar,
            max_workers=max_workers,
            retry=retry,
            storage_options=storage_options,
        )


class JSONLWriter(_UploadingWriter, _format.LocalJSONLWriter):
    """Write a JSONL dataset to a local directory or a store (see :mod:`astream.writers`).

    :param columns: column name -> ``"str"``, ``"int"`` or ``"float"``.
    :param newline: the line terminator.

    The other parameters are :class:`MDSWriter`'s.
    """

    def __init__(
        self,
        *,
        columns: Mapping[str, str],
        out: Out,
        newline: str = "\n",
        keep_local: bool = False,
        compression: str | None = None,
        hashes: list[str] | None = None,
        size_limit: int | str | None = 1 << 26,
        exist_ok: bool = False,
        progress_bar: bool = False,
        max_workers: int | None = None,
        retry: int = 2,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            columns=columns,
            out=out,
            newline=newline,
            keep_local=keep_local,
            compression=compression,
            hashes=hashes,
            size_limit=size_limit,
            exist_ok=exist_ok,
            progress_bar=progress_bar,
            max_workers=max_workers,
            retry=retry,
            storage_options=storage_options,
        )


#: mosaicml-streaming's name for :class:`JSONLWriter`.
JSONWriter = JSONLWriter


class XSVWriter(_UploadingWriter, _format.LocalXSVWriter):
    """Write delimited text shards to a local directory or a store (see :mod:`astream.writers`).

    :param columns: column name -> ``"str"``, ``"int"`` or ``"float"``.
    :param separator: the field separator; no column name or value may contain it.
    :param newline: the line terminator.

    The other parameters are :class:`MDSWriter`'s.
    """

    def __init__(
        self,
        *,
        columns: Mapping[str, str],
        separator: str,
        out: Out,
        newline: str = "\n",
        keep_local: bool = False,
        compression: str | None = None,
        hashes: list[str] | None = None,
        size_limit: int | str | None = 1 << 26,
        exist_ok: bool = False,
        progress_bar: bool = False,
        max_workers: int | None = None,
        retry: int = 2,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            columns=columns,
            separator=separator,
            out=out,
            newline=newline,
            keep_local=keep_local,
            compression=compression,
            hashes=hashes,
            size_limit=size_limit,
            exist_ok=exist_ok,
            progress_bar=progress_bar,
            max_workers=max_workers,
            retry=retry,
            storage_options=storage_options,
        )


class _UploadingFixedSeparatorWriter(_UploadingWriter, _format.LocalXSVWriter):
    """CSV and TSV: an XSV writer whose format implies the separator."""

    def __init__(
        self,
        *,
        columns: Mapping[str, str],
        out: Out,
        newline: str = "\n",
        keep_local: bool = False,
        compression: str | None = None,
        hashes: list[str] | None = None,
        size_limit: int | str | None = 1 << 26,
        exist_ok: bool = False,
        progress_bar: bool = False,
        max_workers: int | None = None,
        retry: int = 2,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            columns=columns,
            out=out,
            newline=newline,
            keep_local=keep_local,
            compression=compression,
            hashes=hashes,
            size_limit=size_limit,
            exist_ok=exist_ok,
            progress_bar=progress_bar,
            max_workers=max_workers,
            retry=retry,
            storage_options=storage_options,
        )


class CSVWriter(_UploadingFixedSeparatorWriter, _format.LocalCSVWriter):
    """Write CSV shards (separator ``,``) to a local directory or a store.

    :param columns: column name -> ``"str"``, ``"int"`` or ``"float"``.
    :param newline: the line terminator.

    The other parameters are :class:`MDSWriter`'s.
    """


class TSVWriter(_UploadingFixedSeparatorWriter, _format.LocalTSVWriter):
    """Write TSV shards (separator tab) to a local directory or a store.

    :param columns: column name -> ``"str"``, ``"int"`` or ``"float"``.
    :param newline: the line terminator.

    The other parameters are :class:`MDSWriter`'s.
    """
