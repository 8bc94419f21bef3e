"""MDS column encodings: how one column's value becomes bytes in a shard and back.

Every name in FORMAT.md is registered here; :func:`register_encoding` adds more. An encoding
with a fixed ``size`` is stored without a length prefix. ``pkl`` is marked unsafe: readers refuse
it unless the caller allows unsafe types.
"""

from __future__ import annotations

import importlib
import io
import json
import pickle
from abc import ABC, abstractmethod
from decimal import Decimal
from typing import Any

import numpy as np

from astream.errors import ConfigError, EncodingError, FormatError, MissingDependencyError

__all__ = [
    "Encoding",
    "NDArrayEncoding",
    "encoding_names",
    "get_encoding",
    "is_builtin_encoding",
    "register_encoding",
]

_U32 = np.dtype("<u4")


class Encoding(ABC):
    """Turns a column's values into bytes and back.

    Subclass it and pass an instance to :func:`register_encoding` to add a column type.
    ``encode`` raises ``TypeError``/``ValueError`` for a value it cannot hold; the writer turns
    that into :class:`~astream.errors.EncodingError` naming the column.
    """

    #: Encoded size in bytes when every value has the same size, else ``None``.
    size: int | None = None
    #: ``False`` for encodings whose decoding can run code (pickle).
    safe: bool = True

    @abstractmethod
    def encode(self, value: Any) -> bytes:
        """Return ``value`` as bytes."""

    @abstractmethod
    def decode(self, data: bytes) -> Any:
        """Return the value that ``data`` holds."""

    def check_encoded(self, data: bytes) -> None:  # noqa: B027 (a hook; accepting is right)
        """Check ``bytes`` a writer was given for this column, to be stored as they are.

        A writer stores a ``bytes`` value verbatim (already encoded, as mosaicml-streaming
        does); this cheap check (a type, a magic number) catches values that could never
        decode. Raise ``TypeError``/``ValueError`` to refuse ``data``; the default accepts any.
        """

    def with_args(self, args: str) -> Encoding:
        """Return the encoding for the spelling ``name:args`` (only parametric ones accept it)."""
        raise EncodingError(f"encoding takes no arguments, got {args!r}")


def _require(value: Any, kind: type | tuple[type, ...]) -> None:
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise TypeError(f"expected {names}, got {type(value).__name__}")


class _Bytes(Encoding):
    def encode(self, value: Any) -> bytes:
        _require(value, (bytes, bytearray, memoryview))
        return bytes(value)

    def decode(self, data: bytes) -> bytes:
        # Readers hand over a fresh bytes slice already: no second copy.
        return data if type(data) is bytes else bytes(data)


class _Str(Encoding):
    def encode(self, value: Any) -> bytes:
        _require(value, str)
        return str(value).encode("utf-8")

    def check_encoded(self, data: bytes) -> None:
        # Read back as str, not as the bytes written: refuse rather than change the type.
        raise TypeError("expected str, got bytes (decode it, or make the column bytes)")

    def decode(self, data: bytes) -> str:
        return bytes(data).decode("utf-8")


class _Int(Encoding):
    size = 8

    def encode(self, value: Any) -> bytes:
        _require(value, (int, np.integer))
        return int(value).to_bytes(8, "little", signed=True)

    def decode(self, data: bytes) -> int:
        return int.from_bytes(data, "little", signed=True)


class _Scalar(Encoding):
    def __init__(self, dtype: str) -> None:
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.size = self.dtype.itemsize

    def encode(self, value: Any) -> bytes:
        if isinstance(value, (str, bytes)) or value is None:
            raise TypeError(f"expected a number, got {type(value).__name__}")
        return np.asarray(value, dtype=self.dtype).reshape(()).tobytes()

    def decode(self, data: bytes) -> Any:
        return np.frombuffer(data, self.dtype)[0]


