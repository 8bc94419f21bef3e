"""merge_index on local folders and on a store (moto's S3 on loopback).

Parts are written by the uploading writers, as parallel jobs write them; the merged dataset is
read back with open_shard and compared sample for sample with the parts in order.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

import astream
from astream import writers
from astream.engine.loop import io_loop
from astream.errors import IndexFormatError, ObjectNotFoundError
from astream.format import load_index, open_shard
from astream.format import merge_index as merge_local_index
from astream.merge import merge_index, write_merged_index
from astream.storage import open_store
from tests.servers.moto_s3 import MotoS3
from tests.storage import conftest as storage_fixtures

moto_s3 = storage_fixtures.moto_s3

COLUMNS = {"id": "int", "text": "str"}


def part_samples(part: int) -> list[dict[str, Any]]:
    return [{"id": part * 100 + i, "text": f"part {part} sample {i}"} for i in range(7 + part)]


def write_part(out: str, name: str, part: int, **options: Any) -> None:
    with writers.MDSWriter(
        out=f"{out.rstrip('/')}/{name}", columns=COLUMNS, size_limit=200, **options
    ) as writer:
        for sample in part_samples(part):
            writer.write(sample)


def read_store(url: str, tmp_path: Path, **options: Any) -> list[dict[str, Any]]:
    """Every sample of the dataset at ``url``, downloaded file by file and read in order."""
    local = tmp_path / uuid.uuid4().hex

    async def fetch() -> bytes:
        store = open_store(url, **options)
        try:
            data = await store.read("index.json")
            for shard in load_index(data, source=url).shards:
                target = local / shard.raw.basename
                target.parent.mkdir(parents=True, exist_ok=True)
                await store.download(shard.raw.basename, target)
            return data
        finally:
            await store.aclose()

    index = load_index(io_loop().run(fetch()), source=url)
    samples: list[dict[str, Any]] = []
    for shard in index.shards:
        with open_shard(shard, local) as reader:
            samples.extend(reader[i] for i in range(len(reader)))
    return samples


@pytest.fixture
def bucket(moto_s3: MotoS3) -> str:
    return f"s3://{moto_s3.create_bucket()}/merged"


def test_merges_a_store_prefix_in_path_order(bucket: str, moto_s3: MotoS3, tmp_path: Path) -> None:
    options = moto_s3.store_options()
    # "a" sorts before "a-b" path by path, as a local merge orders subfolders.
    for name, part in (("a-b", 2), ("a", 0), ("b/inner", 3)):
        write_part(bucket, name, part, storage_options=options)
    index = merge_index(bucket, storage_options=options)
    prefixes = [shard.raw.basename.rsplit("/", 1)[0] for shard in index.shards]
    assert list(dict.fromkeys(prefixes)) == ["a", "a-b", "b/inner"]
    expected = part_samples(0) + part_samples(2) + part_samples(3)
    assert index.samples == len(expected)
    assert read_store(bucket, tmp_path, **options) == expected


def test_merges_named_parts_on_a_store_in_the_order_given(
    bucket: str, moto_s3: MotoS3, tmp_path: Path
) -> None:
    options = moto_s3.store_options()
    for part in range(3):
        write_part(bucket, f"part-{part}", part, storage_options=options)
    # A full URL, a key relative to out, and mosaicml-streaming's list-first call form.
    files = [f"{bucket}/part-2/index.json", "part-0/index.json"]
    merge_index(files, bucket, storage_options=options)
    assert read_store(bucket, tmp_path, **options) == part_samples(2) + part_samples(0)


def test_store_merge_refuses_a_part_outside_out(bucket: str, moto_s3: MotoS3) -> None:
    options = moto_s3.store_options()
    write_part(bucket, "part-0", 0, storage_options=options)
    with pytest.raises(IndexFormatError, match="under"):
        merge_index(bucket, ["s3://elsewhere/part-0/index.json"], storage_options=options)
    with pytest.raises(IndexFormatError, match="under"):
        merge_index(bucket, ["../part-0/index.json"], storage_options=options)


def test_store_merge_names_a_missing_part(bucket: str, moto_s3: MotoS3) -> None:
    options = moto_s3.store_options()
    write_part(bucket, "part-0", 0, storage_options=options)
    with pytest.raises(ObjectNotFoundError, match=r"part-9/index\.json"):
        merge_index(bucket, ["part-9/index.json"], storage_options=options)

    async def has_index() -> bool:
        store = open_store(bucket, **options)
        try:
            return await store.exists("index.json")
        finally:
            await store.aclose()

    assert not io_loop().run(has_index())


def test_local_merge_is_the_format_merge(tmp_path: Path) -> None:
    for part in range(2):
        write_part(str(tmp_path / "ours"), f"part-{part}", part)
        write_part(str(tmp_path / "theirs"), f"part-{part}", part)
    assert astream.merge_index is merge_index
    merge_index(f"file://{tmp_path / 'ours'}")
    merge_local_index(tmp_path / "theirs")
    assert (tmp_path / "ours" / "index.json").read_bytes() == (
        tmp_path / "theirs" / "index.json"
    ).read_bytes()


def test_format_merge_points_urls_to_the_store_merge() -> None:
    with pytest.raises(ValueError, match=r"astream\.merge_index"):
        merge_local_index("s3://bucket/out")


def test_write_merged_index_from_indexes_in_hand(tmp_path: Path) -> None:
    out = tmp_path / "out"
    parts = []
    for part in range(2):
        write_part(str(out), f"p{part}", part)
        parts.append(
            (f"p{part}", load_index((out / f"p{part}/index.json").read_bytes(), source=""))
        )
    index = write_merged_index(out, parts[::-1])
    data = json.loads((out / "index.json").read_bytes())
    assert data["shards"][0]["raw_data"]["basename"].startswith("p1/")
    assert index.samples == sum(len(part_samples(p)) for p in range(2))
    with pytest.raises(IndexFormatError, match="also used"):
        write_merged_index(out, [parts[0], parts[0]])
    with pytest.raises(IndexFormatError, match=r"\.\."):
        write_merged_index(out, [("../p0", parts[0][1])])
