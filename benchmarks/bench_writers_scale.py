"""Rows per second writing one DataFrame as an MDS dataset, four ways, 2 cores each, same run.

The rows: ``ROWS`` (200,000; 40,000 with ``--quick``) of ``id`` (long), ``text`` (a str of about
20 characters), ``blob`` (16 bytes) and ``vec`` (8 float32s), built by Spark in 4 partitions and
cached. Each writer writes them as an uncompressed MDS dataset (64 MiB shards) into a local
folder, and is timed from its call until the dataset's ``index.json`` is written:

- astream's Spark writer: ``dataframe_to_mds(df, out)`` on ``local[2]``;
- astream's Ray writer: ``ds.write_datasink(MDSDatasink(out))`` on Ray with 2 CPUs, the same
  rows handed over as an Arrow table in 4 blocks (materialized before the clock starts);
- ``astream convert rows.parquet out --workers 2``: the same rows as one Parquet file (4 row
  groups), converted by the command in a new process (its start included);
- mosaicml-streaming's ``dataframe_to_mds(df, merge_index=True, mds_kwargs=...)`` on the same
  Spark session and DataFrame, with the same columns.

The engines are started before any clock runs (their start-up times are reported apart). Each
writer runs ``REPEATS`` times, alternating with the others; the best round counts. Every output
is checked to hold ``ROWS`` samples. ``convert`` infers ``vec`` (a Parquet list) as ``json``;
the others write it as ``ndarray:float32``. Writers whose package is missing are skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPEATS = 2
COLUMNS = {"id": "int64", "text": "str", "blob": "bytes", "vec": "ndarray:float32"}


def _samples(out: Path) -> int:
    index = json.loads((out / "index.json").read_bytes())
    return sum(shard["samples"] for shard in index["shards"])


def _spark(workdir: Path) -> Any:
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .appName("astream-bench")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.memory", "4g")
        .config("spark.local.dir", str(workdir / "spark-local"))
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    return session


def _dataframe(spark: Any, rows: int) -> Any:
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, FloatType

    row_id = F.col("id")
    df = spark.range(0, rows, 1, numPartitions=4).select(
        row_id.alias("id"),
        F.concat(F.lit("document number "), row_id.cast("string")).alias("text"),
        F.unhex(F.lpad(F.hex(row_id), 32, "0")).alias("blob"),
        # array<float> with nullable elements: the type mosaicml-streaming's converter knows.
        F.array(*[(row_id + k).cast("float") for k in range(8)])
        .cast(ArrayType(FloatType(), containsNull=True))
        .alias("vec"),
    )
    df = df.cache()
    df.count()
    return df


def run(workdir: Path, quick: bool) -> dict[str, Any]:
    rows = 40_000 if quick else 200_000
    notes: list[str] = []
    started = time.perf_counter()
    spark = _spark(workdir)
    df = _dataframe(spark, rows)
    notes.append(f"Spark local[2] start and DataFrame cache: {time.perf_counter() - started:.1f} s")
    table = df.toArrow()
    parquet = workdir / "rows.parquet"
    import pyarrow.parquet as pq

    pq.write_table(table, parquet, row_group_size=rows // 4)

    writers: dict[str, Callable[[Path], None]] = {}

    from astream.integrations.spark import dataframe_to_mds

    writers["astream Spark dataframe_to_mds"] = lambda out: dataframe_to_mds(df, str(out))

    try:
        import ray

        started = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.execution_options.preserve_order = True
        step = rows // 4
        dataset = ray.data.from_arrow([table.slice(k * step, step) for k in range(4)]).materialize()
        notes.append(f"Ray start (2 CPUs) and materialize: {time.perf_counter() - started:.1f} s")
        from astream.integrations.ray import MDSDatasink

        writers["astream Ray MDSDatasink"] = lambda out: dataset.write_datasink(
            MDSDatasink(str(out), columns={"vec": "ndarray:float32"})
        )
    except ImportError:
        notes.append("ray is not installed: its writer is skipped")

    def convert(out: Path) -> None:
        subprocess.run(
            [sys.executable, "-m", "astream", "convert", str(parquet), str(out), "--workers", "2"],
            check=True,
            capture_output=True,
        )

    writers["astream convert --workers 2 (Parquet)"] = convert

    try:
        from streaming.base.converters import dataframe_to_mds as reference_dataframe_to_mds

        writers["mosaicml-streaming dataframe_to_mds"] = lambda out: reference_dataframe_to_mds(
            df, merge_index=True, mds_kwargs={"out": str(out), "columns": dict(COLUMNS)}
        )
    except ImportError as exc:
        notes.append(f"mosaicml-streaming does not import ({exc}): its writer is skipped")

    best: dict[str, float] = {}
    for round_ in range(REPEATS):
        for name, write in writers.items():
            out = workdir / f"out-{round_}-{len(best)}-{abs(hash(name))}"
            began = time.perf_counter()
            write(out)
            seconds = time.perf_counter() - began
            if _samples(out) != rows:
                raise AssertionError(f"{name} wrote {_samples(out)} samples, not {rows}")
            best[name] = min(seconds, best.get(name, seconds))
            shutil.rmtree(out, ignore_errors=True)
    spark.stop()
    if "astream Ray MDSDatasink" in writers:
        import ray

        ray.shutdown()
    table_rows = [
        {"writer": name, "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds)}
        for name, seconds in best.items()
    ]
    rate = {name: rows / seconds for name, seconds in best.items()}
    ratios: dict[str, float] = {}
    convert_name = "astream convert --workers 2 (Parquet)"
    for name in ("astream Spark dataframe_to_mds", "astream Ray MDSDatasink"):
        if name in rate:
            ratios[f"{name} / convert --workers 2"] = rate[name] / rate[convert_name]
    if "mosaicml-streaming dataframe_to_mds" in rate:
        ratios["astream Spark / mosaicml-streaming dataframe_to_mds"] = (
            rate["astream Spark dataframe_to_mds"] / rate["mosaicml-streaming dataframe_to_mds"]
        )
    return {
        "title": f"Writing {rows:,} rows as MDS from one DataFrame, 2 cores (rows/s, best of {REPEATS})",
        "rows": table_rows,
        "ratios": ratios,
        "notes": notes,
    }
