"""The operator's commands as a user runs them: ``omniq tasks | show | retry | cancel | purge |
schedules`` in subprocesses, against a real SQLite file and the shared Redis server (a key
prefix of the test's own), with tasks run by real workers."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from omniq import OmniQ

from . import helpers
from .storage.backends import SERVERS


def omniq(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "omniq.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(params=["sqlite", "redis"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/lab.db"
        return
    problem, fresh = SERVERS["redis"]
    why = problem()
    if why is not None:
        pytest.skip(why)
    with fresh() as u:
        yield u


@pytest.fixture
def lab(url: str, tmp_path: Path) -> dict[str, str]:
    """A queue with three finished tasks (one failed), one waiting, one schedule."""
    marker = str(tmp_path / "boom-once")
    with OmniQ(tasks=url, worker="thread", concurrency=2) as oq:
        ok = oq.enqueue(helpers.square, args=(7,))
        bad = oq.enqueue(helpers.boom_once_then, args=(marker,), queue="gpu")
        ok2 = oq.enqueue(helpers.square, args=(8,))
        for t in (ok, bad, ok2):
            oq.get_result(t, wait=True, timeout=30)
            while not oq.status(t).is_final:
                pass
        waiting = oq.enqueue(helpers.square, args=(9,), delay=3600)
        oq.schedule(helpers.square, interval=3600, args=(1,), name="hourly")
    return {"url": url, "ok": ok, "bad": bad, "ok2": ok2, "waiting": waiting}


@pytest.mark.slow  # (each command is a new Python process: ~1-2 s of imports)
def test_tasks_lists_and_filters(lab: dict[str, str]) -> None:
    u = lab["url"]
    p = omniq("tasks", "--tasks", u)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].split()[:3] == ["ID", "STATUS", "QUEUE"]
    assert [ln.split()[0] for ln in lines[1:]] == [lab["waiting"], lab["ok2"], lab["bad"], lab["ok"]]
    assert lines[3].split()[1:4] == ["failed", "gpu", "tests.helpers.boom_once_then"]
    p = omniq("tasks", "--tasks", u, "--status", "failed", "--json")
    rows = json.loads(p.stdout)
    assert [(r["id"], r["status"], r["queue"]) for r in rows] == [(lab["bad"], "failed", "gpu")]
    p = omniq("tasks", "--tasks", u, "--status", "succeeded,pending", "--queue", "default", "--limit", "2",
              "--json")
    assert [r["id"] for r in json.loads(p.stdout)] == [lab["waiting"], lab["ok2"]]
    p = omniq("tasks", "--tasks", u, "--limit", "2")
    assert f"omniq tasks --before {lab['ok2']}" in p.stdout  # how to get the next page
    p = omniq("tasks", "--tasks", u, "--before", lab["ok2"], "--json")
    assert [r["id"] for r in json.loads(p.stdout)] == [lab["bad"], lab["ok"]]
    p = omniq("tasks", "--tasks", u, "--status", "finished")
    assert p.returncode == 2 and "valid: pending" in p.stderr and "Traceback" not in p.stderr


def test_show_a_failed_task_and_an_unknown_id(lab: dict[str, str]) -> None:
    u = lab["url"]
    p = omniq("show", lab["bad"], "--tasks", u)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert f"id:        {lab['bad']}" in out and "status:    failed" in out
    assert "error:     RuntimeError: first attempt fails" in out
    assert "traceback:" in out and "raise RuntimeError" in out
    assert "events:" in out and " enqueued" in out and " started" in out
    p = omniq("show", lab["ok"], "--json", "--tasks", u)
    (d,) = json.loads(p.stdout)
    assert (d["id"], d["status"], d["args"], d["value"]) == (lab["ok"], "succeeded", "(7,)", "49")
    assert "result" not in d and d["events"][0]["type"] == "enqueued"
    p = omniq("show", "0000feedbeef", "--tasks", u)
    assert p.returncode == 1
    assert "no task 0000feedbeef" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.slow  # (each command is a new Python process: ~1-2 s of imports)
def test_retry_cancel_and_purge(lab: dict[str, str]) -> None:
    u = lab["url"]
    p = omniq("retry", "--failed", "--queue", "gpu", "--json", "--tasks", u)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == [{"id": lab["bad"], "status": "queued", "retried": True}]
    p = omniq("retry", lab["ok"], "0000feedbeef", "--tasks", u)
    assert p.returncode == 1
    assert f"{lab['ok']}  is succeeded: not retried" in p.stdout and "no task 0000feedbeef" in p.stderr
    with OmniQ(tasks=u, worker="thread", concurrency=1, queues=["gpu"]) as oq:  # runs it again
        r = oq.get_result(lab["bad"], wait=True, timeout=30)
        assert r is not None and r.value == "ok" and r.attempts == 2

    p = omniq("cancel", lab["waiting"], lab["ok"], "0000feedbeef", "--tasks", u)
    assert p.returncode == 1
    assert f"{lab['waiting']}  cancelled" in p.stdout and f"{lab['ok']}  is succeeded: nothing to cancel" in p.stdout
    assert "no task 0000feedbeef" in p.stderr
    p = omniq("cancel", lab["waiting"], "--json", "--tasks", u)
    assert json.loads(p.stdout) == [{"id": lab["waiting"], "status": "cancelled", "cancelled": False}]

    p = omniq("purge", "--older-than", "7d", "--tasks", u, "--json")
    assert json.loads(p.stdout) == {"tasks": 0, "results": 0, "events": 0, "blobs": 0}
    p = omniq("purge", "--older-than", "0", "--status", "cancelled", "--tasks", u)
    assert p.returncode == 0 and p.stdout.startswith("purged 1 tasks, 1 results")
    p = omniq("purge", "--older-than", "0s", "--tasks", u, "--json")
    assert json.loads(p.stdout)["tasks"] == 3
    with OmniQ(tasks=u, concurrency=0) as oq:
        assert oq.tasks() == []
    p = omniq("purge", "--older-than", "soon", "--tasks", u)
    assert p.returncode == 2 and "--older-than" in p.stderr and "7d" in p.stderr


@pytest.mark.slow  # (each command is a new Python process: ~1-2 s of imports)
def test_schedules_pause_and_resume(lab: dict[str, str]) -> None:
    u = lab["url"]
    p = omniq("schedules", "--tasks", u)
    assert p.returncode == 0, p.stderr
    assert "hourly" in p.stdout and "active" in p.stdout and "every 1h" in p.stdout
    p = omniq("schedules", "--pause", "hourly", "--tasks", u)
    assert p.returncode == 0 and "hourly  paused" in p.stdout
    (row,) = json.loads(omniq("schedules", "--json", "--tasks", u).stdout)
    assert (row["name"], row["status"], row["paused"]) == ("hourly", "paused", True) and row["id"]
    p = omniq("schedules", "--resume", row["id"], "--json", "--tasks", u)
    assert json.loads(p.stdout)[0]["status"] == "active"
    p = omniq("schedules", "--resume", "nosuch", "--tasks", u)
    assert p.returncode == 1 and "nosuch" in p.stderr and "Traceback" not in p.stderr


def test_a_missing_sqlite_file_is_named_and_not_created(tmp_path: Path) -> None:
    for cmd in (["tasks"], ["show", "x"], ["retry", "--failed"], ["cancel", "x"],
                ["purge", "--older-than", "1d"], ["schedules"]):
        p = omniq(*cmd, "--tasks", f"sqlite:///{tmp_path}/typo.db")
        assert p.returncode == 1, (cmd, p.stderr)
        assert "typo.db does not exist" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "typo.db").exists()


def test_help_speaks_celery_and_rq() -> None:
    p = omniq("--help")
    for cmd in ("tasks", "show", "retry", "cancel", "purge", "schedules"):
        assert cmd in p.stdout
    assert "rq requeue" in omniq("retry", "--help").stdout
    assert "revoke" in omniq("cancel", "--help").stdout
    assert "celery purge" in omniq("purge", "--help").stdout
    assert "--before" in omniq("tasks", "--help").stdout



def test_one_unreadable_result_record_is_shown_as_such_not_a_traceback(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "bad.db"
    url = f"sqlite:///{db}"
    with OmniQ(tasks=url, worker="thread", concurrency=1) as oq:
        bad = oq.enqueue(abs, args=(-1,))
        good = oq.enqueue(abs, args=(-2,))
        oq.get_result(bad, wait=True, timeout=30)
        oq.get_result(good, wait=True, timeout=30)
    with sqlite3.connect(db) as con:
        con.execute("UPDATE omniq_results SET result=X'c1' WHERE task_id=?", (bad,))
    listed = omniq("tasks", "--tasks", url, "--json")
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr
    assert {t["id"] for t in json.loads(listed.stdout)} == {bad, good}
    shown = omniq("show", bad, "--tasks", url)
    assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr
    assert "unreadable result record" in shown.stdout
