"""Injected faults on the SQLite backend: kill -9 at random points, a full disk, a read-only
database, corrupted payload bytes in storage.

The kill -9 tests are loops of seeded random trials. Each prints its seed in any failure
(rerun one with ``OMNIQ_FAULT_SEED=<seed>``); ``OMNIQ_FAULT_TRIALS=<n>`` runs ``n`` trials of
each kind instead of the default few. After every trial a fresh instance or worker recovers the
same SQLite file, and an audit of the file checks the promise: every *accepted* task (its
``enqueue`` returned, or the ``flush`` after its ``submit`` / ``map`` did) ends with exactly one
final result, none is left ``RUNNING``, and every stored result decodes. Tasks may run more than
once (at-least-once delivery); their final result exists once.

Each kill test prints one summary row (``pytest -s``), and appends it to the file named by
``OMNIQ_FAULT_REPORT`` if set: the numbers behind the README's "Reliability" table.

The disk tests mount a small tmpfs (root only; skipped otherwise with the reason).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import pytest

from omniq import OmniQ, TaskStatus
from omniq.errors import ConfigError, StorageUnwritable
from omniq.models import TaskResult

from . import helpers
from .workers.common import runner, wait_until

REPO = Path(__file__).resolve().parent.parent
S = TaskStatus
FINAL = {"succeeded", "failed", "cancelled", "expired"}
pytestmark = pytest.mark.timeout(120)


# --- seeds, trials, the summary rows -----------------------------------------------------------


def _seed() -> int:
    env = os.environ.get("OMNIQ_FAULT_SEED")
    return int(env) if env else random.SystemRandom().randrange(2**32)


def _trials(default: int) -> int:
    env = os.environ.get("OMNIQ_FAULT_TRIALS")
    return max(1, int(env)) if env else default


def _report(fault: str, backend: str, trials: int, accepted: int, lost: int, note: str = "") -> None:
    row = f"| {fault} | {backend} | {trials} | {accepted} | {lost} |"
    print(f"\nFAULTS {row}{'  ' + note if note else ''}")
    path = os.environ.get("OMNIQ_FAULT_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(row + "\n")


# --- processes -----------------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped) counts as dead
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _kill_group(p: subprocess.Popen[Any]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        p.wait(10)


def _worker_cli(url: str, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    """An ``omniq worker`` in its own session (a killpg takes its children too)."""
    with log.open("wb") as err:  # the child has its own copy of the file
        return subprocess.Popen(
            [sys.executable, "-m", "omniq.cli", "worker", "--tasks", url, "--worker", "process",
             "-c", "2", "--lease", "1", *extra],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
        )


# --- the audit ------------------------------------------------------------------------------------

_decode_result = msgspec.msgpack.Decoder(TaskResult).decode


def recover(url: str, ids: list[str], timeout: float = 40.0) -> None:
    """A fresh instance with workers on the same file: lapsed leases are reaped, tasks run again.
    An id the storage never knew (a ``submit`` not yet stored when its owner was killed) is a
    ConfigError here; whether an accepted one is missing is for the audit to say."""
    deadline = time.monotonic() + timeout
    with OmniQ(tasks=url, worker="thread", concurrency=2, lease=1) as oq:
        for tid in ids:
            with contextlib.suppress(TimeoutError, ConfigError):
                oq.get_result(tid, wait=True, timeout=max(0.1, deadline - time.monotonic()))


def audit(db: Path, accepted: dict[str, Any]) -> tuple[list[str], list[str]]:
    """``(lost, problems)`` for a SQLite file nobody has open: ``lost`` are accepted ids without
    a final result; ``problems`` everything else wrong (stuck RUNNING, a result that does not
    decode, a status that disagrees with the result, a wrong value)."""
    problems: list[str] = []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        statuses = dict(conn.execute("SELECT id, status FROM omniq_tasks").fetchall())
        rows = conn.execute("SELECT task_id, status, result FROM omniq_results").fetchall()
        per_task = dict(conn.execute(
            "SELECT task_id, count(*) FROM omniq_results GROUP BY task_id").fetchall())
    finally:
        conn.close()
    stuck = [i for i, s in statuses.items() if s == "running"]
    if stuck:
        problems.append(f"{len(stuck)} tasks stuck RUNNING after the lease: {stuck[:5]}")
    results: dict[str, TaskResult] = {}
    for tid, status, blob in rows:
        try:
            r = _decode_result(blob)
        except Exception as e:  # a half-written result
            problems.append(f"result of {tid} does not decode: {e!r}")
            continue
        if r.task_id != tid or r.status.value != status:
            problems.append(f"result row {tid}/{status} holds {r.task_id}/{r.status.value}")
        results[tid] = r
    lost = []
    for tid, expected in accepted.items():
        if tid not in statuses:
            lost.append(tid)  # accepted, then gone from the queue
            continue
        r = results.get(tid)
        if r is None:
            lost.append(tid)
            continue
        if per_task.get(tid) != 1:
            problems.append(f"{tid} has {per_task.get(tid)} results")
        if statuses[tid] not in FINAL or statuses[tid] != r.status.value:
            problems.append(f"{tid}: task {statuses[tid]} but result {r.status.value}")
        if r.status is S.SUCCEEDED:
            try:
                value = r.value
            except Exception as e:
                problems.append(f"value of {tid} does not decode: {e!r}")
                continue
            if value != expected:
                problems.append(f"{tid}: value {value!r}, expected {expected!r}")
        elif not (r.status is S.FAILED and r.error is not None and r.error.type == "WorkerDied"):
            problems.append(f"{tid} ended {r.status.value}: {r.error}")
    return lost, problems


def _fewer_queued(oq: OmniQ, n: int) -> bool:
    """Fewer than ``n`` tasks queued: a worker has taken some."""
    return bool(oq.health()["queues"].get("default", {}).get("queued", 0) < n)


def _read_lines(stream: Iterable[bytes], into: list[str]) -> None:
    into.extend(ln.decode() for ln in stream)


def _said_pids(lines: list[str]) -> bool:
    return any(ln.startswith("PIDS") for ln in lines)


def _all_gone(pids: list[int]) -> bool:
    return not any(pid_alive(p) for p in pids)


def _check(where: str, lost: list[str], problems: list[str]) -> None:
    assert not lost and not problems, f"{where}: lost {lost[:10]} ({len(lost)}); {problems[:10]}"


# --- kill -9 -------------------------------------------------------------------------------------


def test_kill9_of_process_worker_children_at_random_points(tmp_path: Path) -> None:
    """Children of a process worker are killed while they run tasks; the instance that owns
    them replaces them and every task still ends once; a fresh instance finds it all."""
    seed, trials = _seed(), _trials(6)
    rng = random.Random(seed)
    accepted_total = lost_total = kills = 0
    for trial in range(trials):
        where = f"seed={seed} trial={trial}"
        db = tmp_path / f"children{trial}.db"
        url = f"sqlite:///{db}"
        accepted: dict[str, Any] = {}
        with OmniQ(tasks=url, worker="process", concurrency=2, lease=1) as oq:
            durations = [rng.choice((0.0, 0.005, 0.02, 0.1)) for _ in range(rng.randint(20, 60))]
            handles = [oq.submit(helpers.sleep_return, d, i) for i, d in enumerate(durations)]
            accepted.update((h.id, i) for i, h in enumerate(handles))  # the owner lives on
            plan = [rng.uniform(0.05, 0.6) for _ in range(rng.randint(1, 3))]
            for pause in plan:
                time.sleep(pause)
                pids = runner(oq).pids()
                if pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(rng.choice(pids), signal.SIGKILL)
                        kills += 1
            for h in handles:
                with contextlib.suppress(Exception):
                    h.get(timeout=30)
        recover(url, list(accepted))
        lost, problems = audit(db, accepted)
        accepted_total += len(accepted)
        lost_total += len(lost)
        _check(where, lost, problems)
    _report("kill -9 of a process-worker child", "SQLite", trials, accepted_total, lost_total,
            f"({kills} kills, seed {seed})")


def test_kill9_of_an_omniq_worker_at_random_points(tmp_path: Path) -> None:
    """An ``omniq worker`` (and its children) is killed at a random point while a producer keeps
    enqueueing; a fresh worker on the same file finishes every accepted task."""
    seed, trials = _seed(), _trials(5)
    rng = random.Random(seed)
    accepted_total = lost_total = 0
    for trial in range(trials):
        where = f"seed={seed} trial={trial}"
        db = tmp_path / f"cli{trial}.db"
        url = f"sqlite:///{db}"
        accepted: dict[str, Any] = {}
        log = tmp_path / f"cli{trial}.log"
        with OmniQ(tasks=url, concurrency=0) as producer:
            for i in range(rng.randint(10, 30)):
                accepted[producer.enqueue(helpers.sleep_return, args=(rng.choice((0.0, 0.05)), i))] = i
            proc = _worker_cli(url, log)
            try:
                # the worker must have got going before the kill: some task started or done
                assert wait_until(partial(_fewer_queued, producer, len(accepted)), timeout=30), (
                    f"{where}: the worker never started")
                kill_at = time.monotonic() + rng.uniform(0.0, 1.5)
                i = len(accepted)
                while time.monotonic() < kill_at:
                    accepted[producer.enqueue(helpers.sleep_return, args=(rng.choice((0.0, 0.05)), i))] = i
                    i += 1
                    time.sleep(rng.uniform(0.0, 0.03))
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
            finally:
                _kill_group(proc)
        recover(url, list(accepted))
        lost, problems = audit(db, accepted)
        accepted_total += len(accepted)
        lost_total += len(lost)
        _check(where, lost, problems)
        assert b"Traceback" not in log.read_bytes(), f"{where}: {log.read_text()[-2000:]}"
    _report("kill -9 of an `omniq worker` (and its children)", "SQLite", trials, accepted_total,
            lost_total, f"(seed {seed})")


OWNER = textwrap.dedent("""
    import random, sys, time
    from omniq import OmniQ
    from tests import helpers

    url, seed = sys.argv[1], int(sys.argv[2])
    rng = random.Random(seed)
    with OmniQ(tasks=url, worker="process", concurrency=2, lease=1) as oq:
        print("PIDS", *oq.core.worker.runner.pids(), flush=True)
        i = 0
        while True:
            pick = rng.random()
            if pick < 0.4:
                tid = oq.enqueue(helpers.sleep_return, args=(rng.choice((0.0, 0.02, 0.1)), i))
                print("ACC", tid, i, flush=True)
                i += 1
            elif pick < 0.7:
                items = list(range(i, i + rng.randint(1, 8)))
                hs = oq.map(helpers.square, items)
                oq.flush()
                for h, x in zip(hs, items):
                    print("ACC", h.id, x * x, flush=True)
                i += len(items)
            else:
                h = oq.submit(helpers.sleep_return, 0.01, i)
                print("SUB", h.id, i, flush=True)
                i += 1
            time.sleep(rng.uniform(0.0, 0.02))
