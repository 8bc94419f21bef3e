"""Reliability tests reuse the storage tests' loopback servers (session-scoped).

Each area keeps its own test file here (``test_<area>_*.py``); shared helpers live in
``reliability_data.py``.
"""

from __future__ import annotations

from tests.storage.conftest import anyio_backend, http_files, moto_s3

__all__ = ["anyio_backend", "http_files", "moto_s3"]
