"""Real servers on loopback for tests and benchmarks: started, polled and stopped by us.

Plain context managers (usable from any test directory, benchmarks and scripts); the pytest
fixtures that wrap them live in ``tests/storage/conftest.py``.
"""

from __future__ import annotations