class _StrNumber(Encoding):
    def __init__(self, kind: type) -> None:
        self.kind = kind

    def encode(self, value: Any) -> bytes:
        # bool is an int subclass, as mosaicml-streaming accepts it; str(True) would not parse.
        if isinstance(value, bool) or not isinstance(value, self.kind):
            raise TypeError(f"expected {self.kind.__name__}, got {type(value).__name__}")
        return str(value).encode("utf-8")

    def decode(self, data: bytes) -> Any:
        return self.kind(bytes(data).decode("utf-8"))

    def check_encoded(self, data: bytes) -> None:
        self.decode(data)  # short text; refuses what would not parse back


# dtype code byte <-> numpy dtype name, as the MDS ndarray layout numbers them.
_DTYPE_BY_CODE = {
    8: "uint8",
    9: "int8",
    16: "uint16",
    17: "int16",
    18: "float16",
    32: "uint32",
    33: "int32",
    34: "float32",
    64: "uint64",
    65: "int64",
    66: "float64",
}
_CODE_BY_DTYPE = {name: code for code, name in _DTYPE_BY_CODE.items()}
_SHAPE_DTYPES = ("<u1", "<u2", "<u4", "<u8")


class NDArrayEncoding(Encoding):
    """``ndarray``, ``ndarray:DTYPE`` and ``ndarray:DTYPE:D0,D1,...``.

    :param dtype: the dtype name when fixed by the column (then not stored per value).
    :param shape: the shape when fixed by the column (then not stored per value).
    """

    def __init__(self, dtype: str | None = None, shape: tuple[int, ...] | None = None) -> None:
        if dtype is not None and dtype not in _CODE_BY_DTYPE:
            raise EncodingError(
                f"ndarray dtype {dtype!r} is not one of {', '.join(_CODE_BY_DTYPE)}"
            )
        if shape is not None and (not shape or min(shape) < 1):
            raise EncodingError(f"ndarray shape {shape!r} needs one or more positive dims")
        self.dtype = dtype
        self.shape = shape
        self._np_dtype = None if dtype is None else np.dtype(dtype).newbyteorder("<")
        if self._np_dtype is not None and shape is not None:
            self.size = int(np.prod(shape)) * self._np_dtype.itemsize

    def with_args(self, args: str) -> Encoding:
        parts = args.split(":")
        if len(parts) > 2:
            raise EncodingError(f"ndarray takes dtype and shape, got {args!r}")
        shape = tuple(int(dim) for dim in parts[1].split(",")) if len(parts) == 2 else None
        return NDArrayEncoding(parts[0], shape)

    def encode(self, value: Any) -> bytes:
        _require(value, np.ndarray)
        name = value.dtype.name
        code = _CODE_BY_DTYPE.get(name)
        if code is None:
            raise TypeError(f"ndarray dtype {name} is not storable")
        if value.size == 0 or value.ndim == 0:
            raise EncodingError("empty and 0-d arrays cannot be stored; use a scalar encoding")
        parts: list[bytes] = []
        if self.dtype is None:
            parts.append(bytes([code]))
        elif name != self.dtype:
            raise TypeError(f"ndarray dtype {name} is not the column's {self.dtype}")
        if self.shape is None:
            if value.ndim >= 64:
                raise EncodingError(f"ndarray has {value.ndim} dims; at most 63 fit")
            biggest = max(value.shape)
            kind = (
                0 if biggest < 1 << 8 else 1 if biggest < 1 << 16 else 2 if biggest < 1 << 32 else 3
            )
            parts.append(bytes([(value.ndim << 2) | kind]))
            parts.append(np.asarray(value.shape, _SHAPE_DTYPES[kind]).tobytes())
        elif value.shape != self.shape:
            raise EncodingError(f"ndarray shape {value.shape} is not the column's {self.shape}")
        parts.append(value.astype(value.dtype.newbyteorder("<"), copy=False).tobytes())
        return b"".join(parts)

    def decode(self, data: bytes) -> np.ndarray[Any, Any]:
        pos = 0
        if self._np_dtype is None:
            dtype = np.dtype(_DTYPE_BY_CODE[data[0]]).newbyteorder("<")
            pos = 1
        else:
            dtype = self._np_dtype
        if self.shape is None:
            head = data[pos]
            ndim, kind = head >> 2, head & 3
            width = 1 << kind
            shape = tuple(np.frombuffer(data, _SHAPE_DTYPES[kind], ndim, pos + 1).tolist())
            pos += 1 + ndim * width
        else:
            shape = self.shape
        count = int(np.prod(shape))
        if len(data) - pos != count * dtype.itemsize:
            raise FormatError(f"ndarray payload of {len(data) - pos} bytes does not fit {shape}")
        # A copy, so the array is writable: torch warns on (and cannot safely share) read-only
        # arrays, and ``data`` is a slice already copied out of the shard, so nothing is lost.
        return np.array(np.frombuffer(data, dtype, count, pos).reshape(shape))


