"""Every error astream raises on purpose.

::

    AstreamError
    ├── FormatError (ValueError)            bad bytes or metadata on disk or in memory
    │   ├── IndexFormatError                an index.json that is malformed or hostile
    │   │   └── EmptyDatasetError (RuntimeError)  an index (or a stream) with no samples
    │   ├── ShardCorruptError               a shard that is truncated, tampered or fails its hash
    │   ├── EncodingError                   a value that does not fit its column's encoding
    │   └── UnsafeTypeError                 a pickled column read without allow_unsafe_types
    ├── MissingDependencyError (ImportError)  an optional package (codec, SDK) is not installed
    ├── StorageError (OSError)              talking to a store failed
    │   ├── ObjectNotFoundError (FileNotFoundError)   the object or prefix does not exist
    │   │   └── DatasetNotFoundError (RuntimeError)  no dataset (no index.json) at a folder or URL
    │   ├── StoragePermissionError (PermissionError)  403 and the like; never retried
    │   ├── StorageTimeoutError (TimeoutError)        connect or read timed out, after retries
    │   └── UnsupportedSchemeError          no store is registered for the URL's scheme
    ├── CacheError (OSError)                the node-local cache cannot hold what is asked
    │   ├── CacheLimitError (ValueError)    cache_limit too small for what must be on disk at once
    │   └── CacheConflictError (ValueError) a local dir that caches another remote or split
    ├── ConfigError (ValueError)            an argument or setting astream cannot use
    ├── WorldError (ValueError)             rank/world settings that contradict each other
    └── PlanError (ValueError)              order parameters that cannot produce an epoch

One warning: ``CacheLimitWarning`` (an ``AstreamError`` and a ``UserWarning``), when a shuffle's
working set cannot fit ``cache_limit`` (shards would be downloaded again and again).

Where mosaicml-streaming raises a builtin for the same condition, astream's class derives from
that builtin too (named in parentheses), so code that catches mosaicml-streaming's errors
catches astream's.

SDK and HTTP errors are translated where they cross a backend boundary, with
``raise ... from exc`` so the original stays attached as ``__cause__``.

Every class takes exactly one message string and survives pickling, so a DataLoader worker
re-raises it in the main process with its own type.
"""

from __future__ import annotations

__all__ = [
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
]


class AstreamError(Exception):
    """Base class of every error astream raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)

    def __reduce__(self) -> tuple[type[AstreamError], tuple[str]]:
        # OSError subclasses would otherwise pickle their errno/strerror split; keep one string.
        return (type(self), (str(self),))


class FormatError(AstreamError, ValueError):
    """Bytes or metadata that do not follow the dataset format."""


class IndexFormatError(FormatError):
    """An ``index.json`` that is malformed, of an unknown version, or names unsafe paths."""


class ShardCorruptError(FormatError):
    """A shard file that is truncated, tampered with, or does not match its hash."""


class EncodingError(FormatError):
    """A value that does not fit its column's encoding (names the column and the value's type)."""


class UnsafeTypeError(FormatError):
    """A column encoding (``pkl``) that can run code on read, refused unless allowed."""


class EmptyDatasetError(IndexFormatError, RuntimeError):
    """An index with no shards, or a stream whose shards hold no samples."""


class MissingDependencyError(AstreamError, ImportError):
    """An optional package is needed; the message names the extra that installs it."""


class StorageError(AstreamError, OSError):
    """A store operation failed (after the retries its configuration allows)."""


class ObjectNotFoundError(StorageError, FileNotFoundError):
    """The object or prefix does not exist in the store."""


class DatasetNotFoundError(ObjectNotFoundError, RuntimeError):
    """No dataset at a local folder or store URL: its ``index.json`` does not exist.

    The message always reads ``no dataset at WHERE: WHERE/index.json does not exist``.
    """


class StoragePermissionError(StorageError, PermissionError):
    """The store refused access (HTTP 401/403). Never retried."""


class StorageTimeoutError(StorageError, TimeoutError):
    """Connecting or reading timed out on every allowed attempt."""


class UnsupportedSchemeError(StorageError):
    """No store is registered for the URL's scheme."""


class CacheError(AstreamError, OSError):
    """The node-local cache cannot hold what is asked (limit too small, disk full)."""


class CacheLimitError(CacheError, ValueError):
    """``cache_limit`` cannot hold what must be on disk at once (the message says the minimum)."""


class CacheConflictError(CacheError, ValueError):
    """A ``local`` directory that already caches another remote (or split) than the one given."""


class ConfigError(AstreamError, ValueError):
    """An argument or setting astream cannot use: an unknown codec or hash algorithm, a size or
    count that does not parse or is out of range, a malformed store URL, options that exclude
    each other. A ``ValueError``, as such mistakes were before it existed."""


class WorldError(AstreamError, ValueError):
    """Rank and world-size settings that contradict each other."""


class PlanError(AstreamError, ValueError):
    """Sample-order parameters that cannot produce an epoch."""


class CachedIndexWarning(AstreamError, UserWarning):
    """The store could not be reached (after its retries) when a dataset started, and the
    index its ``local`` cache holds was used instead: it may be older than the remote's."""


class CacheLimitWarning(AstreamError, UserWarning):
    """A shuffle's working set per node does not fit ``cache_limit``: shards would be evicted
    before their last use and downloaded again. The message names a ``cache_limit`` and a
    ``shuffle_block_size`` that would fit."""
