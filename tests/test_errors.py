"""Bad arguments raise the library's own errors (still ValueErrors), each saying what is wrong."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from astream import ConfigError, CSVWriter, EncodingError, MDSWriter, StreamingDataset
from astream.convert import WriterOptions, open_source
from astream.engine.prefetch import WindowConfig
from astream.format import Encoding, get_encoding, hash_bytes, parse_compression, register_encoding
from astream.loader import _batch_len
from astream.units import parse_bytes, parse_count

CASES: list[tuple[str, type[Exception], Callable[[Path], Any], str]] = [
    ("byte size", ConfigError, lambda _: parse_bytes("12 parsecs"), "unknown byte unit"),
    ("negative count", ConfigError, lambda _: parse_count(-3), "cannot be negative"),
    ("codec", ConfigError, lambda _: parse_compression("zip"), "unknown compression 'zip'"),
    ("codec level", ConfigError, lambda _: parse_compression("zstd:99"), "levels 1-22"),
    ("hash", ConfigError, lambda _: hash_bytes("crc99", b""), "unknown hash algorithm"),
    (
        "writer compression",
        ConfigError,
        lambda tmp: MDSWriter(out=tmp, columns={"a": "int"}, compression="zip"),
        "unknown compression",
    ),
    (
        "writer size_limit",
        ConfigError,
        lambda tmp: MDSWriter(out=tmp, columns={"a": "int"}, size_limit="5gb"),
        "size_limit must be under",
    ),
    (
        "writer hashes",
        ConfigError,
        lambda tmp: MDSWriter(out=tmp, columns={"a": "int"}, hashes=["sha1", "md5"]),
        "unique and sorted",
    ),
    (
        "upload workers",
        ConfigError,
        lambda tmp: MDSWriter(out=tmp, columns={"a": "int"}, max_workers=0),
        "max_workers must be >= 1",
    ),
    (
        "csv column name",
        ConfigError,
        lambda tmp: CSVWriter(out=tmp, columns={"a,b": "str"}),
        "contains the separator",
    ),
    ("encoding args", EncodingError, lambda _: get_encoding("ndarray:float99"), "float99"),
    (
        "encoding name",
        ConfigError,
        lambda _: register_encoding("a:b", get_encoding("str")),
        "hold no ':'",
    ),
    ("window", ConfigError, lambda _: WindowConfig(shards=0), "WindowConfig.shards"),
    ("output format", ConfigError, lambda _: WriterOptions(format="xml"), "unknown format"),
    ("layout", ConfigError, lambda tmp: open_source(tmp.parent, "nope"), "unknown layout"),
    ("empty batch", ConfigError, lambda _: _batch_len({}), "collate_fn must return"),
    ("uncountable batch", ConfigError, lambda _: _batch_len(object()), "has no len"),
    ("uncountable first value", ConfigError, lambda _: _batch_len((3, 4)), "batch of int"),
]


@pytest.mark.parametrize(("what", "error", "call", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_arguments_raise_the_library_errors(
    tmp_path: Path, what: str, error: type[Exception], call: Callable[[Path], Any], message: str
) -> None:
    with pytest.raises(error, match=message) as caught:
        call(tmp_path / "out")
    assert isinstance(caught.value, ValueError)  # callers that catch ValueError still do


def test_encode_errors_are_encoding_errors() -> None:
    ndarray: Encoding = get_encoding("ndarray")
    import numpy as np

    with pytest.raises(EncodingError, match="empty and 0-d arrays"):
        ndarray.encode(np.zeros((0,), np.float32))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": -1}, "batch_size must be >= 1"),
        ({"prefetch_shards": 0}, "prefetch_shards must be >= 1"),
        ({"max_downloads": 0}, "max_downloads must be >= 1"),
        ({"predownload": -1}, "predownload must be >= 0"),
    ],
)
def test_dataset_arguments_are_named_as_given(
    tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    with MDSWriter(out=tmp_path, columns={"a": "int"}) as writer:
        writer.write({"a": 1})
    with pytest.raises(ConfigError, match=message):
        StreamingDataset(local=tmp_path, **kwargs)


# The `raise ValueError` left in the library, each an internal signal its caller turns into an
# astream error (or an invariant no caller can reach), never what a user sees.
INTERNAL_VALUE_ERRORS = {
    "astream/format/codecs.py": 2,  # truncated zstd/brotli streams: decompress* wrap them
    "astream/engine/table.py": 1,  # ShardTable's own invariant: one index per stream
}


def test_the_library_raises_its_own_errors() -> None:
    root = Path(__file__).resolve().parent.parent
    found = {
        str(path.relative_to(root)): path.read_text().count("raise ValueError(")
        for path in sorted((root / "astream").rglob("*.py"))
    }
    assert {k: v for k, v in found.items() if v} == INTERNAL_VALUE_ERRORS
