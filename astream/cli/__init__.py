"""The ``astream`` command: ``convert``, ``info``, ``ls``, ``verify``, ``cp``, ``bench``.

Run it as ``astream ...`` (the console script) or ``python -m astream ...``; see
``docs/cli.md``. :func:`main` takes the arguments and returns the exit status.
"""

from __future__ import annotations

from astream.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
