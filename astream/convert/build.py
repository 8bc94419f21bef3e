"""Writing a :class:`~astream.convert.base.Source` as an astream dataset, locally or to a store.

With ``workers > 1`` the source's units are cut into contiguous runs, one per process; each
process writes its own dataset into ``out/part-NNNNN`` and :func:`~astream.format.merge_index`
joins them, so the sample order is the source's whatever the worker count. A dataset bound for
a remote store is uploaded as it is written by :mod:`astream.writers` (one process), or
written into a temporary folder and copied up (several), ``index.json`` last either way.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing.queues import SimpleQueue
from pathlib import Path
from typing import Any

from astream.convert.base import Source, coerce_text, infer_columns
from astream.convert.copy import copy_dataset
from astream.engine.loop import io_loop
from astream.errors import ConfigError, FormatError
from astream.format import INDEX_BASENAME, DatasetIndex, ShardWriter, load_index, merge_index
from astream.storage import open_store
from astream.storage.registry import url_scheme
from astream.writers import CSVWriter, JSONLWriter, MDSWriter, TSVWriter

__all__ = ["OUTPUT_FORMATS", "WriterOptions", "convert", "write_dataset"]

#: Dataset formats :func:`write_dataset` writes.
OUTPUT_FORMATS = ("mds", "jsonl", "csv", "tsv")

_WRITERS: dict[str, type[ShardWriter]] = {
    "mds": MDSWriter,
    "jsonl": JSONLWriter,
    "csv": CSVWriter,
    "tsv": TSVWriter,
}


@dataclass(frozen=True, kw_only=True)
class WriterOptions:
    """How the shards are written (as the writers' keyword arguments)."""

    #: ``"mds"``, ``"jsonl"``, ``"csv"`` or ``"tsv"``.
    format: str = "mds"
    #: A codec spelling (``"zstd"``, ``"zstd:7"``) or ``None`` for none.
    compression: str | None = None
    #: Hash algorithms recorded for every file.
    hashes: tuple[str, ...] = ()
    #: Bytes per shard before a new one starts (an int or ``"64mb"``).
    size_limit: int | str | None = 1 << 26

    def __post_init__(self) -> None:
        if self.format not in _WRITERS:
            raise ConfigError(f"unknown format {self.format!r}; use one of {OUTPUT_FORMATS}")

    def writer(self, out: Path | str, columns: Mapping[str, str]) -> ShardWriter:
        """A writer of this format into the empty folder (or store URL) ``out``."""
        cls: Any = _WRITERS[self.format]
        return cls(  # type: ignore[no-any-return]
            out=out,
            columns=dict(columns),
            compression=self.compression,
            hashes=sorted(set(self.hashes)),
            size_limit=self.size_limit,
        )


#: Progress callbacks: ``(samples, units)`` newly written.
_Report = Callable[[int, int], None]

#: Seconds between a worker's progress reports within one unit (a unit's end always reports).
_REPORT_INTERVAL = 0.2


def _write_units(
    source: Source,
    units: list[Any],
    out: Path | str,
    columns: Mapping[str, str],
    options: WriterOptions,
    report: _Report | None = None,
) -> DatasetIndex:
    with options.writer(out, columns) as writer:
        for unit in units:
            samples, last = 0, time.monotonic()
            for sample in source.read(unit):
                writer.write(coerce_text(sample, columns) if source.text_values else sample)
                samples += 1
                if report is not None and time.monotonic() - last > _REPORT_INTERVAL:
                    report(samples, 0)
                    samples, last = 0, time.monotonic()
            if report is not None:
                report(samples, 1)
    data = json.dumps({"shards": writer.shards, "version": 2})
    return load_index(data, source=str(out))


# In a writer process: where its progress goes (the parent's queue, set by the pool).
_reports: SimpleQueue[tuple[int, int]] | None = None


def _init_writer_process(reports: SimpleQueue[tuple[int, int]]) -> None:
    global _reports
    _reports = reports


def _write_part(
    source: Source,
    units: list[Any],
    out: Path,
    columns: Mapping[str, str],
    options: WriterOptions,
) -> DatasetIndex:
    queue = _reports
    report = None if queue is None else lambda samples, done: queue.put((samples, done))
    return _write_units(source, units, out, columns, options, report)


def _split(units: list[Any], parts: int) -> list[list[Any]]:
    size, extra = divmod(len(units), parts)
    runs: list[list[Any]] = []
    start = 0
    for part in range(parts):
        end = start + size + (1 if part < extra else 0)
        runs.append(units[start:end])
        start = end
    return runs


def write_dataset(
    source: Source,
    out: Path | str,
    *,
    columns: Mapping[str, str] | None = None,
    select: Sequence[str] | None = None,
    options: WriterOptions | None = None,
    workers: int = 1,
    on_samples: Callable[[int], None] | None = None,
    on_units: Callable[[int, int], None] | None = None,
) -> DatasetIndex:
    """Write every sample of ``source`` as a dataset in the local folder ``out``.

    :param out: a folder that does not exist or is empty; with ``workers=1`` also a store URL
        (uploaded while written, as :mod:`astream.writers` does).
    :param columns: encodings that replace the inferred ones (see
        :func:`~astream.convert.base.infer_columns`).
    :param select: keep only these fields of the source's samples (default: all).
    :param options: format, compression, hashes and shard size.
    :param workers: processes writing at once (each writes ``out/part-NNNNN``).
    :param on_samples: called with counts of samples written (for progress), from every
        worker as it goes.
    :param on_units: called with ``(done, total)`` counts of the source's units (files, byte
        ranges, row groups): once with ``(0, total)`` before writing, then as units finish.
    :raises FileExistsError: when ``out`` is not empty.
    :raises FormatError: when the source holds no sample.
    :raises EncodingError: naming the column when a value does not fit its encoding.
    """
    options = options or WriterOptions()
    remote = isinstance(out, str) and url_scheme(out) != "file"
    if not remote:
        out = _local_path(str(out))
    if isinstance(out, Path) and out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty (pass --overwrite to replace it)")
    peek = source.peek()
    if select is not None:
        # The writers store only their columns: narrowing the inference narrows the dataset.
        peek = [{name: sample[name] for name in select if name in sample} for sample in peek]
    if not peek:
        raise FormatError(f"{source!r} holds no samples")
    inferred = infer_columns(
        peek, options.format, text_values=source.text_values, overrides=columns
    )
    units = source.units()
    done = 0

    def report(samples: int, finished: int) -> None:
        nonlocal done
        done += finished
        if on_samples is not None and samples:
            on_samples(samples)
        if on_units is not None and finished:
            on_units(done, len(units))

    if on_units is not None:
        on_units(0, len(units))
    parts = max(1, min(workers, len(units)))
    if parts == 1:
        return _write_units(source, units, out, inferred, options, report)
    if not isinstance(out, Path):
        raise ConfigError(f"write_dataset with workers writes a local folder, not {out}")
    out.mkdir(parents=True, exist_ok=True)
    # spawn: the parent may run the IO loop thread, which a forked child must not inherit.
    context = multiprocessing.get_context("spawn")
    # Workers report progress here as they write; its put() is synchronous, so every report
    # of a part is in the pipe before the part's result is.
    reports: SimpleQueue[tuple[int, int]] = context.SimpleQueue()

    def drain() -> None:
        while not reports.empty():
            report(*reports.get())

    with ProcessPoolExecutor(
        parts, mp_context=context, initializer=_init_writer_process, initargs=(reports,)
    ) as pool:
        pending = {
            pool.submit(_write_part, source, run, out / f"part-{k:05}", inferred, options)
            for k, run in enumerate(_split(units, parts))
        }
        try:
            while pending:
                finished, pending = wait(pending, _REPORT_INTERVAL, FIRST_COMPLETED)
                drain()
                for future in finished:
                    future.result()
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    drain()
    reports.close()
    merge_index(out)
    path = out / INDEX_BASENAME
    return load_index(path.read_bytes(), source=str(path))


def _local_path(url: str) -> Path:
    if url.startswith("file://"):
        return Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path))
    return Path(url).expanduser()


