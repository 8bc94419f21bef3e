"""Which :class:`~astream.storage.base.Store` serves a URL: :func:`open_store` by scheme.

Built-in schemes: no scheme (a local path) and ``file``, ``http``/``https``, ``s3``, ``gs``,
``oci``, ``azure``. Backends with an optional SDK are imported only when their scheme is first
opened, so a missing SDK raises :class:`~astream.errors.MissingDependencyError` naming the extra
that installs it (``pip install 'astream[s3]'``), and importing astream stays cheap.
"""

from __future__ import annotations

import importlib
import re
import urllib.parse
from typing import Any, Protocol

from astream.errors import ConfigError, MissingDependencyError, UnsupportedSchemeError
from astream.storage.base import RetryConfig, Store, TransferConfig

__all__ = [
    "StoreFactory",
    "open_store",
    "redact_url",
    "register_store",
    "registered_schemes",
    "url_scheme",
]


class StoreFactory(Protocol):
    """Builds a store: ``factory(url, *, retry=..., transfer=..., **options)``."""

    def __call__(
        self,
        url: str,
        *,
        retry: RetryConfig | None = ...,
        transfer: TransferConfig | None = ...,
        **options: Any,
    ) -> Store: ...


class _LazyBackend:
    """A factory that imports ``module`` and builds ``attribute`` from it on first use."""

    def __init__(self, module: str, attribute: str, extra: str | None) -> None:
        self.module = module
        self.attribute = attribute
        self.extra = extra

    def __call__(
        self,
        url: str,
        *,
        retry: RetryConfig | None = None,
        transfer: TransferConfig | None = None,
        **options: Any,
    ) -> Store:
        try:
            module = importlib.import_module(self.module)
        except ModuleNotFoundError as exc:
            # Our own backend module is always installed: a missing module is its SDK.
            if self.extra is None or (exc.name or "").startswith("astream"):
                raise
            raise MissingDependencyError(
                f"opening {url} needs the optional package {exc.name!r}: "
                f"pip install 'astream[{self.extra}]'"
            ) from exc
        cls: StoreFactory = getattr(module, self.attribute)
        return cls(url, retry=retry, transfer=transfer, **options)


_FACTORIES: dict[str, StoreFactory] = {
    "file": _LazyBackend("astream.storage.local", "LocalStore", None),
    "http": _LazyBackend("astream.storage.http", "HTTPStore", None),
    "https": _LazyBackend("astream.storage.http", "HTTPStore", None),
    "s3": _LazyBackend("astream.storage.s3", "S3Store", "s3"),
    "gs": _LazyBackend("astream.storage.gcs", "GCSStore", "gcs"),
    "oci": _LazyBackend("astream.storage.oci", "OCIStore", "oci"),
    "azure": _LazyBackend("astream.storage.azure", "AzureStore", "azure"),
}

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")


def url_scheme(url: str) -> str:
    """The lower-cased scheme of ``url``; ``"file"`` for a plain local path."""
    match = _SCHEME.match(url)
    return match.group(1).lower() if match else "file"


def redact_url(url: str) -> str:
    """``url`` without the user name and password it may carry (for messages and reprs)."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def register_store(scheme: str, factory: StoreFactory, *, replace: bool = False) -> None:
    """Serve URLs of ``scheme`` (``"myfs"`` for ``myfs://...``) with ``factory``.

    :param factory: called as ``factory(url, retry=..., transfer=..., **options)``; a
        :class:`~astream.storage.base.Store` subclass qualifies.
    :param replace: allow replacing a registered (or built-in) scheme.
    :raises ConfigError: the scheme is taken and ``replace`` is false, or it is malformed.
    """
    key = scheme.lower()
    if not re.fullmatch(r"[a-z][a-z0-9+.\-]*", key):
        raise ConfigError(f"not a URL scheme: {scheme!r}")
    if key in _FACTORIES and not replace:
        raise ConfigError(f"a store is already registered for {key}://; pass replace=True")
    _FACTORIES[key] = factory


def registered_schemes() -> list[str]:
    """Every scheme :func:`open_store` serves, sorted."""
    return sorted(_FACTORIES)


def open_store(
    url: str,
    *,
    retry: RetryConfig | None = None,
    transfer: TransferConfig | None = None,
    **options: Any,
) -> Store:
    """The store for ``url``, rooted there; keys given to it are relative to ``url``.

    Nothing connects here: sessions and clients open on first use, inside the running loop.

    :param url: ``/local/path``, ``file:///path``, ``http(s)://host/path``, ``s3://bucket/p``,
        ``gs://bucket/p``, ``oci://bucket/p``, ``azure://container/p``, or a registered scheme.
    :param options: backend options (``endpoint_url``, ``unsigned``, ...; see each backend).
    :raises UnsupportedSchemeError: no store serves the URL's scheme.
    :raises MissingDependencyError: the backend's SDK is not installed (names the extra).
    """
    scheme = url_scheme(url)
    factory = _FACTORIES.get(scheme)
    if factory is None:
        raise UnsupportedSchemeError(
            f"no store for {scheme}:// (in {url}); known schemes: "
            f"{', '.join(registered_schemes())}; add one with astream.storage.register_store"
        )
    return factory(url, retry=retry, transfer=transfer, **options)
