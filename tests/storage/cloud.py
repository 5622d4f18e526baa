"""Object-store servers on loopback for the storage tests: S3 (moto), Google Cloud Storage
(gcp-storage-emulator) and Azure Blob Storage (Azurite, from npm), each started once per
session, with the fixtures that point a test at them.

A helper module, not a test module: conftest.py and the test modules import from here.
``moto_server``, ``gcs_emulator`` and ``azurite_server`` start a server; the ``moto_s3`` /
``s3_env``, ``gcs_server`` / ``gcs_env`` and ``azurite`` fixtures give a test one;
``fsspec_url(kind, tmp_path)`` and ``cloud_storage_options(kind, request)`` build URLs and
options for each kind.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BUCKET = "omniq-test"


# --------------------------------------------------------------------------------------------
# An S3 server on loopback
# --------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def moto_server(**env: str) -> Iterator[str]:
    """Run ``moto_server`` on a free loopback port; yields its endpoint URL."""
    exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **env},
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[str]:
    """A session-wide S3 server with the bucket ``omniq-test``; yields its endpoint."""
    import fsspec

    with moto_server() as endpoint:
        fs = fsspec.filesystem(
            "s3",
            endpoint_url=endpoint,
            key="testing",
            secret="testing",
            skip_instance_cache=True,
        )
        fs.mkdir(BUCKET)
        yield endpoint


@pytest.fixture
def s3_env(moto_s3: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point s3fs at the moto server the standard way (environment) for one test."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_s3)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return moto_s3


# --------------------------------------------------------------------------------------------
# A Google Cloud Storage emulator on loopback (pure Python, from PyPI)
# --------------------------------------------------------------------------------------------
def _wait_http(url: str, proc: subprocess.Popen[Any], what: str, timeout: float = 30) -> None:
    """Until ``url`` answers anything over HTTP (an error status counts: it is up)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.05)


