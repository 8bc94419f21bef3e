"""Helpers for the ``astream`` command's tests: datasets made here, read back with open_shard."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from astream.format import DatasetIndex, decompress_file, load_index, open_shard


@dataclass
class Result:
    """What one ``astream`` run printed and returned."""

    status: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


Run = Callable[..., Result]


def jpeg(seed: int, size: int = 8) -> bytes:
    """A small real JPEG file's bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (seed * 37 % 256, seed * 11 % 256, 90)).save(buffer, "JPEG")
    return buffer.getvalue()


def png(seed: int, size: int = 8) -> bytes:
    """A small real (grey) PNG file's bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (size, size), seed % 256).save(buffer, "PNG")
    return buffer.getvalue()


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def read_dataset(root: Path) -> tuple[DatasetIndex, list[dict[str, Any]]]:
    """Every sample of the local dataset at ``root``, read with ``open_shard``, in order."""
    index = load_index((root / "index.json").read_bytes(), source=str(root))
    samples: list[dict[str, Any]] = []
    for shard in index.shards:
        if shard.compression:
            pairs = [(shard.zip, shard.raw), (shard.zip_meta, shard.raw_meta)]
            for packed, raw in pairs:
                if packed is not None and raw is not None:
                    decompress_file(shard.compression, root / packed.basename, root / raw.basename)
        with open_shard(shard, root) as reader:
            samples.extend(reader[i] for i in range(len(reader)))
    return index, samples
