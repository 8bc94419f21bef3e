"""Column encodings: every name in FORMAT.md round-trips; bad values and pkl are refused."""

from __future__ import annotations

import io
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from astream.errors import EncodingError, UnsafeTypeError
from astream.format import (
    Encoding,
    LocalMDSWriter,
    decode_sample,
    get_encoding,
    load_index,
    open_shard,
    register_encoding,
)

Image = pytest.importorskip("PIL.Image")

_SCALARS = {
    "uint8": st.integers(0, 2**8 - 1),
    "uint16": st.integers(0, 2**16 - 1),
    "uint32": st.integers(0, 2**32 - 1),
    "uint64": st.integers(0, 2**64 - 1),
    "int8": st.integers(-(2**7), 2**7 - 1),
    "int16": st.integers(-(2**15), 2**15 - 1),
    "int32": st.integers(-(2**31), 2**31 - 1),
    "int64": st.integers(-(2**63), 2**63 - 1),
    "float16": st.floats(width=16, allow_nan=False),
    "float32": st.floats(width=32, allow_nan=False),
    "float64": st.floats(allow_nan=False),
}


def roundtrip(spec: str, value: Any) -> Any:
    encoding = get_encoding(spec)
    data = encoding.encode(value)
    if encoding.size is not None:
        assert len(data) == encoding.size
    return encoding.decode(data)


@pytest.mark.parametrize("spec", sorted(_SCALARS))
@given(data=st.data())
def test_numpy_scalars_roundtrip_as_numpy_scalars(spec: str, data: st.DataObject) -> None:
    value = data.draw(_SCALARS[spec])
    decoded = roundtrip(spec, value)
    assert decoded.dtype == np.dtype(spec)
    assert decoded == np.dtype(spec).type(value)


@given(st.integers(-(2**63), 2**63 - 1))
def test_int_roundtrips_as_python_int(value: int) -> None:
    decoded = roundtrip("int", value)
    assert type(decoded) is int and decoded == value


@given(st.text())
def test_str_roundtrips(value: str) -> None:
    assert roundtrip("str", value) == value


@given(st.binary())
def test_bytes_roundtrip(value: bytes) -> None:
    assert roundtrip("bytes", value) == value


@given(st.integers())
def test_str_int_holds_any_precision(value: int) -> None:
    assert roundtrip("str_int", value) == value


@given(st.floats(allow_nan=False))
def test_str_float_roundtrips(value: float) -> None:
    assert roundtrip("str_float", value) == value


@given(st.decimals(allow_nan=False, allow_infinity=False))
def test_str_decimal_roundtrips(value: Decimal) -> None:
    assert roundtrip("str_decimal", value) == value


_DTYPES = ["uint8", "int8", "uint16", "int16", "float16", "uint32", "int32", "float32"]
_DTYPES += ["uint64", "int64", "float64"]
_SHAPES = hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=6)


@given(st.sampled_from(_DTYPES).flatmap(lambda d: hnp.arrays(d, _SHAPES)))
def test_ndarray_with_dtype_and_shape_in_the_payload(array: np.ndarray[Any, Any]) -> None:
    decoded = roundtrip("ndarray", array)
    assert decoded.dtype == array.dtype
    np.testing.assert_array_equal(decoded, array)


@given(st.sampled_from(_DTYPES).flatmap(lambda d: hnp.arrays(d, _SHAPES)))
def test_ndarray_with_dtype_in_the_name(array: np.ndarray[Any, Any]) -> None:
    np.testing.assert_array_equal(roundtrip(f"ndarray:{array.dtype.name}", array), array)


@pytest.mark.parametrize("spec", ["ndarray", "ndarray:float32", "ndarray:float32:3,4"])
def test_decoded_ndarray_is_writable(spec: str) -> None:
    # torch warns on read-only arrays ("The given NumPy array is not writable") in every
    # DataLoader's collate; a decoded array must be the reader's own.
    decoded = roundtrip(spec, np.arange(12, dtype=np.float32).reshape(3, 4))
    assert decoded.flags.writeable
    decoded[0, 0] = 7


def test_ndarray_with_dtype_and_shape_in_the_name_is_fixed_size() -> None:
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    encoding = get_encoding("ndarray:float32:3,4")
    assert encoding.size == 48
    assert encoding.encode(array) == array.tobytes()
    np.testing.assert_array_equal(encoding.decode(array.tobytes()), array)


