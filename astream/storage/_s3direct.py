"""S3 reads without the SDK's HTTP stack: SigV4-signed GETs sent by :mod:`._rawhttp`.

Why: a cold epoch waits for two things before its first sample, the index and the first MiB of
the first shard. Through aiobotocore, both wait for aiohttp and aiobotocore to import (about
0.35 s on the build machine) and for a client to be built on each event loop (about 0.1 s each),
and every body then goes through aiohttp's parser, which copies each chunk. Here each GET is
signed with Signature Version 4 (:func:`sign_v4`, checked against botocore's signer in the
tests) and sent on a kept-alive connection whose body lands straight in its buffer or file.

Credentials and settings come from where the SDK finds them. When the environment says it all
(keys in ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` or passed as options, no profile, no
AWS config file) not even botocore is imported; otherwise a botocore session walks the SDK's
own chain (profiles, SSO, instance roles, with their refresh) and reads its configuration.

The SDK stays the authority. This path is used only where it sends what the SDK would: the
endpoint and addressing are ours to compute (path style on custom endpoints, virtual hosted on
AWS for DNS-safe bucket names) and nothing the SDK would add is configured (proxies, FIPS,
dual-stack or accelerate endpoints, endpoints from ``AWS_ENDPOINT_URL_S3`` or a profile, access
point ARNs, S3 Express buckets). TLS trusts the one file botocore trusts
(:func:`ca_file`): ``AWS_CA_BUNDLE`` or the profile's ``ca_bundle``, else
``REQUESTS_CA_BUNDLE``, else certifi's bundle (not the system store, not ``SSL_CERT_FILE``).
Any answer other than the plain one, any 3xx, 400, 401 or 403 and any TLS failure is asked
again through aiobotocore, which follows region redirects and reports errors as it always has;
that request alone: the next one tries the direct path again (the store remembers, for a while,
the keys that needed the SDK).

Whole reads (an ``index.json``) ask for the object's checksum where the SDK would (on AWS:
``x-amz-checksum-mode: ENABLED``) and check any full-object CRC32, SHA-1 or SHA-256 checksum
the answer carries (:func:`check_checksum`); CRC32C and CRC64NVME need a native library the
SDK gets from awscrt and are left unchecked, as are composite checksums of multipart uploads
and ranged reads (S3 sends no checksum for a range).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime
import hashlib
import hmac
import os
import re
import ssl
import threading
import urllib.parse
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from astream.storage._rawhttp import RawHTTP
from astream.storage._retry import TransientError

__all__ = [
    "ChecksumMismatch",
    "DirectReads",
    "Resolved",
    "StaticCredentials",
    "ca_file",
    "check_checksum",
    "direct_blocker",
    "resolve",
    "sign_v4",
]

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
# The SHA-256 of an empty body: what a GET's payload hash is.
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

# Full-object checksums Python computes without a native library, as S3 encodes them.
_CHECKSUMS: dict[str, Callable[[bytes], bytes]] = {
    "x-amz-checksum-crc32": lambda data: zlib.crc32(data).to_bytes(4, "big"),
    "x-amz-checksum-sha1": lambda data: hashlib.sha1(data).digest(),
    "x-amz-checksum-sha256": lambda data: hashlib.sha256(data).digest(),
}

_sessions: dict[str | None, Any] = {}
_sessions_lock = threading.Lock()
_resolve_lock = threading.Lock()


def _new_locks_after_fork() -> None:
    # A lock held by another thread at fork time (a credentials walk in progress) would stay
    # held forever in the child: it gets its own.
    global _sessions_lock, _resolve_lock
    _sessions_lock = threading.Lock()
    _resolve_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_locks_after_fork)


class ChecksumMismatch(TransientError):
    """A body whose checksum is not the one S3 sent with it (damaged on the way: retried)."""


def check_checksum(url: str) -> Callable[[Mapping[str, str], bytes], None]:
    """A check for :meth:`RawHTTP.get_bytes`: the full-object checksum in the answer's
    headers, where there is one Python can compute, must be the body's."""

    def check(headers: Mapping[str, str], body: bytes) -> None:
        if headers.get("x-amz-checksum-type", "FULL_OBJECT").upper() != "FULL_OBJECT":
            return  # a composite of the parts' checksums (a multipart upload)
        for name, digest in _CHECKSUMS.items():
            sent = headers.get(name)
            if sent is None or "-" in sent:
                continue
            mine = base64.b64encode(digest(body)).decode("ascii")
            if mine != sent:
                raise ChecksumMismatch(
                    f"{url}: {name[len('x-amz-checksum-') :].upper()} checksum {mine} of "
                    f"the {len(body)} bytes received, S3 sent {sent}"
                )

    return check


