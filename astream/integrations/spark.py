"""Writing a Spark DataFrame as one astream/MDS dataset: :func:`dataframe_to_mds`.

Each partition's task writes its rows under its own attempt prefix of ``out`` (a local folder
every executor sees, or any store URL astream writes to), and the driver writes the merged
``index.json`` last, naming only the attempts Spark committed: the protocol of
:mod:`astream.integrations.parts`. Rows reach the tasks as Arrow batches (``mapInArrow``).

Needs ``pip install 'astream[spark]'`` (pyspark 3.5 or later, and pyarrow).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from astream import errors
from astream.errors import AstreamError, MissingDependencyError
from astream.format import DatasetIndex
from astream.integrations.parts import (
    Out,
    PartResult,
    PartWriter,
    arrow_columns,
    arrow_rows,
    commit,
    prepare_out,
)

__all__ = ["dataframe_to_mds", "spark_columns"]

#: Transforms one partition: row dicts in, samples out (astream's ``udf=``).
PartitionFunction = Callable[[Iterator[dict[str, Any]]], Iterable[Mapping[str, Any]]]


def _require_spark() -> Any:
    try:
        import pyspark.sql
    except ImportError as exc:
        raise MissingDependencyError(
            "dataframe_to_mds needs pyspark: pip install 'astream[spark]'"
        ) from exc
    return pyspark.sql


def spark_columns(schema: Any, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """Column name -> MDS encoding for a Spark ``StructType``, then ``overrides``.

    ``ByteType``/``ShortType``/``IntegerType``/``LongType`` are ``int8``/``int16``/``int32``/
    ``int64``; ``FloatType``/``DoubleType`` ``float32``/``float64``; ``StringType`` ``str``;
    ``BinaryType`` ``bytes``; ``DecimalType`` ``str_decimal``; ``BooleanType`` ``json``;
    ``ArrayType`` of numbers ``ndarray:DTYPE``; structs and arrays of strings, numbers and
    booleans ``json``.

    :raises EncodingError: naming the column and its Spark type for a type no encoding holds
        (dates, timestamps, maps, intervals): cast it or name its encoding in ``overrides``.
    """
    import pyarrow as pa
    from pyspark.sql.pandas.types import to_arrow_type

    from astream.errors import EncodingError

    fields = []
    for field in schema.fields:
        if field.name in (overrides or {}):
            fields.append(pa.field(field.name, pa.null()))
            continue
        try:
            fields.append(pa.field(field.name, to_arrow_type(field.dataType)))
        except Exception as exc:  # pyspark's own "unsupported type" errors
            raise EncodingError(
                f"column {field.name!r}: Spark type {field.dataType.simpleString()} has no MDS "
                "encoding; cast it or name its encoding in columns="
            ) from exc
    try:
        return arrow_columns(pa.schema(fields), overrides)
    except EncodingError as exc:
        types = {field.name: field.dataType.simpleString() for field in schema.fields}
        name = next((n for n in types if f"column {n!r}" in str(exc)), None)
        if name is None:
            raise
        raise EncodingError(
            f"column {name!r}: Spark type {types[name]} has no MDS encoding; cast it (to a "
            "string, say) or name its encoding in columns="
        ) from exc


def _mosaic_form(
    out: Any, mds_kwargs: Mapping[str, Any] | None, merge_index: bool
) -> tuple[Out, bool, dict[str, Any]]:
    """``(out, merge_index, writer kwargs)`` from either call form."""
    kwargs = dict(mds_kwargs or {})
    if isinstance(out, bool):  # dataframe_to_mds(df, True, {...}): mosaicml-streaming's order
        merge_index, out = out, None
    if "out" in kwargs:
        if out is not None:
            raise TypeError("dataframe_to_mds: give out once, not also in mds_kwargs")
        out = kwargs.pop("out")
    if out is None:
        raise TypeError("dataframe_to_mds needs out (or mds_kwargs={'out': ...})")
    if isinstance(out, list):
        out = tuple(out)
    if not isinstance(out, str | os.PathLike | tuple):
        raise TypeError(
            f"dataframe_to_mds: out must be a path, URL or (local, remote), not {out!r}"
        )
    return out, merge_index, kwargs


def dataframe_to_mds(
    dataframe: Any,
    out: Out | bool | None = None,
    mds_kwargs: Mapping[str, Any] | None = None,
    udf_iterable: Callable[..., Iterable[Mapping[str, Any]]] | None = None,
    udf_kwargs: Mapping[str, Any] | None = None,
    *,
    merge_index: bool = True,
    columns: Mapping[str, str] | None = None,
    udf: PartitionFunction | None = None,
    exist_ok: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    **writer_kwargs: Any,
) -> DatasetIndex:
    """Write ``dataframe`` as one MDS dataset at ``out``; return its merged index.

    ::

        dataframe_to_mds(df, "s3://bucket/ds", compression="zstd", size_limit="64mb")
        # mosaicml-streaming's call form works too:
        dataframe_to_mds(df, merge_index=True, mds_kwargs={"out": "s3://bucket/ds"})

    The dataset's samples are the DataFrame's rows (or what ``udf`` makes of them), partition
    by partition in partition order. Each partition's task writes
    ``out/part-NNNNN-ATTEMPT/`` and the driver writes ``out/index.json`` last, naming only the
    attempts Spark committed; a retried or speculative attempt never adds or drops a sample,
    and a failed job leaves no ``index.json`` (see :mod:`astream.integrations.parts`).

    :param out: a store URL (``s3://``, ``gs://``, ...), a local folder that every executor
        sees (local mode, or a shared filesystem), or ``(local_dir, remote_url)``. Must be
        empty unless ``exist_ok``.
    :param columns: encodings by column name that replace the ones inferred from the schema
        (:func:`spark_columns`); with ``udf`` or ``udf_iterable``, every column to write.
    :param udf: transforms each partition: called once per partition with an iterator of row
        dicts, it returns the samples to write (any number). Runs on the executors.
    :param merge_index: write the merged ``index.json`` (else each committed part keeps its
        own ``index.json``, to join later with ``astream merge``).
    :param mds_kwargs: mosaicml-streaming's form: the writer's arguments, ``out`` and
        ``columns`` included (``columns`` then lists every column to write).
    :param udf_iterable: mosaicml-streaming's form: called as
        ``udf_iterable(pandas_dataframe, **udf_kwargs)`` for each batch of rows, it returns
        the samples to write. Needs pandas on the executors.
    :param exist_ok: write into an ``out`` that holds data (a local one is emptied first; on a
        store, the new index replaces the old one).
    :param storage_options: options for :func:`~astream.storage.open_store` (endpoint,
        credentials), used by the driver and every task.
    :param writer_kwargs: :class:`~astream.writers.MDSWriter`'s ``compression``, ``hashes``,
        ``size_limit``, ``keep_local``, ``max_workers``, ``retry``.
    :raises EncodingError: a column whose Spark type no encoding holds (before any task runs);
        a value that does not fit its column (from the job).
    :raises FileExistsError: ``out`` holds data and ``exist_ok`` is false.
    :raises MissingDependencyError: pyspark is not installed.
    """
    sql = _require_spark()
    if not isinstance(dataframe, sql.DataFrame):
        raise TypeError(
            f"dataframe_to_mds needs a pyspark DataFrame, not {type(dataframe).__name__}"
        )
    target, merge, kwargs = _mosaic_form(out, mds_kwargs, merge_index)
    if udf is not None and udf_iterable is not None:
        raise TypeError("dataframe_to_mds: pass udf or udf_iterable, not both")
    mosaic_columns = kwargs.pop("columns", None)
    exist_ok = bool(kwargs.pop("exist_ok", exist_ok))
    options = {**kwargs, **writer_kwargs}
    transformed = udf is not None or udf_iterable is not None
    if mosaic_columns is not None:
        if columns is not None:
            raise TypeError("dataframe_to_mds: give columns once, not also in mds_kwargs")
        chosen = dict(mosaic_columns)
        if not transformed:
            spark_columns(dataframe.schema, chosen)  # names every column the data lacks
    elif transformed:
        if not columns:
            raise TypeError("dataframe_to_mds with a udf needs columns= (the udf's samples)")
        chosen = dict(columns)
    else:
        chosen = spark_columns(dataframe.schema, columns)
    writer = PartWriter.checked(target, chosen, options, storage_options)
    prepare_out(target, exist_ok=exist_ok, storage_options=storage_options)
    results = _run(dataframe, writer, udf, udf_iterable, dict(udf_kwargs or {}))
    return commit(writer, results, merge=merge)


def _run(
    dataframe: Any,
    writer: PartWriter,
    udf: PartitionFunction | None,
    udf_iterable: Callable[..., Iterable[Mapping[str, Any]]] | None,
    udf_kwargs: dict[str, Any],
) -> list[PartResult]:
    from pyspark.sql.types import IntegerType, StringType, StructField, StructType

    def write_partition(batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa
        from pyspark import TaskContext

        context = TaskContext.get()
        if context is None:  # pragma: no cover - mapInArrow always runs in a task
            raise RuntimeError("dataframe_to_mds: no Spark task context")
        if udf_iterable is not None:
            samples: Iterable[Mapping[str, Any]] = (
                sample
                for batch in batches
                for sample in udf_iterable(batch.to_pandas(), **udf_kwargs)
            )
        else:
            rows = (row for batch in batches for row in arrow_rows(batch))
            samples = udf(rows) if udf is not None else rows
        # The task attempt id is unique within the application: a retried or speculative
        # attempt of this partition writes a prefix of its own.
        result = writer.write(context.partitionId(), context.taskAttemptId(), samples)
        yield pa.RecordBatch.from_pylist(
            [{"order": result.order, "prefix": result.prefix, "index": result.index}],
            schema=pa.schema(
                [("order", pa.int32()), ("prefix", pa.string()), ("index", pa.string())]
            ),
        )

    schema = StructType(
        [
            StructField("order", IntegerType(), False),
            StructField("prefix", StringType(), False),
            StructField("index", StringType(), False),
        ]
    )
    with warnings.catch_warnings():
        # pyspark 4 warns about pandas 3 when a DataFrame maps through Arrow; nothing here
        # hands pandas to Spark (udf_iterable converts batches itself).
        warnings.filterwarnings(
            "ignore", "PySpark does not yet fully support pandas", FutureWarning
        )
        try:
            rows = dataframe.mapInArrow(write_partition, schema).collect()
        except Exception as exc:
            translated = _astream_error(exc)
            if translated is None:
                raise
            raise translated from exc
    # collect() returns one row per partition: the committed attempt's.
    return [PartResult(row["order"], row["prefix"], row["index"]) for row in rows]


_TASK_ERROR = re.compile(r"^astream\.errors\.(\w+): (.+)$", re.MULTILINE)


def _astream_error(exc: Exception) -> AstreamError | None:
    """The astream error a task raised, out of the Spark error that reports it (its
    traceback's last astream line), so a bad value surfaces as an ``EncodingError``."""
    found = _TASK_ERROR.findall(str(exc))
    if not found:
        return None
    name, message = found[-1]
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, AstreamError)):
        return None
    error: AstreamError = cls(f"a Spark task failed: {message.strip()}")
    return error
