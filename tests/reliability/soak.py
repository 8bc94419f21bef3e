"""The reliability soak: kill loops and fault injection for N minutes, then a table of outcomes.

``nox -s soak -- MINUTES`` (or ``python tests/reliability/soak.py MINUTES`` from the repository
root). Not part of CI. Scenarios, taken in turn until the time is up:

- ``index fuzz``: 30 seeded mutations of index.json and shard headers per trial, in a child
  under a 4 GiB address-space limit (``index_fuzz.py``, a new seed each trial);
- ``rewrite kill (local)`` / ``rewrite kill (S3)``: ``exist_ok=True`` rewrites killed at random
  points with a reader streaming throughout (``test_rewrite_kill.py``), S3 on moto;
- ``reader SIGKILL``: a reader streaming into a shared cache is killed at a random point; the
  next reader on that cache must get every sample exactly;
- ``HTTP faults``: a read through a proxy that drops connections, answers 500/503 or cuts bodies
  short (random faults on random requests), then a clean read on the same cache.

Allowed outcomes are exact data and astream errors (and, after a kill, no dataset rather than a
mixed one); anything else is a failure, listed after the table, and makes the exit status 1.
"""

from __future__ import annotations

import collections
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(HERE), str(ROOT)]

from reliability_data import classify_read, generation_shape, write_dataset  # noqa: E402
from test_index_fuzz import ADDRESS_SPACE  # noqa: E402
from test_rewrite_kill import _allowed, rewrite_trials  # noqa: E402

from tests.servers.fault_proxy import FaultProxy  # noqa: E402
from tests.servers.http_files import http_file_server  # noqa: E402
from tests.servers.moto_s3 import CREDENTIALS, moto_s3_server  # noqa: E402

Result = list[tuple[str, bool]]  # (outcome, allowed) of each check
# Trials per call of each scenario: mutations, killed rewrites, killed readers, faulty reads.
TRIALS = {"index fuzz": 30, "rewrite kill": 2, "reader SIGKILL": 3, "HTTP faults": 1}


def _write_generation(out: Path, generation: int = 0) -> None:
    count, size = generation_shape(generation)
    write_dataset(out, count, generation=generation, size=size)


