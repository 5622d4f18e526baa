"""Real ``omniq worker`` processes for the storage tests (PostgreSQL's and Redis's worker
tests, the server-restart tests).

A helper module, not a test module: test_postgres.py, test_redis.py and test_restarts.py
import from here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .backends import stop_workers

REPO = Path(__file__).resolve().parents[2]


class Workers:
    """``omniq worker`` processes (each in its own session, so a kill takes its children too)."""

    def __init__(self, url: str, logs: Path) -> None:
        self.url = url
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        n = len(self.procs)
        log = open(self.logs / f"worker{n}.log", "wb")  # noqa: SIM115  (closed with the process)
        env = {**os.environ, "OMNIQ_LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "omniq.cli", "worker", "--tasks", self.url, "--worker",
             "process", *args],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        log.close()
        self.procs.append(proc)
        return proc

    def log(self, i: int) -> str:
        return (self.logs / f"worker{i}.log").read_text(errors="replace")

    def check_alive(self) -> None:
        for i, p in enumerate(self.procs):
            if p.poll() is not None and p.returncode not in (-signal.SIGKILL,):
                raise AssertionError(f"worker {i} exited with {p.returncode}:\n{self.log(i)}")

    def stop(self) -> None:
        stop_workers(self.procs)


def wait_for_workers(oq: Any, ws: Workers, n: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ws.check_alive()
        alive = [w for w in oq.health()["workers"] if w["alive"]]
        if len(alive) >= n:
            return
        time.sleep(0.1)
    raise AssertionError(f"{n} workers did not come up:\n" + "\n".join(
        ws.log(i) for i in range(len(ws.procs))))  # fmt: skip
