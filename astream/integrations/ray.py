"""Ray Data and astream datasets: :class:`MDSDatasink` writes one, :func:`read_mds` reads one.

``ds.write_datasink(MDSDatasink(out))`` writes a ``ray.data.Dataset`` as one astream/MDS
dataset: each write task writes its blocks under its own attempt prefix of ``out`` and the
driver writes the merged ``index.json`` last, naming only the tasks' successful attempts (the
protocol of :mod:`astream.integrations.parts`). :func:`read_mds` gives a ``ray.data.Dataset``
over an astream/MDS dataset in any store: one read task per group of consecutive shards, each
fetching only its own shards (with parallel range requests), for offline batch inference.

Needs ``pip install 'astream[ray]'`` (Ray Data, and pyarrow).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from astream.engine.loop import io_loop
from astream.errors import ConfigError, MissingDependencyError
from astream.format import DatasetIndex, ShardInfo, decompress_file, load_index, open_shard
from astream.integrations.parts import (
    Out,
    PartResult,
    PartWriter,
    arrow_columns,
    commit,
    prepare_out,
    random_attempt,
)
from astream.storage import open_store

try:
    from ray.data import Datasink, Datasource
    from ray.data.block import BlockAccessor, BlockMetadata
    from ray.data.datasource import ReadTask
except ImportError as exc:  # pragma: no cover - exercised without ray installed
    raise MissingDependencyError(
        "astream.integrations.ray needs Ray Data: pip install 'astream[ray]'"
    ) from exc

__all__ = ["MDSDatasink", "MDSDatasource", "read_mds"]


class MDSDatasink(Datasink[PartResult]):
    """Write a ``ray.data.Dataset`` as one astream/MDS dataset at ``out``.

    ::

        sink = MDSDatasink("s3://bucket/ds", compression="zstd")
        ray.data.read_parquet(...).map_batches(tokenize).write_datasink(sink)
        sink.index.samples  # the merged index, once written

    The columns come from the dataset's Arrow schema
    (:func:`~astream.integrations.parts.arrow_encoding`; Ray's tensor columns become
    ``ndarray:DTYPE:SHAPE``), with ``columns`` replacing any of them. Samples are in write-task
    order (the dataset's order when ``DataContext.execution_options.preserve_order`` is set).
    A write task that fails and is retried writes a new prefix; only the attempts whose results
    reach the driver are named by the index, and a failed write leaves no ``index.json``.

    :param out: a store URL, a local folder every worker sees, or ``(local_dir, remote_url)``;
        empty unless ``exist_ok``.
    :param columns: encodings by column name replacing the inferred ones.
    :param merge_index: write the merged ``index.json`` (else each part keeps its own).
    :param exist_ok: write into an ``out`` that holds data.
    :param storage_options: options for :func:`~astream.storage.open_store`, used by the driver
        and every task.
    :param min_rows_per_write: rows Ray gathers for each write task (each task writes one part:
        fewer, larger parts); default: Ray's choice, about one block per task.
    :param writer_kwargs: :class:`~astream.writers.MDSWriter`'s ``compression``, ``hashes``,
        ``size_limit``, ``keep_local``, ``max_workers``, ``retry``.
    """

    def __init__(
        self,
        out: Out,
        *,
        columns: Mapping[str, str] | None = None,
        merge_index: bool = True,
        exist_ok: bool = False,
        storage_options: Mapping[str, Any] | None = None,
        min_rows_per_write: int | None = None,
        **writer_kwargs: Any,
    ) -> None:
        if min_rows_per_write is not None and min_rows_per_write < 1:
            raise ConfigError(f"min_rows_per_write must be >= 1, got {min_rows_per_write}")
        self._min_rows_per_write = min_rows_per_write
        self.out = out
        self.columns = dict(columns or {})
        self.merge_index = merge_index
        self.exist_ok = exist_ok
        self.storage_options = dict(storage_options or {})
        self.writer_kwargs = writer_kwargs
        self._writer: PartWriter | None = None
        #: The merged index, once the write has completed.
        self.index: DatasetIndex | None = None

    def on_write_start(self, schema: Any = None) -> None:
        """Check the options and ``out`` (on the driver, before any write task)."""
        # The schema handed here can be the one before a fused map_batches: the columns are
        # fixed by each task from its first block's schema (every task derives the same ones
        # from the same schema; commit refuses parts that disagree).
        self._writer = PartWriter.checked(
            self.out, self.columns, self.writer_kwargs, self.storage_options
        )
        prepare_out(self.out, exist_ok=self.exist_ok, storage_options=self.storage_options)

    def write(self, blocks: Iterable[Any], ctx: Any) -> PartResult:
        """Write this task's blocks as its part (on a worker)."""
        if self._writer is None:
            raise RuntimeError("MDSDatasink.write before on_write_start")
        accessors = (BlockAccessor.for_block(block) for block in blocks)
        first = next(accessors, None)
        writer = self._writer
        if first is not None:
            columns = arrow_columns(first.to_arrow().schema, self.columns)
            writer = dataclasses.replace(writer, columns=columns)

        def rows() -> Iterator[Mapping[str, Any]]:
            for accessor in itertools.chain([first] if first is not None else [], accessors):
                yield from accessor.iter_rows(public_row_format=True)

        # task_idx places the part; the token makes each attempt's prefix its own.
        return writer.write(ctx.task_idx, random_attempt(), rows())

    def on_write_complete(self, write_result: Any) -> None:
        """Write the merged index of the tasks' committed parts (on the driver)."""
        if self._writer is None:
            raise RuntimeError("MDSDatasink.on_write_complete before on_write_start")
        results = [result for result in write_result.write_returns if result is not None]
        self.index = commit(self._writer, results, merge=self.merge_index)

    @property
    def min_rows_per_write(self) -> int | None:
        return self._min_rows_per_write

    def get_name(self) -> str:
        return "WriteMDS"


def _read_shards(
    url: str, options: Mapping[str, Any], index_json: str, first: int, last: int
) -> Iterator[Any]:
    """Yield one block per shard ``first..last-1`` of the dataset at ``url`` (on a worker)."""
    from ray.data._internal.delegating_block_builder import DelegatingBlockBuilder

    shards = load_index(index_json, source=url).shards[first:last]
    with tempfile.TemporaryDirectory(prefix="astream-ray-read-") as scratch:
        for shard in shards:
            folder = Path(scratch) / "shard"
            io_loop().run(_fetch(url, options, shard, folder))
            builder = DelegatingBlockBuilder()  # type: ignore[no-untyped-call]
            with open_shard(shard, folder) as reader:
                for i in range(len(reader)):
                    builder.add(reader[i])
            for path in sorted(folder.rglob("*"), reverse=True):
                path.unlink() if path.is_file() else path.rmdir()
            yield builder.build()


async def _fetch(url: str, options: Mapping[str, Any], shard: ShardInfo, folder: Path) -> None:
    """Download one shard's stored files into ``folder`` (parallel ranges) and decompress them."""
    store = open_store(url, **dict(options))
    try:
        pairs = [(shard.zip, shard.raw), (shard.zip_meta, shard.raw_meta)]
        for packed, raw in pairs:
            if raw is None:
                continue
            stored = packed if shard.compression and packed is not None else raw
            target = folder / stored.basename
            target.parent.mkdir(parents=True, exist_ok=True)
            await store.download(stored.basename, target, size=stored.bytes)
            if stored is not raw:
                assert shard.compression is not None
                decompress_file(shard.compression, target, folder / raw.basename)
                target.unlink()
    finally:
        await store.aclose()


class MDSDatasource(Datasource):
    """A Ray datasource over the astream/MDS dataset at ``url`` (see :func:`read_mds`)."""

    def __init__(
        self,
        url: str | os.PathLike[str],
        *,
        shards_per_task: int | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        if shards_per_task is not None and shards_per_task < 1:
            raise ConfigError(f"shards_per_task must be >= 1, got {shards_per_task}")
        self.url = os.fspath(url)
        self.shards_per_task = shards_per_task
        self.storage_options = dict(storage_options or {})
        data = io_loop().run(self._read_index())
        self.index_json = data.decode("utf-8")
        self.index = load_index(data, source=f"{self.url}/index.json")

    async def _read_index(self) -> bytes:
        from astream.convert.copy import read_index

        store = open_store(self.url, **self.storage_options)
        try:
            data, _index = await read_index(store)
            return data
        finally:
            await store.aclose()

    def estimate_inmemory_data_size(self) -> int | None:
        return sum(shard.raw.bytes for shard in self.index.shards)

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
    ) -> list[Any]:
        shards = self.index.shards
        if not shards:
            return []
        per_task = self.shards_per_task or -(-len(shards) // max(1, min(parallelism, len(shards))))
        tasks = []
        for first in range(0, len(shards), per_task):
            last = min(first + per_task, len(shards))
            group = shards[first:last]
            metadata = BlockMetadata(
                num_rows=sum(shard.samples for shard in group),
                size_bytes=sum(shard.raw.bytes for shard in group),
                input_files=None,
                exec_stats=None,
            )
            args = (self.url, self.storage_options, self.index_json, first, last)
            tasks.append(
                ReadTask(
                    functools.partial(_read_shards, *args),
                    metadata,
                    per_task_row_limit=per_task_row_limit,
                )
            )
        return tasks

    def get_name(self) -> str:
        return "ReadMDS"


def read_mds(
    url: str | os.PathLike[str],
    *,
    shards_per_task: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
    override_num_blocks: int | None = None,
    **read_args: Any,
) -> Any:
    """A ``ray.data.Dataset`` over the astream/MDS dataset at ``url`` (any store, or a folder).

    The index is read once, here; each read task then fetches only its own group of
    consecutive shards (parallel range requests through astream's stores, into a temporary
    folder removed as it goes) and yields one block per shard, in index order. Nothing reads
    the whole dataset in one place.

    :param shards_per_task: shards per read task (default: spread over Ray's parallelism).
    :param storage_options: options for :func:`~astream.storage.open_store`.
    :param override_num_blocks: as for Ray's own readers: the number of read tasks to aim for.
    :param read_args: passed to ``ray.data.read_datasource`` (``ray_remote_args``, ...).
    :raises ObjectNotFoundError: no dataset at ``url``.
    """
    import ray.data

    source = MDSDatasource(url, shards_per_task=shards_per_task, storage_options=storage_options)
    return ray.data.read_datasource(source, override_num_blocks=override_num_blocks, **read_args)
