"""Suite-wide setup: the repository root on ``sys.path`` so ``tests.servers`` always imports."""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
