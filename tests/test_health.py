"""``health()`` and ``omniq status``: workers alive or dead, storage reachability, leases that
overran, schedules' last outcome, and this process's metrics, against real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from omniq import OmniQ
from omniq.cli import status_report
from omniq.storage.base import masked

from . import helpers
from .servers import private_redis
from .workers.common import wait_for


def always_fails(x):
    raise ValueError(f"no {x}")


def _worker(url: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "omniq.cli", "worker", "--tasks", url, "--worker", "thread", "-c", "1", *extra],
        stderr=subprocess.PIPE, text=True,
    )


def _metrics_endpoint(w: subprocess.Popen[str]) -> str:
    """The URL an ``omniq worker --metrics-port`` announced on stderr."""
    line = wait_for(lambda: next((ln for ln in iter(w.stderr.readline, "") if "metrics on" in ln), None), 30,
                    what="the worker to announce its metrics port")
    return line.split("metrics on ", 1)[1].strip()


def _stop(p: subprocess.Popen[str]) -> str:
    if p.poll() is None:
        p.kill()
    _, err = p.communicate(timeout=30)
    return err


def test_metrics_count_every_transition_and_time_waits_and_runs(tmp_path):
    with OmniQ(tasks=f"sqlite:///{tmp_path}/m.db", worker="thread", concurrency=2) as oq:
        ok = [oq.submit(helpers.sleep_return, 0.01, i) for i in range(10)]
        bad = oq.enqueue(always_fails, args=(1,), retries=1, retry_delay=0.01)
        assert [h.result(timeout=30) for h in ok] == list(range(10))
        failed = oq.get_result(bad, wait=True, timeout=30)
        assert failed.status == "failed" and failed.attempts == 2
        m = oq.health()["metrics"]
    c = m["counters"]
    assert (c["enqueued"], c["started"], c["succeeded"], c["failed"], c["retry"]) == (11, 12, 10, 1, 1)
    assert m["by_queue"]["default"]["succeeded"] == 10
    assert m["queue_wait_seconds"]["count"] == 12
    run = m["run_seconds"]
    assert run["count"] == 12
    assert run["max"] >= 0.01 and 0.01 <= run["p50"] < 5  # the sleeps were timed, not the queue


def test_a_killed_worker_is_reported_dead_within_a_lease(tmp_path):
    url = f"sqlite:///{tmp_path}/k.db"
    lease = 1.0
    w = _worker(url, "--lease", str(lease))
    try:
        with OmniQ(tasks=url, concurrency=0, lease=lease) as oq:
            h = oq.submit(helpers.sleep_return, 30, "late")
            alive = wait_for(lambda: [x for x in oq.health()["workers"] if x["pid"] == w.pid and x["alive"]], 30)
            assert alive, "the worker never reported in"
            assert wait_for(lambda: oq.status(h.id) == "running", 30)
            os.kill(w.pid, signal.SIGKILL)
            killed_at = time.time()
            dead = wait_for(lambda: [x for x in oq.health()["workers"] if x["pid"] == w.pid and not x["alive"]], 10)
            assert dead, "a killed worker still shows alive"
            # within a lease of its last heartbeat, which came at most a lease before the kill
            assert time.time() - dead[0]["last_heartbeat"] < 3 * lease
            assert dead[0]["last_heartbeat"] <= killed_at
            # its task's lease overran: health names it until the hour is up, and it runs again
            over = wait_for(lambda: [o for o in oq.health()["leases_overrun"] if o["task_id"] == h.id], 10)
            assert over and over[0]["outcome"] in ("lapsed", "requeued")
            text = status_report(oq.health())  # `omniq status` with something to report
            assert "leases overrun in the last hour" in text and h.id in text and "DEAD" in text
            assert wait_for(lambda: oq.status(h.id) == "queued", 10)
    finally:
        _stop(w)


def test_a_hung_worker_shows_dead_then_alive_again(tmp_path):
    url = f"sqlite:///{tmp_path}/h.db"
    w = _worker(url, "--lease", "1")
    try:
        with OmniQ(tasks=url, concurrency=0, lease=1.0) as oq:
            def state():
                return {x["alive"] for x in oq.health()["workers"] if x["pid"] == w.pid}
            assert wait_for(lambda: state() == {True}, 30)
            os.kill(w.pid, signal.SIGSTOP)
            assert wait_for(lambda: state() == {False}, 10)
            os.kill(w.pid, signal.SIGCONT)
            assert wait_for(lambda: state() == {True}, 10)
    finally:
        os.kill(w.pid, signal.SIGCONT)
        _stop(w)


def test_schedules_report_their_last_outcome(tmp_path):
    with OmniQ(tasks=f"sqlite:///{tmp_path}/s.db", worker="thread", concurrency=2) as oq:
        oq.schedule(helpers.square, interval=0.2, args=(3,), name="good")
        oq.schedule(always_fails, interval=0.2, args=(4,), name="bad")

        def outcomes():
            return {s["name"]: s["last_outcome"] for s in oq.health()["schedules"]}
        assert wait_for(lambda: outcomes() == {"good": "succeeded", "bad": "failed"}, 20, what="both last outcomes")


def test_health_reports_a_storage_that_went_away_and_status_exits_1(tmp_path):
    with private_redis() as server:
        url = server.url()
        tasks = f"sqlite:///{tmp_path}/t.db"
        with OmniQ(tasks=tasks, results=url, events=tasks, concurrency=0) as oq:
            h = oq.health()
            assert h["ok"] and all(p["ok"] for p in h["storage"].values())
            server.stop(crash=True)
            h = oq.health(timeout=3)
        assert not h["ok"]
        assert h["storage"]["tasks"]["ok"] and h["storage"]["events"]["ok"]
        down = h["storage"]["results"]
        assert not down["ok"] and down["url"] == masked(url) and down["error"]
        p = subprocess.run([sys.executable, "-m", "omniq.cli", "status", "--tasks", tasks, "--results", url],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 1
        assert f"127.0.0.1:{server.port}" in p.stderr + p.stdout and "Traceback" not in p.stderr


def test_status_text_shows_storage_workers_and_schedules(tmp_path):
    url = f"sqlite:///{tmp_path}/st.db"
    w = _worker(url)
    try:
        with OmniQ(tasks=url, concurrency=0) as oq:
            oq.schedule(helpers.square, interval=3600, args=(2,), name="hourly")
            assert wait_for(lambda: any(x["alive"] for x in oq.health()["workers"]), 30)
        p = subprocess.run([sys.executable, "-m", "omniq.cli", "status", "--tasks", url],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        out = p.stdout
        assert f"tasks    {url}  ok" in out
        assert f":{w.pid}:thread:" in out and "alive" in out
        assert "hourly" in out and "every" in out.lower()
    finally:
        _stop(w)


def test_worker_serves_prometheus_metrics(tmp_path):
    url = f"sqlite:///{tmp_path}/p.db"
    w = _worker(url, "--metrics-port", "0")
    try:
        endpoint = _metrics_endpoint(w)
        with OmniQ(tasks=url, concurrency=0) as oq:
            hs = [oq.submit(helpers.square, i) for i in range(5)]
            assert [h.result(timeout=30) for h in hs] == [i * i for i in range(5)]

        def scrape():
            with urllib.request.urlopen(endpoint, timeout=5) as r:
                assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                return r.read().decode()
        done = 'omniq_events_total{type="succeeded",queue="default"} 5'
        text = wait_for(lambda: t if done in (t := scrape()) else None, 10)
        assert text, scrape()
        assert "omniq_run_seconds_count 5" in text and "omniq_worker_slots 1.0" in text
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(endpoint.replace("/metrics", "/nope"), timeout=5)
    finally:
        _stop(w)


def test_metrics_port_is_checked_at_the_call_site():
    p = subprocess.run([sys.executable, "-m", "omniq.cli", "worker", "--tasks", "memory://", "--metrics-port", "99999"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--metrics-port" in p.stderr and "0-65535" in p.stderr


def test_a_metrics_port_in_use_is_a_clear_error_before_any_work(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        p = subprocess.run([sys.executable, "-m", "omniq.cli", "worker", "--tasks", f"sqlite:///{tmp_path}/x.db",
                            "--metrics-port", str(port)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and f"--metrics-port {port}" in p.stderr and "Traceback" not in p.stderr


def test_the_metrics_endpoint_survives_bad_clients(tmp_path):
    import socket

    w = _worker(f"sqlite:///{tmp_path}/bad.db", "--metrics-port", "0")
    try:
        endpoint = _metrics_endpoint(w)
        port = int(endpoint.rsplit(":", 1)[1].split("/")[0])
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]  # say nothing
        for junk in (b"\x00\xff garbage\r\n\r\n", b"POST /metrics HTTP/1.0\r\n\r\n"):
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(junk)
                assert s.recv(100).startswith(b"HTTP/1.0 404")
        for s in idle:
            s.close()
        with urllib.request.urlopen(endpoint, timeout=10) as r:
            assert b"omniq_worker_slots" in r.read()
        assert w.poll() is None
    finally:
        _stop(w)


def test_health_counts_what_was_just_submitted(tmp_path):
    with OmniQ(tasks=f"sqlite:///{tmp_path}/now.db", concurrency=0) as oq:
        oq.map(helpers.square, range(3))  # handed over, maybe not stored yet
        assert oq.health()["queues"]["default"]["queued"] == 3
