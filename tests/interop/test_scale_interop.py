"""mosaicml-streaming reads the datasets astream's Spark and Ray writers produce.

What Spark's ``dataframe_to_mds`` and Ray's ``MDSDatasink`` write (parts under per-attempt
prefixes, a merged ``index.json`` naming them) is read with the reference's ``StreamingDataset``
(hash checks, its own zstd) and compared row by row; and the merged index of the protocol reads
the same in the reference when written without an engine. Skipped when pyspark / Ray are not
installed in the interop environment.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = [pytest.mark.interop, pytest.mark.usefixtures("reference_tempdir")]

streaming = pytest.importorskip("streaming")

from streaming.base.dataset import StreamingDataset as RefStreamingDataset  # noqa: E402

from astream.integrations.parts import PartWriter, commit  # noqa: E402

COLUMNS = {"id": "int64", "text": "str", "blob": "bytes", "vec": "ndarray:float32"}


def expected(row_id: int) -> dict[str, Any]:
    return {
        "id": row_id,
        "text": f"row {row_id}",
        "blob": f"b{row_id}".encode(),
        "vec": np.array([row_id, row_id * 0.5], dtype=np.float32),
    }


def read_reference(root: Path) -> list[dict[str, Any]]:
    dataset = RefStreamingDataset(
        local=str(root), remote=None, shuffle=False, batch_size=1, validate_hash="xxh64"
    )
    return [dataset[i] for i in range(len(dataset))]


def check(samples: list[dict[str, Any]], count: int) -> None:
    assert len(samples) == count
    for row_id, sample in enumerate(samples):
        want = expected(row_id)
        assert int(sample["id"]) == row_id
        assert sample["text"] == want["text"] and sample["blob"] == want["blob"]
        np.testing.assert_array_equal(sample["vec"], want["vec"])


@pytest.mark.usefixtures("allow_reference_file_leaks")
def test_parts_and_merged_index_read_in_reference(tmp_path: Path) -> None:
    # The protocol without an engine: three attempts, one of which is never committed.
    out = tmp_path / "ds"
    writer = PartWriter.checked(
        str(out), COLUMNS, {"compression": "zstd", "hashes": ["xxh64"]}, None
    )
    results = [
        writer.write(part, 7 + part, (expected(i) for i in range(part * 100, part * 100 + 100)))
        for part in range(3)
    ]
    writer.write(1, 99, (expected(i) for i in range(50)))  # a lost attempt: never committed
    commit(writer, results, merge=True)
    check(read_reference(out), 300)


@pytest.mark.usefixtures("allow_reference_file_leaks")
def test_spark_output_reads_in_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pyspark", reason="pyspark is not installed")
    if shutil.which("java") is None:
        pytest.skip("pyspark needs Java")
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    from astream.integrations.spark import dataframe_to_mds

    monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)
    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1")
        .getOrCreate()
    )
    try:
        row_id = F.col("id")
        df = spark.range(0, 3000, 1, numPartitions=3).select(
            row_id.alias("id"),
            F.concat(F.lit("row "), row_id.cast("string")).alias("text"),
            F.encode(F.concat(F.lit("b"), row_id.cast("string")), "UTF-8").alias("blob"),
            F.array(row_id.cast("float"), (row_id * 0.5).cast("float")).alias("vec"),
        )
        out = tmp_path / "spark"
        dataframe_to_mds(df, str(out), compression="zstd", hashes=["xxh64"], size_limit="16kb")
    finally:
        spark.stop()
    check(read_reference(out), 3000)


@pytest.fixture
def ray_local() -> Iterator[Any]:
    ray = pytest.importorskip("ray", reason="Ray is not installed")
    cloudpickle = pytest.importorskip("ray.cloudpickle")
    # The workers cannot import this test module by its name: its functions travel by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    # Ray's sockets live under its temp dir (the session's TMPDIR here is deep), and AF_UNIX
    # paths end at 107 bytes: a short one.
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    ray.init(_temp_dir=temp, num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.usefixtures("allow_reference_file_leaks")
@pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")
def test_ray_output_reads_in_reference(ray_local: Any, tmp_path: Path) -> None:
    from astream.integrations.ray import MDSDatasink

    def make(batch: dict[str, np.ndarray]) -> dict[str, Any]:
        ids = batch["id"]
        rows = [expected(int(i)) for i in ids]
        return {
            "id": ids.astype(np.int64),
            "text": np.array([r["text"] for r in rows], dtype=object),
            "blob": np.array([r["blob"] for r in rows], dtype=object),
            "vec": np.stack([r["vec"] for r in rows]),
        }

    ray_local.data.DataContext.get_current().execution_options.preserve_order = True
    out = tmp_path / "ray"
    sink = MDSDatasink(
        str(out), compression="zstd", hashes=["xxh64"], columns={"vec": "ndarray:float32"}
    )
    ray_local.data.range(2000, override_num_blocks=2).map_batches(make).write_datasink(sink)
    check(read_reference(out), 2000)
