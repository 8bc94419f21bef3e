"""Engine and dataset tests reuse the storage tests' loopback servers (session-scoped)."""

from __future__ import annotations

from tests.storage.conftest import anyio_backend, http_files, moto_s3

__all__ = ["anyio_backend", "http_files", "moto_s3"]
