"""A loopback OCI Object Storage server: the REST subset astream and the oci SDK use.

No emulator exists for OCI Object Storage, so the test suite runs this one. It keeps objects in
memory and speaks the documented wire format closely enough for the real ``oci`` SDK
(``ObjectStorageClient``) and for :class:`astream.storage.oci.OCIStore`:

* ``GET /n/`` (the tenancy's namespace), ``POST /n/{ns}/b/`` (create a bucket),
  ``HEAD /n/{ns}/b/{bucket}/``;
* objects: ``PUT``, ``HEAD``, ``DELETE`` and ``GET`` with ``Range`` (``bytes=a-b``, ``a-``,
  ``-n``; 206 with ``Content-Range``, 416 for a range starting past the end);
* ``GET /n/{ns}/b/{bucket}/o`` with ``prefix``, ``start``, ``end``, ``limit`` and
  ``nextStartWith`` pagination;
* multipart: create (``POST .../u``), upload part (``PUT .../u/{object}?uploadId&uploadPartNum``),
  commit (``POST .../u/{object}?uploadId``), abort (``DELETE``), list (``GET .../u``).

Every request except ``GET /_ready`` must carry an OCI HTTP signature (``Authorization:
Signature ... algorithm="rsa-sha256" ...`` over at least ``date``, ``(request-target)`` and
``host``). Started with ``--public-key FILE`` the server also verifies the signature itself
(and ``x-content-sha256`` when it is signed), so a request whose path, host or date differ from
what was signed is refused with 401, as OCI would.

Run: ``python -m tests.servers.oci_server --port PORT [--public-key PEM] [--namespace NS]``
from the repository root, or :func:`oci_server` in a test.
"""

from __future__ import annotations

import argparse
import base64
import bisect
import contextlib
import hashlib
import json
import re
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote

from aiohttp import web

from tests.servers.process import ServerProcess, free_port, run_server

__all__ = ["OCIObjectStorage", "OCIServer", "make_app", "oci_server", "throwaway_config"]

_SIGNATURE_FIELD = re.compile(r'(\w+)="([^"]*)"')
_REQUIRED_SIGNED = ("date", "(request-target)", "host")


@dataclass
class _Object:
    data: bytes
    etag: str
    md5: str
    modified: str = field(default_factory=lambda: formatdate(usegmt=True))


@dataclass
class _Upload:
    bucket: str
    name: str
    parts: dict[int, _Object] = field(default_factory=dict)


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response(
        {"code": code, "message": message},
        status=status,
        headers={"opc-request-id": uuid.uuid4().hex},
    )


def _new_object(data: bytes) -> _Object:
    md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
    return _Object(data=data, etag=uuid.uuid4().hex, md5=md5)


