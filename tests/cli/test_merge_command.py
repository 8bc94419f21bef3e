"""``astream merge OUT [PARTS...]`` on a local folder and on moto's S3."""

from __future__ import annotations

import json
from pathlib import Path

from cli_support import Run, read_dataset

from astream import writers

COLUMNS = {"id": "int", "text": "str"}


def write_part(out: str, part: int) -> list[dict[str, object]]:
    samples: list[dict[str, object]] = [{"id": part * 10 + i, "text": f"p{part}"} for i in range(5)]
    with writers.MDSWriter(out=f"{out}/part-{part}", columns=COLUMNS) as writer:
        for sample in samples:
            writer.write(sample)
    return samples


def test_merge_finds_every_part(run: Run, tmp_path: Path) -> None:
    parts = [write_part(str(tmp_path), part) for part in range(3)]
    result = run("merge", tmp_path, "--json")
    assert result.status == 0, result.err
    assert result.json()["samples"] == 15
    _index, samples = read_dataset(tmp_path)
    assert samples == [sample for part in parts for sample in part]


def test_merge_takes_named_parts_relative_to_out(run: Run, tmp_path: Path) -> None:
    parts = [write_part(str(tmp_path), part) for part in range(3)]
    # A part folder, and a part's index file, both relative to OUT: only these, in this order.
    result = run("merge", tmp_path, "part-2", "part-0/index.json")
    assert result.status == 0, result.err
    assert "10" in result.out  # samples
    _index, samples = read_dataset(tmp_path)
    assert samples == parts[2] + parts[0]


def test_merge_on_s3(run: Run, s3: str, tmp_path: Path) -> None:
    url = f"s3://{s3}/parts"
    parts = [write_part(url, part) for part in range(2)]
    assert run("merge", url, "part-1", f"{url}/part-0").status == 0
    info = run("info", url, "--json")
    assert info.status == 0, info.err
    assert info.json()["samples"] == sum(len(part) for part in parts)


def test_merge_reports_a_missing_part(run: Run, tmp_path: Path) -> None:
    write_part(str(tmp_path), 0)
    result = run("merge", tmp_path, "part-7")
    assert result.status == 1
    assert result.err.startswith("astream: error:") and "part-7" in result.err
    assert not (tmp_path / "index.json").exists()


def test_merge_reports_a_malformed_part(run: Run, tmp_path: Path) -> None:
    write_part(str(tmp_path), 0)
    (tmp_path / "part-0" / "index.json").write_text(json.dumps({"version": 3, "shards": []}))
    result = run("merge", tmp_path)
    assert result.status == 1
    assert "version" in result.err
