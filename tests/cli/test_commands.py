"""The ``astream`` command end to end: info, ls, verify, cp, bench and its error reporting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from cli_support import Run, read_dataset

import astream
from astream.format import load_index


@pytest.fixture
def dataset(run: Run, jsonl_file: Path, tmp_path: Path) -> Path:
    """The corpus as MDS: several zstd shards with sha1 and xxh64 hashes."""
    out = tmp_path / "ds"
    result = run(
        "convert", jsonl_file, out, "--compression", "zstd", "--hashes", "xxh64,sha1",
        "--size-limit", "1kb",
    )  # fmt: skip
    assert result.status == 0, result.err
    assert "wrote 60 samples" in result.out
    return out


def test_info_human_and_json(run: Run, dataset: Path) -> None:
    human = run("info", dataset)
    assert human.status == 0
    assert "samples          60" in human.out
    assert "text: str" in human.out and "zstd" in human.out and "sha1, xxh64" in human.out
    facts = run("info", dataset, "--json").json()
    index = load_index((dataset / "index.json").read_bytes(), source="t")
    assert facts["samples"] == 60
    assert facts["shards"] == len(index.shards) > 1
    assert facts["columns"] == {"id": "int", "score": "float64", "text": "str"}
    assert facts["compression"] == ["zstd"]
    assert facts["hashes"] == ["sha1", "xxh64"] and facts["hashes_on_every_file"]
    assert facts["raw_bytes"] == sum(s.raw.bytes for s in index.shards)
    assert (
        facts["stored_bytes"]
        == facts["zip_bytes"]
        == sum(s.zip.bytes for s in index.shards if s.zip)
    )


def test_ls_lists_the_stored_files(run: Run, dataset: Path) -> None:
    entries = run("ls", dataset, "--json").json()
    on_disk = {p.name: p.stat().st_size for p in dataset.iterdir()}
    assert {e["path"]: e["bytes"] for e in entries} == on_disk
    assert entries[0]["path"] == "index.json"
    human = run("ls", dataset)
    assert "shard.00000.mds.zstd" in human.out and f"total ({len(on_disk)} files)" in human.out


def test_ls_store_listing(run: Run, tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.bin").write_bytes(b"12345")
    (tmp_path / "b.txt").write_bytes(b"x")
    entries = run("ls", tmp_path, "--json").json()  # no index: the store's listing
    assert {e["path"]: e["bytes"] for e in entries} == {"b.txt": 1, "sub/a.bin": 5}


def test_verify_passes_then_names_a_corrupt_shard(run: Run, dataset: Path) -> None:
    ok = run("verify", dataset)
    assert ok.status == 0, ok.out + ok.err
    assert "all ok" in ok.out
    victim = dataset / "shard.00001.mds.zstd"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    victim.write_bytes(bytes(data))
    bad = run("verify", dataset)
    assert bad.status == 1
    assert "shard 1: shard.00001.mds.zstd sha1 is" in bad.out
    assert "xxh64 is" in bad.out
    only = run("verify", dataset, "--hash", "xxh64", "--json")
    assert only.status == 1
    report = only.json()
    assert report["hashes"] == ["xxh64"] and not report["ok"]
    assert [(p["shard"], p["file"]) for p in report["problems"]] == [(1, "shard.00001.mds.zstd")]


def test_verify_truncated_and_missing(run: Run, dataset: Path) -> None:
    (dataset / "shard.00000.mds.zstd").write_bytes(b"short")
    (dataset / "shard.00002.mds.zstd").unlink()
    result = run("verify", dataset)
    assert result.status == 1
    assert "shard 0: shard.00000.mds.zstd is 5 bytes, the index says" in result.out
    assert "shard 2: shard.00002.mds.zstd is missing" in result.out


def test_verify_hash_not_in_index(run: Run, dataset: Path) -> None:
    result = run("verify", dataset, "--hash", "md5")
    assert result.status == 1
    assert (
        result.err
        == f"astream: error: {dataset}: the index records no md5 hashes (it has: sha1, xxh64)\n"
    )


def test_user_errors_are_one_line(run: Run, tmp_path: Path) -> None:
    for argv, needle in [
        (("info", tmp_path / "nothing"), "no dataset at"),
        (("verify", "foo://bucket/x"), "no store for foo://"),
        (("ls", tmp_path / "empty"), "nothing is stored under"),
        (("convert", tmp_path / "missing.jsonl", tmp_path / "out"), "no such file or folder"),
    ]:
        result = run(*argv)
        assert result.status == 1, argv
        assert result.out == ""
        assert result.err.startswith("astream: error: ") and needle in result.err
        assert result.err.count("\n") == 1, result.err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "index.json").write_text('{"version": 2, "shards": [{"format": 1}]}')
    corrupt = run("info", tmp_path / "bad")
    assert corrupt.status == 1
    assert "shards[0].format" in corrupt.err and corrupt.err.count("\n") == 1


def test_usage_errors_exit_2(run: Run, tmp_path: Path) -> None:
    assert run().status == 2
    assert run("convert", "a", "b", "--compression", "nope").status == 2
    assert run("convert", "a", "b", "--hashes", "sha1,nope").status == 2
    bad = run("convert", "a", "b", "--columns", "x:nosuch")
    assert bad.status == 2 and "unknown column encoding" in bad.err
    assert run("verify", tmp_path, "--hash", "crc99").status == 2


def test_cp_between_local_folders(run: Run, dataset: Path, tmp_path: Path) -> None:
    dst = tmp_path / "copy"
    result = run("cp", dataset, dst)
    assert result.status == 0, result.err
    assert (dst / "index.json").read_bytes() == (dataset / "index.json").read_bytes()
    assert read_dataset(dst)[1] == read_dataset(dataset)[1]
    again = run("cp", dataset, dst)
    assert again.status == 1 and "already exists" in again.err
    assert run("cp", dataset, dst, "--overwrite").status == 0


def test_cp_local_to_s3_and_back(run: Run, dataset: Path, tmp_path: Path, s3: str) -> None:
    url = f"s3://{s3}/copies/{uuid.uuid4().hex}"
    up = run("cp", dataset, url)
    assert up.status == 0, up.err
    assert run("verify", url).status == 0
    listed = {e["path"] for e in run("ls", url, "--json").json()}
    assert listed == {p.name for p in dataset.iterdir()}
    back = tmp_path / "back"
    assert run("cp", url, back).status == 0
    assert read_dataset(back)[1] == read_dataset(dataset)[1]


def test_bench_streams_every_sample(run: Run, dataset: Path) -> None:
    report = run("bench", dataset, "--json").json()
    assert report["samples"] == 60
    assert report["first_sample_s"] is not None and report["first_sample_s"] <= report["seconds"]
    assert report["samples_per_s"] > 0
    limited = run("bench", dataset, "--limit", "7")
    assert limited.status == 0 and "7 samples" in limited.out


def test_python_dash_m_in_a_subprocess(dataset: Path) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    root = Path(__file__).resolve().parents[2]
    ok = subprocess.run(
        [sys.executable, "-m", "astream", "info", str(dataset), "--json"],
        capture_output=True, text=True, cwd=root, env=env, timeout=60,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["samples"] == 60
    assert ok.stderr == ""  # stderr is not a terminal: no progress bar
    bad = subprocess.run(
        [sys.executable, "-m", "astream", "verify", str(dataset / "nope")],
        capture_output=True, text=True, cwd=root, env=env, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 1
    assert bad.stderr.startswith("astream: error: no dataset at") and "Traceback" not in bad.stderr


def test_version_and_help_show_examples_and_codecs(run: Run) -> None:
    version = run("--version")
    assert version.status == 0 and version.out == f"astream {astream.__version__}\n"
    top = run("--help")
    assert top.status == 0
    assert "examples:\n  astream convert " in top.out and "astream verify " in top.out
    assert "compression codecs: br, bz2, gz, lz4, snappy, zstd" in top.out
    convert = run("convert", "--help").out
    assert "examples:" in convert and "--select" in convert
    assert "zstd" in convert and "column encodings: bytes," in convert and "jpeg" in convert
    bad = run("convert", "a", "b", "--compression", "zz")
    assert bad.status == 2 and "use one of br, bz2, gz, lz4, snappy, zstd" in bad.err


def test_counts_are_singular_for_one(run: Run, tmp_path: Path) -> None:
    path = tmp_path / "one.jsonl"
    path.write_text('{"v": 1}\n')
    result = run("convert", path, tmp_path / "one")
    assert result.status == 0, result.err
    assert result.out.startswith("wrote 1 sample in 1 shard (")
    (tmp_path / "single").mkdir()
    (tmp_path / "single" / "a.bin").write_bytes(b"x")
    assert "(1 file)" in run("ls", tmp_path / "single").out
    assert ": 1 shard, sizes only" in run("verify", tmp_path / "one").out
    assert run("cp", tmp_path / "one", tmp_path / "two").out.startswith("copied 2 files")


def test_cp_reports_its_total_before_copying(dataset: Path, tmp_path: Path) -> None:
    from astream.convert import copy_dataset

    events: list[tuple[str, int]] = []
    copy_dataset(
        str(dataset),
        str(tmp_path / "copy"),
        on_bytes=lambda size: events.append(("bytes", size)),
        on_total=lambda total: events.append(("total", total)),
    )
    assert events[0][0] == "total"
    assert events[0][1] == sum(size for kind, size in events if kind == "bytes")
    assert events[0][1] == sum(p.stat().st_size for p in dataset.iterdir()) - len(
        (dataset / "index.json").read_bytes()
    )
