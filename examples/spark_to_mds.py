"""Write a Spark DataFrame as one astream dataset, then stream it back.

Runs Spark in local mode (2 cores) on a small DataFrame it builds; point ``--out`` at a store
URL (``s3://bucket/prefix``) and ``--master`` at a cluster to run the same code at scale (see
docs/scale.md). Each partition's task writes its own part under ``out``; the driver writes the
merged ``index.json`` last.

    python examples/spark_to_mds.py [--rows 2000] [--out DIR_OR_URL] [--master local[2]]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from astream import StreamingDataset
from astream.integrations.spark import dataframe_to_mds


def add_length(rows: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """A per-partition transform: runs on the executors, one call per partition."""
    for row in rows:
        yield {**row, "length": len(row["text"])}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--out", help="a store URL or folder (default: a temporary folder)")
    parser.add_argument("--master", default="local[2]")
    args = parser.parse_args()
    # Local mode: the Python workers run this interpreter.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = (
        SparkSession.builder.master(args.master)
        .appName("astream-spark-example")
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or os.path.join(tmp, "dataset")
        df = spark.range(0, args.rows, 1, numPartitions=4).select(
            F.col("id"),
            F.concat(F.lit("document "), F.col("id").cast("string")).alias("text"),
            F.array(F.col("id").cast("float"), F.lit(1.0).cast("float")).alias("features"),
        )
        index = dataframe_to_mds(
            df,
            out,
            udf=add_length,
            # With a udf, name every column it yields (without one they come from the schema).
            columns={"id": "int64", "text": "str", "features": "ndarray:float32", "length": "int"},
            compression="zstd",
            size_limit="64kb",
        )
        spark.stop()
        print(f"{len(index.shards)} shards, {index.samples} samples at {out}")
        dataset = StreamingDataset(remote=out, local=os.path.join(tmp, "cache"))
        seen = 0
        for i, sample in enumerate(dataset):
            assert int(sample["id"]) == i and sample["length"] == len(sample["text"])
            seen += 1
        assert seen == args.rows
        print(f"spark wrote and streamed {seen} samples")


if __name__ == "__main__":
    main()
