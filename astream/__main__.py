"""``python -m astream``: the ``astream`` command."""

from __future__ import annotations

import sys

from astream.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
