from __future__ import annotations

import pickle

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
