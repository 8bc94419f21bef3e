"""astream: stream training data from object stores into training, fast and reproducibly.

The public names are listed in ``__all__``; everything else may change between releases.
Heavy parts (torch, cloud SDKs) are imported only when first used.
"""

from __future__ import annotations

import importlib
from typing import Any

from astream.errors import (
    AstreamError,
    CacheConflictError,
    CachedIndexWarning,
    CacheError,
    CacheLimitError,
    CacheLimitWarning,
    ConfigError,
    DatasetNotFoundError,
    EmptyDatasetError,
    EncodingError,
    FormatError,
    IndexFormatError,
    MissingDependencyError,
    ObjectNotFoundError,
    PlanError,
    ShardCorruptError,
    StorageError,
    StoragePermissionError,
    StorageTimeoutError,
    UnsafeTypeError,
    UnsupportedSchemeError,
    WorldError,
)

__version__ = "0.1.0.dev0"

# Public names served lazily: name -> module that defines it.
_LAZY: dict[str, str] = {
    "StreamingDataset": "astream.dataset",
    "Stream": "astream.stream",
    "streams_registry": "astream.stream",
    "LocalDataset": "astream.local",
    "StreamingDataLoader": "astream.loader",
    "Prefetcher": "astream.prefetcher",
    "EngineStatistics": "astream.engine.fetch",
    "MDSWriter": "astream.writers",
    "JSONLWriter": "astream.writers",
    "JSONWriter": "astream.writers",
    "CSVWriter": "astream.writers",
    "TSVWriter": "astream.writers",
    "XSVWriter": "astream.writers",
    "merge_index": "astream.merge",
    "load_index": "astream.format",
    "open_shard": "astream.format",
    "DatasetIndex": "astream.format",
    "ShardInfo": "astream.format",
    "Encoding": "astream.format",
    "register_encoding": "astream.format",
    "open_store": "astream.storage",
    "Store": "astream.storage",
    "register_store": "astream.storage",
    "RetryConfig": "astream.storage",
    "TransferConfig": "astream.storage",
}

__all__ = (
    "AstreamError",
    "CacheConflictError",
    "CacheError",
    "CacheLimitError",
    "CacheLimitWarning",
    "CachedIndexWarning",
    "ConfigError",
    "DatasetNotFoundError",
    "EmptyDatasetError",
    "EncodingError",
    "FormatError",
    "IndexFormatError",
    "MissingDependencyError",
    "ObjectNotFoundError",
    "PlanError",
    "ShardCorruptError",
    "StorageError",
    "StoragePermissionError",
    "StorageTimeoutError",
    "UnsafeTypeError",
    "UnsupportedSchemeError",
    "WorldError",
    "__version__",
    *_LAZY,
)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'astream' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