def _pil() -> Any:
    try:
        return importlib.import_module("PIL.Image")
    except ImportError as exc:
        raise MissingDependencyError(
            "image columns (pil, jpeg, png) need Pillow: pip install 'astream[images]'"
        ) from exc


def _require_image(value: Any) -> Any:
    image = _pil()
    if not isinstance(value, image.Image):
        raise TypeError(f"expected a PIL image, got {type(value).__name__}")
    return image


class _PIL(Encoding):
    def encode(self, value: Any) -> bytes:
        _require_image(value)
        mode: bytes = value.mode.encode("utf-8")
        width, height = value.size
        head = np.array([width, height, len(mode)], _U32).tobytes()
        pixels: bytes = value.tobytes()
        return head + mode + pixels

    def decode(self, data: bytes) -> Any:
        width, height, mode_len = np.frombuffer(data, _U32, 3).tolist()
        mode = bytes(data[12 : 12 + mode_len]).decode("utf-8")
        return _pil().frombytes(mode, (width, height), bytes(data[12 + mode_len :]))


# File signatures: a jpeg/png column given bytes checks that they start like such a file.
_MAGIC = {"JPEG": b"\xff\xd8\xff", "PNG": b"\x89PNG\r\n\x1a\n"}


class _ImageFile(Encoding):
    def __init__(self, fmt: str) -> None:
        self.fmt = fmt

    def check_encoded(self, data: bytes) -> None:
        if not data.startswith(_MAGIC[self.fmt]):
            raise EncodingError(f"not a {self.fmt} file (it starts with {bytes(data[:8])!r})")

    def encode(self, value: Any) -> bytes:
        _require_image(value)
        # An image opened from a JPEG file is stored as that file's bytes: no second lossy pass.
        filename = getattr(value, "filename", None)
        if self.fmt == "JPEG" and getattr(value, "format", None) == "JPEG" and filename:
            try:
                with open(filename, "rb") as handle:
                    original: bytes = handle.read()
                    return original
            except FileNotFoundError:
                pass
        out = io.BytesIO()
        value.save(out, format=self.fmt)
        return out.getvalue()

    def decode(self, data: bytes) -> Any:
        return _pil().open(io.BytesIO(data))


def _sized_items(data: bytes, pos: int) -> list[bytes]:
    """Split ``uint32 n, uint32 sizes[n], items`` that starts at ``pos``."""
    (count,) = np.frombuffer(data, _U32, 1, pos).tolist()
    sizes = np.frombuffer(data, _U32, count, pos + 4).tolist()
    start = pos + 4 + 4 * count
    items = []
    for size in sizes:
        items.append(bytes(data[start : start + size]))
        start += size
    if start != len(data):
        raise FormatError(f"list payload of {len(data)} bytes does not match its item sizes")
    return items


def _join_sized(items: list[bytes]) -> bytes:
    return np.array([len(item) for item in items], _U32).tobytes() + b"".join(items)


class _ImageList(Encoding):
    def __init__(self, item: Encoding) -> None:
        self.item = item

    def encode(self, value: Any) -> bytes:
        _require(value, list)
        items = [self.item.encode(element) for element in value]
        # The first uint32 is reserved (always 0) by the MDS layout.
        return np.array([0, len(items)], _U32).tobytes() + _join_sized(items)

    def decode(self, data: bytes) -> list[Any]:
        return [self.item.decode(item) for item in _sized_items(data, 4)]


