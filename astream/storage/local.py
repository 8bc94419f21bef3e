"""A directory on a local (or network-mounted) file system as a store.

URLs: a plain path (``/data/c4``, ``./c4``) or ``file:///data/c4``. File I/O runs in worker
threads so the event loop never blocks on a slow disk. Writes are atomic: data goes to a
temporary file in the destination directory, then ``os.replace`` moves it into place, so a
reader sees either the old object or the whole new one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread

from astream.errors import ConfigError, ObjectNotFoundError, StorageError, StoragePermissionError
from astream.storage.base import ObjectInfo, ProgressCallback, RetryConfig, Store, TransferConfig

__all__ = ["LocalStore"]

T = TypeVar("T")

# Temporary files of atomic writes carry this marker; list() hides them.
_TMP_MARKER = ".astream-tmp-"


def _root_path(url: str) -> Path:
    if url.startswith("file://"):
        parsed = urllib.parse.urlsplit(url)
        if parsed.netloc not in ("", "localhost"):
            raise StorageError(f"file URL names a remote host: {url}")
        return Path(urllib.parse.unquote(parsed.path))
    return Path(url).expanduser()


class LocalStore(Store):
    """Objects are files under a root directory; keys are ``/``-separated relative paths.

    Keys that would escape the root (``..`` segments, absolute paths) are refused with
    :class:`~astream.errors.StorageError`.
    """

    schemes = ("file",)

    def __init__(
        self,
        url: str,
        *,
        retry: RetryConfig | None = None,
        transfer: TransferConfig | None = None,
    ) -> None:
        super().__init__(url, retry=retry, transfer=transfer)
        self.root = _root_path(url).absolute()

    def path(self, key: str) -> Path:
        """The local path of ``key``."""
        parts = [p for p in key.split("/") if p not in ("", ".")]
        if ".." in parts or key.startswith("/"):
            raise StorageError(f"key {key!r} escapes the store root {self.url}")
        return self.root.joinpath(*parts)

    async def _io(self, key: str, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await anyio.to_thread.run_sync(fn, *args)
        except FileNotFoundError as exc:
            raise ObjectNotFoundError(f"no such object: {self.join(key)}") from exc
        except IsADirectoryError as exc:
            raise ObjectNotFoundError(f"no such object (a directory): {self.join(key)}") from exc
        except PermissionError as exc:
            raise StoragePermissionError(f"access denied to {self.join(key)}: {exc}") from exc
        except OSError as exc:
            if isinstance(exc, StorageError):
                raise
            raise StorageError(f"{self.join(key)}: {exc}") from exc

    # -- reading ---------------------------------------------------------------------------

    async def stat(self, key: str) -> ObjectInfo:
        path = self.path(key)

        def stat() -> ObjectInfo:
            st = path.stat()
            if not path.is_file():
                raise IsADirectoryError(str(path))
            return ObjectInfo(key=key, size=st.st_size, etag=f"{st.st_mtime_ns:x}-{st.st_size:x}")

        return await self._io(key, stat)

    async def read_range(self, key: str, start: int, end: int) -> bytes:
        if not 0 <= start <= end:
            raise ConfigError(f"bad range [{start}, {end}) for {self.join(key)}")
        path = self.path(key)
        url = self.join(key)

        def pread() -> bytes:
            with path.open("rb") as f:
                size = os.fstat(f.fileno()).st_size
                if end > size:
                    raise StorageError(
                        f"range [{start}, {end}) is past the end of {url} ({size} bytes)"
                    )
                return os.pread(f.fileno(), end - start, start)

        data = await self._io(key, pread)
        if len(data) != end - start:  # the file shrank between fstat and pread
            raise StorageError(f"{url}: short read of range [{start}, {end})")
        return data

    async def read(self, key: str) -> bytes:
        return await self._io(key, self.path(key).read_bytes)

    async def download(
        self,
        key: str,
        dest: str | os.PathLike[str],
        *,
        size: int | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> int:
        # A local copy gains nothing from concurrent ranges: one kernel-side copy is fastest.
        src = self.path(key)
        url = self.join(key)

        def copy() -> int:
            shutil.copyfile(src, dest)
            copied = os.stat(dest).st_size
            if size is not None and copied != size:
                raise StorageError(f"{url} is {copied} bytes, expected {size}")
            return copied

        copied = await self._io(key, copy)
        if on_progress is not None and copied:
            on_progress(0, copied)
        return copied

    # -- writing ---------------------------------------------------------------------------

    def _atomic(self, key: str, fill: Callable[[Path], None]) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{_TMP_MARKER}", dir=path.parent)
        os.close(fd)
        try:
            fill(Path(tmp))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    async def write(self, key: str, data: bytes) -> None:
        await self._io(key, self._atomic, key, lambda tmp: tmp.write_bytes(data))

    async def upload(self, src: str | os.PathLike[str], key: str) -> None:
        source = Path(src)
        url = self.join(key)

        def copy(tmp: Path) -> None:
            if not source.is_file():
                raise StorageError(f"cannot upload {source} to {url}: no such file")
            shutil.copyfile(source, tmp)

        await self._io(key, self._atomic, key, copy)

    # -- listing ---------------------------------------------------------------------------

    async def list(self, prefix: str = "", *, limit: int | None = None) -> list[str]:
        # Prefix semantics as in object stores: a string prefix of the key, not a directory
        # ("sub/ind" matches "sub/index.json"). Walk only the deepest directory it names.
        head, _, _ = prefix.rpartition("/")
        base = self.path(head) if head else self.root

        def walk() -> list[str]:
            keys: list[str] = []
            for dirpath, _dirs, files in os.walk(base):
                rel = Path(dirpath).relative_to(self.root).as_posix()
                for name in files:
                    if _TMP_MARKER in name:
                        continue
                    key = name if rel == "." else f"{rel}/{name}"
                    if key.startswith(prefix):
                        keys.append(key)
            keys.sort()
            return keys[:limit]

        return await self._io(prefix, walk)
