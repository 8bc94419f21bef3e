"""Warnings attributed to the user's line, however deep inside astream they are raised."""

from __future__ import annotations

import os
import sys
import warnings

__all__ = ["warn_at_caller"]

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn_at_caller(message: str, category: type[Warning]) -> None:
    """``warnings.warn`` at the first frame outside astream.

    A fixed ``stacklevel`` points at the wrong line as soon as the call path changes depth (a
    constructor that loads its index at once, or later on first use), so the frames are walked.
    """
    frame = sys._getframe(1)
    level = 2  # 1 would be this function
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    warnings.warn(message, category, stacklevel=level)
