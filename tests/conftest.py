"""Suite-wide setup: the repository root on ``sys.path`` so ``tests.servers`` always imports."""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

# No timing assertions: hypothesis's default 200 ms deadline per example fails on a loaded
# machine (a first call that imports a codec took 350 ms), so the suite runs without one.
from hypothesis import settings  # noqa: E402

settings.register_profile("astream", deadline=None)
settings.load_profile("astream")
