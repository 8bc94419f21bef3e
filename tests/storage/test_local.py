"""LocalStore: the conformance suite on a temp directory, plus local-only behaviour."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conformance import StoreConformance

from astream.errors import StorageError, UnsupportedSchemeError
from astream.storage import Store, open_store
from astream.storage.local import LocalStore


class TestLocalStore(StoreConformance):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[Store]:
        store = open_store(str(tmp_path / uuid.uuid4().hex))
        yield store
        await store.aclose()


pytestmark = pytest.mark.anyio


def test_file_url_and_path_open_the_same_root(tmp_path: Path) -> None:
    a = open_store(f"file://{tmp_path}")
    b = open_store(str(tmp_path))
    assert isinstance(a, LocalStore) and isinstance(b, LocalStore)
    assert a.root == b.root == tmp_path


async def test_keys_cannot_escape_root(tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(b"s")
    store = open_store(str(tmp_path / "root"))
    with pytest.raises(StorageError, match="escapes"):
        await store.read("../secret")


async def test_write_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    await store.write("a/b.bin", b"1" * 1000)
    await store.write("a/b.bin", b"2" * 10)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b.bin"]


def test_unknown_scheme() -> None:
    with pytest.raises(UnsupportedSchemeError, match="nosuch://"):
        open_store("nosuch://bucket/x")


def test_register_store_serves_a_new_scheme(tmp_path: Path) -> None:
    from astream.storage import register_store
    from astream.storage.registry import _FACTORIES

    class MemStore(LocalStore):
        pass

    def factory(url: str, **options: object) -> Store:
        return MemStore(str(tmp_path))

    register_store("memtest", factory)
    try:
        assert isinstance(open_store("memtest://x"), MemStore)
        with pytest.raises(ValueError, match="already registered"):
            register_store("memtest", factory)
        register_store("memtest", factory, replace=True)
    finally:
        _FACTORIES.pop("memtest", None)
