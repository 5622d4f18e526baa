"""The `omniq` command: demo, worker, status."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from omniq import OmniQ

from . import helpers


def _omniq(*args: str, cwd=None, timeout: float = 120, env=None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "omniq.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env=env,
    )


def test_demo_runs_a_grid_on_process_workers_and_persists_it(tmp_path):
    db = tmp_path / "demo.db"
    p = _omniq("demo", "--db", str(db), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    table = [ln for ln in lines if ln.strip().endswith("succeeded")]
    assert len(table) == 12
    for row in table:
        est = float(row.split()[2])
        assert 3.0 < est < 3.3
    assert "12/12" in p.stderr  # the text progress bar reached the end
    # persisted: another process reads the results back from the SQLite file
    with OmniQ(tasks=f"sqlite:///{db}", concurrency=0) as oq:
        counts = oq.health()["queues"]
    assert counts["default"]["succeeded"] == 12


def test_status_json_reports_queues_and_workers(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    with OmniQ(tasks=url, concurrency=0) as oq:
        for i in range(3):
            oq.enqueue(helpers.square, args=(i,), queue="q1")
    p = _omniq("status", "--tasks", url, "--json")
    assert p.returncode == 0, p.stderr
    h = json.loads(p.stdout)
    assert h["queues"]["q1"]["queued"] == 3
    text = _omniq("status", "--tasks", url)
    assert "q1" in text.stdout and "queued" in text.stdout


def test_bad_url_is_a_clear_error_not_a_traceback(tmp_path):
    p = _omniq("status", "--tasks", "ftp://example")
    assert p.returncode == 2
    assert "ftp" in p.stderr and "Traceback" not in p.stderr


def test_status_on_a_missing_path_names_it_and_creates_nothing(tmp_path):
    """A read-only command never creates storage (issue 22, item 4)."""
    p = _omniq("status", "--tasks", "sqlite:///nonexist/typo.db", cwd=tmp_path)
    assert p.returncode == 1, p.stdout
    assert "sqlite:///nonexist/typo.db" in p.stderr and "does not exist" in p.stderr
    assert "Traceback" not in p.stderr and "ok" not in p.stdout
    assert not (tmp_path / "nonexist").exists()
    p = _omniq("status", "--tasks", f"sqlite:///{tmp_path}/typo.db")
    assert p.returncode == 1 and "typo.db" in p.stderr
    assert not (tmp_path / "typo.db").exists()
    p = _omniq("status", "--tasks", f"file://{tmp_path}/nodir")
    assert p.returncode == 1 and "nodir" in p.stderr
    assert not (tmp_path / "nodir").exists()
    url = f"sqlite:///{tmp_path}/real.db"
    with OmniQ(tasks=url, concurrency=0) as oq:
        oq.enqueue(helpers.square, args=(1,))
    p = _omniq("status", "--tasks", url, "--results", f"file://{tmp_path}/nores")
    assert p.returncode == 1 and "nores" in p.stderr
    assert _omniq("status", "--tasks", url).returncode == 0


def test_worker_on_a_memory_queue_refuses(tmp_path):
    """Nothing else can reach a worker's own memory:// queue (issue 22, item 10)."""
    for url in ("memory://", "memory://shared"):
        p = _omniq("worker", "--tasks", url, "-c", "1", cwd=tmp_path, timeout=60)
        assert p.returncode == 2
        assert "nothing else can enqueue" in p.stderr and "sqlite:///" in p.stderr
        assert "Traceback" not in p.stderr


def test_status_without_slurm_says_nothing_of_it(tmp_path):
    """SLURM jobs are listed only where ``squeue`` is installed and answers (tests/test_hpc.py
    runs it against a real SLURM); without it, or when it fails, status is as before."""
    url = f"sqlite:///{tmp_path}/s.db"
    with OmniQ(tasks=url, concurrency=0) as oq:
        oq.enqueue(helpers.square, args=(1,))
    bare = tmp_path / "bin"
    bare.mkdir()
    env = {**os.environ, "PATH": str(bare)}  # no squeue
    p = _omniq("status", "--tasks", url, env=env)
    assert p.returncode == 0, p.stderr
    assert "SLURM" not in p.stdout and "squeue" not in p.stderr
    assert "slurm_jobs" not in json.loads(_omniq("status", "--tasks", url, "--json", env=env).stdout)
    squeue = bare / "squeue"  # installed, but reaching no cluster
    squeue.write_text("#!/bin/sh\necho 'squeue: error: resolve_ctls_from_dns_srv: res_nsearch error' >&2\nexit 1\n")
    squeue.chmod(0o755)
    p = _omniq("status", "--tasks", url, env=env)
    assert p.returncode == 0, p.stderr
    assert "SLURM" not in p.stdout and "Traceback" not in p.stderr


def test_version_prints_the_installed_version():
    from importlib.metadata import version

    r = _omniq("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"omniq {version('omniq')}", r


def test_a_worker_in_a_batch_job_shows_its_job_beside_its_heartbeat(tmp_path):
    """A worker started by SLURM (SLURM_JOB_ID set) says which job it is, so `omniq status`
    and `%omniq status` match worker rows with squeue's jobs."""
    from omniq.notebook.magics import status_text

    url = f"sqlite:///{tmp_path}/j.db"
    env = {**os.environ, "SLURM_JOB_ID": "4242"}
    w = subprocess.Popen([sys.executable, "-m", "omniq.cli", "worker", "--tasks", url, "-c", "1",
                          "--worker", "thread"], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    try:
        with OmniQ(tasks=url, concurrency=0) as oq:
            tid = oq.enqueue(helpers.square, args=(3,))
            assert oq.get_result(tid, wait=True, timeout=60).value == 9  # the worker is up
            (row,) = oq.health()["workers"]
        assert row["job"] == "4242"
        assert "job 4242" in status_text({"workers": [row], "queues": {}})
        p = _omniq("status", "--tasks", url)
        assert p.returncode == 0 and "job 4242" in p.stdout, p
        assert [x["job"] for x in json.loads(_omniq("status", "--tasks", url, "--json").stdout)["workers"]] == ["4242"]
    finally:
        w.terminate()
        w.communicate(timeout=30)
