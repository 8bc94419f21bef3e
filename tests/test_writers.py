"""Uploading writers (:mod:`astream.writers`) against moto's S3 server and a wrapped local store.

What the remote ends up holding is compared byte for byte with what the local format writer
writes for the same samples and arguments. Ordering, failures and backpressure are observed
through :class:`ProbeStore`, a real store (registered for ``probe://``) that wraps another one
and records, holds or fails uploads.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from astream import writers
from astream.engine.loop import io_loop
from astream.errors import StorageError
from astream.format import (
    decompress_file,
    load_index,
    open_shard,
)
from astream.format import writer as format_writers
from astream.storage import RetryConfig, Store, TransferConfig, open_store, register_store
from tests.servers.moto_s3 import MotoS3
from tests.storage import conftest as storage_fixtures

moto_s3 = storage_fixtures.moto_s3

TEXT_COLUMNS = {"id": "int", "text": "str", "score": "float"}

# writer name -> (extra keyword arguments, sample builder)
WRITERS: dict[str, dict[str, Any]] = {
    "MDSWriter": {"columns": {"id": "int", "text": "str", "x": "ndarray:float32:3"}},
    "JSONLWriter": {"columns": TEXT_COLUMNS},
    "JSONWriter": {"columns": TEXT_COLUMNS},
    "CSVWriter": {"columns": TEXT_COLUMNS},
    "TSVWriter": {"columns": TEXT_COLUMNS},
    "XSVWriter": {"columns": TEXT_COLUMNS, "separator": "|"},
}


def make_samples(name: str, count: int = 40) -> list[dict[str, Any]]:
    if name == "MDSWriter":
        return [
            {"id": i, "text": f"sample {i} " * (i % 4), "x": np.arange(3, dtype=np.float32) * i}
            for i in range(count)
        ]
    return [{"id": i, "text": f"sample {i}", "score": i / 8} for i in range(count)]


def write_all(writer: format_writers.ShardWriter, samples: list[dict[str, Any]]) -> None:
    with writer:
        for sample in samples:
            writer.write(sample)


def local_files(root: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(root.iterdir())}


def reference_files(
    tmp_path: Path, name: str, samples: list[dict[str, Any]], **kwargs: Any
) -> dict[str, bytes]:
    """What the local format writer writes for the same samples and arguments."""
    root = tmp_path / "reference"
    cls = getattr(format_writers, f"Local{name}")
    write_all(cls(out=root, **WRITERS[name], **kwargs), samples)
    return local_files(root)


def remote_files(url: str, **options: Any) -> dict[str, bytes]:
    async def fetch() -> dict[str, bytes]:
        store = open_store(url, **options)
        try:
            return {key: await store.read(key) for key in await store.list()}
        finally:
            await store.aclose()

    return io_loop().run(fetch())


@pytest.fixture
def bucket_url(moto_s3: MotoS3) -> str:
    return f"s3://{moto_s3.create_bucket()}/datasets/one"


# -- the probe store -------------------------------------------------------------------------


class Probe:
    """Records the uploads of a :class:`ProbeStore`; can fail one or hold them all.

    Touched on the IO loop's thread only, except the thread-safe ``full`` event.
    """

    def __init__(self, *, fail_at: int | None = None, hold: int | None = None) -> None:
        self.fail_at = fail_at
        #: Hold every upload until :meth:`release`; set ``full`` when this many are held.
        self.hold = hold
        self.full = threading.Event()
        self.events: list[tuple[str, str]] = []
        self.calls = 0
        self.in_flight = 0
        self.peak = 0
        self._gate: asyncio.Event | None = None

    def gate(self) -> asyncio.Event:
        if self._gate is None:
            self._gate = asyncio.Event()
        return self._gate

    def release(self) -> None:
        loop = io_loop()

        async def open_gate() -> None:
            self.gate().set()

        loop.run(open_gate())


class ProbeStore(Store):
    """``probe://name``: every call goes to ``inner``; uploads are recorded by ``probe``."""

    schemes = ("probe",)

    def __init__(
        self,
        url: str,
        *,
        retry: RetryConfig | None = None,
        transfer: TransferConfig | None = None,
        inner: str,
        probe: Probe,
        **options: Any,
    ) -> None:
        super().__init__(url, retry=retry, transfer=transfer)
        self.inner = open_store(inner, retry=retry, transfer=transfer, **options)
        self.probe = probe

    async def stat(self, key: str) -> Any:
        return await self.inner.stat(key)

    async def read_range(self, key: str, start: int, end: int) -> bytes:
        return await self.inner.read_range(key, start, end)

    async def read(self, key: str) -> bytes:
        return await self.inner.read(key)

    async def write(self, key: str, data: bytes) -> None:
        await self.inner.write(key, data)

    async def list(self, prefix: str = "", *, limit: int | None = None) -> list[str]:
        return await self.inner.list(prefix, limit=limit)

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def upload(self, src: str | os.PathLike[str], key: str) -> None:
        probe = self.probe
        probe.calls += 1
        call = probe.calls
        probe.events.append(("start", key))
        probe.in_flight += 1
        probe.peak = max(probe.peak, probe.in_flight)
        try:
            if probe.hold is not None:
                if probe.in_flight >= probe.hold:
                    probe.full.set()
                await probe.gate().wait()
            if call == probe.fail_at:
                raise StorageError(f"injected failure uploading {self.join(key)}")
            await self.inner.upload(src, key)
        finally:
            probe.in_flight -= 1
            probe.events.append(("end", key))


