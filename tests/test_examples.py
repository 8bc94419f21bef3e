"""Every script in examples/ runs to completion on the tiny data it writes itself.

Each runs in a fresh interpreter with warnings as errors, as a user would start it, and must
exit 0 and print the line that says its check passed (the scripts assert their own results).
"""

from __future__ import annotations

import os
import subprocess
import sys
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
]


def test_every_example_is_tested() -> None:
    assert {path.name for path in EXAMPLES.glob("*.py")} == {case[0] for case in CASES}


@pytest.mark.parametrize(("script", "args", "expected"), CASES, ids=[c[0] for c in CASES])
def test_example_runs(script: str, args: list[str], expected: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONWARNINGS": "error",
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        "TMPDIR": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert expected in result.stdout, output
