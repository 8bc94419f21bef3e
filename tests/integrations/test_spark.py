"""dataframe_to_mds on a real Spark (pyspark, ``local[2,4]``: 2 cores, 4 tries per task).

One SparkSession serves the module. The DataFrames are built with Spark's own functions (no
Python UDF), so every row's expected sample is known here; what is written is read back with
StreamingDataset (local folder, and S3 on moto) and checked sample by sample.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pyspark", reason="pyspark is not installed (pip install 'astream[spark]')")
if shutil.which("java") is None:
    pytest.skip("pyspark needs Java (java is not on PATH)", allow_module_level=True)

from pyspark import TaskContext, cloudpickle
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from astream.errors import EncodingError
from astream.format import load_index
from astream.integrations.spark import dataframe_to_mds, spark_columns
from tests.integrations.conftest import PNGS, ROWS, assert_samples, expected, stream
from tests.servers.moto_s3 import MotoS3

pytestmark = [pytest.mark.engines, pytest.mark.timeout(300)]  # run by nox -s engines

# The workers cannot import this test module by its name: its functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def spark() -> Iterator[SparkSession]:
    with pytest.MonkeyPatch.context() as patch:
        # The Python workers run this interpreter, with this tree's astream on their path.
        patch.setenv("PYSPARK_PYTHON", sys.executable)
        patch.setenv("PYSPARK_DRIVER_PYTHON", sys.executable)
        session = (
            SparkSession.builder.master("local[2,4]")  # a failed task is tried up to 4 times
            .appName("astream-tests")
            .config("spark.ui.enabled", "false")
            .config("spark.driver.host", "127.0.0.1")
            .config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.sql.shuffle.partitions", "4")
            .config("spark.sql.execution.arrow.maxRecordsPerBatch", "4096")
            .getOrCreate()
        )
        session.sparkContext.setLogLevel("ERROR")
        try:
            yield session
        finally:
            session.stop()


def rows(spark: SparkSession, count: int = ROWS, partitions: int = 4) -> DataFrame:
    """The DataFrame whose row ``i`` is :func:`expected`\\ (i)."""
    row_id = F.col("id")
    images = F.array(*[F.lit(bytearray(image)) for image in PNGS])
    return spark.range(0, count, 1, numPartitions=partitions).select(
        row_id.alias("id"),
        F.concat(F.lit("row "), row_id.cast("string")).alias("text"),
        F.encode(F.concat(F.lit("b"), row_id.cast("string")), "UTF-8").alias("blob"),
        F.array(row_id.cast("float"), (row_id * 0.5).cast("float")).alias("vec"),
        F.element_at(images, (row_id % len(PNGS) + 1).cast("int")).alias("image"),
    )


def index_of(root: Path) -> dict[str, Any]:
    return json.loads((root / "index.json").read_bytes())


def part_prefixes(index: dict[str, Any]) -> list[str]:
    return list(dict.fromkeys(s["raw_data"]["basename"].split("/")[0] for s in index["shards"]))


def test_columns_come_from_the_schema(spark: SparkSession) -> None:
    columns = spark_columns(rows(spark, 10).schema)
    assert columns == {
        "id": "int64",
        "text": "str",
        "blob": "bytes",
        "vec": "ndarray:float32",
        "image": "bytes",
    }
    assert spark_columns(rows(spark, 10).schema, {"vec": "ndarray:float32:2"})["vec"] == (
        "ndarray:float32:2"
    )


def test_writes_a_local_folder(spark: SparkSession, tmp_path: Path) -> None:
    count = 20_000  # the full ROWS go to S3 below: the default session stays short
    out = tmp_path / "ds"
    index = dataframe_to_mds(rows(spark, count), str(out), size_limit="256kb")
    assert index.samples == count
    # One committed attempt per partition, in partition order; nothing else left in out.
    prefixes = part_prefixes(index_of(out))
    assert [p.split("-")[1] for p in prefixes] == ["00000", "00001", "00002", "00003"]
    assert sorted(p.name for p in out.iterdir()) == sorted([*prefixes, "index.json"])
    assert_samples(stream(str(out), tmp_path / "cache"), range(count))


def test_writes_to_s3(spark: SparkSession, s3_env: MotoS3, tmp_path: Path) -> None:
    url = f"s3://{s3_env.create_bucket()}/ds"
    index = dataframe_to_mds(
        rows(spark),
        url,
        compression="zstd",
        hashes=["xxh64"],
        storage_options=s3_env.store_options(),
    )
    assert index.samples == ROWS
    assert_samples(stream(url, tmp_path / "cache"), range(ROWS))


def fail_first_attempt(rows: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Partition 1's first attempt dies mid-write, after some of its shards are written."""
    context = TaskContext.get()
    assert context is not None
    for i, row in enumerate(rows):
        if context.partitionId() == 1 and context.attemptNumber() == 0 and i == 2000:
            raise RuntimeError("injected failure of a first attempt")
        yield row


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_task_that_dies_mid_write_is_retried_exactly(
    where: str, spark: SparkSession, s3_env: MotoS3, tmp_path: Path
) -> None:
    count = 10_000
    df = rows(spark, count)
    out = str(tmp_path / "ds") if where == "local" else f"s3://{s3_env.create_bucket()}/retried"
    index = dataframe_to_mds(
        df,
        out,
        udf=fail_first_attempt,
        columns=spark_columns(df.schema),
        # About 13 shards before the failure, at most 8 uploads in flight: some are on S3.
        size_limit="16kb",
        storage_options=s3_env.store_options() if where == "s3" else None,
    )
    assert index.samples == count
    assert_samples(stream(out, tmp_path / "cache"), range(count))
    if where == "local":
        # The failed attempt's shards were removed; only the committed attempts remain.
        names = sorted(p.name for p in (tmp_path / "ds").iterdir())
        assert len(names) == 5, names
    else:
        # The failed attempt's shards stay on the store, but no index names them.
        from astream.engine.loop import io_loop
        from astream.storage import open_store

        async def keys() -> list[str]:
            store = open_store(out)
            try:
                return await store.list()
            finally:
                await store.aclose()

        committed = {shard.raw.basename.split("/")[0] for shard in index.shards}
        assert len(committed) == 4
        left = {key.split("/")[0] for key in io_loop().run(keys())} - committed - {"index.json"}
        assert len(left) == 1 and left.pop().startswith("part-00001-")