def open_probe_store(
    url: str,
    *,
    retry: RetryConfig | None = None,
    transfer: TransferConfig | None = None,
    **options: Any,
) -> Store:
    return ProbeStore(url, retry=retry, transfer=transfer, **options)


register_store("probe", open_probe_store, replace=True)


@pytest.fixture
def probe_remote(tmp_path: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """A local directory as the probe store's inner store, and the options to reach it."""
    root = tmp_path / "remote"
    root.mkdir()
    yield root, {"inner": str(root)}


def id_writer(url: str, options: dict[str, Any], probe: Probe, **kwargs: Any) -> writers.MDSWriter:
    """An MDS writer of one ``int`` column to a probe store: one sample per shard."""
    return writers.MDSWriter(
        out=url,
        storage_options={**options, "probe": probe},
        columns={"id": "int"},
        size_limit=180,
        **kwargs,
    )


# -- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_remote_out_uploads_what_the_local_writer_writes(
    name: str, tmp_path: Path, moto_s3: MotoS3, bucket_url: str
) -> None:
    samples = make_samples(name)
    kwargs: dict[str, Any] = {"size_limit": 300, "compression": "zstd", "hashes": ["sha1"]}
    expected = reference_files(tmp_path, name, samples, **kwargs)
    assert len(expected) > 6  # several shards (and their meta files) besides the index

    writer = getattr(writers, name)(
        out=bucket_url,
        storage_options=moto_s3.store_options(),
        max_workers=3,
        **WRITERS[name],
        **kwargs,
    )
    write_all(writer, samples)

    assert remote_files(bucket_url, **moto_s3.store_options()) == expected
    assert not writer.local.exists()  # the temporary directory is gone


@pytest.mark.parametrize("keep_local", [True, False])
def test_tuple_out(keep_local: bool, tmp_path: Path, moto_s3: MotoS3, bucket_url: str) -> None:
    samples = make_samples("CSVWriter")
    expected = reference_files(tmp_path, "CSVWriter", samples, size_limit=200)
    local = tmp_path / "local"

    writer = writers.CSVWriter(
        out=(str(local), bucket_url),
        keep_local=keep_local,
        storage_options=moto_s3.store_options(),
        columns=TEXT_COLUMNS,
        size_limit=200,
    )
    write_all(writer, samples)

    assert remote_files(bucket_url, **moto_s3.store_options()) == expected
    if keep_local:
        assert local_files(local) == expected
    else:
        assert not local.exists()


def test_remote_out_keep_local_keeps_the_temporary_directory(
    tmp_path: Path, moto_s3: MotoS3, bucket_url: str
) -> None:
    samples = make_samples("JSONLWriter")
    expected = reference_files(tmp_path, "JSONLWriter", samples, size_limit=250)
    writer = writers.JSONLWriter(
        out=bucket_url,
        keep_local=True,
        storage_options=moto_s3.store_options(),
        columns=TEXT_COLUMNS,
        size_limit=250,
    )
    try:
        write_all(writer, samples)
        assert local_files(writer.local) == expected
        assert remote_files(bucket_url, **moto_s3.store_options()) == expected
    finally:
        for path in writer.local.iterdir():
            path.unlink()
        writer.local.rmdir()


