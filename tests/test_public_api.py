from __future__ import annotations

import pickle
import subprocess
import sys

import pytest

import astream
import astream.errors


@pytest.mark.parametrize("name", astream.__all__)
def test_every_public_name_imports(name: str) -> None:
    assert getattr(astream, name) is not None


def test_all_is_a_sorted_tuple_without_duplicates() -> None:
    assert isinstance(astream.__all__, tuple)
    assert len(set(astream.__all__)) == len(astream.__all__)


@pytest.mark.parametrize("name", astream.errors.__all__)
def test_errors_pickle_with_their_type_and_message(name: str) -> None:
    cls = getattr(astream.errors, name)
    err = cls("something went wrong at s3://b/k")
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is cls
    assert str(copy) == "something went wrong at s3://b/k"
    assert isinstance(copy, astream.AstreamError)


def test_missing_objects_are_file_not_found() -> None:
    assert issubclass(astream.ObjectNotFoundError, FileNotFoundError)
    assert issubclass(astream.StorageTimeoutError, TimeoutError)
    assert issubclass(astream.IndexFormatError, ValueError)


def test_loader_without_torch_names_the_extra() -> None:
    # A fresh interpreter where torch cannot be imported, as after `pip install astream`.
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import astream\n"
        "astream.StreamingDataset\n"  # the dataset works without torch
        "try:\n"
        "    from astream import StreamingDataLoader\n"
        "except astream.MissingDependencyError as exc:\n"
        "    assert exc.__cause__ is None and exc.__suppress_context__, exc\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "pip install 'astream[torch]'" in out.stdout, out
