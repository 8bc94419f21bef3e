"""``Stream``: one dataset (or split of one) in a mix, with its weighting and download settings."""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from typing import Any

from astream.engine.table import StreamSource, default_local
from astream.errors import ConfigError
from astream.storage import RetryConfig, TransferConfig

__all__ = ["Stream"]

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

    :param remote: where the dataset lives (a local path or ``s3://``, ``gs://``, ``oci://``,
        ``azure://``, ``http(s)://`` URL); ``None`` when ``local`` holds the dataset itself.
    :param local: the node-local cache directory; ``None`` picks one under the system temp dir
        keyed by ``remote``.
    :param split: a sub-directory of both ``remote`` and ``local`` (``"train"``).
    :param proportion: relative weight of this stream among the dataset's streams.
    :param repeat: how many times over the stream is drawn per epoch (fractions allowed).
    :param choose: how many of the stream's samples an epoch draws.
    :param download_retry: retries of a failed request (attempts = retries + 1).
    :param download_timeout: seconds of silence before one try of a request is abandoned (the
        per-try deadline and total budget: docs/storage.md, "The time budget").
    :param validate_hash: hash algorithm to check each downloaded file against the index.
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
        self.local = None if local is None else os.fspath(local)
        self.split = split or ""
        self.proportion = proportion
        self.repeat = repeat
        self.choose = choose
        self.download_retry = download_retry
        self.download_timeout = download_timeout
        self.validate_hash = validate_hash
        self.keep_zip = keep_zip

    def __repr__(self) -> str:
        from astream.storage.registry import redact_url

        fields = ", ".join(
            f"{name}={(redact_url(value) if name == 'remote' else value)!r}"
            for name, value in vars(self).items()
            if value is not None and value != ""
        )
        return f"Stream({fields})"

    def resolve(self, **defaults: Any) -> StreamSource:
        """Where this stream's shards come from and are cached, with ``defaults`` filled in.

        A ``remote`` that names the same directory as ``local`` counts as no remote: the local
        directory is the dataset and is never evicted.
        """
        remote = None if self.remote is None else _join(self.remote, self.split)
        if remote is not None and remote.startswith("file://"):
            remote = remote[len("file://") :]
        if self.local is not None:
            local = Path(_join(self.local, self.split))
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