def test_uploaded_dataset_reads_back(tmp_path: Path, moto_s3: MotoS3, bucket_url: str) -> None:
    samples = make_samples("MDSWriter")
    with writers.MDSWriter(
        out=bucket_url,
        storage_options=moto_s3.store_options(),
        columns=WRITERS["MDSWriter"]["columns"],
        compression="zstd:3",
        size_limit=400,
    ) as writer:
        for sample in samples:
            writer.write(sample)

    root = tmp_path / "download"
    root.mkdir()
    for key, data in remote_files(bucket_url, **moto_s3.store_options()).items():
        (root / key).write_bytes(data)
    index = load_index((root / "index.json").read_bytes(), source=bucket_url)
    assert len(index.shards) > 3
    read: list[dict[str, Any]] = []
    for shard in index.shards:
        assert shard.zip is not None and shard.compression is not None
        decompress_file(shard.compression, root / shard.zip.basename, root / shard.raw.basename)
        with open_shard(shard, root) as reader:
            read += [reader[i] for i in range(len(reader))]
    assert len(read) == len(samples)
    for got, want in zip(read, samples, strict=True):
        assert got["id"] == want["id"] and got["text"] == want["text"]
        np.testing.assert_array_equal(got["x"], want["x"])


def test_local_out_is_the_local_writer(tmp_path: Path) -> None:
    samples = make_samples("TSVWriter")
    expected = reference_files(tmp_path, "TSVWriter", samples, size_limit=200)
    writer = writers.TSVWriter(out=tmp_path / "plain", columns=TEXT_COLUMNS, size_limit=200)
    write_all(writer, samples)
    assert writer.remote is None
    assert local_files(tmp_path / "plain") == expected


def test_progress_bar_counts_uploaded_files(
    capsys: pytest.CaptureFixture[str], probe_remote: tuple[Path, dict[str, Any]]
) -> None:
    root, options = probe_remote
    writer = id_writer("probe://bar", options, Probe(), progress_bar=True)
    write_all(writer, [{"id": i} for i in range(10)])
    uploaded = len(list(root.iterdir()))
    assert uploaded == 11
    assert f":{uploaded}file" in capsys.readouterr().err.replace(" ", "")


def test_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_workers"):
        writers.MDSWriter(out="probe://x", columns={"id": "int"}, max_workers=0)
    with pytest.raises(ValueError, match="retry"):
        writers.MDSWriter(out="probe://x", columns={"id": "int"}, retry=-1)


def test_retry_sets_the_store_attempts(probe_remote: tuple[Path, dict[str, Any]]) -> None:
    _root, options = probe_remote
    writer = id_writer("probe://retry", options, Probe(), retry=4)
    assert writer._uploads is not None
    assert writer._uploads.store.retry.attempts == 5
    writer.finish()


# -- ordering, failures, interruptions ---------------------------------------------------------


def test_index_is_uploaded_after_every_shard(probe_remote: tuple[Path, dict[str, Any]]) -> None:
    root, options = probe_remote
    probe = Probe()
    writer = writers.JSONLWriter(
        out="probe://order",
        storage_options={**options, "probe": probe},
        columns=TEXT_COLUMNS,
        size_limit=120,
        max_workers=4,
    )
    write_all(writer, make_samples("JSONLWriter"))

    index_start = probe.events.index(("start", "index.json"))
    shard_ends = [i for i, (what, key) in enumerate(probe.events) if what == "end"]
    assert probe.events[-1] == ("end", "index.json")
    assert all(i < index_start for i in shard_ends[:-1])
    keys = {key for _, key in probe.events}
    assert keys == {path.name for path in root.iterdir()}
    assert len(keys) > 10


def test_failed_upload_raises_and_no_index_is_uploaded(moto_s3: MotoS3, bucket_url: str) -> None:
    probe = Probe(fail_at=3)
    options = {**moto_s3.store_options(), "inner": bucket_url}
    writer = id_writer("probe://failing", options, probe, max_workers=2)
    with pytest.raises(StorageError, match=r"shard\.00002\.mds") as info, writer:
        for i in range(30):
            writer.write({"id": i})
    assert "probe://failing/shard.00002.mds" in str(info.value)
    assert isinstance(info.value.__cause__, StorageError)

    keys = remote_files(bucket_url, **moto_s3.store_options())
    assert "index.json" not in keys
    assert "shard.00002.mds" not in keys
    assert not writer.local.exists()
    with pytest.raises(StorageError, match=r"shard\.00002\.mds"):
        writer.finish()  # the writer stays failed


