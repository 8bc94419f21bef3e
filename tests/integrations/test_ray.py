"""MDSDatasink and read_mds on a real Ray, started locally with 2 CPUs (once for the module).

Rows are made by ``map_batches`` from ``ray.data.range``, so every row's expected sample is
known here; what is written is read back with StreamingDataset (and with read_mds) and checked
sample by sample, on a local folder and on S3 (moto).
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

pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'astream[ray]')")

import ray
import ray.cloudpickle

from astream.engine.loop import io_loop
from astream.integrations.ray import MDSDatasink, read_mds
from astream.storage import open_store
from tests.integrations.conftest import (
    PNGS,
    ROWS,
    assert_samples,
    stream,
)
from tests.servers.moto_s3 import MotoS3

pytestmark = [
    pytest.mark.engines,  # run by nox -s engines, which installs Ray
    pytest.mark.timeout(300),
    # Ray's own deprecations (DataContext defaults that warn about themselves).
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray"),
]

# The workers cannot import this test module by its name: its functions travel by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    # Ray's sockets live under its temp dir, and AF_UNIX paths end at 107 bytes: a short one.
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    ray.init(
        _temp_dir=temp,
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # the dataset's order is the rows' order
    context.enable_progress_bars = False
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def make_rows(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    ids = batch["id"].astype(np.int64)
    return {
        "id": ids,
        "text": np.array([f"row {i}" for i in ids], dtype=object),
        "blob": np.array([f"b{i}".encode() for i in ids], dtype=object),
        "vec": np.stack([ids, ids * 0.5], axis=1).astype(np.float32),
        "image": np.array([PNGS[i % len(PNGS)] for i in ids], dtype=object),
    }


def rows(count: int = ROWS, blocks: int = 4) -> Any:
    return ray.data.range(count, override_num_blocks=blocks).map_batches(make_rows)


def store_keys(url: str) -> list[str]:
    async def keys() -> list[str]:
        store = open_store(url)
        try:
            return await store.list()
        finally:
            await store.aclose()

    return io_loop().run(keys())


def test_writes_a_local_folder_and_reads_it_back(ray_local: None, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    sink = MDSDatasink(str(out), size_limit="1mb")
    rows().write_datasink(sink)
    assert sink.index is not None and sink.index.samples == ROWS
    first = sink.index.shards[0]
    assert dict(zip(first.column_names, first.column_encodings, strict=True)) == {
        "blob": "bytes",
        "id": "int64",
        "image": "bytes",
        "text": "str",
        "vec": "ndarray:float32:2",
    }
    assert_samples(stream(str(out), tmp_path / "cache"), range(ROWS))


def test_writes_to_s3_and_read_mds_reads_it_back(ray_local: None, s3_env: MotoS3) -> None:
    count = 20_000  # the full ROWS go to a local folder above: the session stays short
    url = f"s3://{s3_env.create_bucket()}/ds"
    options = s3_env.store_options()
    sink = MDSDatasink(url, compression="zstd", size_limit="128kb", storage_options=options)
    rows(count).write_datasink(sink)
    assert sink.index is not None and len(sink.index.shards) > 8
    # One read task per 3 shards, each fetching its own shards from S3; all back, in order.
    dataset = read_mds(url, shards_per_task=3, storage_options=options)
    assert_samples(dataset.take_all(), range(count))


class FailOnceSink(MDSDatasink):
    """A sink whose write task holding row 3000 dies on its first attempt, mid-write: the
    task's earlier blocks are already written (and uploaded) as shards of its part."""

    def __init__(self, marker: Path, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.marker = marker

    def write(self, blocks: Any, ctx: Any) -> Any:
        def guarded() -> Iterator[Any]:
            for block in blocks:
                if 3000 in block["id"].to_pylist() and not self.marker.exists():
                    self.marker.write_text("failed once")
                    raise RuntimeError("injected failure of a first attempt")
                yield block

        return super().write(guarded(), ctx)


def test_a_write_task_that_dies_is_retried_exactly(
    ray_local: None, s3_env: MotoS3, tmp_path: Path
) -> None:
    url = f"s3://{s3_env.create_bucket()}/retried"
    options = s3_env.store_options()
    # Ray Data retries a failed write task's transform from the start (a new attempt).
    context = ray.data.DataContext.get_current()
    before = context.retried_map_errors, context.max_map_retries
    context.retried_map_errors, context.max_map_retries = ["injected failure"], 2
    try:
        sink = FailOnceSink(
            tmp_path / "marker",
            url,
            size_limit="16kb",
            storage_options=options,
            min_rows_per_write=4000,  # two write tasks of 8 blocks each
        )
        # Materialized: the write tasks get the 16 blocks as they are (no fused map to
        # coalesce them), so the failure comes after some blocks were written.
        rows(8000, blocks=16).materialize().write_datasink(sink)
    finally:
        context.retried_map_errors, context.max_map_retries = before
    assert (tmp_path / "marker").exists()
    assert sink.index is not None
    assert_samples(stream(url, tmp_path / "cache"), range(8000))
    committed = {shard.raw.basename.split("/")[0] for shard in sink.index.shards}
    assert len(committed) == 2
    left = {key.split("/")[0] for key in store_keys(url)} - committed - {"index.json"}
    assert len(left) == 1, left  # the failed attempt's shards: there, but named by no index


def test_a_failed_write_leaves_no_index(ray_local: None, tmp_path: Path) -> None:
    def always_fail(batch: dict[str, np.ndarray]) -> dict[str, Any]:
        if 150 in batch["id"]:
            raise RuntimeError("this block never succeeds")
        return make_rows(batch)

    dataset = ray.data.range(300, override_num_blocks=1).map_batches(always_fail, batch_size=100)
    with pytest.raises(Exception, match="never succeeds"):
        dataset.write_datasink(MDSDatasink(str(tmp_path / "ds")))
    assert not (tmp_path / "ds" / "index.json").exists()


def test_bad_input_fails_on_the_driver(ray_local: None, tmp_path: Path) -> None:
    with pytest.raises(Exception, match="colour"):
        rows(10, 1).write_datasink(MDSDatasink(str(tmp_path / "a"), colour="red"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(Exception, match="exist_ok"):
        rows(10, 1).write_datasink(MDSDatasink(str(tmp_path / "full")))
    with pytest.raises(FileNotFoundError):
        read_mds(str(tmp_path / "nothing"))
