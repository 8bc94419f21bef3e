"""What keeps a cold process's first sample fast: its reads need no heavy HTTP client.

S3 reads are signed by astream and sent, like plain HTTP(S) reads, through its own HTTP client:
a fresh process that streams a whole epoch from either imports neither aiohttp nor aiobotocore
(together about 0.35 s of import on the build machine), and with S3 keys in the environment and
no AWS config file, not even botocore (about 0.15 s).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from astream import MDSWriter
from astream.storage import open_store
from tests.servers.moto_s3 import CREDENTIALS, MotoS3
from tests.storage.conftest import HTTPFiles

SCRIPT = """
import json, sys
from astream import StreamingDataset
dataset = StreamingDataset(remote=sys.argv[1], local=sys.argv[2], shuffle=False)
ids = [sample["id"] for sample in dataset]
heavy = [name for name in ("aiohttp", "aiobotocore", "botocore") if name in sys.modules]
print(json.dumps({"ids": ids, "heavy": heavy}))
"""


def _dataset(root: Path) -> list[Path]:
    with MDSWriter(out=str(root), columns={"id": "int"}, size_limit=1 << 10) as writer:
        for i in range(200):
            writer.write({"id": i})
    return sorted(root.iterdir())


def _to_s3(moto: MotoS3, files: list[Path]) -> str:
    url = f"s3://{moto.create_bucket()}/ds"

    async def upload() -> None:
        async with open_store(url, **moto.store_options()) as store:
            for path in files:
                await store.upload(path, path.name)

    asyncio.run(upload())
    return url


@pytest.mark.parametrize("kind", ["s3", "http"])
def test_a_cold_epoch_imports_no_http_client_or_sdk(
    kind: str, moto_s3: MotoS3, http_files: HTTPFiles, tmp_path: Path
) -> None:
    files = _dataset(tmp_path / "src")
    env = {**os.environ}
    if kind == "s3":
        url = _to_s3(moto_s3, files)
        env.update(CREDENTIALS, S3_ENDPOINT_URL=moto_s3.endpoint_url)
        env["AWS_CONFIG_FILE"] = str(tmp_path / "no-aws-config")
        for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
            env.pop(name, None)
    else:
        name = uuid.uuid4().hex[:12]
        shutil.copytree(tmp_path / "src", http_files.root / name)
        url = f"{http_files.url}/{name}"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, url, str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["ids"] == list(range(200))
    assert result["heavy"] == []


FIRST_SAMPLE_SCRIPT = """
import json, sys
from astream import StreamingDataset
dataset = StreamingDataset(local=sys.argv[1], shuffle=sys.argv[2] == "1", batch_size=4)
before = set(sys.modules)
sample = next(iter(dataset))
print(json.dumps({"imported": sorted(set(sys.modules) - before)}))
"""


@pytest.mark.parametrize("shuffle", [False, True])
def test_the_first_sample_of_a_local_epoch_imports_nothing(tmp_path: Path, shuffle: bool) -> None:
    # What an epoch needs (numpy.random for the order, the engine) loads with the dataset, not
    # inside a process's first batch.
    _dataset(tmp_path / "src")
    done = subprocess.run(
        [sys.executable, "-c", FIRST_SAMPLE_SCRIPT, str(tmp_path / "src"), str(int(shuffle))],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["imported"] == []