def test_failed_last_shard_raises_from_finish(
    tmp_path: Path, probe_remote: tuple[Path, dict[str, Any]]
) -> None:
    root, options = probe_remote
    samples = make_samples("XSVWriter", 30)
    shards = (len(reference_files(tmp_path, "XSVWriter", samples, size_limit=200)) - 1) // 2
    assert shards > 2
    last = f"shard.{shards - 1:05}.xsv.meta"  # the last upload before the index
    writer = writers.XSVWriter(
        out=(tmp_path / "local", "probe://last"),
        storage_options={**options, "probe": Probe(fail_at=2 * shards)},
        columns=TEXT_COLUMNS,
        separator="|",
        size_limit=200,
    )
    for sample in samples:
        writer.write(sample)
    with pytest.raises(StorageError, match=last.replace(".", r"\.")):
        writer.finish()
    assert "index.json" not in {path.name for path in root.iterdir()}
    # A directory the caller named keeps what was not uploaded.
    assert (tmp_path / "local" / last).exists()


def test_exception_in_the_block_uploads_no_index(
    probe_remote: tuple[Path, dict[str, Any]],
) -> None:
    root, options = probe_remote
    writer = id_writer("probe://broken", options, Probe())
    with pytest.raises(RuntimeError, match="the data source broke"), writer:
        for i in range(10):
            writer.write({"id": i})
        raise RuntimeError("the data source broke")
    assert "index.json" not in {path.name for path in root.iterdir()}
    assert not writer.local.exists()
    writer.finish()  # finished (without an index): nothing more happens


def test_exception_in_the_block_cancels_the_uploads_in_flight(
    probe_remote: tuple[Path, dict[str, Any]],
) -> None:
    root, options = probe_remote
    probe = Probe(hold=2)  # uploads are held until released: never, here
    writer = id_writer("probe://held", options, probe, max_workers=2)
    with pytest.raises(KeyboardInterrupt), writer:
        for i in range(3):  # each write flushes the shard before it: two uploads held
            writer.write({"id": i})
        assert probe.full.wait(30)
        raise KeyboardInterrupt
    assert probe.in_flight == 0
    assert list(root.iterdir()) == []


# -- backpressure ----------------------------------------------------------------------------


def test_writer_waits_when_uploads_fall_behind(probe_remote: tuple[Path, dict[str, Any]]) -> None:
    root, options = probe_remote
    max_workers = 3
    probe = Probe(hold=max_workers)
    writer = id_writer("probe://slow", options, probe, max_workers=max_workers)
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            write_all(writer, [{"id": i} for i in range(20)])
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=produce)
    thread.start()
    try:
        assert probe.full.wait(30)
        # Every upload is held: the writer blocks in _publish before starting another one.
        thread.join(0.2)
        assert thread.is_alive()
        assert probe.calls == max_workers
        assert len(list(writer.local.iterdir())) <= max_workers + 1
    finally:
        probe.release()
        thread.join(30)
    assert not errors
    assert probe.peak == max_workers
    assert len(list(root.iterdir())) == 20 + 1  # every shard, then the index


def test_a_remote_that_holds_objects_is_refused_unless_exist_ok(
    bucket_url: str, moto_s3: MotoS3, tmp_path: Path
) -> None:
    options = moto_s3.store_options()
    columns = {"id": "int", "text": "str", "score": "float64"}
    write_all(
        writers.MDSWriter(out=bucket_url, columns=columns, storage_options=options),
        make_samples("first", 5),
    )
    before = remote_files(bucket_url, **options)
    with pytest.raises(FileExistsError, match=r"remote is not empty: s3://.*index\.json"):
        writers.MDSWriter(out=bucket_url, columns=columns, storage_options=options)
    assert remote_files(bucket_url, **options) == before
    write_all(
        writers.MDSWriter(out=bucket_url, columns=columns, storage_options=options, exist_ok=True),
        make_samples("second", 7),
    )
    after = remote_files(bucket_url, **options)
    assert after["index.json"] != before["index.json"]
    assert json.loads(after["index.json"])["shards"][0]["samples"] == 7