class OCIObjectStorage:
    """The server's state and handlers: one namespace, buckets of in-memory objects."""

    def __init__(self, namespace: str, public_key_pem: bytes | None = None) -> None:
        self.namespace = namespace
        self.buckets: dict[str, dict[str, _Object]] = {}
        self.uploads: dict[str, _Upload] = {}
        self._public_key: Any = None
        if public_key_pem is not None:
            from cryptography.hazmat.primitives.serialization import load_pem_public_key

            self._public_key = load_pem_public_key(public_key_pem)

    # -- authentication -------------------------------------------------------------------

    def _check_signature(self, request: web.Request, body: bytes) -> web.Response | None:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Signature "):
            return _error(401, "NotAuthenticated", "missing OCI signature Authorization header")
        fields = dict(_SIGNATURE_FIELD.findall(auth))
        signed = fields.get("headers", "").split()
        if (
            fields.get("algorithm") != "rsa-sha256"
            or not fields.get("keyId")
            or not fields.get("signature")
            or any(name not in signed for name in _REQUIRED_SIGNED)
        ):
            return _error(401, "NotAuthenticated", f"malformed OCI signature: {auth!r}")
        if self._public_key is None:
            return None
        lines = []
        for name in signed:
            if name == "(request-target)":
                lines.append(f"(request-target): {request.method.lower()} {request.raw_path}")
            elif name in request.headers:
                lines.append(f"{name}: {request.headers[name]}")
            else:
                return _error(401, "NotAuthenticated", f"signed header {name!r} not sent")
        if "x-content-sha256" in signed:
            digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
            if request.headers["x-content-sha256"] != digest:
                return _error(401, "NotAuthenticated", "x-content-sha256 does not match body")
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        try:
            self._public_key.verify(
                base64.b64decode(fields["signature"]),
                "\n".join(lines).encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except InvalidSignature:
            return _error(401, "NotAuthenticated", "OCI signature does not verify")
        return None

    # -- dispatch -------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/_ready":
            return web.Response(text="ok")
        body = await request.read()
        denied = self._check_signature(request, body)
        if denied is not None:
            return denied
        raw = request.raw_path.split("?", 1)[0]
        query = dict(parse_qsl(request.query_string, keep_blank_values=True))
        parts = raw.split("/")
        # parts: ["", "n", ns?, "b", bucket?, kind?, object...]
        if (parts[1:] == ["n", ""] or parts[1:] == ["n"]) and request.method == "GET":
            return web.json_response(self.namespace)
        if len(parts) < 3 or parts[1] != "n":
            return _error(404, "NotFound", f"unknown path {raw}")
        if unquote(parts[2]) != self.namespace:
            return _error(404, "NamespaceNotFound", f"unknown namespace {parts[2]}")
        creating = len(parts) == 4 or (len(parts) == 5 and parts[4] == "")
        if creating and parts[3] == "b" and request.method == "POST":
            return self._create_bucket(body)
        if len(parts) < 5 or parts[3] != "b":
            return _error(404, "NotFound", f"unknown path {raw}")
        bucket = unquote(parts[4])
        objects = self.buckets.get(bucket)
        if objects is None:
            return _error(404, "BucketNotFound", f"no bucket {bucket!r}")
        kind = parts[5] if len(parts) > 5 else ""
        name = unquote("/".join(parts[6:]))
        if kind == "" and request.method == "HEAD":
            return web.Response(status=200, headers={"ETag": bucket})
        if kind == "o" and not name:
            return self._list(objects, query)
        if kind == "o":
            return self._object(request, objects, name, body)
        if kind == "u":
            return self._multipart(request, bucket, objects, name, query, body)
        return _error(404, "NotFound", f"unknown path {raw}")

    # -- buckets and objects --------------------------------------------------------------

    def _create_bucket(self, body: bytes) -> web.Response:
        spec = json.loads(body)
        name = spec["name"]
        if name in self.buckets:
            return _error(409, "BucketAlreadyExists", f"bucket {name!r} exists")
        self.buckets[name] = {}
        return web.json_response(
            {
                "namespace": self.namespace,
                "name": name,
                "compartmentId": spec.get("compartmentId", ""),
                "etag": uuid.uuid4().hex,
            }
        )

    def _object(
        self, request: web.Request, objects: dict[str, _Object], name: str, body: bytes
    ) -> web.Response:
        if request.method == "PUT":
            obj = objects[name] = _new_object(body)
            return web.Response(
                status=200,
                headers={
                    "ETag": obj.etag,
                    "opc-content-md5": obj.md5,
                    "last-modified": obj.modified,
                },
            )
        obj_or_none = objects.get(name)
        if obj_or_none is None:
            return _error(404, "ObjectNotFound", f"no object {name!r}")
        obj = obj_or_none
        if request.method == "DELETE":
            del objects[name]
            return web.Response(status=204)
        headers = {
            "ETag": obj.etag,
            "Content-MD5": obj.md5,
            "Last-Modified": obj.modified,
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(obj.data))
            return web.Response(status=200, headers=headers)
        if request.method != "GET":
            return _error(405, "MethodNotAllowed", request.method)
        size = len(obj.data)
        spec = request.headers.get("Range")
        if spec is None:
            return web.Response(status=200, body=obj.data, headers=headers)
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", spec.strip())
        if match is None or match.group(1) == match.group(2) == "":
            return _error(400, "InvalidRange", f"bad Range {spec!r}")
        first, last = match.groups()
        if first == "":
            start, end = max(0, size - int(last)), size
        else:
            start = int(first)
            end = size if last == "" else min(int(last) + 1, size)
        if start >= size or end <= start:
            response = _error(416, "InvalidRange", f"range {spec} not satisfiable for {size}")
            response.headers["Content-Range"] = f"bytes */{size}"
            return response
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        return web.Response(status=206, body=obj.data[start:end], headers=headers)

    def _list(self, objects: dict[str, _Object], query: dict[str, str]) -> web.Response:
        prefix = query.get("prefix", "")
        start = query.get("start", "")
        stop = query.get("end")
        limit = min(int(query.get("limit", "1000")), 1000)
        names = sorted(objects)
        i = bisect.bisect_left(names, start)
        chosen: list[str] = []
        next_start: str | None = None
        for name in names[i:]:
            if stop is not None and name > stop:
                break
            if not name.startswith(prefix):
                continue
            if len(chosen) == limit:
                next_start = name
                break
            chosen.append(name)
        fields = set(query.get("fields", "name").split(","))
        items = []
        for name in chosen:
            item: dict[str, Any] = {"name": name}
            if "size" in fields:
                item["size"] = len(objects[name].data)
            if "etag" in fields:
                item["etag"] = objects[name].etag
            items.append(item)
        result: dict[str, Any] = {"objects": items, "prefixes": []}
        if next_start is not None:
            result["nextStartWith"] = next_start
        return web.json_response(result)

    # -- multipart ------------------------------------------------------------------------

    def _multipart(
        self,
        request: web.Request,
        bucket: str,
        objects: dict[str, _Object],
        name: str,
        query: dict[str, str],
        body: bytes,
    ) -> web.Response:
        if not name and request.method == "POST":
            spec = json.loads(body)
            upload_id = uuid.uuid4().hex
            self.uploads[upload_id] = _Upload(bucket=bucket, name=spec["object"])
            return web.json_response(
                {
                    "namespace": self.namespace,
                    "bucket": bucket,
                    "object": spec["object"],
                    "uploadId": upload_id,
                    "timeCreated": "2024-01-01T00:00:00.000Z",
                }
            )
        if not name and request.method == "GET":
            return web.json_response(
                [
                    {
                        "namespace": self.namespace,
                        "bucket": u.bucket,
                        "object": u.name,
                        "uploadId": k,
                    }
                    for k, u in self.uploads.items()
                    if u.bucket == bucket
                ]
            )
        upload = self.uploads.get(query.get("uploadId", ""))
        if upload is None or upload.name != name or upload.bucket != bucket:
            return _error(404, "NoSuchUpload", f"no multipart upload {query.get('uploadId')!r}")
        if request.method == "PUT":
            number = int(query["uploadPartNum"])
            if not 1 <= number <= 10000:
                return _error(400, "InvalidParameter", f"part number {number}")
            part = upload.parts[number] = _new_object(body)
            return web.Response(
                status=200, headers={"ETag": part.etag, "opc-content-md5": part.md5}
            )
        if request.method == "DELETE":
            del self.uploads[query["uploadId"]]
            return web.Response(status=204)
        if request.method == "POST":
            spec = json.loads(body)
            chunks = []
            md5s = []
            for entry in sorted(spec.get("partsToCommit", []), key=lambda e: e["partNum"]):
                part_or_none = upload.parts.get(entry["partNum"])
                if part_or_none is None or part_or_none.etag != entry["etag"]:
                    return _error(400, "InvalidParameter", f"bad part {entry}")
                chunks.append(part_or_none.data)
                md5s.append(hashlib.md5(part_or_none.data).digest())
            del self.uploads[query["uploadId"]]
            obj = objects[name] = _new_object(b"".join(chunks))
            multipart_md5 = base64.b64encode(hashlib.md5(b"".join(md5s)).digest()).decode()
            return web.Response(
                status=200,
                headers={"ETag": obj.etag, "opc-multipart-md5": f"{multipart_md5}-{len(chunks)}"},
            )
        return _error(405, "MethodNotAllowed", request.method)


def make_app(namespace: str = "testns", public_key_pem: bytes | None = None) -> web.Application:
    """An aiohttp application serving one in-memory :class:`OCIObjectStorage`."""
    state = OCIObjectStorage(namespace, public_key_pem)
    app = web.Application(client_max_size=1 << 34)
    app.router.add_route("*", "/{tail:.*}", state.handle)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--namespace", default="testns")
    parser.add_argument("--public-key", help="PEM file: verify request signatures with it")
    args = parser.parse_args()
    pem = None
    if args.public_key:
        with open(args.public_key, "rb") as f:
            pem = f.read()
    web.run_app(
        make_app(args.namespace, pem),
        host="127.0.0.1",
        port=args.port,
        print=None,
        access_log=None,
    )


if __name__ == "__main__":
    main()


class OCIServer:
    """A running :mod:`oci_server` subprocess and the oci config that signs for it."""

    def __init__(self, server: ServerProcess, namespace: str, config: dict[str, str]) -> None:
        self.server = server
        self.url = server.url
        self.namespace = namespace
        #: An oci config dict (dummy user/tenancy/fingerprint, a throwaway RSA key as
        #: ``key_content``) whose signatures the server verifies.
        self.config = config

    def sdk_client(self) -> Any:
        """The real oci SDK's ObjectStorageClient pointed at this server."""
        import oci

        return oci.object_storage.ObjectStorageClient(self.config, service_endpoint=self.url)

    def create_bucket(self, name: str | None = None) -> str:
        """Create (and return) a bucket through the SDK; a unique name when none is given."""
        import oci

        name = name or f"astream-{uuid.uuid4().hex[:16]}"
        details = oci.object_storage.models.CreateBucketDetails(
            name=name, compartment_id=self.config["tenancy"]
        )
        self.sdk_client().create_bucket(self.namespace, details)
        return name


def throwaway_config() -> tuple[dict[str, str], bytes]:
    """A dummy oci config with a fresh RSA key as ``key_content``, and its public key PEM."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    config = {
        "user": "ocid1.user.oc1..aaaaaaaatestuser",
        "tenancy": "ocid1.tenancy.oc1..aaaaaaaatesttenancy",
        "fingerprint": "12:34:56:78:90:ab:cd:ef:12:34:56:78:90:ab:cd:ef",
        "region": "us-ashburn-1",
        "key_content": private,
    }
    return config, public


@contextlib.contextmanager
def oci_server(namespace: str = "testns") -> Iterator[OCIServer]:
    """Run this module as a loopback server that verifies signatures of a throwaway key."""
    config, public_pem = throwaway_config()
    with tempfile.TemporaryDirectory(prefix="astream-oci-") as tmp:
        key_file = Path(tmp) / "public.pem"
        key_file.write_bytes(public_pem)
        port = free_port()
        argv = [
            sys.executable,
            "-m",
            "tests.servers.oci_server",
            "--port", str(port),
            "--namespace", namespace,
            "--public-key", str(key_file),
        ]  # fmt: skip
        root = Path(__file__).resolve().parents[2]
        with run_server(argv, port=port, ready_path="/_ready", cwd=root) as server:
            yield OCIServer(server, namespace, config)
