"""omniq.hpc's pure parts, without a scheduler: a pool's bookkeeping and decisions (``book.py``),
its link to the OmniQ it serves (``link.py``) and its monitor thread (``monitor.py``).

The same code runs against a real SLURM in ``test_hpc.py``; here each rule is one small case.
"""

from __future__ import annotations

import doctest
import importlib
import threading
from typing import Any

import pytest

from omniq import AsyncOmniQ, ConfigError, OmniQ
from omniq.hpc import Job
from omniq.hpc.book import UNLISTED_GRACE, JobBook, Plan, wanted
from omniq.hpc.link import close_with, core_of, waiting
from omniq.hpc.monitor import Monitor


# --------------------------------------------------------------------------- wanted
@pytest.mark.parametrize(("lo", "hi", "have", "cores", "tasks", "force", "scaling", "want"), [
    (3, 3, 5, 1, (9, 0), True, True, 3),  # scale(n) now: exactly n, whatever the tasks
    (0, 20, 0, 4, (30, 8), False, False, 10),  # adapt: slots for queued + running
    (0, 5, 0, 4, (30, 8), False, False, 5),  # ... at most the maximum
    (2, 20, 0, 4, (1, 0), False, False, 2),  # ... at least the minimum
    (2, 20, 7, 4, (0, 9), False, False, 2),  # nothing queued: the minimum (running ones leave when idle)
    (2, 20, 7, 4, None, False, False, 2),  # unknown counts: as none
    (4, 4, 1, 1, (3, 0), False, True, 4),  # kept at a scale: replace ended jobs while tasks wait
    (4, 4, 1, 1, (0, 3), False, True, 1),  # ... and not when none is queued
    (4, 4, 6, 1, (0, 3), False, True, 4),  # ... never above the scale
])
def test_wanted(lo: int, hi: int, have: int, cores: int, tasks: tuple[int, int] | None, force: bool,
                scaling: bool, want: int) -> None:
    assert wanted(lo, hi, have=have, cores=cores, tasks=tasks, force=force, scaling=scaling) == want


# --------------------------------------------------------------------------- plan
def _book(*jobs: tuple[str, str, float]) -> JobBook:
    """A book holding (id, state, submitted at) jobs, as listed."""
    book = JobBook()
    for i, _, at in jobs:
        book.submitted([i], at)
    book.merge([Job(id=i, state=state, job_id=i) for i, state, _ in jobs], now=100.0, log_dir="/l", name="p")
    return book


def test_plan_submits_what_is_missing() -> None:
    book = _book(("1", "RUNNING", 1.0))
    assert book.plan(list(book.jobs.values()), 3, 3, cores=1, tasks=None, force=True) == Plan(submit=2)


def test_plan_cancels_the_newest_pending_jobs_first() -> None:
    book = _book(("1", "RUNNING", 1.0), ("2", "PENDING", 2.0), ("3", "PENDING", 3.0), ("4", "PENDING", 4.0))
    jobs = list(book.jobs.values())
    assert book.plan(jobs, 2, 2, cores=1, tasks=None, force=True) == Plan(cancel=("4", "3"))
    # adapting: no more than the pending ones; running jobs leave on their own when idle
    assert book.plan(jobs, 0, 5, cores=1, tasks=(0, 0)) == Plan(cancel=("4", "3", "2"))


def test_plan_asks_running_jobs_to_leave_only_for_a_scale() -> None:
    book = _book(("1", "RUNNING", 1.0), ("2", "RUNNING", 2.0), ("3", "PENDING", 3.0))
    jobs = list(book.jobs.values())
    assert book.plan(jobs, 1, 1, cores=1, tasks=None, force=True) == Plan(cancel=("3",), leave=("2",))
    assert book.plan(jobs, 0, 1, cores=1, tasks=(0, 0)) == Plan(cancel=("3",))


def test_plan_at_size_checks_pending_jobs_and_ignores_those_leaving() -> None:
    book = _book(("1", "RUNNING", 1.0), ("2", "PENDING", 2.0), ("3", "RUNNING", 3.0))
    book.cancelled(["3"], graceful=True)
    plan = book.plan(list(book.jobs.values()), 2, 2, cores=1, tasks=None, force=True)
    assert plan.submit == 0 and not plan.cancel and not plan.leave
    assert [j.id for j in plan.check] == ["2"]
    assert book.warn_once("2") and not book.warn_once("2")