def test_ndarray_shape_header_uses_the_smallest_dim_type() -> None:
    small = get_encoding("ndarray:uint8").encode(np.zeros((3, 255), np.uint8))
    assert small[0] == (2 << 2) | 0 and small[1:3] == bytes([3, 255])
    wide = get_encoding("ndarray:uint8").encode(np.zeros((256,), np.uint8))
    assert wide[0] == (1 << 2) | 1 and wide[1:3] == (256).to_bytes(2, "little")
    big = np.arange(70_000, dtype=np.uint8).reshape(70_000, 1)
    encoded = get_encoding("ndarray").encode(big)
    assert encoded[1] == (2 << 2) | 2 and encoded[2:6] == (70_000).to_bytes(4, "little")
    np.testing.assert_array_equal(get_encoding("ndarray").decode(encoded), big)


@pytest.mark.parametrize(
    "spec,value",
    [
        ("ndarray", np.zeros((0,), np.float32)),
        ("ndarray", np.array(3.0)),
        ("ndarray", np.zeros(3, np.complex64)),
        ("ndarray:int16", np.zeros(3, np.int32)),
        ("ndarray:int16:2", np.zeros(3, np.int16)),
        ("ndarray", [1, 2]),
        ("int", "7"),
        ("str", 7),
        ("uint8", 256),
        ("uint8", "x"),
        ("str_int", 1.5),
        ("str_float", 1),
        ("json", {1, 2}),
        ("pil", "not an image"),
        ("list[png]", "not a list"),
    ],
)
def test_values_that_do_not_fit_raise_encoding_error_naming_column(
    tmp_path: Path, spec: str, value: Any
) -> None:
    message = rf"column 'col'.*{type(value).__name__}"
    with (
        LocalMDSWriter(out=tmp_path / "ds", columns={"ok": "int", "col": spec}) as writer,
        pytest.raises(EncodingError, match=message),
    ):
        writer.write({"ok": 1, "col": value})
    index = load_index((tmp_path / "ds" / "index.json").read_bytes(), source="index.json")
    assert index.samples == 0  # nothing of the refused sample was written


def test_missing_column_is_an_encoding_error(tmp_path: Path) -> None:
    with LocalMDSWriter(out=tmp_path, columns={"a": "int"}) as writer:
        with pytest.raises(EncodingError, match="'a'"):
            writer.write({"b": 1})
        writer.write({"a": 2})  # the writer stays usable
    shard = load_index((tmp_path / "index.json").read_bytes(), source="index").shards[0]
    with open_shard(shard, tmp_path) as reader:
        assert [reader[i] for i in range(len(reader))] == [{"a": 2}]


def test_unknown_encoding_is_refused_at_construction(tmp_path: Path) -> None:
    with pytest.raises(EncodingError, match=r"column 'a'.*'nope'") as caught:
        LocalMDSWriter(out=tmp_path, columns={"a": "nope"})
    assert caught.value.__cause__ is None and caught.value.__suppress_context__  # said once


@pytest.mark.parametrize(
    "spec,value,reason",
    [
        ("jpeg", b"GIF89a....", r"not a JPEG file \(it starts with b'GIF89a"),
        ("png", b"\xff\xd8\xff\xe0 a jpeg", "not a PNG file"),
        ("str", b"text", "expected str, got bytes"),
        ("json", b"{not json", "Expecting property name"),
        ("str_int", b"1.5", "invalid literal for int"),
        ("int", b"123", "3 bytes, the column holds 8"),
    ],
)
def test_bytes_that_cannot_decode_are_refused_at_write(
    tmp_path: Path, spec: str, value: bytes, reason: str
) -> None:
    with LocalMDSWriter(out=tmp_path / "ds", columns={"col": spec, "ok": "int"}) as writer:
        writer.write({"col": _good_value(spec), "ok": 0})
        writer.write({"col": _good_value(spec), "ok": 1})
        with pytest.raises(
            EncodingError, match=rf"^sample 2: column 'col' \(encoding '{spec}'\).*{reason}"
        ):
            writer.write({"col": value, "ok": 2})
    index = load_index((tmp_path / "ds" / "index.json").read_bytes(), source="index.json")
    assert index.samples == 2


def _good_value(spec: str) -> Any:
    """A value that a ``spec`` column accepts: bytes stored as they are, except for str."""
    image = io.BytesIO()
    if spec in ("jpeg", "png"):
        _image().save(image, format=spec.upper())
        return image.getvalue()
    return {"str": "", "json": b"[1]", "str_int": b"12", "int": bytes(8)}[spec]


def test_a_str_column_takes_only_str(tmp_path: Path) -> None:
    with LocalMDSWriter(out=tmp_path, columns={"s": "str"}) as writer:
        with pytest.raises(EncodingError, match=r"sample 0: column 's'.*expected str, got bytes"):
            writer.write({"s": b"abc"})
        writer.write({"s": "abc"})


