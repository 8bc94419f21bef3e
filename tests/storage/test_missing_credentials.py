"""No credentials anywhere: every cloud fails at its first request, at once, with one line that
names where it looked and how to provide them (S3: tests/storage/test_s3_edges.py; Azure, whose
test needs Azurite: tests/storage/test_azure.py).

Nothing here may leave loopback: the GCE metadata host is pointed at a closed local port, and
the environment each SDK reads is emptied."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from astream.errors import StoragePermissionError

pytestmark = pytest.mark.anyio

# Long enough for a loaded machine, far shorter than any SDK's own retry schedule.
QUICK = 10.0


def _one_line(exc: BaseException, *names: str) -> str:
    message = str(exc)
    assert "\n" not in message, message
    for name in names:
        assert name in message, (name, message)
    return message


# -- gs:// -----------------------------------------------------------------------------------


@pytest.fixture
def no_google(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    pytest.importorskip("gcloud.aio.storage")
    import gcloud.aio.auth.token as token

    import astream.storage.gcs as gcs

    for name in (
        "GOOGLE_APPLICATION_CREDENTIALS",
        "STORAGE_EMULATOR_HOST",
        "GCE_METADATA_HOST",
        "GCE_METADATA_ROOT",
        "K_SERVICE",
        "CLOUD_RUN_JOB",
        "FUNCTION_TARGET",
        "GAE_ENV",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setattr(gcs, "DMI_PRODUCT_NAME", str(tmp_path / "product_name"))
    # Should anything still ask the metadata server, it asks a closed port on loopback.
    for name in dir(token):
        value = getattr(token, name)
        if isinstance(value, str) and "metadata.google.internal" in value:
            monkeypatch.setattr(
                token, name, value.replace("metadata.google.internal", "127.0.0.1:9")
            )
    yield


async def test_gcs_without_credentials(no_google: None, tmp_path: Path) -> None:
    from astream.storage.gcs import GCSStore

    async with GCSStore("gs://bkt/p") as store:
        with pytest.raises(StoragePermissionError) as refused:
            await asyncio.wait_for(store.read("index.json"), QUICK)
    message = _one_line(
        refused.value,
        "gs://bkt/p",
        "GOOGLE_APPLICATION_CREDENTIALS",
        str(tmp_path / "gcloud" / "application_default_credentials.json"),
        "metadata server",
    )
    assert "unsigned=True" in message


async def test_gcs_finds_application_default_credentials_and_google_cloud(
    no_google: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import astream.storage.gcs as gcs

    store = gcs.GCSStore("gs://bkt/p")
    assert store._missing_credentials() is not None
    (tmp_path / "product_name").write_text("Google Compute Engine\n")
    assert store._missing_credentials() is None  # on Google Cloud: the metadata server
    (tmp_path / "product_name").unlink()
    monkeypatch.setenv("K_SERVICE", "trainer")  # Cloud Run: a metadata server, whatever DMI says
    assert store._missing_credentials() is None
    monkeypatch.delenv("K_SERVICE")
    (tmp_path / "gcloud").mkdir()
    (tmp_path / "gcloud" / "application_default_credentials.json").write_text("{}")
    assert store._missing_credentials() is None
    assert gcs.GCSStore("gs://bkt/p", unsigned=True)._missing_credentials() is None


# -- oci:// ----------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["default", "OCI_CONFIG_FILE"])
async def test_oci_without_a_config(
    how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("oci")
    from astream.storage.oci import OCIStore

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("OCI_CLI_PROFILE", raising=False)
    expected = str(tmp_path / ".oci" / "config")
    if how == "OCI_CONFIG_FILE":
        expected = str(tmp_path / "elsewhere")
        monkeypatch.setenv("OCI_CONFIG_FILE", expected)
    else:
        monkeypatch.delenv("OCI_CONFIG_FILE", raising=False)
    async with OCIStore("oci://bkt@ns/p", endpoint_url="http://127.0.0.1:9") as store:
        with pytest.raises(StoragePermissionError) as refused:
            await asyncio.wait_for(store.read("index.json"), QUICK)
        assert store.retries == 0
    message = _one_line(refused.value, "oci://bkt@ns/p", "OCI_CONFIG_FILE", "oci setup config")
    assert expected in message or expected.replace(str(Path.home()), "~") in message


async def test_oci_with_a_missing_key_file(tmp_path: Path) -> None:
    pytest.importorskip("oci")
    from astream.storage.oci import OCIStore

    config = {
        "user": "ocid1.user.oc1..u",
        "tenancy": "ocid1.tenancy.oc1..t",
        "fingerprint": "00:11",
        "region": "us-ashburn-1",
        "key_file": str(tmp_path / "absent.pem"),
    }
    async with OCIStore(
        "oci://bkt@ns/p", config=config, endpoint_url="http://127.0.0.1:9"
    ) as store:
        with pytest.raises(StoragePermissionError, match=r"absent\.pem") as refused:
            await asyncio.wait_for(store.read("index.json"), QUICK)
    _one_line(refused.value, "cannot sign OCI requests")