# --------------------------------------------------------------------------- bookkeeping
def test_cancelled_at_once_or_leaving() -> None:
    book = _book(("1", "RUNNING", 1.0), ("2", "RUNNING", 2.0))
    book.cancelled(["1"], graceful=False)
    book.cancelled(["2"], graceful=True)
    assert list(book.jobs) == ["2"] and book.jobs["2"].stopping and not book.jobs["2"].active
    # still listed: still marked as leaving
    book.merge([Job(id="2", state="RUNNING", job_id="2")], now=101.0, log_dir="/l", name="p")
    assert book.jobs["2"].stopping


def test_merge_keeps_a_job_just_submitted_until_listed() -> None:
    book = JobBook()
    book.submitted(["9"], now=50.0)
    assert [j.id for j in book.merge([], now=50.0 + UNLISTED_GRACE / 2, log_dir="/l", name="p")] == ["9"]
    assert book.merge([], now=50.0 + UNLISTED_GRACE + 1, log_dir="/l", name="p") == []
    assert not book.submitted_at


def test_merge_forgets_a_listed_job_once_gone() -> None:
    book = JobBook()
    book.submitted(["9"], now=50.0)
    book.merge([Job(id="9", state="PENDING")], now=51.0, log_dir="/l", name="p")
    assert book.jobs["9"].log is None  # not started: no log yet
    book.merge([Job(id="9", state="RUNNING", job_id="10")], now=52.0, log_dir="/l", name="p")
    assert book.jobs["9"].log == "/l/p-10.log"
    assert book.merge([], now=53.0, log_dir="/l", name="p") == []  # gone at once (it was listed)
    assert not book.listed and not book.submitted_at


def test_merge_adopts_jobs_it_did_not_submit() -> None:
    book = JobBook()
    jobs = book.merge([Job(id="5", state="RUNNING", job_id="5")], now=10.0, log_dir="/l", name="p")
    assert [j.id for j in jobs] == ["5"] and book.submitted_at == {"5": 10.0}


# --------------------------------------------------------------------------- link
def test_core_of() -> None:
    oq = OmniQ("memory://", concurrency=0)
    assert isinstance(core_of(oq), AsyncOmniQ) and core_of(core_of(oq)) is core_of(oq)
    with pytest.raises(ConfigError, match="oq must be an OmniQ or AsyncOmniQ, got int"):
        core_of(3)


class _Pool:
    closed = False

    def close(self, *, wait: bool = True) -> None:
        self.closed = True


def test_waiting_counts_the_pools_queues(tmp_path: Any) -> None:
    with OmniQ(f"sqlite:///{tmp_path}/q.db", concurrency=0, queues=["a", "b"]) as oq:
        oq.enqueue(print, (1,), queue="a")
        oq.enqueue(print, (2,), queue="b")
        oq.enqueue(print, (3,), queue="b")
        core = core_of(oq)
        assert waiting(core, None) == (3, 0)
        assert waiting(core, ["b"]) == (2, 0)
    assert waiting(core, None) is None  # closed: unknown


def test_closing_the_omniq_closes_the_pool() -> None:
    oq, pool = OmniQ("memory://", concurrency=0), _Pool()
    close_with(pool, oq)
    oq.close()
    assert pool.closed


@pytest.mark.anyio
async def test_closing_the_async_omniq_closes_the_pool() -> None:
    aoq, pool = AsyncOmniQ("memory://", concurrency=0), _Pool()
    close_with(pool, aoq)
    await aoq.close()
    assert pool.closed


# --------------------------------------------------------------------------- monitor
def test_monitor_keeps_going_after_a_failing_tick(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []
    done = threading.Event()

    def tick() -> None:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("controller unreachable")
        done.set()

    m = Monitor("omniq-hpc-test", "test pool")
    with caplog.at_level("WARNING", logger="omniq.hpc"):
        m.start(tick, lambda: 0.01)
        assert done.wait(10)
        m.stop(join=True)
    said = [r.getMessage() for r in caplog.records if r.name == "omniq.hpc"]
    assert said[0] == "test pool: controller unreachable (will keep trying)"  # once, not per failure
    assert "test pool: the scheduler answers again" in said and len(said) == 2


@pytest.mark.parametrize("module", ["omniq.hpc.book", "omniq.hpc.link", "omniq.hpc.monitor"])
def test_docstring_examples(module: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted and not result.failed
