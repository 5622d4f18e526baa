"""Live subscriptions: every transition of a task, even one run by another process."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path

import anyio
import pytest

from omniq import AsyncOmniQ, OmniQ

from .. import helpers

ROOT = Path(__file__).resolve().parents[2]


def _worker(url: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "omniq.cli", "worker", "--tasks", url, "--worker", "process", "-c", "1"],
        cwd=ROOT, stderr=subprocess.PIPE, text=True,
    )


def test_subscribe_sees_every_transition_of_a_task_run_by_another_process(tmp_path):
    url = f"sqlite:///{tmp_path}/e.db"
    proc = _worker(url)

    async def main() -> list[str]:
        async with AsyncOmniQ(tasks=url, concurrency=0) as oq:
            stream = oq.subscribe(types=None)
            tid = await oq.enqueue(helpers.boom_once_then, args=(str(tmp_path / "m"),), retries=1, retry_delay=0.01)
            seen: list[str] = []
            with anyio.fail_after(60):
                async for ev in stream:
                    if ev.task_id == tid:
                        seen.append(ev.type)
                        if ev.type == "succeeded":
                            break
            return seen

    try:
        seen = asyncio.run(main())
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert seen[0] == "enqueued"
    assert seen.count("started") == 2 and "retry" in seen and seen[-1] == "succeeded"
    assert seen.index("retry") < len(seen) - 1


def test_slow_subscriber_does_not_slow_workers_and_learns_what_it_missed(tmp_path):
    async def main() -> tuple[float, list[str]]:
        async with AsyncOmniQ(tasks=f"sqlite:///{tmp_path}/s.db", worker="thread", concurrency=2) as oq:
            stream = oq.subscribe(buffer=10)  # never read while the work runs
            t0 = time.monotonic()
            hs = await oq.map(helpers.square, range(500))
            for h in hs:
                await h.result(60)
            elapsed = time.monotonic() - t0
            got: list[str] = []
            async for ev in stream:
                got.append(ev.type if ev.type != "dropped" else f"dropped:{ev.detail}")
                if len(got) >= 11:
                    break
            return elapsed, got

    elapsed, got = asyncio.run(main())
    assert elapsed < 30
    assert len([g for g in got if not g.startswith("dropped")]) == 10
    dropped = [g for g in got if g.startswith("dropped")]
    assert dropped and "events dropped" in dropped[0]


def test_on_event_callback_gets_events_from_another_process(tmp_path):
    url = f"sqlite:///{tmp_path}/c.db"
    proc = _worker(url)
    got: list[tuple[str, str]] = []
    done = threading.Event()

    def callback(ev):
        got.append((ev.task_id, ev.type))
        if ev.type == "succeeded":
            done.set()

    try:
        with OmniQ(tasks=url, concurrency=0) as oq:
            unsubscribe = oq.on_event(callback, types=["started", "succeeded"])
            tid = oq.enqueue(helpers.square, args=(7,))
            assert done.wait(60)
            unsubscribe()
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert (tid, "started") in got and (tid, "succeeded") in got
    assert all(t in ("started", "succeeded") for _, t in got)


@pytest.mark.anyio
async def test_a_subscription_closed_under_its_consumer_just_ends():
    """Closing an instance while a consumer waits on a subscription ended that consumer with
    anyio's ClosedResourceError (a traceback printed at close after a sweep)."""
    import anyio

    from omniq.events.processor import Subscription

    sub = Subscription(None, None, None, buffer=10)
    got: list[str] = []

    async def consume() -> None:
        async for ev in sub:
            got.append(ev.type)

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        await anyio.sleep(0.05)
        sub.close()  # what the processor does to every subscription when it stops
    assert got == []
