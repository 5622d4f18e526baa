"""Fixtures for the dashboard tests: ``omniq dashboard`` as a real process (the command a user
runs) over a real SQLite file, and an OmniQ in the test process with a thread worker that
enqueues and runs tasks on the same file, as a notebook beside the dashboard would."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from omniq import OmniQ  # noqa: E402


class Running:
    """A started ``omniq dashboard``: its printed URL, its output so far, its process."""

    def __init__(self, proc: subprocess.Popen[str], url: str, lines: list[str],
                 reader: threading.Thread) -> None:
        self.proc = proc
        self.reader = reader
        self.url = url  # as printed (with ?token= when it has one)
        self.lines = lines
        self.base = url.split("?", 1)[0].rstrip("/")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def launch(args: list[str], env: dict[str, str] | None = None, timeout: float = 60) -> Running:
    """``python -m omniq.cli dashboard ARGS`` until it prints its URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "omniq.cli", "dashboard", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("OMNIQ_")}, **(env or {})},
    )
    lines: list[str] = []
    got: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            got.put(line)
        got.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = got.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            line = None
        if line is None:
            proc.kill()
            proc.wait()
            reader.join(10)
            assert proc.stdout is not None
            proc.stdout.close()
            raise AssertionError("omniq dashboard printed no URL:\n" + "".join(lines))
        if line.startswith("omniq dashboard: http"):
            return Running(proc, line.split()[2], lines, reader)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'lab.db'}"


@pytest.fixture
def oq(db_url: str) -> Iterator[OmniQ]:
    """The user's OmniQ: one thread worker, tasks from tests.helpers (importable by name)."""
    with OmniQ(tasks=db_url, worker="thread", concurrency=1) as q:
        yield q


@pytest.fixture
def dashboard(oq: OmniQ, db_url: str) -> Iterator[Running]:
    """``omniq dashboard`` on a free loopback port over the same file (no token)."""
    running = launch(["--tasks", db_url, "--port", "0"])
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def start() -> Iterator[Callable[..., Running]]:
    """``start(args, env=None)``: more dashboards, each stopped at the end of the test."""
    started: list[Running] = []

    def run(args: list[str], env: dict[str, str] | None = None) -> Running:
        r = launch(args, env)
        started.append(r)
        return r

    yield run
    for r in started:
        r.stop()


def wait_for(check: Callable[[], Any], timeout: float = 15, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def until() -> Callable[..., Any]:
    return wait_for
