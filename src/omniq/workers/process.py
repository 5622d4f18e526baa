"""Process workers: children spawned through ``python -m omniq.workers.child`` and owned here.

Owning the children (rather than using a ``ProcessPoolExecutor``) lets us kill exactly the
child running a task that timed out or was cancelled, and replace a child that died.

Dispatch never lets a child idle while a task it could run waits: tasks go to the least
loaded child one at a time; a child holds at most one task beyond the one it runs unless tasks
have been far quicker than a round trip (``Runner._prefetch``); and when a child is idle while
another sits on tasks it has not started behind a slow one, those are taken back (``"U"``) and
run by the idle child.

Children run in a session of their own (the Stop button's SIGINT to the kernel's process group
does not reach them) and die with this process, even after ``kill -9`` (``_wire.setup_child``).

``ChildRunner`` is what every runner with children shares (the gevent runner is the other):
spawning, reading frames, stopping, killing, and replacing a child that died.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import heapq
import json
import os
import signal
import sys
import time
import warnings
from collections import deque
from collections.abc import Sequence
from typing import Any

from ..logs import about, get_logger
from ..models import ErrorInfo, Task, TaskStatus
from ..serialization._signing import for_child
from . import _wire
from .base import Outcome, Runner, expired_outcome, stopped_outcome

log = get_logger("omniq.worker.process")


def child_command(module: str = "omniq.workers.child") -> list[str]:
    """The child's command line. ``-m`` would put the working directory first on ``sys.path``,
    so a ``dill.py`` planted where ``omniq worker`` was started would run in every child: ``-P``
    (3.11+) leaves it out; on 3.10, ``-I`` (isolated: no working directory, no PYTHON*
    variables, hence ``-u``). The child gets the parent's import path explicitly instead.

    Args:
        module: The child's module.

    Returns:
        The command line.

    Examples:
        >>> import sys
        >>> from omniq.workers.process import child_command
        >>> cmd = child_command()
        >>> cmd[0] == sys.executable, cmd[-2:]
        (True, ['-m', 'omniq.workers.child'])
    """
    flags = ["-P"] if sys.version_info >= (3, 11) else ["-I", "-u"]
    return [sys.executable, *flags, "-m", module]


def child_env() -> dict[str, str]:
    """The parent's environment plus its import path, so functions imported by reference from
    the user's own modules (next to a notebook, say) import in the child too.

    The secret keys are left out: the child gets only a derived key that signs results.

    Returns:
        The environment for a child.

    Examples:
        >>> from omniq.workers.process import child_env
        >>> env = child_env()
        >>> "OMNIQ_CHILD_SYSPATH" in env, "OMNIQ_SECRET_KEY" in env
        (True, False)
    """
    env = dict(os.environ)
    paths = [os.path.abspath(p or os.getcwd()) for p in sys.path]
    env["OMNIQ_CHILD_SYSPATH"] = json.dumps([p for p in paths if os.path.isdir(p)])
    env.setdefault("PYTHONUNBUFFERED", "1")
    env[_wire.PARENT_ENV] = str(os.getpid())
    # Least privilege: task code in a child must not read the key (it could sign tasks). The
    # parent checks each task's signature and sends the inner payload (``for_child``); the child
    # gets only the result-role key, which signs results and never verifies as a task.
    from ..serialization import ACCEPTED_ENV, SIGNING_ENV, get_secret_keys
    from ..serialization._signing import CHILD_RESULT_ENV, derive

    env.pop(SIGNING_ENV, None)
    env.pop(ACCEPTED_ENV, None)
    env.pop(CHILD_RESULT_ENV, None)
    signing = get_secret_keys()[0]  # (keys set with set_secret_keys() count too)
    if signing is not None:
        env[CHILD_RESULT_ENV] = derive(signing).hex()
    return env


#: seconds a child may go without a word (its task still running) before tasks it holds but
#: has not started are taken back for an idle sibling
RECALL_AFTER = 0.05
#: seconds between looks at the memory of children running a task with a memory limit
MEMORY_EVERY = 0.1
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss(pid: int) -> int | None:
    """A process's resident memory in bytes (None where it cannot be read).

    Args:
        pid: The process id.

    Returns:
        Bytes, or None.

    Examples:
        >>> import os
        >>> from omniq.workers.process import rss
        >>> rss(os.getpid()) > 1_000_000
        True
    """
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return int(psutil.Process(pid).memory_info().rss)
    except Exception:
        return None


def size_text(n: float) -> str:
    """A byte count for people, in binary units.

    Args:
        n: Bytes.

    Returns:
        The text.

    Examples:
        >>> from omniq.workers.process import size_text
        >>> size_text(512), size_text(3 * 2**20)
        ('512 B', '3.0 MiB')
    """
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


class PoolShortWarning(RuntimeWarning):
    """A worker pool runs with fewer children than it was given slots (a replacement failed).

    ``health()`` shows the shortfall as the worker's ``missing``.

    Examples:
        >>> from omniq.workers.process import PoolShortWarning
        >>> issubclass(PoolShortWarning, RuntimeWarning)
        True
    """


class _Child:
    __slots__ = ("died", "heard", "kill_reason", "memory", "pending", "pid", "proc", "reader", "recalling",
                 "started", "timers")

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.pending: dict[str, Task] = {}  # sent and not yet reported, in the order sent
        self.started: dict[str, float] = {}  # ids whose start was reported -> when
        self.kill_reason: tuple[str, str] | None = None  # (task id, "timeout" | "cancel")
        self.timers: dict[str, asyncio.TimerHandle] = {}
        self.reader: asyncio.Task[None] | None = None
        self.died = False
        self.heard = time.monotonic()  # its last frame, or when it was last handed work while idle
        self.recalling = False  # a "U" is out, its "B" not yet back
        self.memory: tuple[str, int, int] | None = None  # (task id, limit, peak) of the task it runs

    def close(self) -> None:
        """Close the pipes' transport of a child that exited. Left to the garbage collector, it
        closes on a loop that may be closed by then ("Event loop is closed" at exit)."""
        transport = getattr(self.proc, "_transport", None)
        if transport is not None:
            transport.close()

    def send(self, msg: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(_wire.frame(msg))

    def send_tasks(self, batch: Sequence[Task], where: Sequence[dict[str, str] | None]) -> None:
        if not self.pending:
            self.heard = time.monotonic()
        self.pending.update((t.id, t) for t in batch)
        try:
            # verified here: the child has no key (see child_env)
            self.send(["T", [[t.id, for_child(t.payload), t.timeout, t.expires_at] if paths is None
                             else [t.id, for_child(t.payload), t.timeout, t.expires_at, paths]
                             for t, paths in zip(batch, where)]])
        except (BrokenPipeError, ConnectionResetError, RuntimeError):
            pass  # the reader sees the death and deals with the batch


class ChildRunner(Runner):
    """A runner whose tasks run in child processes it owns (``python -m child_module``).

    Subclasses say how many children, how tasks spread over them (``capacity``, ``_pump``),
    how results come back (``_results``) and what a dead child's tasks become (``_orphans``).

    Args:
        slots: Tasks it runs at once.
        processes: Children it keeps.

    Examples:
        See :class:`ProcessRunner`.
    """

    child_module = "omniq.workers.child"

    def __init__(self, slots: int, processes: int) -> None:
        super().__init__(slots)
        self.processes = processes
        self._children: list[_Child] = []
        self._ready: deque[Task] = deque()  # claimed here, not yet sent to a child
        self._stopping = False
        self._spawning = 0
        self._replacing: set[asyncio.Task[Any]] = set()  # readers of dead children, starting others
        self._abandoned: list[asyncio.subprocess.Process] = []  # starts cut short: reaped by stop
        self._short_since: float | None = None  # a replacement keeps failing since then

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Spawn the children (see :meth:`Runner.start`)."""
        children = await asyncio.gather(*(self._spawn() for _ in range(self.processes)))
        self._children.extend(children)

    async def _spawn(self) -> _Child:
        cmd = child_command(self.child_module)
        env = child_env()
        if self.blobs is not None:
            env[_wire.BLOB_DIR_ENV] = self.blobs.root
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
            limit=1 << 20,
            start_new_session=True,  # out of reach of the Stop button's SIGINT from the first instruction
        )
        child = _Child(proc)
        assert proc.stdout is not None
        try:
            hello = await _wire.read_frame_async(proc.stdout)
        except asyncio.IncompleteReadError:
            code = await proc.wait()
            child.close()
            raise RuntimeError(
                f"{self.kind} worker failed to start ({' '.join(cmd)} exited with {code}); see its stderr above"
            ) from None
        except BaseException:  # cancelled while it started (a stop): no child and no transport left
            self._abandon(child)
            raise
        assert hello[0] == "H"
        child.reader = asyncio.get_running_loop().create_task(self._read(child))
        return child

    async def stop(self, *, graceful: bool) -> list[Task]:
        """Stop the children: with ``graceful`` after their running tasks, else at once (see
        :meth:`Runner.stop`)."""
        self._stopping = True
        unstarted = list(self._ready)
        self._ready.clear()
        # a replacement still starting is stopped here, not left running when the loop ends
        for t in list(self._replacing):
            t.cancel()
        await asyncio.gather(*self._replacing, return_exceptions=True)
        for p in self._abandoned:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(p.wait(), 2.0)
        self._abandoned.clear()
        if graceful:
            while any(c.pending and not c.died for c in self._children):
                await asyncio.sleep(0.01)
        for c in self._children:
            if not graceful:
                unstarted.extend(c.pending.values())
                c.pending.clear()
            with contextlib.suppress(Exception):
                c.send(["Q"])
                assert c.proc.stdin is not None
                c.proc.stdin.close()
        await asyncio.gather(*(self._reap(c, graceful) for c in self._children))
        self._children.clear()
        # tasks that came back while it stopped (a child's orphans or given-back tasks): they
        # are not sent anywhere now (_pump), so they go back with the rest
        unstarted.extend(self._ready)
        self._ready.clear()
        return unstarted

    def _abandon(self, c: _Child) -> None:
        """A child started while the pool stops: killed now, its pipes closed, reaped by stop()."""
        with contextlib.suppress(ProcessLookupError):
            c.proc.kill()
        c.close()
        self._abandoned.append(c.proc)

    async def _reap(self, c: _Child, graceful: bool) -> None:
        try:
            await asyncio.wait_for(c.proc.wait(), 2.0 if graceful else 0.2)
        except (asyncio.TimeoutError, ProcessLookupError):
            with contextlib.suppress(ProcessLookupError):
                c.proc.kill()
            await c.proc.wait()
        c.close()
        if c.reader is not None:
            c.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await c.reader
        for h in c.timers.values():
            h.cancel()

    def alive(self) -> bool:
        """Whether every child is running."""
        return bool(self._children) and all(c.proc.returncode is None for c in self._children)

    def missing(self) -> int:
        """Children this pool should have and does not (a replacement that keeps failing).

        Returns:
            The number of children missing (0 while stopping).
        """
        if self._stopping:
            return 0
        return max(0, self.processes - sum(not c.died for c in self._children) - self._spawning)

    def pids(self) -> list[int]:
        """The children's process ids."""
        return [c.pid for c in self._children]

    # --- dispatch --------------------------------------------------------------------------
    def held(self) -> list[str]:
        """Tasks not yet sent and those sent to a child (see :meth:`Runner.held`)."""
        ids = [t.id for t in self._ready]
        for c in self._children:
            ids.extend(c.pending)
        return ids

    def dispatch(self, tasks: Sequence[Task]) -> None:
        """Hand the tasks to children as they have room (see :meth:`Runner.dispatch`)."""
        self._ready.extend(tasks)
        self._pump()

    @abc.abstractmethod
    def _pump(self) -> None:
        """Send ready tasks to children that have room."""

    # --- results ---------------------------------------------------------------------------
    async def _read(self, c: _Child) -> None:
        stdout = c.proc.stdout
        assert stdout is not None
        try:
            while True:
                msg = await _wire.read_frame_async(stdout)
                c.heard = time.monotonic()
                if msg[0] == "R":
                    self._results(c, msg[1])
                elif msg[0] == "S":
                    self._started(c, msg[1], msg[2])
                elif msg[0] == "B":
                    self._given_back(c, msg[1])
        except (asyncio.IncompleteReadError, ConnectionResetError):
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("protocol error from %s worker %s; replacing it", self.kind, c.pid)
            with contextlib.suppress(ProcessLookupError):
                c.proc.kill()
        if not self._stopping:
            await self._died(c)
        else:  # an exit is expected now; a crash must not keep a graceful stop waiting (the
            c.died = True  # tasks it held come back when their leases lapse)

    def _started(self, c: _Child, tid: str, at: float) -> Task | None:
        task = c.pending.get(tid)
        if task is not None:
            c.started[tid] = at
            self.on_started(task, at)
        return task

    @abc.abstractmethod
    def _results(self, c: _Child, rows: list[list[Any]]) -> None:
        """Handle an "R" frame."""

    def _given_back(self, c: _Child, ids: list[str]) -> None:
        """Handle a "B" frame: tasks a child gave back unstarted run elsewhere, first (but one
        a cancel or timeout was aimed at meanwhile ends as asked)."""
        c.recalling = False
        back = [t for t in (c.pending.pop(tid, None) for tid in ids) if t is not None]
        reason = c.kill_reason
        target = next((t for t in back if reason is not None and t.id == reason[0]), None)
        if target is not None and reason is not None:
            back.remove(target)
            now = time.time()
            self.on_done([stopped_outcome(target, reason[1], now, now)])
            c.kill_reason = (reason[0], "given back")  # the child dies for it: not its tasks' fault
        self._ready.extendleft(reversed(back))
        self._pump()
        self._signal_capacity()

    def _finished(self, c: _Child, task: Task, code: int, data: Any, started: float, finished: float,
                  blobs: Sequence[str] = ()) -> Outcome:
        """The outcome of a reported row; its start is announced now if it was not yet."""
        h = c.timers.pop(task.id, None)
        if h is not None:
            h.cancel()
        if c.started.pop(task.id, None) is None and code != _wire.EXPIRED:
            self.on_started(task, started)
        if code == _wire.OK:
            return Outcome(task, payload=data, started_at=started, finished_at=finished, blobs=tuple(blobs))
        if code == _wire.TIMED_OUT:
            return stopped_outcome(task, "timeout", started, finished)
        if code == _wire.CANCELLED:
            return stopped_outcome(task, "cancel", started, finished)
        if code == _wire.EXPIRED:
            return expired_outcome(task, finished) or stopped_outcome(task, "cancel", started, finished)
        etype, emsg, etb = data
        return Outcome(
            task,
            error=ErrorInfo(type=etype, message=emsg, traceback=etb),
            started_at=started,
            finished_at=finished,
            retryable=code == _wire.FAILED,
        )

    # --- stopping tasks, and children that die ---------------------------------------------
    def _kill(self, c: _Child, tid: str, reason: str) -> None:
        if c.died or c.kill_reason is not None or tid not in c.pending:
            return
        c.kill_reason = (tid, reason)
        with contextlib.suppress(ProcessLookupError):
            c.proc.kill()

    async def cancel(self, task_id: str) -> bool:
        """A task not yet sent is dropped; one a child holds is stopped (a process child is
        killed and replaced; the gevent child kills the greenlet). See :meth:`Runner.cancel`."""
        for i, t in enumerate(self._ready):
            if t.id == task_id:
                del self._ready[i]
                now = time.time()
                self.on_done([stopped_outcome(t, "cancel", now, now)])
                return True
        for c in self._children:
            if task_id in c.pending and not c.died:
                self._cancel_sent(c, task_id)
                return True
        return False

    def _cancel_sent(self, c: _Child, tid: str) -> None:
        """Stop a task a child holds: here, by killing the child."""
        self._kill(c, tid, "cancel")

    async def _died(self, c: _Child) -> None:
        """A child exited: report or hand back its tasks (``_orphans``), replace it."""
        c.died = True
        await c.proc.wait()
        c.close()
        for h in c.timers.values():
            h.cancel()
        c.timers.clear()
        lost = list(c.pending.values())
        c.pending.clear()
        outs = self._orphans(c, lost, time.time()) if lost else []
        if outs:  # reported before the replacement starts: redelivery need not wait for it
            self.on_done(outs)
        if c in self._children and not self._stopping:
            self._children.remove(c)
            self._pump()  # its unstarted tasks go to idle siblings now, not after the replacement
            self._signal_capacity()
            me = asyncio.current_task()
            assert me is not None
            self._replacing.add(me)
            try:
                await self._replace(c)
            finally:
                self._replacing.discard(me)
        self._pump()
        self._signal_capacity()

    async def _replace(self, c: _Child) -> None:
        """Start a child in place of ``c``; a start that fails is tried again with back-off
        (the pool says it is short meanwhile: ``missing``, health and a warning)."""
        delay = 0.1
        while not self._stopping:
            self._spawning += 1
            try:
                child = await self._spawn()
            except Exception as exc:
                if self._short_since is None:
                    self._short_since = time.monotonic()
                    msg = (f"OmniQ {self.kind} pool is short of a worker: could not replace child {c.pid} "
                           f"({type(exc).__name__}: {exc}); retrying")
                    log.warning(msg, exc_info=True)
                    warnings.warn(msg, PoolShortWarning, stacklevel=1)
            else:
                if self._stopping:  # closed while it started: stop() reaps it (no await here
                    self._abandon(child)  # that its cancel could cut short)
                    return
                self._children.append(child)
                if self._short_since is not None and not self.missing():
                    log.warning("%s pool is whole again after %.1f s", self.kind,
                                time.monotonic() - self._short_since)
                    self._short_since = None
                return
            finally:
                self._spawning -= 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    @abc.abstractmethod
    def _orphans(self, c: _Child, lost: list[Task], now: float) -> list[Outcome]:
        """What becomes of the tasks a dead child held (in the order sent): outcomes to report;
        tasks it never started may go back to ``_ready``."""

    def _began(self, c: _Child, task: Task, now: float) -> float:
        """When a task a dead child was running started. Its "S" frame may not have come (a
        process child sends one per batch when tasks are quick); then its start is announced
        now, so its events still read started -> requeued / failed / cancelled."""
        at = c.started.get(task.id)
        if at is None:
            self.on_started(task, now)
            return now
        return at

    def _worker_died(self, c: _Child, tasks: Sequence[Task], now: float, why: str = "") -> list[Outcome]:
        """Outcomes marking ``tasks`` as lost with their child: delivered again if their
        delivery bound allows (see ``Worker._complete``), else failed with ``WorkerDied``."""
        code = c.proc.returncode
        if code == -signal.SIGKILL and not why:  # not by us: the kernel's OOM killer, or a person
            why = " (killed by SIGKILL: out of memory? give it a memory_limit to fail it cleanly)"
        msg = f"worker process {c.pid} died (exit code {code}) running this task{why}"
        for t in tasks:  # one record per task, so each carries its task id and queue
            log.warning("%s worker %s died (exit code %s) running task %s%s", self.kind, c.pid,
                        c.proc.returncode, t.id, why, extra=about(t, worker=self.worker_id))
        return [
            Outcome(t, error=ErrorInfo(type="WorkerDied", message=msg), started_at=self._began(c, t, now),
                    finished_at=now, retryable=False, status=TaskStatus.RUNNING)  # the marker
            for t in tasks
        ]


