"""Rewrites with ``exist_ok=True``, killed at random points, with a reader running throughout.

Before, a rewrite left the old ``index.json`` in place while shards were overwritten (S3) or
removed the folder in no particular order (local): a reader then got old and new samples
together with no error. Now the old index goes first, the new one is published last, and every
read, during the rewrite or after a kill, is the old dataset, the new one, or an astream error.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from reliability_data import classify_read

from tests.servers.moto_s3 import CREDENTIALS, MotoS3

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def _command(out: str, generation: int, pace: float, *extra: str) -> list[str]:
    return [sys.executable, str(HERE / "rewrite_job.py"), out, str(generation), str(pace), *extra]


def _write(out: str, generation: int, pace: float, *extra: str) -> float:
    """One complete write of ``generation``; the seconds from ``started`` to ``done``."""
    got = subprocess.run(
        _command(out, generation, pace, *extra), capture_output=True, text=True, timeout=120
    )
    assert got.returncode == 0, got.stderr[-3000:]
    marks = dict(line.split() for line in got.stdout.splitlines())
    return float(marks["done"]) - float(marks["started"])


class _Reader(threading.Thread):
    """Streams the dataset again and again (a fresh cache each time) until stopped."""

    def __init__(self, remote: str, caches: Path, options: dict[str, object]) -> None:
        super().__init__(daemon=True)
        self.remote, self.caches, self.options = remote, caches, options
        self.outcomes: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            cache = self.caches / f"r{len(self.outcomes)}"
            read = classify_read(self.remote, cache, **self.options)
            self.outcomes.append(read)
            if read.startswith("error:"):
                self.stop.wait(0.02)  # no dataset right now: leave the writer the CPU


def rewrite_trials(
    remote: str, work: Path, trials: int, seed: int, *extra: str, pace: float = 0.01
) -> collections.Counter[str]:
    """Write generation 0, then ``trials`` rewrites each killed after a random delay (some
    finish). Returns the outcomes, keyed ``during:<read>`` and ``after-<how>:<read>``, with
    reads ``old``/``new``/``error:*`` (allowed) or ``MIXED``/``bad:*``/``gen<G>`` (not)."""
    rng = random.Random(seed)
    _write(remote, 0, 0.0, *extra)
    duration = _write(remote, 1, pace, *extra)
    current = 1  # the generation a complete read gives now
    options: dict[str, object] = {"validate_hash": "sha1"} if "zstd" in extra else {}
    outcomes: collections.Counter[str] = collections.Counter()

    def name(read: str, old: int, new: int) -> str:
        return {f"gen{old}": "old", f"gen{new}": "new"}.get(read, read)

    for trial in range(trials):
        new = current + 1
        reader = _Reader(remote, work / f"t{trial}", options)
        reader.start()
        env = dict(os.environ)
        local = "://" not in remote
        if local and trial % 2:
            # Inside the removal of the old files, which a timer almost never hits.
            env["KILL_AT_REMOVE"] = str(rng.randint(1, len(os.listdir(remote)) + 1))
        with subprocess.Popen(
            _command(remote, new, pace, *extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            text=True,
        ) as writer:
            assert writer.stdout is not None
            writer.stdout.readline()  # "started", or "" when it died constructing
            try:
                # Up to twice the unhindered write: the reader slows it, and some should finish.
                writer.wait(timeout=rng.uniform(0.0, 2.0 * duration))
            except subprocess.TimeoutExpired:
                writer.send_signal(signal.SIGKILL)
            code = writer.wait(timeout=60)
        reader.stop.set()
        reader.join(timeout=120)
        for read in reader.outcomes:
            outcomes[f"during:{name(read, current, new)}"] += 1
        how = "finished" if code == 0 else "killed"
        after = name(classify_read(remote, work / f"t{trial}-after", **options), current, new)
        outcomes[f"after-{how}:{after}"] += 1
        if after == "new":
            current = new
        elif after != "old":
            # No complete dataset is left: the next rewrite's "old" is nothing.
            current = new
    return outcomes


# What a reader may meet once a rewrite was killed: the old dataset whole, the new one whole, or
# no dataset (no index, or the placeholder of a rewrite in progress). An index naming shards
# that are gone or were overwritten is what the old order of operations left.
_AFTER_KILL = ("old", "new", "error:DatasetNotFoundError", "error:IndexFormatError")


def _allowed(key: str) -> bool:
    when, read = key.split(":", 1)
    if when == "after-finished":
        return read == "new"
    if when == "after-killed":
        return read in _AFTER_KILL
    return read in ("old", "new") or read.startswith("error:")


def _check(outcomes: collections.Counter[str]) -> None:
    bad = {key: n for key, n in outcomes.items() if not _allowed(key)}
    assert bad == {}, dict(outcomes)
    assert sum(n for key, n in outcomes.items() if key.startswith("during:")) > 0


@pytest.mark.parametrize("extra", [(), ("zstd",)], ids=["mds", "mds-zstd-sha1"])
def test_local_rewrite_killed_at_random_points(tmp_path: Path, extra: tuple[str, ...]) -> None:
    outcomes = rewrite_trials(str(tmp_path / "data"), tmp_path, 4, 3, *extra)
    _check(outcomes)


def test_s3_rewrite_killed_at_random_points(
    tmp_path: Path, moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("S3_ENDPOINT_URL", moto_s3.endpoint_url)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    remote = f"s3://{moto_s3.create_bucket()}/data"
    outcomes = rewrite_trials(remote, tmp_path, 4, 7, pace=0.02)
    _check(outcomes)
