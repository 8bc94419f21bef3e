"""One async interface over object stores, chosen by URL scheme.

``open_store("s3://bucket/prefix")`` returns a :class:`Store` rooted at that prefix; see
:mod:`astream.storage.base` for the contract and ``docs/storage.md`` for each backend.
"""

from __future__ import annotations

from astream.storage.base import ObjectInfo, ProgressCallback, RetryConfig, Store, TransferConfig
from astream.storage.registry import open_store, register_store

__all__ = [
    "ObjectInfo",
    "ProgressCallback",
    "RetryConfig",
    "Store",
    "TransferConfig",
    "open_store",
    "register_store",
]
