"""omniq.hpc: SLURM worker jobs (issue #18).

Argument and URL checks run anywhere. The rest (``@pytest.mark.slow``) runs against a real
single-node SLURM started privately for this module (``tests/slurm.py``: munged, slurmctld and
slurmd in a temporary folder, on free loopback ports); they are skipped, saying why, where it
cannot start (no ``slurm-wlm`` / ``munge`` packages, not root). Tasks share a SQLite file with
the jobs (one machine, so its locking is safe).
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from omniq import ConfigError, OmniQ, TaskStatus
from omniq.hpc import SlurmWorkers, StorageReachWarning, omniq_jobs, parse_walltime, storage_tag
from omniq.hpc import reach as hpc_reach
from omniq.hpc.base import format_walltime, job_url

from .slurm import OTHER_PARTITION, PrivateSlurm, SlurmUnavailable


# --------------------------------------------------------------------------- task functions
def where(x: Any, pause: float = 0.3) -> tuple[str | None, Any]:
    """Which SLURM job ran this (SLURM_JOB_ID of the worker's environment)."""
    time.sleep(pause)
    return os.environ.get("SLURM_JOB_ID"), x


def stubborn(marker_dir: str) -> str | None:
    """The first run (anywhere) writes its job id and hangs; a later run returns at once."""
    job = os.environ.get("SLURM_JOB_ID") or "none"
    first = not os.listdir(marker_dir)
    with open(os.path.join(marker_dir, f"{job}-{os.getpid()}"), "w") as f:
        f.write(job)
    if first:
        time.sleep(600)
    return job


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _wait(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


# --------------------------------------------------------------------------- no SLURM needed
@pytest.mark.parametrize(("text", "seconds"), [
    ("01:00:00", 3600), ("90", 5400), ("5:30", 330), ("2-00:00:00", 172800), ("1-12", 129600),
    ("0-00:01", 60), (" 00:10:00 ", 600), (120, 120), (60.5, 61),
])
def test_walltime_forms(text: Any, seconds: int) -> None:
    assert parse_walltime(text) == seconds


@pytest.mark.parametrize("bad", ["1:2:3:4", "abc", "00:61:00", "00:00:30", "1-25:00:00", "", "\u0661\u0660", -5, 0, 30,
                                 float("inf"), True, None, [1]])
def test_walltime_malformed_is_a_clear_error(bad: Any) -> None:
    with pytest.raises(ConfigError, match=r"walltime=.*not valid: expected 'MM', 'MM:SS', 'HH:MM:SS'"):
        parse_walltime(bad)


def test_walltime_formatted_for_sbatch() -> None:
    import datetime

    assert format_walltime(parse_walltime(datetime.timedelta(hours=1, minutes=30))) == "01:30:00"
    assert format_walltime(parse_walltime(datetime.timedelta(days=2, seconds=1))) == "2-00:00:01"


@pytest.mark.parametrize(("kwargs", "url"), [
    ({"tasks": "memory://"}, "memory://"),
    ({"tasks": "memory://shared"}, "memory://shared"),
    ({"tasks": "sqlite://:memory:"}, "sqlite://:memory:"),
    ({"tasks": "sqlite:////tmp/x.db", "results": "memory://bucket"}, "memory://bucket"),
    ({"tasks": "sqlite:////tmp/x.db", "events": "memory://"}, "memory://"),
])
def test_urls_jobs_cannot_reach_are_refused(kwargs: dict[str, str], url: str) -> None:
    oq = OmniQ(concurrency=0, **kwargs)
    with pytest.raises(ConfigError) as err:
        SlurmWorkers(oq)
    msg = str(err.value)
    assert repr(url) in msg and "cannot reach it" in msg
    assert "postgresql://" in msg and "filesystem the compute nodes share" in msg  # what would work


def test_job_urls_by_cluster(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    # a relative SQLite path is made absolute (jobs may start elsewhere)
    url, notes = job_url("tasks", "sqlite:///lab.db", cluster_local=True)
    assert url == f"sqlite:///{tmp_path}/lab.db" and notes == []
    assert job_url("tasks", "sqlite:////abs/lab.db?x=1", cluster_local=True)[0] == "sqlite:////abs/lab.db?x=1"
    # one host: /tmp and localhost are fine
    assert job_url("tasks", "sqlite:////tmp/q.db", cluster_local=True) == ("sqlite:////tmp/q.db", [])
    assert job_url("tasks", "redis://localhost:6379/0", cluster_local=True)[1] == []
    # other nodes: a path local to this machine, or localhost, is an error naming the URL
    with pytest.raises(ConfigError, match=r"'sqlite:////tmp/q.db' is on .*local to this machine"):
        job_url("tasks", "sqlite:////tmp/q.db", cluster_local=False)
    with pytest.raises(ConfigError, match=r"'postgresql://me:\*\*\*@localhost/db' names localhost"):
        job_url("tasks", "postgresql://me:secret@localhost/db", cluster_local=False)
    assert job_url("tasks", "redis://db.cluster:6379/0", cluster_local=False) == ("redis://db.cluster:6379/0", [])
    assert job_url("results", "s3://bucket/runs", cluster_local=False) == ("s3://bucket/runs", [])
    # unknown cluster: warnings, not errors
    assert "local to this machine" in job_url("tasks", "sqlite:////tmp/q.db", cluster_local=None)[1][0]
    # SQLite on NFS, several hosts: a warning about its locking; file:// on NFS is fine
    monkeypatch.setattr(hpc_reach, "mount_of", lambda path: ("/shared", "nfs4"))
    url, notes = job_url("tasks", "sqlite:////shared/lab.db", cluster_local=False)
    assert url == "sqlite:////shared/lab.db" and len(notes) == 1
    assert "SQLite on nfs4" in notes[0] and "locking" in notes[0] and "postgresql://" in notes[0]
    assert job_url("results", "file:///shared/results", cluster_local=False) == ("file:///shared/results", [])
    # a local disk on a cluster of several hosts: a warning
    monkeypatch.setattr(hpc_reach, "mount_of", lambda path: ("/", "ext4"))
    assert "looks local" in job_url("tasks", "sqlite:////data/lab.db", cluster_local=False)[1][0]


def test_storage_tag_names_the_queue_not_its_password(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Job names carry a tag of the task queue they serve (``omniq status`` finds them by it)."""
    monkeypatch.chdir(tmp_path)
    tag = storage_tag(f"sqlite:///{tmp_path}/lab.db")
    assert tag is not None and len(tag) == 8 and int(tag, 16) >= 0
    assert storage_tag("sqlite:///lab.db") == tag  # relative or absolute: the same file
    assert storage_tag(f"sqlite:///{tmp_path}/lab.db?timeout=5") == tag
    (tmp_path / "link").symlink_to(tmp_path)
    assert storage_tag(f"sqlite:///{tmp_path}/link/lab.db") == tag
    assert storage_tag(f"sqlite:///{tmp_path}/other.db") != tag
    assert storage_tag(f"file://{tmp_path}/lab.db") != tag
    pg = storage_tag("postgresql://me:secret@db.lab/queue")
    assert pg == storage_tag("postgresql://me:other@db.lab/queue")  # job names are public: no password
    assert pg != storage_tag("postgresql://me:secret@db.lab/other")
    assert storage_tag("memory://") is None and storage_tag("sqlite://:memory:") is None


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"cores": 0}, r"cores=0 is not valid"),
    ({"cores": "2"}, r"cores='2' is not valid"),
    ({"walltime": "1:99"}, r"walltime='1:99' is not valid"),
    ({"idle_timeout": -1}, r"idle_timeout=-1 is not valid"),
    ({"worker": "fork"}, r"worker='fork' is not valid: expected one of"),
    ({"gpus": "lots"}, r"gpus='lots' is not valid"),
    ({"gpus": "a100:²"}, r"gpus='a100:²' is not valid"),
    ({"memory": "lots"}, r"memory='lots' is not valid"),
    ({"job_extra": ["qos=long"]}, r"job_extra: 'qos=long' is not valid"),
    ({"partition": "two words"}, r"partition='two words' is not valid"),
    ({"python": "/nonexistent/python3"}, r"python='/nonexistent/python3' is not an executable"),
    ({"env": {"1BAD": "x"}}, r"env: '1BAD' is not a valid variable name"),
    ({"queues": ["a,b"]}, r"queues=.* is not valid"),
    ({"walltime": "00:10:00", "walltime_margin": 600}, r"walltime_margin=600 is not valid"),
    ({"memory_limit": "huge"}, r"memory_limit='huge' is not valid"),
    ({"name": "bad name"}, r"name='bad name' is not valid"),
])
def test_bad_arguments_are_clear_errors(tmp_path: Any, kwargs: dict[str, Any], match: str) -> None:
    oq = OmniQ(tasks=f"sqlite:///{tmp_path}/q.db", concurrency=0)
    with pytest.raises(ConfigError, match=match):
        SlurmWorkers(oq, **kwargs)


def test_without_slurm_commands_the_error_says_so(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    oq = OmniQ(tasks=f"sqlite:///{tmp_path}/q.db", concurrency=0)
    with pytest.raises(ConfigError, match=r"SlurmWorkers needs SLURM's commands .*sbatch"):
        SlurmWorkers(oq)
    assert omniq_jobs() == []


def test_worker_leaves_when_idle(tmp_path: Any) -> None:
    """``omniq worker --idle-timeout S`` (what a job runs): exits 0 after S seconds without a task."""
    started = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "omniq.cli", "worker", "--tasks", f"sqlite:///{tmp_path}/q.db",
                        "-c", "1", "--idle-timeout", "1"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "no task for 1 s; leaving" in p.stderr
    assert time.monotonic() - started < 30


def test_worker_grace_hands_running_tasks_back(tmp_path: Any) -> None:
    """``omniq worker --grace S`` (a job near its walltime gets SIGTERM): a task still running
    after S seconds is stopped and queued again: it runs to the end elsewhere as its first
    attempt, neither failed nor retried."""
    import signal

    markers = tmp_path / "markers"
    markers.mkdir()
    url = f"sqlite:///{tmp_path}/q.db"
    with OmniQ(tasks=url, concurrency=0) as oq:
        h = oq.submit(stubborn, str(markers))
        oq.flush()
        w = subprocess.Popen([sys.executable, "-m", "omniq.cli", "worker", "--tasks", url, "-c", "1", "--grace", "1"],
                             stderr=subprocess.PIPE, text=True)
        try:
            _wait(lambda: os.listdir(markers), 60, "the task to run")
            started = time.monotonic()
            w.send_signal(signal.SIGTERM)
            _, err = w.communicate(timeout=60)
        finally:
            if w.poll() is None:
                w.kill()
                w.communicate()
        assert w.returncode == 0, err
        assert time.monotonic() - started < 20
        assert "tasks still running after 1 s; handing them back" in err
        assert h.status() is TaskStatus.QUEUED
    with OmniQ(tasks=url, concurrency=1) as other:
        r = other.get_result(h.id, wait=True, timeout=60)
    assert r is not None and r.status is TaskStatus.SUCCEEDED and r.attempts == 1
    assert len(os.listdir(markers)) == 2


# --------------------------------------------------------------------------- a real SLURM
@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateSlurm]:
    s = PrivateSlurm()
    try:
        s.start()
    except SlurmUnavailable as exc:
        pytest.skip(f"no private SLURM here: {exc}")
    try:
        with pytest.MonkeyPatch.context() as mp:
            for k, v in s.env().items():
                mp.setenv(k, v)
            yield s
    finally:
        s.stop()


@pytest.fixture
def oq(tmp_path: Any) -> Iterator[OmniQ]:
    # lease 5 s: a task whose job was killed is delivered again soon
    q = OmniQ(tasks=f"sqlite:///{tmp_path}/q.db", concurrency=0, lease=5)
    try:
        yield q
    finally:
        q.close()


def _ours(cluster: PrivateSlurm, pool: SlurmWorkers) -> list[tuple[str, str, str]]:
    return [j for j in cluster.jobs() if j[2] == pool.name]


def _pool(oq: OmniQ, tmp_path: Any, **kwargs: Any) -> SlurmWorkers:
    kwargs.setdefault("log_dir", str(tmp_path / "logs"))
    kwargs.setdefault("interval", 1.0)
    return SlurmWorkers(oq, **kwargs)


@pytest.mark.slow
def test_tasks_run_inside_jobs_and_scale_spreads_them(cluster: PrivateSlurm, oq: OmniQ, tmp_path: Any) -> None:
    pool = _pool(oq, tmp_path, idle_timeout=60)
    try:
        started = time.monotonic()
        pool.scale(2)
        assert len(pool.jobs()) == 2
        first = oq.submit(where, -1, 0.0).result(timeout=120)
        print(f"scale(2) -> first task back in {time.monotonic() - started:.2f} s")
        values = [h.result(timeout=120) for h in oq.map(where, range(16))]
        assert [x for _, x in values] == list(range(16))
        ran_in = {j for j, _ in values} | {first[0]}
        running = {j.job_id for j in pool.jobs() if j.state == "RUNNING"}
        assert None not in ran_in and len(ran_in) == 2, values  # both jobs took work
        assert ran_in == running
        assert {j[2] for j in _ours(cluster, pool)} == {pool.name} and pool.name.startswith("omniq-")
        # logs: one per job, in the pool's folder, saying what ran where
        logs = pool.logs()
        assert len(logs) == 2 and all(os.path.dirname(p) == str(tmp_path / "logs") for p in logs)
        for p in logs:
            text = _read(p)
            assert "omniq worker: process x1 on sqlite:///" in text and "omniq job" in text
        assert {j.log for j in pool.jobs()} == set(logs)
        # every omniq job of the user, from any process (for status displays)
        assert {(j.id, j.name) for j in omniq_jobs()} >= {(j.id, pool.name) for j in pool.jobs()}
        # scale down: both asked to leave (they finish what they run), then none is listed
        pool.scale(0)
        _wait(lambda: not _ours(cluster, pool), 60, "the jobs to leave after scale(0)")
        assert pool.jobs() == []
    finally:
        pool.close()


@pytest.mark.slow
def test_omniq_status_lists_the_jobs_serving_its_queue(cluster: PrivateSlurm, oq: OmniQ, tmp_path: Any) -> None:
    """``omniq status`` (CLI, another process) finds the jobs by the storage tag in their name:
    this queue's, not another queue's."""
    import json

    other = OmniQ(tasks=f"sqlite:///{tmp_path}/other.db", concurrency=0)
    mine, theirs = _pool(oq, tmp_path, idle_timeout=60), _pool(other, tmp_path / "o", idle_timeout=60)
    try:
        assert mine.name.startswith(f"omniq-{storage_tag(f'sqlite:///{tmp_path}/q.db')}-")
        mine.scale(2)
        theirs.scale(1)
        oq.open()  # (creates q.db: status reads only storage that exists)
        _wait(lambda: sum(j.state == "RUNNING" for j in mine.jobs()) == 2, 60, "two running jobs")
        env = {**os.environ, **cluster.env()}

        def status(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "omniq.cli", "status", "--tasks", "sqlite:///q.db", *args],
                                  capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)

        p = status()
        assert p.returncode == 0, p.stderr
        section = p.stdout.split("SLURM jobs serving this queue (2):\n", 1)[1]
        for j in mine.jobs():
            assert re.search(rf"^  {re.escape(j.id)} +running on localhost  {mine.name}$", section, re.M), p.stdout
        assert theirs.name not in p.stdout
        h = json.loads(status("--json").stdout)
        assert {(j["id"], j["state"], j["name"]) for j in h["slurm_jobs"]} == {
            (j.id, "RUNNING", mine.name) for j in mine.jobs()}
    finally:
        mine.close()
        theirs.close()
        other.close()
    assert "SLURM jobs serving this queue (0):\n  (none)" in status().stdout


@pytest.mark.slow
def test_scale_down_cancels_pending_first_and_repr(cluster: PrivateSlurm, oq: OmniQ, tmp_path: Any) -> None:
    # 12 one-core jobs on 2 CPUs x 4 jobs per core: some stay pending
    pool = _pool(oq, tmp_path, idle_timeout=60)
    try:
        pool.scale(12)
        _wait(lambda: sum(j.state == "RUNNING" for j in pool.jobs()) == 8, 60, "8 running jobs")
        assert sum(j.state == "PENDING" for j in pool.jobs()) == 4
        assert "8 running" in repr(pool) and "4 pending" in repr(pool) and "scale=12" in repr(pool)
        pool.scale(6)
        jobs = pool.jobs()
        assert not any(j.state == "PENDING" for j in jobs)  # the pending ones went first
        assert sum(j.active for j in jobs) == 6
        _wait(lambda: len(_ours(cluster, pool)) == 6, 60, "two running jobs to leave")
    finally:
        pool.close()
    assert _ours(cluster, pool) == []


@pytest.mark.slow
def test_a_job_killed_by_scancel_loses_no_task(cluster: PrivateSlurm, oq: OmniQ, tmp_path: Any) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    pool = _pool(oq, tmp_path, idle_timeout=60)
    try:
        pool.scale(2)
        h = oq.submit(stubborn, str(markers))
        first = _wait(lambda: os.listdir(markers), 120, "the task to start in a job")[0].split("-")[0]
        # (an array element is cancelled by its array id, 12_0; SLURM_JOB_ID is its own number)
        victim = next(j.id for j in pool.jobs() if j.job_id == first)
        subprocess.run(["scancel", victim], check=True, env={**os.environ, **cluster.env()})
        r = h.get(timeout=120)
        assert r.status is TaskStatus.SUCCEEDED, r.error
        assert r.value != first and r.value in {j.job_id for j in pool.jobs()}
        assert r.attempts == 1  # the kill was not the task's failure
    finally:
        pool.close()


@pytest.mark.slow
def test_a_job_at_its_walltime_hands_its_task_back(cluster: PrivateSlurm, oq: OmniQ, tmp_path: Any) -> None:
    # walltime 1 min: SLURM sends SIGTERM ~30 s before (default margin), the worker gives the
    # task 20 s, hands it back and leaves; scale(1) replaces the job while the task waits
    markers = tmp_path / "markers"
    markers.mkdir()
    pool = _pool(oq, tmp_path, walltime="00:01:00", idle_timeout=120)
    assert (pool.walltime_margin, pool.grace) == (30, 20)
    try:
        started = time.monotonic()
        pool.scale(1)
        h = oq.submit(stubborn, str(markers))
        first = _wait(lambda: os.listdir(markers), 120, "the task to start in a job")[0].split("-")[0]
        r = h.get(timeout=200)
        took = time.monotonic() - started
        assert r.status is TaskStatus.SUCCEEDED, r.error
        assert r.value != first, "ran again in another job"
        assert r.attempts == 1  # neither a failure nor a retry
        types = [e.type for e in oq.events(task_id=h.id)]
        assert "failed" not in types and "retry" not in types, types
        log = _read(os.path.join(pool.log_dir, f"{pool.name}-{first}.log"))
        assert "handing them back" in log, log
        assert took < 120, f"took {took:.0f} s"  # handed back, not left to the walltime kill
    finally:
        pool.close()


@pytest.mark.slow
def test_adapt_starts_jobs_for_work_and_lets_idle_ones_go(cluster: PrivateSlurm, oq: OmniQ, tmp_path: Any) -> None:
    pool = _pool(oq, tmp_path, idle_timeout=5)
    try:
        oq.open()
        pool.adapt(minimum=0, maximum=2, interval=1)
        time.sleep(3)
        assert pool.jobs() == [] and _ours(cluster, pool) == []  # no work, no job
        handles = oq.map(functools.partial(where, pause=1.0), range(8))
        most = 0
        deadline = time.monotonic() + 180
        while not all(h.done() for h in handles):
            most = max(most, len(_ours(cluster, pool)))
            assert time.monotonic() < deadline, "tasks did not finish"
            time.sleep(0.25)
        values = [h.result() for h in handles]
        assert all(j is not None for j, _ in values)  # ran inside SLURM jobs
        assert 1 <= most <= 2, most
        # idle for 5 s: the jobs leave by themselves, and adapt does not start new ones
        _wait(lambda: not _ours(cluster, pool), 60, "idle jobs to leave")
        time.sleep(3)
        assert _ours(cluster, pool) == []
        assert any("no task for 5 s; leaving" in _read(p) for p in pool.logs())
    finally:
        pool.close()


@pytest.mark.slow
def test_adapt_keeps_a_minimum_and_cancels_pending_jobs_not_needed(
        cluster: PrivateSlurm, oq: OmniQ, tmp_path: Any) -> None:
    pool = _pool(oq, tmp_path, idle_timeout=60)
    try:
        oq.open()
        pool.adapt(minimum=1, maximum=12, interval=1)
        _wait(lambda: len(pool.jobs()) == 1, 30, "the minimum job")
        time.sleep(3)
        assert len(pool.jobs()) == 1  # no work: only the minimum
        # 12 long tasks: 12 jobs asked for, 8 run (2 CPUs x 4 jobs each), 4 wait in SLURM
        handles = oq.map(functools.partial(where, pause=120), range(12))
        _wait(lambda: [j.state for j in pool.jobs()].count("RUNNING") == 8, 60, "8 running jobs")
        _wait(lambda: len(pool.jobs()) == 12, 30, "12 jobs")
        assert "adapt=1:12" in repr(pool)
        # the waiting tasks go away: the pending jobs are cancelled, the running ones stay
        for h in handles:
            if h.status() is TaskStatus.QUEUED:
                h.cancel()
        _wait(lambda: all(j.state == "RUNNING" for j in pool.jobs()), 30, "pending jobs cancelled")
        assert len(pool.jobs()) == 8
    finally:
        pool.close()


@pytest.mark.slow
def test_close_leaves_no_job(cluster: PrivateSlurm, oq: OmniQ, tmp_path: Any) -> None:
    pool = _pool(oq, tmp_path)
    pool.scale(3)
    _wait(lambda: len(_ours(cluster, pool)) == 3, 30, "three jobs")
    assert os.path.exists(pool.env_file)
    pool.close()
    assert _ours(cluster, pool) == [] and pool.jobs() == []
    assert not os.path.exists(pool.env_file)  # the secrets file goes with the jobs
    pool.close()  # idempotent
    with pytest.raises(ConfigError, match="closed"):
        pool.scale(1)


@pytest.mark.slow
def test_closing_the_omniq_cancels_its_jobs(cluster: PrivateSlurm, tmp_path: Any) -> None:
    for opened in (True, False):
        oq = OmniQ(tasks=f"sqlite:///{tmp_path}/q.db", concurrency=0)
        if opened:
            oq.open()
        pool = _pool(oq, tmp_path)
        pool.scale(2)
        _wait(lambda: len(_ours(cluster, pool)) == 2, 30, "two jobs")  # noqa: B023
        oq.close()
        assert pool.closed
        _wait(lambda: not _ours(cluster, pool), 30, "the jobs to be gone after oq.close()")  # noqa: B023


@pytest.mark.slow
def test_closing_an_async_omniq_cancels_its_jobs(cluster: PrivateSlurm, tmp_path: Any) -> None:
    import anyio

    from omniq import AsyncOmniQ

    async def main() -> str:
        async with AsyncOmniQ(tasks=f"sqlite:///{tmp_path}/q.db", concurrency=0) as aoq:
            pool = _pool(aoq, tmp_path)  # type: ignore[arg-type]
            pool.scale(1)
            assert len(pool.jobs()) == 1
        assert pool.closed
        return pool.name

    name = anyio.run(main)
    _wait(lambda: not [j for j in cluster.jobs() if j[2] == name], 30, "the job to be gone")


@pytest.mark.slow
def test_interpreter_exit_cancels_jobs(cluster: PrivateSlurm, tmp_path: Any) -> None:
    script = tmp_path / "leave.py"
    script.write_text(textwrap.dedent(f"""
        from omniq import OmniQ
        from omniq.hpc import SlurmWorkers
        oq = OmniQ(tasks="sqlite:///{tmp_path}/q.db", concurrency=0)
        pool = SlurmWorkers(oq, log_dir="{tmp_path}/logs", name="omniq-atexit-test")
        pool.scale(2)
        print(pool.name, flush=True)
        # no close(): the interpreter exits
    """))
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, **cluster.env()})
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "omniq-atexit-test"
    _wait(lambda: not [j for j in cluster.jobs() if j[2] == "omniq-atexit-test"], 30, "no job left")


@pytest.mark.slow
def test_bad_input_against_slurm(cluster: PrivateSlurm, oq: OmniQ, tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match=r"partition='gpu-nope' is not a SLURM partition here: "
                                          r"expected one of omniqtest, short"):
        _pool(oq, tmp_path, partition="gpu-nope")
    with pytest.raises(ConfigError, match=r"walltime='00:10:00' is over partition short's time limit of 5:00"):
        _pool(oq, tmp_path, partition=OTHER_PARTITION, walltime="00:10:00")
    # more than any node has: an error naming the argument, before any job
    with pytest.raises(ConfigError, match=r"cores=64 is more than any node of partition omniqtest has \(\d+ CPUs\)"):
        _pool(oq, tmp_path, cores=64)
    with pytest.raises(ConfigError, match=r"memory='100TB' is more than any node of partition omniqtest has"):
        _pool(oq, tmp_path, memory="100TB")
    with pytest.raises(ConfigError, match=r"gpus=1: partition omniqtest has no GPUs"):
        _pool(oq, tmp_path, gpus=1)
    # refused by sbatch itself (here: an option it does not know): the error says so
    pool = _pool(oq, tmp_path, job_extra=["--no-such-option=1"])
    try:
        with pytest.raises(ConfigError, match=r"SLURM refused the job's options .*--no-such-option=1"):
            pool.scale(1)
    finally:
        pool.close()
    assert _ours(cluster, pool) == []
    # a partition that exists and a walltime within its limit
    pool = _pool(oq, tmp_path, partition=OTHER_PARTITION, walltime="00:04:00")
    try:
        pool.scale(1)
        _wait(lambda: _ours(cluster, pool), 30, "the job")
    finally:
        pool.close()


@pytest.mark.slow
def test_secrets_stay_off_command_lines(cluster: PrivateSlurm, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNIQ_SECRET_KEY", "k3y-s3cret-0123456789abcdef0123456789abcdef")
    oq = OmniQ(tasks="postgresql://me:pa55word@localhost/db", results=f"file://{tmp_path}/results",
               concurrency=0, storage_options={"anon": True})
    pool = _pool(oq, tmp_path, env={"API_TOKEN": "t0ken"})
    try:
        pool._prepare()
        argv = " ".join(pool.submit_command(pool.script, 3))
        script = _read(pool.script)
        for secret in ("pa55word", "k3y-s3cret", "t0ken"):
            assert secret not in argv and secret not in script
            assert secret not in " ".join(pool.worker_command())
        env = _read(pool.env_file)
        assert os.stat(pool.env_file).st_mode & 0o777 == 0o600
        assert os.stat(pool.log_dir).st_mode & 0o777 == 0o700
        for secret in ("pa55word", "k3y-s3cret", "t0ken"):
            assert secret in env
        assert "OMNIQ_STORAGE_OPTIONS" in env and f"file://{tmp_path}/results" in env
        assert "OMNIQ_SECRET_KEY" not in pool._subprocess_env()  # not in sbatch's copy of the environment
        assert "--array=0-2" in argv and f"--job-name={pool.name}" in argv and "--signal=B:TERM@" in argv
    finally:
        pool.close()
    assert not os.path.exists(pool.env_file)


@pytest.mark.slow
def test_default_log_folder_and_options_reach_the_job(cluster: PrivateSlurm, tmp_path: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    oq = OmniQ(tasks="sqlite:///rel.db", concurrency=0)  # relative: made absolute for the jobs
    with warnings.catch_warnings():
        warnings.simplefilter("error", StorageReachWarning)  # one host: nothing to warn about
        pool = SlurmWorkers(oq, interval=1.0, memory="256MB", memory_limit="200MB", queues=["q1"],
                            env={"OMNIQ_TEST_FLAG": "yes"}, job_extra=["--comment=omniq-test"])
    try:
        assert pool.log_dir == str(tmp_path / ".omniq" / "hpc" / pool.name)
        assert pool.urls["tasks"] == f"sqlite:///{tmp_path}/rel.db"
        pool.scale(1)
        tid = oq.enqueue(_env_of, args=("OMNIQ_TEST_FLAG",), queue="q1")
        r = oq.get_result(tid, wait=True, timeout=120)
        assert r is not None and r.value == "yes"
        log = _read(pool.logs()[0])
        assert "queues=['q1']" in log and "memory_limit=200 MB" in log, log
        assert [j for j in pool.jobs() if j.state == "RUNNING"]
    finally:
        oq.close()  # closes the pool (without waiting)
    _wait(lambda: not _ours(cluster, pool), 30, "the job to be gone")


def _env_of(name: str) -> str | None:
    return os.environ.get(name)
