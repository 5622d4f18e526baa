"""Backend URLs the contract suite runs on: a new backend joins by adding its URL here.

``{tmp}`` is replaced by a fresh temporary directory per test. ``#no-returning`` runs the SQLite
backend with ``UPDATE ... RETURNING`` emulated, as on SQLite < 3.35. ``postgresql://{server}``,
``redis://{server}`` and ``nats://{server}`` name the shared server of that kind, in a namespace
of the test's own (see ``backends.py``); the test is skipped when that server does not answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from omniq.storage.base import EventStore, ResultStore, TaskQueue
from omniq.storage.sqlite import connection as sqlite_connection
from omniq.storage.urls import open_backends

from .backends import SERVERS
from .cloud import (  # noqa: F401  (fixtures for the s3://, gs:// and abfs:// URLs)
    azurite,
    azurite_endpoint,
    cloud_storage_options,
    gcs_env,
    gcs_server,
    moto_s3,
    s3_env,
)

#: Backends that hold a task queue (they also run the result and event parts).
TASK_QUEUE_URLS = [
    "memory://",
    "sqlite:///{tmp}/t.db",
    "sqlite://:memory:",
    "sqlite:///{tmp}/t.db#no-returning",
    "file://{tmp}/fq",
    "postgresql://{server}",
    "redis://{server}",
    "nats://{server}",
    # bucket task queues (omniq.storage.bucket: conditional writes) on loopback servers: S3 on
    # moto, Azure Blob on Azurite (skipped without node and npm). gcp-storage-emulator ignores
    # ifGenerationMatch, so gs:// runs results and events only (tests/storage/test_bucket_gcs.py).
    "s3://omniq-test{tmp}/bq",  # (several shards: tests/storage/test_bucket.py, on their own)
    "abfs://omniq-test{tmp}/bq",
]
#: Task queue URLs whose results and events are the fsspec store already listed below.
BUCKET_QUEUE_URLS = [u for u in TASK_QUEUE_URLS if u.startswith(("s3://", "abfs://"))]
#: Backends run here for their results and events only. Each object store runs against a real
#: server on loopback: ``s3://`` on moto, ``gs://`` on gcp-storage-emulator, ``abfs://`` on
#: Azurite (skipped without node and npm).
RESULT_EVENT_ONLY_URLS: list[str] = [
    "memory://bucket{tmp}",
    "s3://omniq-test{tmp}",
    "gs://omniq-test{tmp}",
    "abfs://omniq-test{tmp}",
]

RESULT_STORE_URLS = [u for u in TASK_QUEUE_URLS if u not in BUCKET_QUEUE_URLS] + RESULT_EVENT_ONLY_URLS
EVENT_STORE_URLS = RESULT_STORE_URLS
#: URLs whose storage is private to one backend object (opening the URL again gives new storage).
PRIVATE_URLS = {"memory://", "sqlite://:memory:"}


def shares_storage(url: str) -> bool:
    """True when a second backend opened on ``url`` sees the same data (another connection)."""
    return url not in PRIVATE_URLS


def _url(
    template: str, tmp: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> str:
    scheme, _, rest = template.partition("://")
    if rest == "{server}":
        problem, fresh = SERVERS[scheme]
        why = problem()
        if why is not None:
            pytest.skip(why)
        namespace = fresh()
        url = namespace.__enter__()
        request.addfinalizer(lambda: namespace.__exit__(None, None, None))
        return url
    url = template.format(tmp=tmp)
    if url.startswith("s3://"):
        request.getfixturevalue("s3_env")  # starts the loopback S3 server, sets AWS_* for it
    if url.startswith("gs://"):
        request.getfixturevalue("gcs_env")  # the GCS emulator, STORAGE_EMULATOR_HOST for it
    if url.startswith("abfs://") and template in TASK_QUEUE_URLS:
        # Azurite, reached the standard way (adlfs reads the variable), so a second connection
        # opened on the bare URL (as some contract tests do) reaches it too
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", request.getfixturevalue("azurite"))
    if url.endswith("#no-returning"):
        monkeypatch.setattr(sqlite_connection, "HAS_RETURNING", False)
        url = url.removesuffix("#no-returning")
    return url


@pytest.fixture
def url_of(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Callable[[str], str]:
    """Turn a URL template into a URL for this test (see module docstring): the same template
    gives the same URL throughout the test (a second connection to the same storage)."""
    made: dict[str, str] = {}

    def url_of(template: str) -> str:
        if template not in made:
            made[template] = _url(template, tmp_path, monkeypatch, request)
        return made[template]

    return url_of


@pytest.fixture(params=TASK_QUEUE_URLS)
async def queue(
    request: pytest.FixtureRequest, url_of: Callable[[str], str]
) -> AsyncIterator[TaskQueue]:
    url = url_of(request.param)
    options = cloud_storage_options(url.split("://")[0], request)  # Azurite's connection
    tq, _, _ = open_backends(url, storage_options=options)
    await tq.connect()
    try:
        yield tq
    finally:
        await tq.close()


@pytest.fixture(params=RESULT_STORE_URLS)
async def results(
    request: pytest.FixtureRequest, url_of: Callable[[str], str]
) -> AsyncIterator[ResultStore]:
    url = url_of(request.param)
    options = cloud_storage_options(url.split("://")[0], request)  # Azurite's connection
    _, store, _ = open_backends("memory://", url, url, storage_options=options)
    await store.connect()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture(params=EVENT_STORE_URLS)
async def events(
    request: pytest.FixtureRequest, url_of: Callable[[str], str]
) -> AsyncIterator[EventStore]:
    url = url_of(request.param)
    options = cloud_storage_options(url.split("://")[0], request)
    _, _, store = open_backends("memory://", url, url, storage_options=options)
    await store.connect()
    try:
        yield store
    finally:
        await store.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The object-store runs (moto, Azurite and gcp-storage-emulator on loopback, tens of ms a
    request) are marked slow, as the server runs of the lifecycle module are: a local
    ``-m "not slow"`` run keeps the in-process and server backends; CI's full run has all."""
    for item in items:
        spec = getattr(item, "callspec", None)
        if spec is not None and any(isinstance(v, str) and v.startswith(("s3://", "gs://", "abfs://"))
                                    for v in spec.params.values()):
            item.add_marker(pytest.mark.slow)
