"""What the Spark and Ray writer tests share: the rows they write, and reading a dataset back.

The rows are small on purpose (the engines session stays short): an int, a str, bytes, a small
float array and one of a few real PNG images' bytes, each a function of the row's id, so the
expected sample of every id is computed here and every sample read back is checked.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.servers.moto_s3 import CREDENTIALS, MotoS3
from tests.storage.conftest import moto_s3

__all__ = ["moto_s3"]

#: Rows the full tests write (the issue's figure).
ROWS = 100_000
IMAGES = 7


def png(seed: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (4, 4), seed * 31 % 256).save(buffer, "PNG")
    return buffer.getvalue()


PNGS = [png(seed) for seed in range(IMAGES)]


def expected(row_id: int) -> dict[str, Any]:
    """The sample of row ``row_id``, as the Spark and Ray tests build their rows."""
    return {
        "id": row_id,
        "text": f"row {row_id}",
        "blob": f"b{row_id}".encode(),
        "vec": np.array([row_id, row_id * 0.5], dtype=np.float32),
        "image": PNGS[row_id % IMAGES],
    }


def assert_samples(samples: list[dict[str, Any]], ids: range | list[int]) -> None:
    """Every sample is the expected one for its id, and the ids are exactly ``ids``, in order."""
    assert len(samples) == len(ids)
    for sample, row_id in zip(samples, ids, strict=True):
        want = expected(row_id)
        assert sample.keys() == want.keys(), sample.keys()
        for name in ("id", "text", "blob", "image"):
            assert sample[name] == want[name], (row_id, name)
        np.testing.assert_array_equal(sample["vec"], want["vec"])
        assert sample["vec"].dtype == np.float32


def stream(url: str, cache: Path) -> list[dict[str, Any]]:
    """Every sample of the dataset at ``url``, read with StreamingDataset, in dataset order."""
    from astream import StreamingDataset

    dataset = StreamingDataset(remote=url, local=cache, shuffle=False)
    return list(dataset)


@pytest.fixture(scope="module")
def s3_env(moto_s3: MotoS3) -> Iterator[MotoS3]:
    """The S3 environment variables pointed at moto, for the whole module (engines' workers
    inherit them)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("S3_ENDPOINT_URL", moto_s3.endpoint_url)
        patch.delenv("AWS_ENDPOINT_URL", raising=False)
        for name, value in CREDENTIALS.items():
            patch.setenv(name, value)
        yield moto_s3


def engine_python() -> str:
    """The interpreter the engines' workers run: this one (its packages, its astream)."""
    import sys

    return os.environ.get("PYSPARK_PYTHON") or sys.executable
