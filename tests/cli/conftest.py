"""Fixtures for the ``astream`` command's tests: the CLI run in-process, small datasets, S3."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_support import Result, Run, jpeg, write_jsonl

from astream.cli import main
from tests.servers.moto_s3 import CREDENTIALS, MotoS3
from tests.storage.conftest import moto_s3

__all__ = ["moto_s3"]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    """Run ``astream ARGS...`` in this process: ``run("info", path)``."""

    def call(*argv: object) -> Result:
        capsys.readouterr()
        status = main([str(arg) for arg in argv])
        captured = capsys.readouterr()
        return Result(status, captured.out, captured.err)

    return call


@pytest.fixture
def s3(moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh bucket on moto, with the environment S3 clients read pointed at it."""
    monkeypatch.setenv("S3_ENDPOINT_URL", moto_s3.endpoint_url)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    yield moto_s3.create_bucket()


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """An ImageFolder tree: 3 classes, 4 JPEGs each."""
    root = tmp_path / "images"
    for label, name in enumerate(["cat", "dog", "fox"]):
        (root / name).mkdir(parents=True)
        for i in range(4):
            (root / name / f"{i:03}.jpg").write_bytes(jpeg(10 * label + i))
    return root


@pytest.fixture
def text_rows() -> list[dict[str, Any]]:
    return [{"text": f"document {i} " * (i % 7 + 1), "id": i, "score": i / 4} for i in range(60)]


@pytest.fixture
def jsonl_file(tmp_path: Path, text_rows: list[dict[str, Any]]) -> Path:
    return write_jsonl(tmp_path / "corpus.jsonl", text_rows)