class ProcessRunner(ChildRunner):
    """``slots`` child processes, one task at a time each; a child that dies is replaced.

    The ``"process"`` worker kind (the default). A task past its timeout or its memory limit,
    or cancelled, has its child killed (and replaced); a child that dies takes only its own
    task with it.

    Args:
        slots: Children, hence tasks at once.

    Attributes:
        memory_limit: Bytes a task without its own ``memory_limit`` may use (None: no limit).

    Examples:
        Runs tasks as :class:`~omniq.workers.base.Runner`'s example shows, made with
        ``make_runner("process", slots)``:

        >>> from omniq.workers.registry import make_runner
        >>> make_runner("process", 2).kind
        'process'
    """

    kind = "process"

    def __init__(self, slots: int) -> None:
        super().__init__(slots, processes=slots)
        self._balance_at: asyncio.TimerHandle | None = None
        self.memory_limit: int | None = None  # bytes: for tasks that do not set their own
        self._memory_watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Spawn the children and start watching their memory (see :meth:`Runner.start`)."""
        await super().start()
        self._memory_watch = asyncio.get_running_loop().create_task(self._watch_memory())

    def _limit(self, task: Task) -> int | None:
        return getattr(task, "memory_limit", None) or self.memory_limit

    async def _watch_memory(self) -> None:
        """Stop a task whose process goes over its memory limit (killing its child, as for a
        timeout); it fails with ``MemoryLimitExceeded`` naming the limit and the peak."""
        while True:
            await asyncio.sleep(MEMORY_EVERY)
            for c in self._children:
                if c.died or not c.pending or c.kill_reason is not None:
                    continue
                task = next(iter(c.pending.values()))
                limit = self._limit(task)
                if not limit:
                    continue
                used = rss(c.pid)
                if used is None:
                    continue
                if c.memory is None or c.memory[0] != task.id or used > c.memory[2]:
                    c.memory = (task.id, limit, used)
                if used > limit:
                    self._kill(c, task.id, "memory")

    def capacity(self) -> int:
        """Room in live children (and those starting) beyond what waits to be sent."""
        if self._stopping:
            return 0
        per = 1 + self._prefetch()
        live = [c for c in self._children if not c.died]
        room = sum(max(0, per - len(c.pending)) for c in live) + self._spawning * per
        return room - len(self._ready)

    def _pump(self) -> None:
        """Hand ready tasks out one at a time to the least loaded child, so two slow tasks never
        share a child while another has room; then see whether an idle child should take tasks
        a busy one has not started."""
        if self._ready and not self._stopping:
            per = 1 + self._prefetch()
            heap = [(len(c.pending), i) for i, c in enumerate(self._children) if not c.died and len(c.pending) < per]
            heapq.heapify(heap)
            batches: dict[int, list[Task]] = {}
            late: list[Outcome] = []
            now = time.time()
            while self._ready and heap:
                load, i = heap[0]
                t = self._ready.popleft()
                gone = expired_outcome(t, now)
                if gone is not None:
                    late.append(gone)
                    continue
                batches.setdefault(i, []).append(t)
                if load + 1 < per:
                    heapq.heapreplace(heap, (load + 1, i))
                else:
                    heapq.heappop(heap)
            for i, batch in batches.items():
                self._children[i].send_tasks(batch, [self._paths(t) for t in batch])
            if late:
                self.on_done(late)
        if not self._ready and not self._stopping:
            self._balance()

    def _balance(self) -> None:
        """Take back the unstarted tasks of a child that has gone quiet (its task is slow) while
        a sibling is idle: they run there instead of waiting."""
        live = [c for c in self._children if not c.died]
        if not any(not c.pending for c in live):
            return
        victims = [c for c in live if len(c.pending) > 1 and not c.recalling]
        if not victims:
            return
        now = time.monotonic()
        wait = RECALL_AFTER
        for c in victims:
            quiet = now - c.heard
            if quiet >= RECALL_AFTER:
                c.recalling = True
                with contextlib.suppress(BrokenPipeError, ConnectionResetError, RuntimeError):
                    c.send(["U", list(c.pending)[1:]])
            else:
                wait = min(wait, RECALL_AFTER - quiet)
        if len([c for c in victims if not c.recalling]) and self._balance_at is None:
            def again() -> None:
                self._balance_at = None
                if not self._ready and not self._stopping:
                    self._balance()

            self._balance_at = asyncio.get_running_loop().call_later(wait + 0.001, again)

    async def stop(self, *, graceful: bool) -> list[Task]:
        """See :meth:`ChildRunner.stop`."""
        if self._balance_at is not None:
            self._balance_at.cancel()
            self._balance_at = None
        if self._memory_watch is not None:
            self._memory_watch.cancel()
            self._memory_watch = None
        return await super().stop(graceful=graceful)

    def _started(self, c: _Child, tid: str, at: float) -> Task | None:
        task = super()._started(c, tid, at)
        if task is not None and task.timeout is not None:
            loop = asyncio.get_running_loop()
            c.timers[tid] = loop.call_later(task.timeout, self._kill, c, tid, "timeout")
        return task

    def _results(self, c: _Child, rows: list[list[Any]]) -> None:
        outs: list[Outcome] = []
        for r in rows:
            tid, code, data, started, finished = r[:5]
            if self._stopping and tid not in c.pending:
                continue  # a stop without draining gave this task back already: it runs again
            first = next(iter(c.pending), None)
            if first != tid:  # cannot happen unless the protocol broke
                raise RuntimeError(f"child {c.pid} answered {tid!r}, expected {first!r}")
            task = c.pending.pop(tid)
            self._observe(finished - started)
            outs.append(self._finished(c, task, code, data, started, finished, r[5] if len(r) > 5 else ()))
        self.on_done(outs)
        self._pump()
        self._signal_capacity()

    def _orphans(self, c: _Child, lost: list[Task], now: float) -> list[Outcome]:
        """The first task was running: it is reported; the rest never started and go back,
        except the one a kill was aimed at (queued behind the running one)."""
        first, rest = lost[0], lost[1:]
        reason = c.kill_reason
        outs: list[Outcome] = []
        if reason is not None and reason[0] != first.id:
            target = next((t for t in rest if t.id == reason[0]), None)
            if target is not None:
                rest.remove(target)
                rest.insert(0, first)  # the running one goes back
                outs.append(stopped_outcome(target, reason[1], now, now))
            else:  # we killed it for a task it had reported or given back meanwhile: not first's fault
                rest.insert(0, first)
        elif reason is not None and reason[1] == "memory" and c.memory is not None:
            _, limit, peak = c.memory
            outs.append(Outcome(first, error=ErrorInfo(
                type="MemoryLimitExceeded",
                message=f"task {first.name or first.id} used {size_text(peak)}, over its memory_limit of "
                        f"{size_text(limit)}; it was stopped"),
                started_at=self._began(c, first, now), finished_at=now, retryable=False))
        elif reason is not None:
            outs.append(stopped_outcome(first, reason[1], self._began(c, first, now), now))
        else:
            outs.extend(self._worker_died(c, [first], now))
        self._ready.extendleft(reversed(rest))
        return outs
