"""Writing a file so that readers see either nothing or the whole file."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["write_atomic"]


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary name in the same directory.

    The data is flushed to disk before the rename, so a crash (even a power loss) cannot leave
    ``path`` naming a partial file; a failure removes the temporary file.
    """
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        if exc.filename is None and exc.errno is not None:
            # A failed write names no file ("[Errno 28] No space left on device"): name it.
            # OSError(errno, ...) keeps the subclass (PermissionError for EACCES, ...).
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