def test_a_failed_job_leaves_no_index_and_names_the_column(
    spark: SparkSession, tmp_path: Path
) -> None:
    # A value that does not fit its column fails every try of its task (Spark tries 4 times:
    # one small partition), and so the job.
    df = rows(spark, 200, partitions=1).withColumn(
        "id", F.when(F.col("id") == 142, F.lit(None)).otherwise(F.col("id"))
    )
    with pytest.raises(EncodingError, match=r"Spark task failed: .*'id'"):
        dataframe_to_mds(df, str(tmp_path), size_limit="1kb")
    assert not (tmp_path / "index.json").exists()
    assert list(tmp_path.iterdir())  # the attempts had written shards before they failed


def test_mosaicml_call_form(spark: SparkSession, tmp_path: Path) -> None:
    def add_one(pdf: Any, amount: int) -> Iterator[dict[str, Any]]:
        for record in pdf.to_dict("records"):
            yield {"id": int(record["id"]) + amount, "text": record["text"]}

    out = tmp_path / "ds"
    index = dataframe_to_mds(
        rows(spark, 1000),
        True,
        {"out": str(out), "columns": {"id": "int64", "text": "str"}, "keep_local": True},
        add_one,
        {"amount": 1},
    )
    assert index.samples == 1000
    samples = stream(str(out), tmp_path / "cache")
    assert [int(s["id"]) for s in samples] == list(range(1, 1001))
    assert [s["text"] for s in samples] == [expected(i)["text"] for i in range(1000)]


def test_without_merge_the_parts_keep_their_indexes(spark: SparkSession, tmp_path: Path) -> None:
    from astream.cli import main

    out = tmp_path / "ds"
    dataframe_to_mds(rows(spark, 1000), merge_index=False, mds_kwargs={"out": str(out)})
    assert not (out / "index.json").exists()
    parts = sorted(out.iterdir())
    assert len(parts) == 4
    assert all(load_index((p / "index.json").read_bytes(), source=str(p)).samples for p in parts)
    assert main(["merge", str(out)]) == 0
    assert_samples(stream(str(out), tmp_path / "cache"), range(1000))


def test_bad_input_fails_before_any_task(spark: SparkSession, tmp_path: Path) -> None:
    dated = rows(spark, 10).withColumn("day", F.current_date())
    with pytest.raises(EncodingError, match=r"'day'.*date"):
        dataframe_to_mds(dated, str(tmp_path / "a"))
    with pytest.raises(EncodingError, match="nope"):
        dataframe_to_mds(rows(spark, 10), str(tmp_path / "a"), columns={"nope": "int"})
    with pytest.raises(TypeError, match="colour"):
        dataframe_to_mds(rows(spark, 10), str(tmp_path / "a"), colour="red")
    with pytest.raises(ValueError, match="compression"):
        dataframe_to_mds(rows(spark, 10), str(tmp_path / "a"), compression="nope")
    with pytest.raises(TypeError, match="columns="):
        dataframe_to_mds(rows(spark, 10), str(tmp_path / "a"), udf=fail_first_attempt)
    assert not (tmp_path / "a").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(FileExistsError, match="exist_ok"):
        dataframe_to_mds(rows(spark, 10), str(tmp_path / "full"))
