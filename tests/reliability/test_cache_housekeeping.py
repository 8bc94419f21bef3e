"""What a cache and a writer leave behind: a full disk while writing the index, a cache over
its limit at start, and the temporary folders of killed remote writers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from reliability_data import check, full_cache, shard_bytes, write_dataset

from astream import MDSWriter, StreamingDataset
from astream.writers import SCRATCH_FOLDER

ROOT = Path(__file__).resolve().parents[2]


def _child(
    code: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    prelude = f"import sys\nsys.path.insert(0, {str(ROOT)!r})\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_index_onto_a_full_disk_is_a_cache_error_naming_it(tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    write_dataset(remote, 400, size_limit=600)  # many shards: an index of tens of kB
    index_size = (remote / "index.json").stat().st_size
    assert index_size > 20_000
    cache = tmp_path / "cache"
    got = _child(
        """
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, 10_000))
        from astream import StreamingDataset
        try:
            StreamingDataset(remote=sys.argv[1], local=sys.argv[2], batch_size=1)
        except Exception as exc:
            print(f"{type(exc).__name__}: {exc}")
            sys.exit(3)
        """,
        str(remote),
        str(cache),
    )
    assert got.returncode == 3, got.stderr
    assert got.stdout.startswith(f"CacheError: cannot write the index {cache / 'index.json'}")
    assert "File too large" in got.stdout
    assert not (cache / "index.json").exists()
    assert [p for p in cache.iterdir() if "tmp" in p.name] == []
    # With room on the disk, the next run reads it all.
    dataset = StreamingDataset(remote=str(remote), local=cache, batch_size=1)
    assert sorted(check(s)[1] for s in dataset) == list(range(400))


def test_a_cache_over_its_limit_is_trimmed_when_a_run_starts(tmp_path: Path) -> None:
    # Enough shards that a third of them holds the index and one worker's shards at once (the
    # smallest limit a dataset accepts).
    remote, cache, size = full_cache(tmp_path, 3000)
    # A later run with a smaller limit: the first access trims before anything downloads.
    small = StreamingDataset(remote=str(remote), local=cache, batch_size=1, cache_limit=size // 3)
    assert check(small[0])[1] == 0
    assert shard_bytes(cache) <= size // 3


def _scratch_dirs(tmp: Path) -> list[str]:
    folder = tmp / f"{SCRATCH_FOLDER}-{os.getuid()}"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_killed_remote_writers_leave_folders_the_next_writer_removes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    killed = _child(
        """
        import os, signal
        from astream import MDSWriter
        writer = MDSWriter(out=sys.argv[1], columns={"x": "bytes"}, size_limit=1000)
        for _ in range(50):
            writer.write({"x": bytes(100)})
        os.kill(os.getpid(), signal.SIGKILL)
        """,
        (tmp_path / "remote1").as_uri(),
        env={"TMPDIR": str(tmp)},
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = _scratch_dirs(tmp)
    assert len(left) == 2 and left[0].startswith("astream-writer-"), left  # folder + lock
    assert any((tmp / f"{SCRATCH_FOLDER}-{os.getuid()}" / left[0]).iterdir())

    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    live = MDSWriter(out=(tmp_path / "remote2").as_uri(), columns={"x": "bytes"})
    try:
        # The killed writer's folder is gone; the live writer's is there and is not taken
        # for an orphan by another writer starting beside it.
        mine = {live.local.name, f"{live.local.name}.lock"}
        assert set(_scratch_dirs(tmp)) == mine
        with MDSWriter(out=(tmp_path / "remote3").as_uri(), columns={"x": "bytes"}) as other:
            other.write({"x": b"1"})
        live.write({"x": b"2"})
        assert set(_scratch_dirs(tmp)) == mine
    finally:
        live.finish()
    assert _scratch_dirs(tmp) == []


def test_a_planted_scratch_folder_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # Another user of a shared temp dir makes the folder a symlink to one of theirs.
    (tmp / f"{SCRATCH_FOLDER}-{os.getuid()}").symlink_to(elsewhere, target_is_directory=True)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    with pytest.raises(PermissionError, match="not a folder of this user's"):
        MDSWriter(out=(tmp_path / "remote").as_uri(), columns={"x": "bytes"})
    assert list(elsewhere.iterdir()) == []
