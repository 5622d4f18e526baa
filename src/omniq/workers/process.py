"""Process workers: children spawned through ``python -m omniq.workers.child`` and owned here.

Owning the children (rather than using a ``ProcessPoolExecutor``) lets us kill exactly the
child running a task that timed out or was cancelled, and replace a child that died. Tasks go
out in batches sized by how long tasks take (prefetch), so no child idles between quick tasks
and slow tasks are not queued behind each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import struct
import sys
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import msgspec

from ..models import ErrorInfo, Task, TaskStatus
from .base import Outcome, Runner, timeout_error

log = logging.getLogger("omniq.worker.process")
_HEADER = struct.Struct(">I")
_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder()


def child_command() -> list[str]:
    return [sys.executable, "-m", "omniq.workers.child"]


def child_env() -> dict[str, str]:
    """The parent's environment plus its import path, so functions imported by reference from
    the user's own modules (next to a notebook, say) import in the child too."""
    env = dict(os.environ)
    paths = [os.path.abspath(p or os.getcwd()) for p in sys.path]
    env["OMNIQ_CHILD_SYSPATH"] = json.dumps([p for p in paths if os.path.isdir(p)])
    env.setdefault("PYTHONUNBUFFERED", "1")
    # keys set in this process with set_secret_keys() must reach the children too
    from ..serialization import ACCEPTED_ENV, SIGNING_ENV, get_secret_keys

    signing, accepted = get_secret_keys()
    try:
        if signing is not None:
            env[SIGNING_ENV] = signing.decode()
        if accepted:
            env[ACCEPTED_ENV] = ",".join(k.decode() for k in accepted)
    except UnicodeDecodeError:
        log.warning("a secret key is not UTF-8 text; children read %s from the environment", SIGNING_ENV)
    return env


class _Child:
    __slots__ = ("died", "kill_reason", "pending", "pid", "proc", "reader", "started", "timers")

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.pending: deque[Task] = deque()  # sent, in the order the child runs them
        self.started: set[str] = set()  # ids whose start was reported
        self.kill_reason: tuple[str, str] | None = None  # (task id, "timeout" | "cancel")
        self.timers: dict[str, asyncio.TimerHandle] = {}
        self.reader: asyncio.Task[None] | None = None
        self.died = False

    def send(self, msg: object) -> None:
        body = _enc.encode(msg)
        assert self.proc.stdin is not None
        self.proc.stdin.write(_HEADER.pack(len(body)) + body)