""")


def _said(lines: list[str], tag: str) -> dict[str, Any]:
    """``{id: value}`` from the owner's complete ``TAG id value`` lines (the kill may cut one)."""
    out: dict[str, Any] = {}
    for ln in lines:
        parts = ln.split()
        if ln.endswith("\n") and len(parts) == 3 and parts[0] == tag:
            out[parts[1]] = int(parts[2])
    return out


def test_kill9_of_the_process_owning_an_omniq_at_random_points(tmp_path: Path) -> None:
    """The process that owns an OmniQ (submitting, and running process workers) is killed at a
    random point. Its orphaned children exit; a fresh instance finishes every accepted task."""
    seed, trials = _seed(), _trials(5)
    rng = random.Random(seed)
    accepted_total = lost_total = submitted_only = submitted_lost = 0
    for trial in range(trials):
        where = f"seed={seed} trial={trial}"
        db = tmp_path / f"owner{trial}.db"
        url = f"sqlite:///{db}"
        err = tmp_path / f"owner{trial}.err"
        with err.open("wb") as err_file:
            proc = subprocess.Popen(
                [sys.executable, "-c", OWNER, url, str(rng.randrange(2**32))], cwd=REPO,
                stdout=subprocess.PIPE, stderr=err_file, start_new_session=True,
            )
        lines: list[str] = []
        assert proc.stdout is not None
        reader = threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True)
        reader.start()
        children: list[int] = []
        try:
            assert wait_until(partial(_said_pids, lines), timeout=30), (
                f"{where}: the owner never started: {err.read_text()[-2000:]}")
            children = [int(p) for p in lines[0].split()[1:]]
            time.sleep(rng.uniform(0.2, 1.5))
            os.kill(proc.pid, signal.SIGKILL)  # the owner only: its children are orphaned
            proc.wait(10)
            reader.join(10)
            orphans = wait_until(partial(_all_gone, children), timeout=15)
            assert orphans, f"{where}: the owner's children outlived it: {children}"
        finally:
            _kill_group(proc)
            for c in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(c, signal.SIGKILL)
            reader.join(10)
            proc.stdout.close()
        accepted, submitted = _said(lines, "ACC"), _said(lines, "SUB")
        assert accepted, f"{where}: nothing accepted before the kill"
        recover(url, list(accepted) + list(submitted))
        lost, problems = audit(db, accepted)
        accepted_total += len(accepted)
        lost_total += len(lost)
        _check(where, lost, problems)
        # submit() returns before the task is stored: a kill in that moment may lose the
        # newest ones (counted, not failed: see test_submit_then_kill9_loses_the_unflushed)
        sub_lost, sub_problems = audit(db, submitted)
        assert not sub_problems, f"{where}: {sub_problems[:10]}"
        submitted_only += len(submitted)
        submitted_lost += len(sub_lost)
    _report("kill -9 of the process owning an OmniQ (and running its workers)", "SQLite", trials,
            accepted_total, lost_total,
            f"(seed {seed}; besides: {submitted_only} submit() calls returned, unflushed, "
            f"{submitted_lost} of them lost)")


