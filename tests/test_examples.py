"""Every script in examples/ runs to completion on the tiny data it writes itself.

Each runs in a fresh interpreter with warnings as errors, as a user would start it, and must
exit 0 and print the line that says its check passed (the scripts assert their own results).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

# script, its arguments, a line its successful run prints
CASES = [
    ("quickstart.py", ["--samples", "2000", "--num-workers", "1"], "streamed 2000 samples"),
    ("train_resume.py", [], "resumed run matches the uninterrupted run"),
    ("async_pipeline.py", [], "(400 in all,"),
    ("prefetcher_inference.py", [], "scored 300 samples in length order"),
    ("mixing_streams.py", [], "mixing streams done"),
    ("torchrun_two_nodes.py", [], "two nodes saw 320 samples"),
    ("spark_to_mds.py", ["--rows", "1000"], "spark wrote and streamed 1000 samples"),
    ("ray_to_mds.py", ["--rows", "1000"], "ray wrote 1000 samples and scored them"),
]
# The engines start a JVM or a Ray cluster first: more time, and Ray's own DataContext warns
# about its own defaults (which warnings-as-errors would turn into a crash of every worker).
SLOW = {"spark_to_mds.py": "pyspark", "ray_to_mds.py": "ray.data"}
WARNINGS = {"ray_to_mds.py": "error,ignore::DeprecationWarning:ray.data.context"}
# The engines' examples run in their own session (nox -s engines, which installs pyspark and Ray).
PARAMS = [
    pytest.param(*case, id=case[0], marks=[pytest.mark.engines] if case[0] in SLOW else [])
    for case in CASES
]


def test_every_example_is_tested() -> None:
    assert {path.name for path in EXAMPLES.glob("*.py")} == {case[0] for case in CASES}


@pytest.mark.timeout(330)  # each run is bounded by its own subprocess timeout below
@pytest.mark.parametrize(("script", "args", "expected"), PARAMS)
def test_example_runs(script: str, args: list[str], expected: str, tmp_path: Path) -> None:
    if script in SLOW:
        pytest.importorskip(SLOW[script], reason=f"{script} needs {SLOW[script]}")
    env = {
        **os.environ,
        "PYTHONWARNINGS": WARNINGS.get(script, "error"),
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        "TMPDIR": str(tmp_path),
    }
    if script == "ray_to_mds.py":
        # Ray puts its sockets under its temp dir: a pytest tmp_path passes AF_UNIX's 107 bytes.
        env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300 if script in SLOW else 100,
    )
    if "RAY_TMPDIR" in env and env["RAY_TMPDIR"] != os.environ.get("RAY_TMPDIR"):
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert expected in result.stdout, output