def ca_file(ca_bundle: str | None) -> str:
    """The one file of CA certificates botocore verifies TLS with: ``ca_bundle`` (from
    ``AWS_CA_BUNDLE`` or the profile), else ``REQUESTS_CA_BUNDLE``, else certifi's bundle
    (botocore's own copy without certifi)."""
    chosen = ca_bundle or os.environ.get("REQUESTS_CA_BUNDLE")
    if chosen:
        return chosen
    try:
        import certifi
    except ImportError:
        import importlib.util

        spec = importlib.util.find_spec("botocore")
        assert spec is not None and spec.submodule_search_locations is not None
        return os.path.join(next(iter(spec.submodule_search_locations)), "cacert.pem")
    return str(certifi.where())


def _plain_session(profile: str | None) -> Any:
    """A botocore session (credentials chain and config files) per profile and process."""
    with _sessions_lock:
        session = _sessions.get(profile)
        if session is None:
            import botocore.session

            session = botocore.session.Session(profile=profile or None)
            _sessions[profile] = session
        return session


def _env_blocker(bucket: str, endpoint_url: str | None) -> str | None:
    """What, in the bucket name, the endpoint or the environment, the direct path cannot do."""
    if not _BUCKET.match(bucket) or bucket.endswith(_SPECIAL_BUCKET):
        return f"bucket name {bucket!r} needs the SDK's addressing"
    for name in _PROXY_VARIABLES:
        if os.environ.get(name) or os.environ.get(name.upper()):
            return f"{name.upper()} is set (the SDK routes through the proxy)"
    for variable in ("AWS_USE_FIPS_ENDPOINT", "AWS_USE_DUALSTACK_ENDPOINT"):
        if os.environ.get(variable, "").lower() in _TRUE:
            return f"{variable.lower()[4:]} is configured ({variable})"
    if endpoint_url is None and os.environ.get("AWS_ENDPOINT_URL_S3"):
        return "an S3 endpoint is configured for the SDK (AWS_ENDPOINT_URL_S3)"
    if endpoint_url is not None:
        parts = urllib.parse.urlsplit(endpoint_url)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or parts.query:
            return f"endpoint {endpoint_url!r} is not a plain http(s) URL"
    return None


def direct_blocker(session: Any, bucket: str, endpoint_url: str | None) -> str | None:
    """Why the direct path cannot send what the SDK would; ``None`` when it can.

    :param session: a botocore session: its profile's configuration is checked as well.
    """
    blocker = _env_blocker(bucket, endpoint_url)
    if blocker is not None:
        return blocker
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
    if endpoint_url is None and (scoped.get("endpoint_url") or scoped.get("services")):
        # The SDK would address an endpoint from the profile.
        return "an S3 endpoint is configured for the SDK in the profile"
    return None


@dataclasses.dataclass(frozen=True)
class StaticCredentials:
    """Keys that do not expire (options or environment), shaped as botocore's."""

    access_key: str
    secret_key: str
    token: str | None = None

    def get_frozen_credentials(self) -> StaticCredentials:
        return self

    def __repr__(self) -> str:  # never show secrets
        return f"StaticCredentials(access_key={self.access_key!r})"


