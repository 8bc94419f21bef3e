"""Fixtures for the interop tests, which run beside the mosaicml-streaming reference package.

Nothing here imports the reference: the default suite collects this file too, with the interop
tests deselected, in an environment that does not have it.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def reference_tempdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point ``tempfile`` at a folder of this test's own.

    The reference leaves lock files and temporary folders (``merge_index`` stages its index files
    in one) in the process's temp dir; each test gets its own so that nothing is shared between
    tests or left in the session's temp dir.
    """
    path = tmp_path / "reference-tmp"
    path.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    return path


@pytest.fixture
def allow_reference_file_leaks() -> Iterator[None]:
    """Let reference code leave files for the garbage collector to close.

    Its ``LocalDataset`` and ``merge_index`` read JSON with ``json.load(open(...))``; the
    ResourceWarning that follows would, under our warnings-are-errors setting, fail a test for a
    reason that says nothing about astream.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        yield
