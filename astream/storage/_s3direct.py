"""S3 reads without the SDK's HTTP stack: requests signed with botocore, sent by :mod:`._rawhttp`.

Why: a cold epoch waits for two things before its first sample, the index and the first MiB of
the first shard. Through aiobotocore, both wait for aiohttp and aiobotocore to import (about
0.35 s on the build machine) and for a client to be built on each event loop (about 0.1 s each),
and every body then goes through aiohttp's parser, which copies each chunk. Here a GET is
signed with botocore's own SigV4 signer (the same code the SDK signs with, so the same
credentials chain, session tokens and refresh) and sent on a kept-alive connection whose body
lands straight in the destination buffer or file.

The SDK stays the authority. This path is used only where it says exactly what the SDK would
send: the endpoint and addressing are ours to compute (path style on custom endpoints, virtual
hosted on AWS for DNS-safe bucket names; TLS trusts ``AWS_CA_BUNDLE`` or the profile's
``ca_bundle`` where the SDK would) and nothing the SDK would add is configured (proxies, FIPS,
dual-stack or accelerate endpoints, access point ARNs, S3 Express buckets). Any answer other than the plain one, and any 3xx, 400, 401 or 403, is answered by
asking again through aiobotocore, which follows region redirects and reports errors as it
always has; if the SDK then succeeds, this store stops using the direct path.
"""

from __future__ import annotations

import asyncio
import os
import re
import ssl
import threading
import urllib.parse
from collections.abc import Mapping
from typing import Any

from astream.storage._rawhttp import RawHTTP

__all__ = ["DirectReads", "direct_blocker"]

# Bucket names that are valid in a virtual-hosted or path-style URL as they are (lower-case
# DNS labels); anything else (ARNs, legacy upper-case names) goes through the SDK.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# Directory buckets (S3 Express One Zone) and Object Lambda aliases sign differently.
_SPECIAL_BUCKET = ("--x-s3", "--ol-s3", "--op-s3")
_TRUE = ("1", "true", "yes", "on")
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")
_DEFAULT_PORTS = {"http": 80, "https": 443}
# Statuses the SDK may answer differently (a region redirect, a signature it computes another
# way): ask it again.
SDK_STATUSES = frozenset({301, 302, 307, 308, 400, 401, 403})

_sessions: dict[str | None, Any] = {}
_sessions_lock = threading.Lock()
_resolve_lock = threading.Lock()


def _plain_session(profile: str | None) -> Any:
    """A botocore session (credentials chain and config files) per profile and process."""
    with _sessions_lock:
        session = _sessions.get(profile)
        if session is None:
            import botocore.session

            session = botocore.session.Session(profile=profile or None)
            _sessions[profile] = session
        return session


def direct_blocker(session: Any, bucket: str, endpoint_url: str | None) -> str | None:
    """Why the direct path cannot say what the SDK would send; ``None`` when it can."""
    if not _BUCKET.match(bucket) or bucket.endswith(_SPECIAL_BUCKET):
        return f"bucket name {bucket!r} needs the SDK's addressing"
    for name in _PROXY_VARIABLES:
        if os.environ.get(name) or os.environ.get(name.upper()):
            return f"{name.upper()} is set (the SDK routes through the proxy)"
    for variable in ("use_fips_endpoint", "use_dualstack_endpoint"):
        value = session.get_config_variable(variable)
        if value is True or str(value).lower() in _TRUE:
            return f"{variable} is configured"
    scoped = session.get_scoped_config() or {}
    s3_config = scoped.get("s3") or {}
    if isinstance(s3_config, Mapping) and any(
        str(s3_config.get(name, "")).lower() in _TRUE
        for name in ("use_accelerate_endpoint", "use_dualstack_endpoint")
    ):
        return "an accelerate or dual-stack S3 endpoint is configured"
    if endpoint_url is None and (
        os.environ.get("AWS_ENDPOINT_URL_S3")
        or scoped.get("endpoint_url")
        or scoped.get("services")
    ):
        # The SDK would address an endpoint from the environment or the profile.
        return "an S3 endpoint is configured for the SDK (AWS_ENDPOINT_URL_S3 or the profile)"
    if endpoint_url is not None:
        parts = urllib.parse.urlsplit(endpoint_url)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or parts.query:
            return f"endpoint {endpoint_url!r} is not a plain http(s) URL"
    return None


def _netloc(scheme: str, host: str, port: int | None) -> str:
    """``host[:port]`` as SigV4 signs it: lower-case, default port left out."""
    host = host.lower()
    if ":" in host:  # IPv6
        host = f"[{host}]"
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        return f"{host}:{port}"
    return host