class ProcessRunner(Runner):
    """``slots`` child processes; a child that dies is replaced."""

    kind = "process"

    def __init__(self, slots: int) -> None:
        super().__init__(slots)
        self._children: list[_Child] = []
        self._ready: deque[Task] = deque()  # claimed here, not yet sent to a child
        self._avg = 0.01  # moving average of task duration, seconds
        self._stopping = False
        self._spawning = 0
        self._tasks: set[asyncio.Task[object]] = set()

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        children = await asyncio.gather(*(self._spawn() for _ in range(self.slots)))
        self._children.extend(children)

    async def _spawn(self) -> _Child:
        proc = await asyncio.create_subprocess_exec(
            *child_command(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=child_env(),
            limit=1 << 20,
        )
        child = _Child(proc)
        assert proc.stdout is not None
        try:
            hello = _dec.decode(await proc.stdout.readexactly(_HEADER.unpack(await proc.stdout.readexactly(4))[0]))
        except asyncio.IncompleteReadError:
            code = await proc.wait()
            raise RuntimeError(
                f"process worker failed to start ({' '.join(child_command())} exited with {code}); "
                "see its stderr above"
            ) from None
        assert hello[0] == "H"
        child.reader = asyncio.get_running_loop().create_task(self._read(child))
        return child

    async def stop(self, *, graceful: bool) -> list[Task]:
        self._stopping = True
        unstarted = list(self._ready)
        self._ready.clear()
        if graceful:
            while any(c.pending and not c.died for c in self._children):
                await asyncio.sleep(0.01)
        for c in self._children:
            if not graceful:
                unstarted.extend(c.pending)
                c.pending.clear()
            with contextlib.suppress(Exception):
                c.send(["Q"])
                assert c.proc.stdin is not None
                c.proc.stdin.close()
        await asyncio.gather(*(self._reap(c, graceful) for c in self._children))
        self._children.clear()
        return unstarted

    async def _reap(self, c: _Child, graceful: bool) -> None:
        try:
            await asyncio.wait_for(c.proc.wait(), 2.0 if graceful else 0.2)
        except (asyncio.TimeoutError, ProcessLookupError):
            with contextlib.suppress(ProcessLookupError):
                c.proc.kill()
            await c.proc.wait()
        if c.reader is not None:
            c.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await c.reader
        for h in c.timers.values():
            h.cancel()

    def alive(self) -> bool:
        return bool(self._children) and all(c.proc.returncode is None for c in self._children)

    def pids(self) -> list[int]:
        return [c.pid for c in self._children]

    # --- dispatch --------------------------------------------------------------------------
    def _prefetch(self) -> int:
        avg = self._avg
        if avg < 0.001:
            return 64
        if avg < 0.005:
            return 16
        if avg < 0.05:
            return 2
        return 1

    def capacity(self) -> int:
        if self._stopping:
            return 0
        per = self._prefetch()
        live = [c for c in self._children if not c.died]
        room = sum(max(0, per - len(c.pending)) for c in live) + self._spawning * per
        return room - len(self._ready)

    def held(self) -> list[str]:
        ids = [t.id for t in self._ready]
        for c in self._children:
            ids.extend(t.id for t in c.pending)
        return ids

    def dispatch(self, tasks: Sequence[Task]) -> None:
        self._ready.extend(tasks)
        self._pump()

    def _pump(self) -> None:
        if not self._ready or (self._stopping and not self._ready):
            return
        per = self._prefetch()
        for c in sorted(self._children, key=lambda c: len(c.pending)):
            if not self._ready:
                break
            if c.died:
                continue
            room = per - len(c.pending)
            if room <= 0:
                continue
            batch = [self._ready.popleft() for _ in range(min(room, len(self._ready)))]
            c.pending.extend(batch)
            try:
                c.send(["T", [[t.id, t.payload, t.timeout is not None] for t in batch]])
            except (BrokenPipeError, ConnectionResetError, RuntimeError):
                pass  # the reader sees the death and hands the batch back

    # --- results ---------------------------------------------------------------------------
    async def _read(self, c: _Child) -> None:
        stdout = c.proc.stdout
        assert stdout is not None
        try:
            while True:
                n = _HEADER.unpack(await stdout.readexactly(4))[0]
                msg = _dec.decode(await stdout.readexactly(n))
                if msg[0] == "R":
                    self._results(c, msg[1])
                elif msg[0] == "S":
                    self._started(c, msg[1], msg[2])
        except (asyncio.IncompleteReadError, ConnectionResetError):
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("protocol error from process worker %s; replacing it", c.pid)
            with contextlib.suppress(ProcessLookupError):
                c.proc.kill()
        if not self._stopping:  # when stopping, an exiting child is expected
            await self._died(c)

    def _started(self, c: _Child, tid: str, at: float) -> None:
        task = next((t for t in c.pending if t.id == tid), None)
        if task is None:
            return
        c.started.add(tid)
        self.on_started(task, at)
        if task.timeout is not None:
            loop = asyncio.get_running_loop()
            c.timers[tid] = loop.call_later(task.timeout, self._kill, c, tid, "timeout")

    def _results(self, c: _Child, rows: list[list[Any]]) -> None:
        outs: list[Outcome] = []
        avg = self._avg
        for tid, code, data, started, finished in rows:
            task = c.pending.popleft()
            if task.id != tid:  # cannot happen unless the protocol broke
                raise RuntimeError(f"child {c.pid} answered {tid!r}, expected {task.id!r}")
            h = c.timers.pop(task.id, None)
            if h is not None:
                h.cancel()
            if task.id not in c.started:
                self.on_started(task, started)
            else:
                c.started.discard(task.id)
            avg = 0.8 * avg + 0.2 * (finished - started)
            if code == 1:
                outs.append(Outcome(task, payload=data, started_at=started, finished_at=finished))
            else:
                etype, emsg, etb = data
                outs.append(
                    Outcome(
                        task,
                        error=ErrorInfo(type=etype, message=emsg, traceback=etb),
                        started_at=started,
                        finished_at=finished,
                        retryable=code == 0,
                    )
                )
        self._avg = avg
        self.on_done(outs)
        self._pump()
        self._signal_capacity()

    def _kill(self, c: _Child, tid: str, reason: str) -> None:
        if c.died or c.kill_reason is not None:
            return
        c.kill_reason = (tid, reason)
        with contextlib.suppress(ProcessLookupError):
            c.proc.kill()

    async def cancel(self, task_id: str) -> bool:
        for i, t in enumerate(self._ready):
            if t.id == task_id:
                del self._ready[i]
                now = time.time()
                self.on_done([Outcome(t, status=TaskStatus.CANCELLED, started_at=now, finished_at=now,
                                      error=ErrorInfo("TaskCancelled", "cancelled by user"), retryable=False)])
                return True
        for c in self._children:
            if any(t.id == task_id for t in c.pending):
                self._kill(c, task_id, "cancel")
                return True
        return False

    async def _died(self, c: _Child) -> None:
        """A child exited: report the task it was running, hand back the rest, replace it."""
        c.died = True
        await c.proc.wait()
        for h in c.timers.values():
            h.cancel()
        c.timers.clear()
        pending = list(c.pending)
        c.pending.clear()
        now = time.time()
        outs: list[Outcome] = []
        if pending:
            first, rest = pending[0], pending[1:]
            reason = c.kill_reason
            if reason is not None and reason[0] != first.id:
                # the task to stop was queued behind: it is cancelled, the running one goes back
                target = next(t for t in rest if t.id == reason[0])
                rest = [t for t in pending if t is not target]
                outs.append(_stopped(target, reason[1], now))
            elif reason is not None:
                outs.append(_stopped(first, reason[1], now))
            else:
                log.warning(
                    "process worker %s died (exit code %s) running task %s", c.pid, c.proc.returncode, first.id
                )
                outs.append(
                    Outcome(
                        first,
                        error=ErrorInfo(
                            type="WorkerDied",
                            message=f"worker process {c.pid} died (exit code {c.proc.returncode}) running this task",
                        ),
                        started_at=now,
                        finished_at=now,
                        retryable=False,
                        status=TaskStatus.RUNNING,  # marker: delivered again if deliveries allow
                    )
                )
            self._ready.extendleft(reversed(rest))
        if c in self._children and not self._stopping:
            self._children.remove(c)
            self._spawning += 1
            try:
                self._children.append(await self._spawn())
            except Exception:
                log.exception("could not replace process worker %s", c.pid)
            finally:
                self._spawning -= 1
        if outs:
            self.on_done(outs)
        self._pump()
        self._signal_capacity()


def _stopped(task: Task, reason: str, now: float) -> Outcome:
    if reason == "timeout":
        return Outcome(task, error=timeout_error(task), started_at=now, finished_at=now)
    return Outcome(task, status=TaskStatus.CANCELLED, error=ErrorInfo("TaskCancelled", "cancelled by user"),
                   started_at=now, finished_at=now, retryable=False)
