"""A sweep run again while its points are still queued or running adopts them (issue #14 B).

Points are keyed (sweep name, function identity, parameters) and the queue keeps one live task
per key, so a re-run — in a new process after the owner died, or by a second process at the
same time — waits for the points in flight instead of submitting them again. Every point records
its runs by appending a line to a file of its own, at the end of the run; a test counts them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
POINTS = 30


def record(out: str, i: int, seconds: float = 1.0) -> int:
    """A sweep point: mark the start, work a while, then append one line (this run) to the
    point's own file. A run killed before its end leaves no line."""
    with open(os.path.join(out, f"{i}.start"), "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(seconds)
    with open(os.path.join(out, f"{i}.runs"), "a") as f:
        f.write(f"{os.getpid()}\n")
    return i * 10


def runs(out: Path) -> dict[int, int]:
    """Completed runs per point."""
    counts = {i: 0 for i in range(POINTS)}
    for p in out.glob("*.runs"):
        counts[int(p.stem)] = len(p.read_text().splitlines())
    return counts


def _script(db: str, out: Path, body: str) -> str:
    head = f"""
        import json, os, sys, time
        from omniq import OmniQ
        from tests.test_sweep_rerun import record
        DB, OUT, POINTS = {db!r}, {str(out)!r}, {POINTS}
        GRID = {{"out": [OUT], "i": range(POINTS)}}
    """
    return textwrap.dedent(head) + textwrap.dedent(body)


def _start(code: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(p: subprocess.Popen[str], timeout: float = 180) -> dict:
    try:
        stdout, stderr = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        stdout, stderr = p.communicate()
        raise AssertionError(f"timed out:\n{stderr[-3000:]}") from None
    assert p.returncode == 0, stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1])


RERUN = """
    with OmniQ(tasks=DB, worker="process", concurrency=2, lease=2.0) as oq:
        sw = oq.sweep(record, GRID, name="rerun")
        submitted = sw.submitted
        oq.flush()
        adopted = sw.adopted
        running = 0  # adopted points show as running once their tasks run (here or elsewhere)
        deadline = time.time() + 5
        while time.time() < deadline and not running:
            running = sw.counts().get("running", 0)
            time.sleep(0.01)
        sw.wait(150)
        print(json.dumps({"submitted": submitted, "adopted": adopted, "running": running,
                          "counts": sw.counts(), "values": sw.values()}))
"""


@pytest.mark.parametrize("backend", ["sqlite", "file"])
def test_owner_killed_mid_run_then_run_again_no_point_runs_twice(tmp_path: Path, backend: str) -> None:
    out = tmp_path / "runs"
    out.mkdir()
    db = f"sqlite:///{tmp_path}/q.db" if backend == "sqlite" else f"file://{tmp_path}/q"
    # the owner submits 30 points to its own two process workers and dies (os._exit: no
    # cleanup) once some are done, at a moment when every recorded run has its result stored
    # and both running points started under half their second ago (so neither is mid-way
    # through recording its run: a point killed after its record but before its result may
    # run twice, by design). Under load a result takes a while to be stored: the window each
    # point leaves is half a second, not a tenth (0.4 s points missed every window once)
    owner = _start(_script(db, out, """
        oq = OmniQ(tasks=DB, worker="process", concurrency=2, lease=2.0)
        oq.open()
        sw = oq.sweep(record, GRID, name="rerun")
        oq.flush()
        deadline = time.time() + 120
        while time.time() < deadline:
            done = {int(n.split(".")[0]) for n in os.listdir(OUT) if n.endswith(".runs")}
            starts = {int(n.split(".")[0]): os.stat(os.path.join(OUT, n)).st_mtime
                      for n in os.listdir(OUT) if n.endswith(".start")}
            running = [t for i, t in starts.items() if i not in done]
            stored = sw.counts().get("succeeded", 0)
            if (len(done) >= 6 and stored == len(done) and running
                    and all(time.time() - t < 0.5 for t in running)):
                print(json.dumps({"done": sorted(done), "running": len(running)}), flush=True)
                os._exit(7)  # (a distinct code: not an error, not sys.exit)
            time.sleep(0.005)
        sys.exit("the owner never saw its workers run")
    """))
    stdout, stderr = owner.communicate(timeout=180)
    assert owner.returncode == 7, stderr[-3000:]
    before = json.loads(stdout.strip().splitlines()[-1])
    assert len(before["done"]) < POINTS
    got = _finish(_start(_script(db, out, RERUN)))
    assert got["values"] == [i * 10 for i in range(POINTS)]
    assert got["counts"] == {"succeeded": POINTS}
    assert got["submitted"] == POINTS - len(before["done"])  # all without a result
    assert got["adopted"] == got["submitted"]  # every one of them still in the queue
    assert got["running"] > 0
    counted = runs(out)
    assert {i: n for i, n in counted.items() if n != 1} == {}, (before, got)


def test_two_processes_running_the_same_sweep_at_once_run_every_point_once(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    out.mkdir()
    db = f"sqlite:///{tmp_path}/q.db"
    go = tmp_path / "go"
    body = f"""
        with OmniQ(tasks=DB, worker="process", concurrency=2, lease=2.0) as oq:
            oq.health()  # open, workers started
            open(os.path.join({str(tmp_path)!r}, "ready-%d" % os.getpid()), "w").close()
            while not os.path.exists({str(go)!r}):
                time.sleep(0.002)
            sw = oq.sweep(record, GRID, name="twice")
            sw.wait(150)
            print(json.dumps({{"counts": sw.counts(), "values": sw.values()}}))
    """
    procs = [_start(_script(db, out, body)) for _ in range(2)]
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("ready-*"))) < 2:
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), [
                p.stderr.read() for p in procs if p.poll() is not None and p.stderr]
            time.sleep(0.01)
        go.touch()
        results = [_finish(p) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for got in results:
        assert got["values"] == [i * 10 for i in range(POINTS)]
        assert got["counts"] == {"succeeded": POINTS}
    assert runs(out) == {i: 1 for i in range(POINTS)}