class _JPEGArray(Encoding):
    def __init__(self) -> None:
        self.jpeg = _ImageFile("JPEG")

    def encode(self, value: Any) -> bytes:
        _require(value, (list, tuple))
        # Items are JPEG file bytes, as mosaicml-streaming takes them; images are encoded here.
        items = [
            bytes(item)
            if isinstance(item, (bytes, bytearray, memoryview))
            else self.jpeg.encode(item)
            for item in value
        ]
        return np.array([len(items)], _U32).tobytes() + _join_sized(items)

    def decode(self, data: bytes) -> list[Any]:
        return [self.jpeg.decode(item) for item in _sized_items(data, 0)]


class _Pickle(Encoding):
    safe = False

    def encode(self, value: Any) -> bytes:
        return pickle.dumps(value)

    def decode(self, data: bytes) -> Any:
        return pickle.loads(data)


class _JSON(Encoding):
    def encode(self, value: Any) -> bytes:
        if isinstance(value, np.ndarray):
            value = value.tolist()
        return json.dumps(value).encode("utf-8")

    def decode(self, data: bytes) -> Any:
        return json.loads(bytes(data).decode("utf-8"))

    def check_encoded(self, data: bytes) -> None:
        self.decode(data)  # UTF-8 JSON text, or a ValueError naming where it is not


_REGISTRY: dict[str, Encoding] = {
    "bytes": _Bytes(),
    "str": _Str(),
    "int": _Int(),
    **{name: _Scalar(name) for name in _CODE_BY_DTYPE},
    "str_int": _StrNumber(int),
    "str_float": _StrNumber(float),
    "str_decimal": _StrNumber(Decimal),
    "pil": _PIL(),
    "jpeg": _ImageFile("JPEG"),
    "png": _ImageFile("PNG"),
    "jpeg_array": _JPEGArray(),
    "jpegarray": _JPEGArray(),
    "list[pil]": _ImageList(_PIL()),
    "list[jpeg]": _ImageList(_ImageFile("JPEG")),
    "list[png]": _ImageList(_ImageFile("PNG")),
    "pkl": _Pickle(),
    "json": _JSON(),
    "ndarray": NDArrayEncoding(),
}
# Parametric spellings ("ndarray:uint8:3,4") resolved once each.
_RESOLVED: dict[str, Encoding] = {}
# astream's own encodings; any other name was added with register_encoding.
_BUILTIN = frozenset(_REGISTRY)


def is_builtin_encoding(spec: str) -> bool:
    """Return whether ``spec`` names one of astream's own encodings (not a registered one)."""
    return spec.partition(":")[0] in _BUILTIN


def register_encoding(name: str, encoding: Encoding) -> None:
    """Make ``encoding`` available to writers and readers under ``name``.

    A spelling ``name:args`` resolves through ``encoding.with_args(args)``.

    :raises ConfigError: when ``name`` is empty, holds ``:``, or is already registered.
    """
    if not name or ":" in name:
        raise ConfigError(f"an encoding name must be non-empty and hold no ':', got {name!r}")
    if name in _REGISTRY:
        raise ConfigError(f"encoding {name!r} is already registered")
    if not isinstance(encoding, Encoding):
        raise TypeError(f"register_encoding needs an Encoding, got {type(encoding).__name__}")
    _REGISTRY[name] = encoding


def encoding_names() -> frozenset[str]:
    """Return the names of every registered encoding (without arguments)."""
    return frozenset(_REGISTRY)


def get_encoding(spec: str) -> Encoding:
    """Return the encoding that ``spec`` (``"int"``, ``"ndarray:float32:3,4"``) names.

    :raises EncodingError: for an unknown name or bad arguments.
    """
    found = _REGISTRY.get(spec) or _RESOLVED.get(spec)
    if found is not None:
        return found
    name, colon, args = spec.partition(":")
    base = _REGISTRY.get(name)
    if base is None or not colon:
        raise EncodingError(
            f"unknown column encoding {spec!r}; known: {', '.join(sorted(_REGISTRY))}"
        )
    try:
        resolved = base.with_args(args)
    except (ValueError, TypeError) as exc:
        raise EncodingError(f"bad column encoding {spec!r}: {exc}") from exc
    _RESOLVED[spec] = resolved
    return resolved