def _stop(proc: subprocess.Popen[Any]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


#: The emulator serves one connection at a time (a plain ``http.server.HTTPServer``, which is
#: also what keeps its in-memory store consistent) with a listen backlog of 5: the 64 parallel
#: requests of a many-object write overflow it and the dropped connections wait for TCP's
#: SYN retry (1 s, 3 s, ...). A longer backlog queues them instead.
_GCS_EMULATOR = textwrap.dedent(
    """
    import sys
    from http import server
    server.HTTPServer.request_queue_size = 1024
    from gcp_storage_emulator.__main__ import main
    main(sys.argv[1:])
    """
)


@contextlib.contextmanager
def gcs_emulator(bucket: str = BUCKET) -> Iterator[str]:
    """Run ``gcp-storage-emulator`` (in memory, with ``bucket``) on a free loopback port; yields
    its endpoint URL, the value for ``STORAGE_EMULATOR_HOST``."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _GCS_EMULATOR,
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--in-memory",
            "-q",
            "--default-bucket",
            bucket,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{endpoint}/storage/v1/b/{bucket}", proc, "gcp-storage-emulator")
        yield endpoint
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[str]:
    """A session-wide GCS emulator with the bucket ``omniq-test``; yields its endpoint."""
    pytest.importorskip("gcsfs", reason="gs:// needs the gcs extra (uv sync --all-extras)")
    with gcs_emulator() as endpoint:
        yield endpoint


@pytest.fixture
def gcs_env(gcs_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point gcsfs at the emulator the standard way (``STORAGE_EMULATOR_HOST``) for one test."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server)
    return gcs_server


# --------------------------------------------------------------------------------------------
# Azurite (Azure Blob Storage emulator, from the npm registry) on loopback
# --------------------------------------------------------------------------------------------
#: Where ``.ci/run`` (or the fixture, the first time) installs Azurite with npm.
AZURITE_DIR = Path(
    os.environ.get("OMNIQ_AZURITE_DIR") or Path.home() / ".cache" / "omniq-ci" / "azurite"
)
#: The npm package .ci/run installs too: 3.35 is the last Azurite that runs on Node.js 20.
AZURITE_PACKAGE = "azurite@3.35.0"
AZURITE_ACCOUNT = "devstoreaccount1"
#: Azurite's well-known development account key (public, the same in every install).
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


def azurite_connection_string(endpoint: str, key: str = AZURITE_KEY) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={key};"
        f"BlobEndpoint={endpoint}/{AZURITE_ACCOUNT};"
    )


def azurite_blob_exe() -> str:
    """The ``azurite-blob`` program: on PATH, or installed under ``AZURITE_DIR`` (with npm,
    now, if it is not there yet). Skips the test when node or npm is missing."""
    local = AZURITE_DIR / "node_modules" / ".bin" / "azurite-blob"
    found = shutil.which("azurite-blob") or (str(local) if local.exists() else None)
    if shutil.which("node") is None:
        pytest.skip("Azurite (Azure Blob Storage emulator) needs node, which is not installed")
    if found:
        return found
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("Azurite (Azure Blob Storage emulator) needs npm to install, not installed")
    AZURITE_DIR.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(
        [
            npm,
            "install",
            "--prefix",
            str(AZURITE_DIR),
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
            AZURITE_PACKAGE,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if out.returncode != 0 or not local.exists():
        reason = f"could not install Azurite with npm: {(out.stderr or out.stdout)[-500:]}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return str(local)


@contextlib.contextmanager
def azurite_server(location: Path, container: str | None = BUCKET) -> Iterator[str]:
    """Run ``azurite-blob`` on a free loopback port with its data under ``location``; yields
    the blob endpoint (``http://127.0.0.1:PORT``; the account is ``devstoreaccount1``)."""
    exe = azurite_blob_exe()
    port = free_port()
    args = [
        exe,
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        str(port),
        "--location",
        str(location),
        "--skipApiVersionCheck",
        "--loose",
        "--silent",
    ]
    help_text = subprocess.run([exe, "--help"], capture_output=True, text=True).stdout
    if "--disableTelemetry" in help_text:  # no calls home from the tests
        args.append("--disableTelemetry")
    log = open(location / "azurite.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{endpoint}/{AZURITE_ACCOUNT}?comp=list", proc, "azurite-blob")
        if container:
            import adlfs

            fs = adlfs.AzureBlobFileSystem(
                connection_string=azurite_connection_string(endpoint), skip_instance_cache=True
            )
            fs.mkdir(container)
        yield endpoint
    finally:
        _stop(proc)
        log.close()


@pytest.fixture(scope="session")
def azurite_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A session-wide Azurite with the container ``omniq-test``; yields its blob endpoint."""
    pytest.importorskip("adlfs", reason="abfs:// needs the azure extra (uv sync --all-extras)")
    with azurite_server(tmp_path_factory.mktemp("azurite")) as endpoint:
        yield endpoint


@pytest.fixture
def azurite(azurite_endpoint: str) -> str:
    """The connection string for the session's Azurite (pass it as storage_options)."""
    return azurite_connection_string(azurite_endpoint)


def fsspec_url(kind: str, tmp_path: Path) -> str:
    """A fresh URL of each kind; s3, gs and abfs need ``cloud_storage_options``."""
    tag = uuid.uuid4().hex[:10]
    if kind == "file":
        return f"file://{tmp_path}/store-{tag}"
    if kind == "memory":
        return f"memory://omniq-{tag}/prefix"
    if kind in ("s3", "gs", "abfs", "az"):
        return f"{kind}://{BUCKET}/run-{tag}"
    raise ValueError(kind)


def cloud_storage_options(kind: str, request: pytest.FixtureRequest) -> dict[str, Any] | None:
    """Start the loopback server for an object store and return the ``storage_options`` that
    reach it: S3 and GCS get their endpoints the standard way (``AWS_*`` variables,
    ``STORAGE_EMULATOR_HOST``), Azure gets a connection string in ``storage_options``."""
    if kind in ("s3", "s3a"):
        request.getfixturevalue("s3_env")
    elif kind in ("gs", "gcs"):
        request.getfixturevalue("gcs_env")
    elif kind in ("abfs", "az"):
        return {"connection_string": request.getfixturevalue("azurite")}
    return None


class Recorded:
    """A moto server of this module's own that records every request it serves."""

    def __init__(self, endpoint: str, path: Path) -> None:
        self.endpoint = endpoint
        self.path = path

    def reset(self) -> None:
        import urllib.request

        req = urllib.request.Request(f"{self.endpoint}/moto-api/recorder/reset-recording", method="POST")
        urllib.request.urlopen(req, timeout=5).close()

    def requests(self) -> list[tuple[str, str]]:
        """(method, url) of every request since the last reset. (Found by pattern, not parsed
        line by line: moto's threads append entries to the file without a lock, so two long
        ones may interleave.)"""
        if not self.path.exists():
            return []
        return _ENTRY.findall(self.path.read_text(errors="replace"))


_ENTRY = re.compile(r'"method": "([A-Z]+)", "url": "([^"]+)"')
