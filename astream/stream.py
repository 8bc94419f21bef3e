"""``Stream``: one dataset (or split of one) in a mix, with its weighting and download settings."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from astream.engine.table import StreamSource, default_local
from astream.errors import ConfigError
from astream.storage import RetryConfig, TransferConfig

__all__ = ["Stream", "StreamRegistry", "streams_registry"]

#: mosaicml-streaming's defaults for the per-stream download settings.
DEFAULT_DOWNLOAD_RETRY = 2
DEFAULT_DOWNLOAD_TIMEOUT = 60.0


def _is_url(text: str) -> bool:
    return "://" in text and not text.startswith("file://")


def _join(root: str, split: str) -> str:
    if not split:
        return root
    if _is_url(root):
        return posixpath.join(root.rstrip("/"), split)
    return os.path.join(root, split)


class Stream:
    """A dataset to stream from, weighted within a mix of streams.

    Takes mosaicml-streaming's ``Stream`` arguments. At most one of ``proportion``, ``repeat`` and
    ``choose`` may be given; the download settings left ``None`` take the dataset's values.

    Once a :class:`~astream.StreamingDataset` is built on it, ``proportion``, ``repeat`` and
    ``choose`` hold the stream's resolved weights (its fraction of the epoch, how many times over
    it is drawn, how many samples an epoch draws), as mosaicml-streaming fills them in; the
    weights given here stay what later datasets built on the same stream use. ``local`` reports
    where the stream caches, the directory picked for it when none was given.

    :param remote: where the dataset lives (a local path or ``s3://``, ``gs://``, ``oci://``,
        ``azure://``, ``http(s)://`` URL); ``None`` when ``local`` holds the dataset itself.
    :param local: the node-local cache directory; ``None`` picks one under the system temp dir
        keyed by ``remote`` and ``split``.
    :param split: a sub-directory of both ``remote`` and ``local`` (``"train"``).
    :param proportion: relative weight of this stream among the dataset's streams.
    :param repeat: how many times over the stream is drawn per epoch (fractions allowed).
    :param choose: how many of the stream's samples an epoch draws.
    :param download_retry: retries of a failed request (attempts = retries + 1).
    :param download_timeout: seconds of silence before one try of a request is abandoned (the
        per-try deadline and total budget: docs/storage.md, "The time budget").
    :param validate_hash: hash algorithm to check each downloaded file against the index (and
        any other file a sample is read from, once per node when first opened).
    :param keep_zip: keep compressed shard files after decompressing them.
    """

    def __init__(
        self,
        *,
        remote: str | os.PathLike[str] | None = None,
        local: str | os.PathLike[str] | None = None,
        split: str | None = None,
        proportion: float | None = None,
        repeat: float | None = None,
        choose: int | None = None,
        download_retry: int | None = None,
        download_timeout: float | None = None,
        validate_hash: str | None = None,
        keep_zip: bool | None = None,
    ) -> None:
        if remote is None and local is None:
            raise ConfigError("a Stream needs remote, local or both")
        given = [
            name
            for name, value in (("proportion", proportion), ("repeat", repeat), ("choose", choose))
            if value is not None
        ]
        if len(given) > 1:
            raise ConfigError(f"a Stream takes at most one of proportion, repeat, choose: {given}")
        if download_retry is not None and download_retry < 0:
            raise ConfigError(f"download_retry must be >= 0, got {download_retry}")
        if download_timeout is not None and download_timeout <= 0:
            raise ConfigError(f"download_timeout must be > 0, got {download_timeout}")
        self.remote = None if remote is None else os.fspath(remote)
        self._local = None if local is None else os.fspath(local)
        self.split = split or ""
        # The weights as given (what a dataset resolves) and as resolved by the last dataset.
        self._weights = (proportion, repeat, choose)
        self.proportion: float | None = proportion
        self.repeat: float | None = repeat
        self.choose: int | None = choose
        self.download_retry = download_retry
        self.download_timeout = download_timeout
        self.validate_hash = validate_hash
        self.keep_zip = keep_zip

    @property
    def local(self) -> str:
        """The directory this stream caches in (or reads, without a remote).

        The one given, else the directory under the system temp dir picked for ``remote`` and
        ``split`` (which then already names the split).
        """
        if self._local is not None:
            return self._local
        assert self.remote is not None
        return str(default_local(self._remote_url()))

    @local.setter
    def local(self, value: str | os.PathLike[str] | None) -> None:
        self._local = None if value is None else os.fspath(value)

    @property
    def given_weights(self) -> tuple[float | None, float | None, int | None]:
        """``(proportion, repeat, choose)`` as given, before any dataset resolved them."""
        return self._weights

    def set_resolved_weights(self, proportion: float, repeat: float, choose: int) -> None:
        """Record the weights a dataset resolved (what mosaicml-streaming's Stream shows)."""
        self.proportion = proportion
        self.repeat = repeat
        self.choose = choose

    def __repr__(self) -> str:
        from astream.storage.registry import redact_url

        fields = ", ".join(
            f"{name.lstrip('_')}={(redact_url(value) if name == 'remote' else value)!r}"
            for name, value in vars(self).items()
            if value is not None and value != "" and name != "_weights"
        )
        return f"Stream({fields})"

    def _remote_url(self) -> str:
        assert self.remote is not None
        remote = _join(self.remote, self.split)
        if remote.startswith("file://"):
            remote = remote[len("file://") :]
        return remote

    def resolve(self, **defaults: Any) -> StreamSource:
        """Where this stream's shards come from and are cached, with ``defaults`` filled in.

        A ``remote`` that names the same directory as ``local`` counts as no remote: the local
        directory is the dataset and is never evicted.
        """
        remote = None if self.remote is None else self._remote_url()
        if self._local is not None:
            local = Path(_join(self._local, self.split))
        else:
            assert remote is not None
            local = default_local(remote)
        if remote is not None and not _is_url(remote) and Path(remote).resolve() == local.resolve():
            remote = None
        retries = self.download_retry
        if retries is None:
            retries = defaults.get("download_retry", DEFAULT_DOWNLOAD_RETRY)
        timeout = self.download_timeout
        if timeout is None:
            timeout = defaults.get("download_timeout", DEFAULT_DOWNLOAD_TIMEOUT)
        keep_zip = self.keep_zip if self.keep_zip is not None else defaults.get("keep_zip", False)
        validate = self.validate_hash or defaults.get("validate_hash")
        transfer = defaults.get("transfer") or TransferConfig()
        retry = RetryConfig(
            attempts=int(retries) + 1,
            read_timeout=float(timeout),
            connect_timeout=min(float(timeout), 10.0),
        )
        return StreamSource(
            remote=remote,
            local=local,
            validate_hash=validate,
            keep_zip=bool(keep_zip),
            retry=retry,
            transfer=transfer,
        )


StreamFactory = Callable[..., Stream]


class StreamRegistry:
    """Stream classes by name, for ``StreamingDataset(stream_name=..., stream_config=...)``.

    mosaicml-streaming's ``streams_registry`` in the same shape: ``register(name, func=cls)``
    (or ``@streams_registry.register(name)``), ``get(name)``, ``get_all()``, ``name in
    registry``. The registered callable takes :class:`Stream`'s keyword arguments and returns
    a :class:`Stream` (usually a subclass). Entry points are not read.
    """

    def __init__(self) -> None:
        self._entries: dict[str, StreamFactory] = {}

    def register(
        self, name: str, *, func: StreamFactory | None = None
    ) -> Callable[[StreamFactory], StreamFactory]:
        """Register ``func`` under ``name``; without ``func``, a decorator that registers."""

        def add(factory: StreamFactory) -> StreamFactory:
            if not callable(factory):
                raise ConfigError(
                    f"streams_registry.register({name!r}): {factory!r} is not callable"
                )
            self._entries[name] = factory
            return factory

        if func is not None:
            add(func)
        return add

    def get(self, name: str) -> StreamFactory:
        """The callable registered as ``name``."""
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise ConfigError(
                f"no stream class registered as {name!r} in streams_registry (registered: {known})"
            ) from None

    def get_all(self) -> dict[str, StreamFactory]:
        """Every registered name and callable."""
        return dict(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))


streams_registry = StreamRegistry()
"""The registry ``StreamingDataset(stream_name=...)`` looks names up in; ``"stream"`` is
:class:`Stream`."""
streams_registry.register("stream", func=Stream)
