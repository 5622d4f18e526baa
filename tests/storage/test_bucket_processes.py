"""Real ``omniq worker`` processes on one bucket task queue (``s3://`` on a moto server of this
module's own, which records every request; ``abfs://`` on Azurite): each task runs once, ``kill -9`` of a worker loses
nothing, a schedule fires once per slot across processes, and an idle worker asks the store
less than once a second."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from omniq.storage.urls import open_backends

from .backends import stop_workers
from .cloud import BUCKET, Recorded, moto_server

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorded]:
    import fsspec

    path = tmp_path_factory.mktemp("moto") / "requests.jsonl"
    env = {"MOTO_ENABLE_RECORDING": "True", "MOTO_RECORDER_FILEPATH": str(path)}
    with moto_server(**env) as endpoint:
        fs = fsspec.filesystem("s3", endpoint_url=endpoint, key="testing", secret="testing",
                               skip_instance_cache=True)  # fmt: skip
        fs.mkdir(BUCKET)
        yield Recorded(endpoint, path)


@pytest.fixture
def s3(recorded: Recorded, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The AWS_* variables that reach the server (set here too), for the workers' environment."""
    env = {
        "AWS_ENDPOINT_URL": recorded.endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    yield env


def fresh_url() -> str:
    return f"s3://{BUCKET}/procs-{uuid.uuid4().hex[:10]}"


def start_worker(url: str, env: dict[str, str], *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "omniq.cli", "worker", "--tasks", url, *extra],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,  # a pipe nobody reads would block a chatty worker
        start_new_session=True,
    )




def test_two_worker_processes_run_each_task_once(s3: dict[str, str]) -> None:
    from omniq import OmniQ
    from tests.helpers import sleep_return

    url = fresh_url()
    procs = [start_worker(url, s3, "--worker", "thread", "-c", "4") for _ in range(2)]
    try:
        with OmniQ(tasks=url, concurrency=0) as oq:
            # 200 x 50 ms on 4 slots is 2.5 s for one worker: longer than an idle worker's
            # 2 s between looks, so both take work
            handles = [oq.submit(sleep_return, 0.05, i) for i in range(200)]
            assert [h.result(timeout=180) for h in handles] == list(range(200))
            events = oq.events()
        started = Counter(e.task_id for e in events if e.type == "started")
        assert len(started) == 200 and set(started.values()) == {1}  # each ran exactly once
        assert len({e.worker for e in events if e.type == "started"}) == 2  # both took work
    finally:
        stop_workers(procs)


def test_two_worker_processes_on_azure_blob_run_each_task_once(
    azurite: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from omniq import OmniQ
    from tests.helpers import sleep_return

    url = f"abfs://{BUCKET}/procs-{uuid.uuid4().hex[:10]}"
    env = {"AZURE_STORAGE_CONNECTION_STRING": azurite}  # adlfs reads it; so do the workers
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite)
    procs = [start_worker(url, env, "--worker", "thread", "-c", "4") for _ in range(2)]
    try:
        with OmniQ(tasks=url, concurrency=0) as oq:
            handles = [oq.submit(sleep_return, 0.05, i) for i in range(120)]
            assert [h.result(timeout=180) for h in handles] == list(range(120))
            events = oq.events()
        started = Counter(e.task_id for e in events if e.type == "started")
        assert len(started) == 120 and set(started.values()) == {1}
    finally:
        stop_workers(procs)


def test_a_killed_worker_loses_nothing(s3: dict[str, str], tmp_path: Path) -> None:
    from omniq import OmniQ
    from tests.helpers import sleep_return, touch_then_sleep

    url = fresh_url()
    victim = start_worker(url, s3, "--worker", "process", "-c", "2", "--lease", "2")
    procs = [victim]
    try:
        with OmniQ(tasks=url, concurrency=0) as oq:
            marker = tmp_path / "started"
            slow = oq.submit(touch_then_sleep, str(marker), 2.0)
            rest = [oq.submit(sleep_return, 0.05, i) for i in range(10)]
            deadline = time.monotonic() + 60
            while not marker.exists():
                assert time.monotonic() < deadline, "the task never started"
                time.sleep(0.05)
            os.killpg(victim.pid, signal.SIGKILL)  # the worker and its children, mid-task
            victim.wait(10)
            procs.append(start_worker(url, s3, "--worker", "process", "-c", "2", "--lease", "2"))
            assert slow.result(timeout=120) == 2.0
            assert [h.result(timeout=120) for h in rest] == list(range(10))
            task = asyncio.run(_get_task(url, slow.id))
            assert task is not None and task.deliveries >= 2  # delivered again after the kill
    finally:
        stop_workers(procs)


async def _get_task(url: str, task_id: str) -> object:
    q, _, _ = open_backends(url)
    await q.connect()
    try:
        return await q.get_task(task_id)
    finally:
        await q.close()


def test_a_schedule_fires_once_per_slot_across_processes(s3: dict[str, str]) -> None:
    from omniq import OmniQ
    from tests.helpers import square

    url = fresh_url()
    # two worker processes and this one each run the scheduler on the same queue
    procs = [start_worker(url, s3, "--worker", "thread", "-c", "2") for _ in range(2)]
    try:
        with OmniQ(tasks=url, concurrency=0) as oq:
            sid = oq.schedule(square, interval=0.5, args=(3,), name="every-500ms")
            deadline = time.monotonic() + 60
            found: list[float] = []
            while len(found) < 8:
                assert time.monotonic() < deadline, f"only {len(found)} slots fired"
                time.sleep(0.5)
                ids = dict.fromkeys(e.task_id for e in oq.events(types=["enqueued"]))
                results = [r for t in ids if (r := oq.get_result(t)) is not None
                           and r.metadata.get("schedule") == sid]  # fmt: skip
                found = [r.metadata["slot"] for r in results]
            oq.pause_schedule(sid)
        dupes = {s: n for s, n in Counter(found).items() if n > 1}
        assert not dupes, f"slots fired more than once: {dupes}"
        steps = [b - a for a, b in itertools.pairwise(sorted(found))]
        assert all(round(st / 0.5) >= 1 and st == pytest.approx(0.5 * round(st / 0.5), abs=1e-6)
                   for st in steps), steps  # on the grid (a slot missed under load is skipped)
    finally:
        stop_workers(procs)


def test_an_idle_worker_asks_the_store_less_than_once_a_second(
    s3: dict[str, str], recorded: Recorded
) -> None:
    url = fresh_url()
    recorded.reset()
    proc = start_worker(url, s3, "--worker", "thread", "-c", "2")
    prefix = url.split("/", 3)[-1]
    try:
        deadline = time.monotonic() + 60
        while not any(f"{prefix}/queue/workers/" in u and m == "PUT" for m, u in recorded.requests()):
            assert time.monotonic() < deadline, "the worker never sent a heartbeat"
            assert proc.poll() is None, "the worker exited"
            time.sleep(0.2)
        time.sleep(3)  # past its start: opening, the first looks
        recorded.reset()
        window = 20.0
        time.sleep(window)
        sent = recorded.requests()
        rate = len(sent) / window
        kinds = Counter(f"{m} {u.split('?')[0].rsplit('/', 2)[-2]}" for m, u in sent)
        print(f"idle worker: {len(sent)} requests in {window:.0f} s = {rate:.2f}/s {dict(kinds)}")
        assert rate <= 1.0, (rate, kinds)
        assert not any(m == "PUT" and "/shard-" in u for m, u in sent)  # nothing written
    finally:
        stop_workers([proc])