def index_fuzz(work: Path, trial: int, rng: random.Random) -> Result:
    got = subprocess.run(
        [
            sys.executable,
            str(HERE / "index_fuzz.py"),
            str(work),
            str(1000 + trial),
            "30",
            str(ADDRESS_SPACE),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if got.returncode != 0:
        return [(f"child failed: {got.stderr.strip().splitlines()[-1:]}", False)]
    rows = [json.loads(line) for line in got.stdout.splitlines()]
    return [
        (
            row["outcome"].split(":")[0] if row["outcome"].startswith("error:") else row["outcome"],
            row["outcome"] == "exact" or row["outcome"].startswith("error:"),
        )
        for row in rows
    ]


def _rewrite(remote: str, work: Path, trial: int) -> Result:
    outcomes = rewrite_trials(remote, work, 2, trial)
    return [(key, _allowed(key)) for key, n in outcomes.items() for _ in range(n)]


def rewrite_local(work: Path, trial: int, rng: random.Random) -> Result:
    return _rewrite(str(work / "data"), work, trial)


def reader_kill(work: Path, trial: int, rng: random.Random) -> Result:
    remote, cache = work / "remote", work / "cache"
    _write_generation(remote)
    code = (
        "import sys\n"
        f"sys.path[:0] = [{str(ROOT)!r}]\n"
        "from astream import StreamingDataset\n"
        "for _ in StreamingDataset(remote=sys.argv[1], local=sys.argv[2], batch_size=1,"
        " shuffle=True, cache_limit=sys.argv[3] if sys.argv[3] != 'none' else None):\n"
        "    pass\n"
    )
    limit = rng.choice(["none", "60kb"])
    results: Result = []
    for _ in range(3):
        with subprocess.Popen(
            [sys.executable, "-c", code, str(remote), str(cache), limit],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ) as child:
            try:
                child.wait(timeout=rng.uniform(0.3, 2.5))
            except subprocess.TimeoutExpired:
                child.send_signal(signal.SIGKILL)
            child.wait()
        read = classify_read(str(remote), cache)
        results.append((f"next read: {'exact' if read == 'gen0' else read}", read == "gen0"))
    return results


def http_faults(server_root: Path, url: str, proxy: FaultProxy) -> Callable[..., Result]:
    def scenario(work: Path, trial: int, rng: random.Random) -> Result:
        name = f"d{trial}"
        _write_generation(server_root / name)
        proxy.clear()
        faults = [
            rng.choice(["drop", "503", "500", "truncate"]) if rng.random() < 0.25 else ""
            for _ in range(60)
        ]
        proxy.inject(f or "pass" for f in faults)
        cache = work / "cache"
        first = classify_read(f"{proxy.url}/{name}", cache, download_retry=rng.randint(0, 3))
        proxy.clear()
        second = classify_read(f"{proxy.url}/{name}", cache)
        shutil.rmtree(server_root / name, ignore_errors=True)
        rename = {"gen0": "exact"}
        return [
            (
                f"faulty read: {rename.get(first, first)}",
                first == "gen0" or first.startswith("error:"),
            ),
            (f"clean read after: {rename.get(second, second)}", second == "gen0"),
        ]

    return scenario


def _table(
    stats: dict[str, collections.Counter[str]],
    trials: dict[str, int],
    bad: dict[str, int],
    elapsed: float,
) -> str:
    lines = [
        f"soak: {elapsed / 60:.1f} minutes",
        "",
        "| scenario | trials | checks | outcomes (checks) | failures |",
        "|---|---|---|---|---|",
    ]
    for scenario, counts in stats.items():
        shown = ", ".join(f"{key} {n}" for key, n in counts.most_common())
        lines.append(
            f"| {scenario} | {trials[scenario]} | {sum(counts.values())} | {shown} "
            f"| {bad.get(scenario, 0)} |"
        )
    return "\n".join(lines)


def main() -> int:
    minutes = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
    deadline = time.monotonic() + minutes * 60
    began = time.monotonic()
    rng = random.Random(20261201)
    stats: dict[str, collections.Counter[str]] = {}
    bad: dict[str, int] = collections.Counter()
    trials_run: dict[str, int] = collections.Counter()
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="astream-soak-") as tmp, moto_s3_server() as moto:
        base = Path(tmp)
        served = base / "served"
        served.mkdir()
        os.environ["S3_ENDPOINT_URL"] = moto.endpoint_url
        os.environ.pop("AWS_ENDPOINT_URL", None)
        os.environ.update(CREDENTIALS)
        with http_file_server(served) as http, FaultProxy(http.url, stall_seconds=1.0) as proxy:

            def rewrite_s3(work: Path, trial: int, rng: random.Random) -> Result:
                return _rewrite(f"s3://{moto.create_bucket()}/data", work, trial)

            scenarios: list[tuple[str, Callable[[Path, int, random.Random], Result]]] = [
                ("index fuzz", index_fuzz),
                ("rewrite kill (local)", rewrite_local),
                ("rewrite kill (S3, moto)", rewrite_s3),
                ("reader SIGKILL, shared cache", reader_kill),
                ("HTTP faults (drop/500/503/truncate)", http_faults(served, http.url, proxy)),
            ]
            trial = 0
            while time.monotonic() < deadline:
                label, scenario = scenarios[trial % len(scenarios)]
                work = base / f"trial{trial}"
                work.mkdir()
                try:
                    results = scenario(work, trial, rng)
                except Exception as exc:  # the harness itself failed: count it, go on
                    results = [(f"harness error: {type(exc).__name__}: {exc}", False)]
                counts = stats.setdefault(label, collections.Counter())
                trials_run[label] += next(n for key, n in TRIALS.items() if label.startswith(key))
                for outcome, allowed in results:
                    counts[outcome] += 1
                    if not allowed:
                        bad[label] += 1
                        failures.append(f"{label} (trial {trial}): {outcome}")
                shutil.rmtree(work, ignore_errors=True)
                trial += 1
                print(
                    f"[{(time.monotonic() - began) / 60:5.1f} min] trial {trial} {label}",
                    file=sys.stderr,
                    flush=True,
                )
    print(_table(stats, trials_run, bad, time.monotonic() - began))
    if failures:
        print("\nfailures:")
        print("\n".join(failures[:50]))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
