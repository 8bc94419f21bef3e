"""WebDataset tar shards: members grouped into samples by key, one column per extension.

A member ``dir/000123.seg.png`` belongs to the sample with key ``dir/000123`` and fills its
``seg.png`` column (stored as ``seg_png``). Consecutive members with the same key form one
sample, as WebDataset reads them. Values by extension: ``txt``/``text`` -> str, ``json`` ->
parsed JSON, ``cls``/``cls2``/``index`` -> int, ``npy`` -> ndarray, anything else -> bytes
(images are kept as they are).
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from astream.convert.base import Source
from astream.errors import FormatError

__all__ = ["CaptionPairs", "WebDatasetTars", "split_member_name"]

_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def split_member_name(name: str) -> tuple[str, str]:
    """``(key, extension)`` of a member name: the basename splits at its first dot."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{folder}/{stem}" if folder else stem
    return key, ext.lower() if dot else ""


def _decode(ext: str, data: bytes, where: str) -> Any:
    last = ext.rpartition(".")[2]
    try:
        if last in ("txt", "text"):
            return data.decode("utf-8")
        if last == "json":
            return json.loads(data)
        if last in ("cls", "cls2", "index"):
            return int(data.decode("ascii").strip())
        if last == "npy":
            return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormatError(f"{where}: cannot read a .{last} member: {exc}") from exc
    return data


@dataclass(frozen=True)
class WebDatasetTars(Source):
    """WebDataset-style tar files (plain or compressed), one unit per file.

    Columns: ``key`` (str) and one per member extension, dots replaced by ``_``.

    :param paths: the tar files, in order.
    """

    paths: Sequence[Path]

    def units(self) -> list[Any]:
        return [str(path) for path in self.paths]

    def read(self, unit: Any) -> Iterator[dict[str, Any]]:
        current: dict[str, Any] | None = None
        try:
            with tarfile.open(unit, "r|*") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    key, ext = split_member_name(member.name)
                    if not ext or key.rpartition("/")[2].startswith("__"):
                        continue  # no column to fill; WebDataset skips these as well
                    handle = tar.extractfile(member)
                    assert handle is not None  # a regular file always has a handle
                    data = handle.read()
                    if current is None or current["key"] != key:
                        if current is not None:
                            yield current
                        current = {"key": key}
                    column = ext.replace(".", "_")
                    if column in current:
                        raise FormatError(f"{unit}: sample {key!r} has two .{ext} members")
                    current[column] = _decode(ext, data, f"{unit}: {member.name}")
        except tarfile.TarError as exc:
            raise FormatError(f"{unit}: not a readable tar file: {exc}") from exc
        if current is not None:
            yield current


@dataclass(frozen=True)
class CaptionPairs(Source):
    """Image and caption pairs from WebDataset tars (LAION, CC3M, CC12M as img2dataset writes).

    Columns: ``key``, ``image`` (the ``jpg``/``jpeg``/``png``/``webp`` member's bytes) and
    ``caption``: the ``txt`` member, else the ``caption`` (or ``text``) field of the ``json``
    member. Samples without an image or a caption are errors.

    :param paths: the tar files, in order.
    """

    paths: Sequence[Path]

    def units(self) -> list[Any]:
        return [str(path) for path in self.paths]

    def read(self, unit: Any) -> Iterator[dict[str, Any]]:
        for sample in WebDatasetTars(self.paths).read(unit):
            image = next((sample[ext] for ext in _IMAGE_EXTENSIONS if ext in sample), None)
            caption = sample.get("txt")
            meta = sample.get("json")
            if caption is None and isinstance(meta, dict):
                caption = meta.get("caption", meta.get("text"))
            if not isinstance(image, bytes) or not isinstance(caption, str):
                raise FormatError(
                    f"{unit}: sample {sample['key']!r} needs an image member and a caption "
                    "(a .txt member or a .json member with 'caption')"
                )
            yield {"key": sample["key"], "image": image, "caption": caption}
