"""gevent workers: greenlets in one child process (``python -m omniq.workers.gevent_child``).

gevent pays off for I/O-bound tasks (HTTP calls, database queries, sleeps): thousands of them
wait at once in one process. It needs the standard library monkey-patched, which must never
happen in the user's process, so the greenlets live in a child that patches itself first; this
process does not even import gevent.

One child owns all the slots: a single hub multiplexes I/O-bound work better than several, and
CPU-bound work belongs in ``worker="process"``. The child enforces timeouts (``gevent.Timeout``)
and cancels (an "X" frame) itself, without dying. Only a child that stops answering -- a task
that holds the CPU, or swallows the timeout -- is killed, a grace period past the deadline.
A child that dies takes every task it was running with it: each is reported with the
``WorkerDied`` marker (delivered again while its delivery bound allows), and a new child starts.
"""

from __future__ import annotations

import asyncio
import importlib.util
from typing import Any

from ..errors import ConfigError
from ..models import Task
from .base import Outcome, stopped_outcome
from .process import ChildRunner, _Child

#: seconds past a task's timeout (or a cancel) before an unresponsive child is killed
GRACE = 2.0


class GeventRunner(ChildRunner):
    """``slots`` greenlets in one child process; a child that dies is replaced.

    The ``"gevent"`` worker kind, for many I/O-bound tasks at once. The child monkey-patches
    itself; this process never imports gevent.

    Args:
        slots: Greenlets, hence tasks at once.

    Raises:
        ConfigError: The gevent package is not installed (the ``gevent`` extra).

    Examples:
        Runs tasks as :class:`~omniq.workers.base.Runner`'s example shows, made with
        ``make_runner("gevent", slots)``:

        >>> from omniq.workers.registry import make_runner
        >>> make_runner("gevent", 2).kind
        'gevent'
    """

    kind = "gevent"
    child_module = "omniq.workers.gevent_child"

    def __init__(self, slots: int) -> None:
        if importlib.util.find_spec("gevent") is None:
            raise ConfigError(
                "worker='gevent' needs the gevent package, which is not installed: pip install 'omniq[gevent]'"
            )
        super().__init__(slots, processes=1)
        self._cancelling: set[str] = set()  # "X" sent, result not yet in

    def capacity(self) -> int:
        """Free greenlets (no prefetch: the child takes all it gets). See :meth:`Runner.capacity`."""
        if self._stopping or not (self._spawning or any(not c.died for c in self._children)):
            return 0
        busy = len(self._ready) + sum(len(c.pending) for c in self._children if not c.died)
        return max(0, self.slots - busy)

    def _pump(self) -> None:
        if not self._ready or self._stopping:  # stop() hands what is ready back
            return
        live = [c for c in self._children if not c.died]
        if not live:
            return  # a replacement is starting; _died pumps again
        c = live[0]
        room = self.slots - len(c.pending)
        if room <= 0:
            return
        batch = [self._ready.popleft() for _ in range(min(room, len(self._ready)))]
        c.send_tasks(batch, [self._paths(t) for t in batch])
        # the child times tasks out itself; this only catches a child too busy to do it
        loop = asyncio.get_running_loop()
        for t in batch:
            if t.timeout is not None:
                c.timers[t.id] = loop.call_later(t.timeout + GRACE, self._kill, c, t.id, "timeout")

    def _results(self, c: _Child, rows: list[list[Any]]) -> None:
        outs: list[Outcome] = []
        for r in rows:
            tid, code, data, started, finished = r[:5]
            task = c.pending.pop(tid, None)
            if task is None:  # not ours (anymore): nothing to report
                continue
            self._cancelling.discard(tid)
            outs.append(self._finished(c, task, code, data, started, finished, r[5] if len(r) > 5 else ()))
        if outs:
            self.on_done(outs)
        self._pump()
        self._signal_capacity()

    def _cancel_sent(self, c: _Child, tid: str) -> None:
        """Ask the child to kill the greenlet; kill the child only if it does not answer.
        (The worker asks again every few hundred ms until the task is reported.)"""
        if tid in self._cancelling:
            return
        self._cancelling.add(tid)
        try:
            c.send(["X", tid])
        except (BrokenPipeError, ConnectionResetError, RuntimeError):
            pass  # the reader sees the death
        old = c.timers.pop(tid, None)
        if old is not None:
            old.cancel()
        c.timers[tid] = asyncio.get_running_loop().call_later(GRACE, self._kill, c, tid, "cancel")

    def _orphans(self, c: _Child, lost: list[Task], now: float) -> list[Outcome]:
        """Every task was running: the one a kill was aimed at ends as asked (timeout or
        cancel); the others were lost with the child."""
        self._cancelling.difference_update(t.id for t in lost)
        reason = c.kill_reason
        target = next((t for t in lost if reason is not None and t.id == reason[0]), None)
        outs: list[Outcome] = []
        if target is not None and reason is not None:
            outs.append(stopped_outcome(target, reason[1], self._began(c, target, now), now))
            lost = [t for t in lost if t is not target]
            why = f" (killed because task {target.id} did not stop at its {reason[1]})"
        else:
            why = ""
        if lost:
            outs.extend(self._worker_died(c, lost, now, why))
        return outs

