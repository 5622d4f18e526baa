"""Waiters: the futures of tasks someone here waits for, and result pickup.

A future lives as long as someone holds it (a handle, a sweep): a producer that drops its
handles keeps nothing per task. Results reach the futures two ways: this process's worker
reports them (``on_results``), and the pickup loop reads those that other processes finished
(an ``omniq worker``, a SLURM job), in batches, faster while someone waits. A keyed task the
queue did not store follows the task that held its key (``adopt``; ``resolve_id``).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

import anyio

from .. import _chunks
from .._futures import ResultFuture, WeakFutures, pass_on, resolve_many, settle
from ..errors import ConfigError
from ..logs import Outage, get_logger
from ..models import Task, TaskResult
from ..redact import masked
from ..serialization import path_fetch
from .session import Session

log = get_logger("omniq")


#: how often the pickup loop looks whether workers elsewhere serve this instance's queues
WORKERS_RECHECK = 2.0
#: a task this instance serves, while another instance serves its queue too, is looked up in
#: the result store once it has waited this long (one run here reports itself at once)
SERVED_HERE_GRACE = 0.25
#: otherwise its result is looked for this often (another process cancelled or expired it)
SERVED_RECHECK = 2.0


class Waiters:
    """Futures by task id, the ids adopted from keyed duplicates, and the pickup loop."""

    def __init__(self, session: Session, flush: Callable[[], Awaitable[None]]) -> None:
        self.session = session
        self._flush = flush  # (the intake's: a task handed over a moment ago is stored first)
        self.futures = WeakFutures()
        # tasks handed over here that this instance's workers serve: close(drain=True) waits
        self.meta: dict[str, tuple[str, float, float]] = {}  # id -> (queue, eta, since)
        # ids of keyed tasks the queue did not store because another task held their key ->
        # that task's id: handles, futures and calls naming the first follow the second
        self.aliases: dict[str, str] = {}
        self.adopt_listeners: list[Callable[[Mapping[str, str]], None]] = []  # (sweeps)
        self.result_listeners: list[Callable[[Sequence[TaskResult]], None]] = []  # (the janitor)
        self._changed: anyio.Event | None = None
        self._pickup_now = anyio.Event()
        self._elsewhere, self._elsewhere_until = True, 0.0  # (see _served_elsewhere)
        self._served_look_at = 0.0  # when the tasks served here are looked up next

    def start(self) -> None:
        """On the loop, when the session opens."""
        self._changed = anyio.Event()
        self.session.spawn(self._pickup_loop())

    # --- registering ------------------------------------------------------------------------
    def register(self, tasks: Sequence[Task], now: float) -> list[ResultFuture[TaskResult]]:
        """One new future per task (thread-safe); tasks this instance's workers serve are
        remembered for ``drain``."""
        futs = []
        meta = self.meta
        served, local = self.session.config.queues, self.session.worker is not None
        for t in tasks:
            f: ResultFuture[TaskResult] = ResultFuture()
            f.since = now
            if local and (served is None or t.queue in served):
                meta[t.id] = (t.queue, t.eta or 0.0, now)
            futs.append(f)
        self.futures.add_many(zip([t.id for t in tasks], futs))
        return futs

    def forget(self, task_id: str) -> ResultFuture[TaskResult] | None:
        """Stop tracking ``task_id``; its future, if any."""
        self.meta.pop(task_id, None)
        return self.futures.pop(task_id, None)

    def fail(self, tasks: Iterable[Task], exc: BaseException) -> None:
        """Tasks that could not be stored: their waiters get ``exc``."""
        for t in tasks:
            f = self.forget(t.id)
            if f is not None and not f.done():
                f.set_exception(exc)

    def adopt(self, dups: Mapping[str, str]) -> None:
        """Keyed tasks the queue did not store (``{new id: id of the task holding the key}``):
        their futures follow the existing tasks, and every call naming a new id acts on the
        existing task (``resolve_id``). Their results are read like those of tasks run elsewhere."""
        aliases, waiters, meta = self.aliases, self.futures, self.meta
        for new, old in dups.items():
            aliases[new] = old
            f = waiters.pop(new)
            m = meta.pop(new, None)
            if f is None:
                continue
            g = waiters.get(old)
            if g is None:
                waiters[old] = f
                if m is not None:
                    meta.setdefault(old, m)
            elif g is not f:  # someone here waits for it already: resolve with that future
                g.add_done_callback(functools.partial(pass_on, f))
        self.poke()
        for listener in list(self.adopt_listeners):  # on the loop: keep it quick
            try:
                listener(dups)
            except Exception:
                log.exception("adoption listener %r failed", listener)

    def resolve_id(self, task_id: str) -> str:
        """The id a call naming ``task_id`` acts on (see ``adopt``)."""
        return self.aliases.get(task_id, task_id) if self.aliases else task_id

    # --- results arriving ----------------------------------------------------------------------
    def on_results(self, results: Sequence[TaskResult]) -> None:
        """Called on the loop after results are stored: wake waiters in this process."""
        waiters, meta = self.futures, self.meta
        ready: list[tuple[cf.Future[TaskResult], TaskResult]] = []
        for r in results:
            meta.pop(r.task_id, None)
            f = waiters.pop(r.task_id, None)
            if f is not None:
                ready.append((f, r))
        for listener in self.result_listeners:
            listener(results)
        resolve_many(ready)
        self._notify()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = anyio.Event()

    async def wait_changed(self, timeout: float) -> None:
        """Until results arrive here, at most ``timeout`` seconds."""
        ev = self._changed
        assert ev is not None
        with anyio.move_on_after(timeout):
            await ev.wait()

    async def with_blobs(self, results: Iterable[TaskResult | None]) -> None:
        """Give results whose values are partly blobs a way to read them: the blobs fetched
        into this process's cache (files, mapped when the value is read)."""
        for r in results:
            if r is not None and r.blobs and "_fetch" not in r.__dict__:
                paths = await self.session.blobs.ensure(self.session.results, r.blobs)
                # mapped when read (a mapping holds a file descriptor: not one per result now);
                # the cache keeps files used in the last ten minutes whatever its size
                r.__dict__["_fetch"] = path_fetch(paths)

    # --- waiting ------------------------------------------------------------------------------
    def future_for(self, task_id: str) -> cf.Future[TaskResult]:
        """The future of ``task_id`` (made, and looked up in storage, if nobody here waits yet).
        On the loop."""
        item = _chunks.split_item_id(task_id)
        if item is not None:  # resolved from its chunk's future
            g: ResultFuture[TaskResult] = ResultFuture()
            self.future_for(item[0]).add_done_callback(functools.partial(_chunks.resolve_items, [g], start=item[1]))
            return g
        task_id = self.resolve_id(task_id)
        f = self.futures.get(task_id)
        if f is None:
            f = ResultFuture()  # "since" 0: the pickup loop reads its result at once
            self.futures[task_id] = f
            self.poke()
            s = self.session
            if s.loop is not None and s.opened:  # an id never stored must not wait for ever
                s.spawn(self._refuse_unknown(task_id, f))
        return f

    async def _refuse_unknown(self, task_id: str, f: cf.Future[TaskResult]) -> None:
        """Fail a waiter on ``task_id`` with ``ConfigError`` (as ``status()`` does) when
        neither the task queue nor the result store has ever seen that id."""
        s = self.session
        try:
            await self._flush()  # (a task submitted here a moment ago is stored first)
            if task_id in await s.queue.statuses([task_id]) or f.done():
                return
            if await s.results.get_result(task_id) is not None or f.done():
                return
        except Exception:  # storage trouble: the waiter keeps waiting (the pickup loop says so)
            return
        if self.futures.get(task_id) is f:
            self.futures.pop(task_id, None)
        settle(f, ConfigError(f"task_id={task_id!r} is not known to {masked(s.tasks_url)}"), failed=True)
        self._notify()  # wake get_result(wait=True) now

    async def wait(self, task_id: str, fut: cf.Future[TaskResult], timeout: float | None) -> TaskResult:
        """``fut``'s result; ``TimeoutError`` naming ``task_id`` past ``timeout``."""
        self.poke()  # someone is waiting: look for results finished elsewhere now
        with anyio.move_on_after(timeout) as scope:
            while not fut.done():
                await self.wait_changed(0.25)
        if scope.cancelled_caught and not fut.done():
            raise TimeoutError(f"task {task_id} did not finish within {timeout} s")
        return fut.result()

    async def get_result(self, task_id: str, wait: bool = False, timeout: float | None = None) -> TaskResult | None:
        """The task's final result; ``None`` if not final yet (and ``wait`` is False)."""
        item = _chunks.split_item_id(task_id)
        if item is not None:  # an item of a chunked map: cut from its chunk's result
            chunk = await self.get_result(item[0], wait, timeout)
            return None if chunk is None else _chunks.item_result(chunk, item[1])
        task_id = self.resolve_id(task_id)
        f = self.futures.get(task_id)
        if f is not None and f.done():
            return f.result()
        r = await self.session.results.get_result(task_id)
        if r is not None or not wait:
            await self.with_blobs([r])
            return r
        r = await self.wait(task_id, self.future_for(task_id), timeout)
        await self.with_blobs([r])
        return r

    async def drain(self) -> None:
        """Until every task handed over here that this instance's workers serve, and that is
        ready to run, has finished."""
        served = self.session.config.queues
        while True:
            now = time.time()
            waiting = [
                tid for tid, (q, eta, _) in list(self.meta.items())
                if eta <= now + 0.5 and (served is None or q in served)
            ]
            if not waiting:
                return
            await self.wait_changed(0.25)

    # --- pickup ---------------------------------------------------------------------------------
    async def _served_elsewhere(self, now: float) -> bool:
        """Whether a live worker of another instance serves a queue this one's workers serve
        (looked up every ``WORKERS_RECHECK`` seconds; True when the lookup fails)."""
        if now < self._elsewhere_until:
            return self._elsewhere
        s = self.session
        mine = s.worker.id if s.worker is not None else None
        served = s.config.queues
        try:
            infos = await s.queue.workers()
        except Exception:
            elsewhere = True
        else:
            elsewhere = any(
                w.id != mine and now - w.last_heartbeat < (w.lease or s.config.lease)
                and (w.queues is None or served is None or not set(w.queues).isdisjoint(served))
                for w in infos
            )
        self._elsewhere, self._elsewhere_until = elsewhere, now + WORKERS_RECHECK
        return elsewhere

    def poke(self) -> None:
        """Someone waits on a result (from any thread): look for results made elsewhere now."""
        s = self.session
        loop = s.loop
        if loop is None or not s.opened:
            return
        if s.on_loop_thread():
            self._pickup_now.set()
        else:
            with contextlib.suppress(RuntimeError):  # loop closing
                loop.call_soon_threadsafe(self._pickup_now.set)

    async def _pickup_loop(self) -> None:
        """Resolve waiters whose tasks another process (an ``omniq worker``) finished: read their
        results in batches of 1,000, every 50 ms while results keep coming, backing off to 1 s
        when none do. Tasks this instance's own runner holds are left to it."""
        s = self.session
        delay = 0.05
        outage = Outage(log, "reading results", masked(s.results_url))
        while True:
            with anyio.move_on_after(delay):
                await self._pickup_now.wait()
            self._pickup_now = anyio.Event()
            now = time.time()
            held = set(s.worker.runner.held()) if s.worker is not None else set()
            # tasks our own runner holds report themselves; look up the rest (run elsewhere):
            # those someone waits for, and those close(drain=True) would wait for
            # (live() copies the map in one C-level step: producer threads may be adding)
            since = {tid: f.since for tid, f in self.futures.live()}
            # tasks this instance's workers serve are reported by them: looked up after a
            # while when a live worker elsewhere serves their queue too, else only every
            # SERVED_RECHECK seconds (another process may cancel them, or expire them)
            mine: Mapping[str, tuple[str, float, float]] = self.meta
            if mine and (await self._served_elsewhere(now) or now >= self._served_look_at):
                since.update((tid, m[2] + SERVED_HERE_GRACE) for tid, m in list(mine.items()))
                mine = {}
                self._served_look_at = now + SERVED_RECHECK
            stale = [tid for tid, t in since.items() if now - t > 0.05 and tid not in held and tid not in mine]
            found_any = False
            try:
                for i in range(0, len(stale), 1000):
                    found = await s.results.get_results(stale[i : i + 1000])
                    if found:
                        found_any = True
                        await self.with_blobs(found.values())
                        self.on_results(list(found.values()))
                if stale:  # only a call that was made says the storage works again
                    outage.ok()
            except Exception as exc:
                outage.failed(exc)
            # someone waits on a few tasks run elsewhere: look at least 5 times a second (a
            # second's back-off made a 1.5 s task in an `omniq worker` take 2.0 s to come back)
            delay = 0.05 if found_any else min(0.2 if 0 < len(stale) <= 1000 else 1.0, delay * 2)