def sign_v4(
    url: str,
    headers: Mapping[str, str],
    credentials: Any,
    region: str,
    *,
    now: datetime.datetime | None = None,
) -> dict[str, str]:
    """The headers of an AWS Signature Version 4 signed S3 ``GET`` of ``url`` (no body).

    :param url: its path already percent-encoded as S3 expects (S3 does not re-encode it),
        its host as it will be sent (lower-case, no default port).
    :param headers: the request's own headers (``Range``, ``x-amz-request-payer``); all are
        signed, and returned with ``x-amz-date``, ``x-amz-content-sha256``, the session token
        if any and ``Authorization`` (``Host`` is signed but left to the HTTP client).
    :param credentials: ``access_key``, ``secret_key`` and ``token`` attributes.
    """
    parts = urllib.parse.urlsplit(url)
    now = now or datetime.datetime.now(datetime.timezone.utc)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    day = stamp[:8]
    signed = {name.lower(): " ".join(value.split()) for name, value in headers.items()}
    signed["host"] = parts.netloc
    signed["x-amz-date"] = stamp
    signed["x-amz-content-sha256"] = _EMPTY_SHA256
    if credentials.token:
        signed["x-amz-security-token"] = credentials.token
    names = sorted(signed)
    query = "&".join(
        f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
        for k, v in sorted(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    )
    canonical = "\n".join(
        [
            "GET",
            parts.path or "/",
            query,
            "".join(f"{name}:{signed[name]}\n" for name in names),
            ";".join(names),
            _EMPTY_SHA256,
        ]
    )
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = f"AWS4{credentials.secret_key}".encode()
    for part in (day, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out = {name: value for name, value in signed.items() if name != "host"}
    out["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return out


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
        deadline: Callable[[int], float] | None = None,
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
        self._deadline = deadline
        self._ca_bundle = ca_bundle
        self._ssl: ssl.SSLContext | None = None
        self._raw: RawHTTP | None = None
        # The SDK asks for checksums of whole reads on AWS ("when_supported"), not elsewhere.
        self._checksum_mode = endpoint_url is None

    def url(self, object_key: str) -> str:
        """The object's URL, its key percent-encoded as botocore encodes it."""
        return self._root + urllib.parse.quote(object_key, safe="/~")

    def _get_raw(self) -> RawHTTP:
        if self._raw is None or self._raw.loop is not asyncio.get_running_loop():
            if self._ssl is None and self._root.startswith("https:"):
                # Exactly the certificates botocore trusts (a cafile replaces the defaults).
                self._ssl = ssl.create_default_context(cafile=ca_file(self._ca_bundle))
            self._raw = RawHTTP(
                {},
                connections=self._connections,
                connect_timeout=self._connect_timeout,
                read_timeout=self._read_timeout,
                deadline=self._deadline,
                ssl_context=self._ssl,
            )
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
        return sign_v4(url, headers, frozen, self.region)

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
        if end is None and self._checksum_mode:
            headers["x-amz-checksum-mode"] = "ENABLED"
        signed = await self._signed(url, headers)
        check = check_checksum(url) if end is None else None
        return await self._get_raw().get_bytes(url, start, end, signed, check)

    def close(self) -> None:
        """Close the idle connections (on their loop; see :meth:`RawHTTP.close`)."""
        raw, self._raw = self._raw, None
        if raw is not None:
            raw.close()


@dataclasses.dataclass(frozen=True)
class Resolved:
    """What the direct path needs, as the SDK would find it."""

    region: str
    ca_bundle: str | None
    #: ``None`` for unsigned requests.
    credentials: Any


def _static(key: str | None, secret: str | None, token: str | None) -> StaticCredentials | None:
    return StaticCredentials(key, secret, token or None) if key and secret else None


def resolve(
    *,
    bucket: str,
    endpoint_url: str | None,
    region: str | None,
    profile: str | None,
    explicit: Mapping[str, str | None],
    unsigned: bool,
) -> Resolved | str:
    """Settings and credentials for direct reads, or why there are none (a blocker).

    Blocking (a botocore chain may read files or call the instance metadata service): call it
    in a thread. One call at a time: the first walk may be slow, and the botocore session it
    loads is kept for the next.
    """
    with _resolve_lock:
        credentials = None
        if not unsigned:
            credentials = _static(
                explicit.get("aws_access_key_id"),
                explicit.get("aws_secret_access_key"),
                explicit.get("aws_session_token"),
            )
        config = Path(os.path.expanduser(os.environ.get("AWS_CONFIG_FILE") or "~/.aws/config"))
        env_only = (
            not profile
            and not os.environ.get("AWS_PROFILE")
            and not os.environ.get("AWS_DEFAULT_PROFILE")
            and not config.exists()
        )
        # botocore's chain starts with the environment; keys with an expiry are refreshable
        # credentials of its own making.
        if (
            env_only
            and not unsigned
            and credentials is None
            and not os.environ.get("AWS_CREDENTIAL_EXPIRATION")
        ):
            credentials = _static(
                os.environ.get("AWS_ACCESS_KEY_ID"),
                os.environ.get("AWS_SECRET_ACCESS_KEY"),
                os.environ.get("AWS_SESSION_TOKEN") or os.environ.get("AWS_SECURITY_TOKEN"),
            )
        if env_only and (unsigned or credentials is not None):
            # Everything the SDK would read is in the environment: no botocore needed.
            blocker = _env_blocker(bucket, endpoint_url)
            if blocker is not None:
                return blocker
            return Resolved(
                region=region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
                ca_bundle=os.environ.get("AWS_CA_BUNDLE") or None,
                credentials=credentials,
            )
        session = _plain_session(profile)
        blocker = direct_blocker(session, bucket, endpoint_url)
        if blocker is not None:
            return blocker
        if not unsigned and credentials is None:
            credentials = session.get_credentials()
            if credentials is None:
                return "no credentials found (the SDK reports it)"
        return Resolved(
            region=region or session.get_config_variable("region") or "us-east-1",
            ca_bundle=os.environ.get("AWS_CA_BUNDLE") or session.get_config_variable("ca_bundle"),
            credentials=credentials,
        )