async def _has_index(url: str) -> bool:
    store = open_store(url)
    try:
        return await store.exists(INDEX_BASENAME)
    finally:
        await store.aclose()


def convert(
    source: Source,
    dst: str,
    *,
    columns: Mapping[str, str] | None = None,
    select: Sequence[str] | None = None,
    options: WriterOptions | None = None,
    workers: int = 1,
    overwrite: bool = False,
    on_samples: Callable[[int], None] | None = None,
    on_units: Callable[[int, int], None] | None = None,
    on_bytes: Callable[[int], None] | None = None,
    on_upload_total: Callable[[int], None] | None = None,
) -> DatasetIndex:
    """Write ``source`` as a dataset at ``dst``: a local folder or any store URL.

    A remote dataset is uploaded while it is written (one worker), or written into a
    temporary folder and copied up with :func:`~astream.convert.copy.copy_dataset`
    (several); ``index.json`` goes last either way.

    :param overwrite: replace what is at ``dst`` (a local folder's contents; a remote index).
    :param on_bytes: called with each uploaded file's size (remote ``dst`` with workers).
    :param on_upload_total: called once with the bytes to upload, before that upload starts
        (remote ``dst`` with workers).
    :raises FileExistsError: when ``dst`` holds data and ``overwrite`` is false.

    The other parameters are :func:`write_dataset`'s.
    """
    kwargs: dict[str, Any] = {
        "columns": columns,
        "select": select,
        "options": options,
        "workers": workers,
        "on_samples": on_samples,
        "on_units": on_units,
    }
    if url_scheme(dst) == "file":
        out = _local_path(dst)
        if overwrite and out.exists():
            shutil.rmtree(out)
        return write_dataset(source, out, **kwargs)
    if not overwrite and io_loop().run(_has_index(dst)):
        raise FileExistsError(f"a dataset exists at {dst} (pass --overwrite to replace it)")
    if workers <= 1:
        return write_dataset(source, dst, **kwargs)
    with tempfile.TemporaryDirectory(prefix="astream-convert-") as scratch:
        local = Path(scratch) / "dataset"
        index = write_dataset(source, local, **kwargs)
        copy_dataset(str(local), dst, overwrite=True, on_bytes=on_bytes, on_total=on_upload_total)
    return index