# --- a full disk, a read-only database -----------------------------------------------------------


@contextlib.contextmanager
def tiny_fs(size: str = "512k") -> Iterator[Path]:
    """A fresh tmpfs of ``size``, unmounted afterwards (needs root: skipped otherwise)."""
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("needs root on Linux to mount a small tmpfs")
    where = Path(tempfile.mkdtemp(prefix="omniq-fault-"))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        where.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        with contextlib.suppress(OSError):
            where.rmdir()


def fill(path: Path) -> Path:
    """Fill the file system ``path`` is on; the filler file is returned (remove it to free)."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        with contextlib.suppress(OSError):
            for size in (1 << 16, 4096, 512, 1):  # big pieces, then to the last byte
                with contextlib.suppress(OSError):
                    while True:
                        os.write(fd, b"x" * size)
    finally:
        os.close(fd)
    return filler


def _remount(where: Path, opts: str) -> None:
    subprocess.run(["mount", "-o", opts, str(where)], check=True, capture_output=True)


def test_full_disk_under_the_sqlite_file(tmp_path: Path) -> None:
    """A full disk: enqueue / submit fail with an error naming the URL and the full disk; the
    tasks accepted before are all there and run once space is freed; the instance works again."""
    with tiny_fs() as fs:
        db = fs / "q.db"
        url = f"sqlite:///{db}"
        accepted: dict[str, Any] = {}
        with OmniQ(tasks=url, concurrency=0) as oq:
            for i in range(5):
                accepted[oq.enqueue(helpers.square, args=(i,))] = i * i
            filler = fill(fs)
            refused = 0
            with pytest.raises(StorageUnwritable) as e:
                for i in range(5, 400):  # the WAL has some room left: go on until it is gone
                    accepted[oq.enqueue(helpers.square, args=(i,), metadata={"pad": "x" * 4000})] = i * i
            msg = str(e.value)
            assert url in msg and "disk is full" in msg, msg
            refused += 1
            h = oq.submit(helpers.square, 2)
            with pytest.raises(StorageUnwritable, match="disk is full"):
                h.result(timeout=30)
            refused += 1
            filler.unlink()
            accepted[oq.enqueue(helpers.square, args=(7,))] = 49  # works again
        with OmniQ(tasks=url, worker="thread", concurrency=2) as oq:
            values = {tid: oq.get_result(tid, wait=True, timeout=30) for tid in accepted}
            assert {t: r.value for t, r in values.items() if r is not None} == accepted
            assert oq.submit(helpers.square, 3).result(30) == 9
        lost, problems = audit(db, accepted)
        _check("full disk", lost, problems)
    _report("disk full under the SQLite file (submit refused)", "SQLite", 1, len(accepted), len(lost),
            f"({refused} submits refused with a clear error)")


def test_full_disk_under_a_file_results_dir(tmp_path: Path) -> None:
    """Results on a full ``file://`` directory: the results cannot be written, the tasks are not
    lost (they stay leased and run again); once space is freed every result lands."""
    with tiny_fs() as fs:
        db = tmp_path / "q.db"
        url = f"sqlite:///{db}"
        results = f"file://{fs}/results"
        accepted: dict[str, Any] = {}
        with OmniQ(tasks=url, results=results, worker="thread", concurrency=2, lease=1) as oq:
            first = oq.submit(helpers.square, 1)
            assert first.result(30) == 1  # the directory works (and exists)
            accepted[first.id] = 1
            filler = fill(fs)
            handles = [oq.submit(helpers.square, i) for i in range(2, 12)]
            accepted.update((h.id, i * i) for i, h in zip(range(2, 12), handles))
            time.sleep(2.5)  # leases lapse, tasks are delivered again, and cannot finish
            assert not any(h.done() for h in handles)
            assert all(oq.status(h.id) in (S.RUNNING, S.QUEUED) for h in handles)
            filler.unlink()
            assert [h.result(timeout=30) for h in handles] == [i * i for i in range(2, 12)]
            assert oq.submit(helpers.square, 3).result(30) == 9
        _, problems = audit(db, {})  # (results live in the directory, not the file)
        assert not problems, problems
        with OmniQ(tasks=url, results=results, concurrency=0) as oq:
            got = {tid: oq.get_result(tid) for tid in accepted}
        assert {t: r.value for t, r in got.items() if r is not None} == accepted
    lost = [t for t, r in got.items() if r is None]
    _report("disk full under a file:// results directory", "SQLite + file://", 1, len(accepted), len(lost))


@contextlib.contextmanager
def read_only_database() -> Iterator[tuple[Path, dict[str, Any]]]:
    """A SQLite file with 5 queued tasks on a mount made read-only; yields (file, accepted).
    Afterwards (mount writable again) every accepted task must still run."""
    with tiny_fs("4m") as fs:
        db = fs / "q.db"
        url = f"sqlite:///{db}"
        with OmniQ(tasks=url, concurrency=0) as oq:
            accepted = {oq.enqueue(helpers.square, args=(i,)): i * i for i in range(5)}
        _remount(fs, "remount,ro")
        try:
            yield db, accepted
        finally:
            _remount(fs, "remount,rw")
        with OmniQ(tasks=url, worker="thread", concurrency=2) as oq:
            assert {t: oq.get_result(t, wait=True, timeout=30).value for t in accepted} == accepted
        lost, problems = audit(db, accepted)
        _check("read-only", lost, problems)
    _report("read-only mount under the SQLite file (submit refused)", "SQLite", 1, len(accepted), len(lost))


def test_read_only_database(tmp_path: Path) -> None:
    """A SQLite file on a read-only mount: submitting fails at once with an error naming the
    URL and "read-only"; nothing stored before is lost once the mount is writable again."""
    with read_only_database() as (db, _):
        url = f"sqlite:///{db}"
        oq = OmniQ(tasks=url, concurrency=0)
        t0 = time.monotonic()
        with pytest.raises(StorageUnwritable) as e:
            oq.enqueue(helpers.square, args=(1,))
        assert url in str(e.value) and "read-only" in str(e.value), e.value
        assert time.monotonic() - t0 < 5
        oq.close()


def test_omniq_worker_on_a_read_only_database_says_so_and_exits(tmp_path: Path) -> None:
    """An ``omniq worker`` on a read-only file says so in one line and exits with status 2:
    no traceback, no crash loop."""
    with read_only_database() as (db, _):
        url = f"sqlite:///{db}"
        log = tmp_path / "worker.log"
        proc = _worker_cli(url, log)
        try:
            code = proc.wait(30)
        finally:
            _kill_group(proc)
        text = log.read_text()
        assert "read-only" in text and url in text, text
        assert code == 2 and "Traceback" not in text, text


def test_read_only_view_of_a_database_in_use(tmp_path: Path) -> None:
    """A worker that sees the file through a read-only bind mount while a writer has it open
    (SQLite opens it read-only): submit gets a clear "read-only" error; a worker there keeps
    running without a traceback per retry; the tasks stay queued and run elsewhere."""
    with tiny_fs("4m") as fs:
        view = Path(tempfile.mkdtemp(prefix="omniq-ro-"))
        subprocess.run(["mount", "--bind", str(fs), str(view)], check=True)
        try:
            _remount(view, "remount,ro,bind")
            rw_url, ro_url = f"sqlite:///{fs}/q.db", f"sqlite:///{view}/q.db"
            with OmniQ(tasks=rw_url, concurrency=0) as owner:
                accepted = {owner.enqueue(helpers.square, args=(i,)): i * i for i in range(5)}
                with OmniQ(tasks=ro_url, concurrency=0) as reader:
                    assert reader.status(next(iter(accepted))) is S.QUEUED  # reads work
                    with pytest.raises(StorageUnwritable) as e:
                        reader.enqueue(helpers.square, args=(1,))
                    assert ro_url in str(e.value) and "read-only" in str(e.value), e.value
                log = tmp_path / "worker.log"
                proc = _worker_cli(ro_url, log)
                try:
                    time.sleep(4)
                    alive = proc.poll() is None
                finally:
                    _kill_group(proc)
                text = log.read_text()
                assert "read-only" in text, text
                assert alive and "Traceback" not in text, text  # no crash, no traceback per retry
                assert all(owner.status(t) is S.QUEUED for t in accepted)
            with OmniQ(tasks=rw_url, worker="thread", concurrency=2) as oq:
                assert {t: oq.get_result(t, wait=True, timeout=30).value for t in accepted} == accepted
        finally:
            subprocess.run(["umount", "-l", str(view)], check=False)
            with contextlib.suppress(OSError):
                view.rmdir()


# --- corrupted payload bytes in storage ----------------------------------------------------------


CORRUPTIONS = {
    "unknown tag": lambda good: b"\x93\x00garbage" + bytes(range(200, 256)),
    "garbled pickle": lambda good: b"D" + b"garbage" * 3,
    "truncated": lambda good: good[: len(good) // 2],
    "empty": lambda good: b"",
    "whole record": None,  # the task's msgpack record itself, not just its payload
}


def _corrupt(db: Path, tid: str, how: str) -> None:
    """Overwrite what is stored for task ``tid``: its payload bytes inside a valid record, or
    the whole record."""
    from omniq.models import Task

    conn = sqlite3.connect(db, isolation_level=None, timeout=30)
    try:
        (blob,) = conn.execute("SELECT task FROM omniq_tasks WHERE id = ?", (tid,)).fetchone()
        damage = CORRUPTIONS[how]
        if damage is None:
            blob = b"\xc1 not msgpack at all"
        else:
            t = msgspec.msgpack.decode(blob, type=Task)
            t.payload = damage(t.payload)
            blob = msgspec.msgpack.encode(t)
        conn.execute("UPDATE omniq_tasks SET task = ? WHERE id = ?", (blob, tid))
    finally:
        conn.close()


@pytest.mark.parametrize("how", list(CORRUPTIONS))
def test_corrupted_payload_in_storage_fails_that_task_only(tmp_path: Path, how: str) -> None:
    """Bytes of a stored task overwritten: that task fails with an error saying so, once, and
    the process worker keeps running every other task (the bad one is claimed in the same
    batch as good ones)."""
    db = tmp_path / "c.db"
    url = f"sqlite:///{db}"
    with OmniQ(tasks=url, concurrency=0) as producer:
        ids = [producer.enqueue(helpers.square, args=(i,)) for i in range(10)]
    bad = ids[3]
    _corrupt(db, bad, how)
    with OmniQ(tasks=url, worker="process", concurrency=2) as oq:
        results = {t: oq.get_result(t, wait=True, timeout=30) for t in ids}
        r = results[bad]
        assert r is not None and r.status is S.FAILED and r.attempts == 1, r
        assert r.error is not None and r.error.type == "SerializationError", r.error
        assert any(w in r.error.message for w in ("corrupted", "empty payload")), r.error.message
        good = {t: results[t].value for t in ids if t != bad}
        assert good == {t: i * i for i, t in enumerate(ids) if t != bad}
        assert oq.submit(helpers.square, 5).result(30) == 25  # the worker keeps running
        assert [e.type for e in oq.events(task_id=bad)] == ["enqueued", "started", "failed"]
    _, problems = audit(db, {})
    assert not problems, problems
    lost = [t for t in ids if results[t] is None]
    _report(f"corrupted bytes in storage ({how}; 1 of 10 tasks)", "SQLite", 1, len(ids), len(lost))