def test_bytes_values_are_written_as_is_whatever_the_encoding() -> None:
    # The reference writes a bytes value verbatim into any column; readers then decode it.
    payload = np.arange(4, dtype=np.int16).tobytes()
    assert np.array_equal(get_encoding("ndarray:int16:4").decode(payload), np.arange(4))


def test_json_encodes_numpy_arrays_as_lists() -> None:
    assert roundtrip("json", np.arange(3)) == [0, 1, 2]
    assert roundtrip("json", {"a": [1, "x", None]}) == {"a": [1, "x", None]}


def _image(mode: str = "RGB") -> Any:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (7, 5, 3), np.uint8), "RGB").convert(mode)


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA"])
def test_pil_roundtrips_exactly(mode: str) -> None:
    image = _image(mode)
    decoded = roundtrip("pil", image)
    assert decoded.mode == mode and decoded.size == image.size
    assert decoded.tobytes() == image.tobytes()


def test_png_roundtrips_exactly() -> None:
    image = _image()
    assert roundtrip("png", image).tobytes() == image.tobytes()


def test_jpeg_opened_from_a_file_keeps_its_bytes(tmp_path: Path) -> None:
    path = tmp_path / "x.jpg"
    _image().save(path, format="JPEG", quality=42)
    with Image.open(path) as opened:
        assert get_encoding("jpeg").encode(opened) == path.read_bytes()
    decoded = get_encoding("jpeg").decode(path.read_bytes())
    assert decoded.size == (5, 7) and decoded.format == "JPEG"


def test_image_lists_and_jpeg_array_roundtrip() -> None:
    images = [_image(), _image("L")]
    assert [i.tobytes() for i in roundtrip("list[pil]", images)] == [i.tobytes() for i in images]
    assert [i.tobytes() for i in roundtrip("list[png]", images)] == [i.tobytes() for i in images]
    assert [i.size for i in roundtrip("list[jpeg]", images)] == [(5, 7), (5, 7)]
    data = get_encoding("list[png]").encode(images)
    assert data[:4] == b"\0\0\0\0" and data[4:8] == (2).to_bytes(4, "little")
    jpegs = []
    for image in images:
        out = io.BytesIO()
        image.save(out, format="JPEG")
        jpegs.append(out.getvalue())
    encoded = get_encoding("jpeg_array").encode(jpegs)
    assert encoded == np.array([2, *map(len, jpegs)], "<u4").tobytes() + b"".join(jpegs)
    assert [i.size for i in get_encoding("jpeg_array").decode(encoded)] == [(5, 7), (5, 7)]


def test_pkl_is_refused_on_read_unless_allowed(tmp_path: Path) -> None:
    with LocalMDSWriter(out=tmp_path, columns={"obj": "pkl", "n": "int"}) as writer:
        writer.write({"obj": {"k": (1, 2)}, "n": 1})
    shard = load_index((tmp_path / "index.json").read_bytes(), source="index").shards[0]
    with pytest.raises(UnsafeTypeError, match=r"shard\.00000\.mds.*'obj'.*allow_unsafe_types"):
        open_shard(shard, tmp_path)
    with open_shard(shard, tmp_path, allow_unsafe_types=True) as reader:
        assert reader[0] == {"obj": {"k": (1, 2)}, "n": 1}
        payload = reader.payload(0)
    with pytest.raises(UnsafeTypeError):
        decode_sample(shard, payload)
    assert decode_sample(shard, payload, allow_unsafe_types=True)["obj"] == {"k": (1, 2)}


class _Upper(Encoding):
    def encode(self, value: Any) -> bytes:
        if not isinstance(value, str):
            raise TypeError("expected str")
        return value.upper().encode()

    def decode(self, data: bytes) -> str:
        return data.decode().lower()


def test_registered_encodings_write_and_read(tmp_path: Path) -> None:
    register_encoding("test_upper", _Upper())
    with pytest.raises(ValueError, match="already registered"):
        register_encoding("test_upper", _Upper())
    with pytest.raises(ValueError):
        register_encoding("a:b", _Upper())
    with LocalMDSWriter(out=tmp_path, columns={"s": "test_upper"}) as writer:
        writer.write({"s": "abc"})
        with pytest.raises(EncodingError, match="'s'"):
            writer.write({"s": 3})
    assert b"ABC" in (tmp_path / "shard.00000.mds").read_bytes()
    shard = load_index((tmp_path / "index.json").read_bytes(), source="index").shards[0]
    with open_shard(shard, tmp_path) as reader:
        assert reader[0] == {"s": "abc"}