class DirectReads:
    """Signed GETs of one bucket, sent through one :class:`RawHTTP` per event loop.

    :param credentials: botocore credentials (refreshable ones are refreshed in a thread), or
        ``None`` for anonymous requests.
    """

    def __init__(
        self,
        *,
        bucket: str,
        region: str,
        endpoint_url: str | None,
        addressing_style: str | None,
        credentials: Any,
        requester_pays: bool,
        ca_bundle: str | None,
        connections: int,
        connect_timeout: float,
        read_timeout: float,
    ) -> None:
        if endpoint_url is None:
            domain = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
            scheme, host, port, base = "https", f"s3.{region}.{domain}", None, ""
            virtual = addressing_style != "path" and "." not in bucket
        else:
            parts = urllib.parse.urlsplit(endpoint_url)
            scheme, host, port = parts.scheme, parts.hostname or "", parts.port
            base = parts.path.rstrip("/")
            virtual = addressing_style == "virtual"
        if virtual:
            self._root = f"{scheme}://{_netloc(scheme, f'{bucket}.{host}', port)}{base}/"
        else:
            self._root = f"{scheme}://{_netloc(scheme, host, port)}{base}/{bucket}/"
        self.region = region
        self._credentials = credentials
        self._payer = {"x-amz-request-payer": "requester"} if requester_pays else {}
        self._connections = connections
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._ca_bundle = ca_bundle
        self._ssl: ssl.SSLContext | None = None
        self._raw: RawHTTP | None = None
        self._raw_loop: asyncio.AbstractEventLoop | None = None
        #: Set when the SDK succeeded where this path was refused: use the SDK from then on.
        self.disabled = False

    def url(self, object_key: str) -> str:
        """The object's URL, its key percent-encoded as botocore encodes it."""
        return self._root + urllib.parse.quote(object_key, safe="/~")

    def _get_raw(self) -> RawHTTP:
        loop = asyncio.get_running_loop()
        if self._raw is None or self._raw_loop is not loop:
            if self._ssl is None and self._ca_bundle and self._root.startswith("https:"):
                self._ssl = ssl.create_default_context(cafile=self._ca_bundle)
            self._raw = RawHTTP(
                {},
                connections=self._connections,
                connect_timeout=self._connect_timeout,
                read_timeout=self._read_timeout,
                ssl_context=self._ssl,
            )
            self._raw_loop = loop
        return self._raw

    async def _signed(self, url: str, headers: dict[str, str]) -> dict[str, str]:
        headers.update(self._payer)
        credentials = self._credentials
        if credentials is None:
            return headers
        refresh = getattr(credentials, "refresh_needed", None)
        if refresh is not None and refresh():
            # A refresh may call STS or the instance metadata service: not on the loop.
            frozen = await asyncio.to_thread(credentials.get_frozen_credentials)
        else:
            frozen = credentials.get_frozen_credentials()
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest

        request = AWSRequest(method="GET", url=url, headers=headers)
        S3SigV4Auth(frozen, "s3", self.region).add_auth(request)
        return dict(request.headers.items())

    async def get_into(self, object_key: str, start: int, end: int, fd: int) -> bool:
        """Bytes ``[start, end)`` into ``fd`` at ``start``; ``False``: ask the SDK."""
        url = self.url(object_key)
        headers = await self._signed(url, {"Range": f"bytes={start}-{end - 1}"})
        return await self._get_raw().get_into(url, start, end, fd, headers)

    async def get_bytes(
        self, object_key: str, start: int = 0, end: int | None = None
    ) -> bytes | None:
        """Bytes ``[start, end)`` (``end=None``: the whole object); ``None``: ask the SDK."""
        url = self.url(object_key)
        headers = {"Range": f"bytes={start}-{end - 1}"} if end is not None else {}
        signed = await self._signed(url, headers)
        return await self._get_raw().get_bytes(url, start, end, signed)

    def close(self) -> None:
        """Close the current loop's idle connections (call on that loop)."""
        raw, loop = self._raw, self._raw_loop
        self._raw = self._raw_loop = None
        if raw is not None and loop is asyncio.get_running_loop():
            raw.close()


def resolve(
    *,
    profile: str | None,
    explicit: Mapping[str, str | None],
    unsigned: bool,
) -> tuple[Any, Any]:
    """The botocore session and credentials the SDK would use (blocking: call in a thread).

    :returns: ``(session, credentials)``; credentials are ``None`` for unsigned requests and
        when the chain finds none (the caller then leaves the request to the SDK).
    """
    with _resolve_lock:  # one chain walk at a time (the first request's may be slow)
        return _resolve(profile, explicit, unsigned)


def _resolve(
    profile: str | None, explicit: Mapping[str, str | None], unsigned: bool
) -> tuple[Any, Any]:
    session = _plain_session(profile)
    if unsigned:
        return session, None
    if explicit.get("aws_access_key_id") and explicit.get("aws_secret_access_key"):
        from botocore.credentials import Credentials

        return session, Credentials(
            explicit["aws_access_key_id"],
            explicit["aws_secret_access_key"],
            explicit.get("aws_session_token"),
        )
    return session, session.get_credentials()
