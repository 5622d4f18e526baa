"""Intake: how a call becomes stored tasks. Build (validate the options once, serialize the
call, hold its large values as blobs), buffer (thread-safe, never blocks), flush (store the
buffer in batches on the loop, seal right before storage, adopt keyed duplicates, emit
``enqueued``). The sync ``enqueue()`` may store on the caller's thread (``store_here``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import functools
import inspect
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import anyio
import msgspec

from .. import _chunks, ids
from .._futures import ResultFuture
from ..config.sizes import parse_size
from ..errors import ConfigError, StorageError, StorageUnwritable, TaskError
from ..logs import get_logger
from ..models import EventType, Task, TaskEvent, TaskResult, TaskStatus
from ..redact import masked
from ..serialization import BlobSink, dumps, dumps_call, dumps_calls, loads
from ..serialization._seals import seal_tasks
from .checks import callable_name, epoch, integer, map_keys, queue_name, seconds, task_ids
from .session import ClosedMeanwhile, Session
from .waiters import Waiters

log = get_logger("omniq")

MISSING: Any = object()  # an option not given: the configured default applies

#: takes tasks, gives one future per task (``Intake.accept``, or a facade's wrapper of it)
Accept = Callable[[Sequence[Task]], list[ResultFuture[TaskResult]]]


class Intake:
    """Builds, buffers and stores a client's tasks."""

    def __init__(self, session: Session, waiters: Waiters,
                 record_cancelled: Callable[[Sequence[tuple[Task, str]]], Awaitable[None]],
                 *, blob_grace: float) -> None:
        self.session = session
        self.waiters = waiters
        self._record_cancelled = record_cancelled
        self.buffer: deque[Task] = deque()
        self._kick_pending = False
        self._kick: asyncio.Event | None = None
        self._flush_lock: asyncio.Lock | None = None
        # the batch being stored, in its own task: a flush() whose caller is cancelled (a
        # timeout around it) stops waiting but never stops the write; the next flush waits for it
        self._storing: asyncio.Task[None] | None = None
        self._stored_here: deque[tuple[Task, float, bool]] = deque()  # by store_here, for the loop
        self._stored_here_kick = False
        # first task id -> how many tasks one call handed over (if > 1): they lie together in
        # the buffer (one deque.extend), and are stored or refused together
        self.units: dict[str, int] = {}
        # large values (blobs): bytes waiting to be stored with the first task that needs them,
        # and digests this instance stored lately (not sent again)
        self._blob_bytes: dict[str, bytes] = {}
        self._known_blobs = _Recent(blob_grace / 2)

    def start(self) -> None:
        """On the loop, when the session opens."""
        self._kick = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self.session.spawn(self._flush_loop())

    def busy(self) -> bool:
        """Tasks handed over and not stored yet (buffered, or a batch being stored)."""
        return bool(self.buffer) or (self._storing is not None and not self._storing.done())

    # --- building -------------------------------------------------------------------------------
    def make_task(
        self,
        fn: Callable[..., Any],
        args: Any = (),
        kwargs: Any = None,
        *,
        queue: str = "default",
        priority: int = 0,
        delay: Any = None,
        eta: Any = None,
        ttl: Any = MISSING,
        depends_on: Any = (),
        retries: int = 0,
        retry_delay: Any = 1.0,
        timeout: Any = None,
        on_success: Callable[..., Any] | None = None,
        on_failure: Callable[..., Any] | None = None,
        key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        result_ttl: Any = MISSING,
        memory_limit: Any = None,
        task_id: str | None = None,
        payload: bytes | None = None,
        blobs: tuple[str, ...] = (),
        now: float | None = None,
    ) -> Task:
        """One task for ``fn(*args, **kwargs)`` with ``enqueue``'s options, validated (each
        error names its option); not handed over yet."""
        config = self.session.config
        if not callable(fn):
            raise ConfigError(f"fn={fn!r} is not valid: expected a callable")
        if not isinstance(args, (tuple, list)):
            raise ConfigError(f"args={args!r} is not valid: expected a tuple or list of positional arguments")
        if kwargs is None:
            kwargs = {}
        elif not isinstance(kwargs, Mapping):
            raise ConfigError(f"kwargs={kwargs!r} is not valid: expected a dict of keyword arguments")
        queue_name(queue)
        integer("priority", priority)
        integer("retries", retries, minimum=0)
        if delay is not None and eta is not None:
            raise ConfigError("delay and eta are both set: give one of them (delay in seconds, eta as a time)")
        now = time.time() if now is None else now
        start = epoch("eta", eta)
        d = seconds("delay", delay, allow_zero=True)
        if d:
            start = now + d
        ttl_s = seconds("ttl", config.task_ttl if ttl is MISSING else ttl)
        rttl = seconds("result_ttl", config.result_ttl if result_ttl is MISSING else result_ttl)
        deps = task_ids(depends_on)
        for name, cb in (("on_success", on_success), ("on_failure", on_failure)):
            if cb is not None and not callable(cb):
                raise ConfigError(f"{name}={cb!r} is not valid: expected a callable or None")
        if key is not None and (not isinstance(key, str) or not key):
            raise ConfigError(f"key={key!r} is not valid: expected a non-empty string or None")
        if metadata is not None and not isinstance(metadata, Mapping):
            raise ConfigError(f"metadata={metadata!r} is not valid: expected a dict or None")
        mem = parse_size(memory_limit, "memory_limit")
        pending = bool(deps) or (start is not None and start > now)
        if payload is None:
            sink = self.blob_sink()
            payload = dumps_call(fn, tuple(args), dict(kwargs), blobs=sink)
            blobs = self.hold_blobs(sink)
        return Task(
            id=task_id or ids.new_id(),
            payload=payload,
            blobs=blobs,
            name=callable_name(fn),
            queue=queue,
            priority=priority,
            status=TaskStatus.PENDING if pending else TaskStatus.QUEUED,
            created_at=now,
            eta=start,
            expires_at=(now + ttl_s) if ttl_s else None,
            depends_on=deps,
            retries=retries,
            retry_delay=seconds("retry_delay", retry_delay, allow_zero=True) or 0.0,
            timeout=seconds("timeout", timeout),
            max_deliveries=config.max_deliveries,
            on_success=dumps(on_success) if on_success is not None else None,
            on_failure=dumps(on_failure) if on_failure is not None else None,
            key=key,
            result_ttl=rttl,
            memory_limit=mem,
            metadata=dict(metadata) if metadata else {},
        )

    def build_tasks(
        self,
        fn: Callable[..., Any],
        calls: Sequence[tuple[Sequence[Any], Mapping[str, Any]]],
        *,
        keys: Sequence[str | None] | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | Mapping[str, Any] | None = None,
        **options: Any,
    ) -> list[Task]:
        """Tasks for ``fn(*args, **kwargs)`` per ``(args, kwargs)`` in ``calls``, validated once,
        with consecutive time-ordered ids (for ``map`` and sweeps; hand them to ``accept``)."""
        if not callable(fn):
            raise ConfigError(f"fn={fn!r} is not valid: expected a callable")
        if keys is not None:
            if isinstance(keys, str) or len(keys) != len(calls):
                n = "a str" if isinstance(keys, str) else f"{len(keys)} entries"
                raise ConfigError(f"keys has {n} for {len(calls)} calls: give one key per call")
            if not all(type(k) is str and k for k in keys):
                bad = next(k for k in keys if k is not None and (not isinstance(k, str) or not k))
                raise ConfigError(f"keys contains {bad!r}: each key must be a non-empty str or None")
        if not calls:
            return []
        now = time.time()
        for i, (args, kwargs) in enumerate(calls):
            if (type(args) is not tuple or type(kwargs) is not dict) and (
                not isinstance(args, (tuple, list)) or not isinstance(kwargs, Mapping)
            ):
                raise ConfigError(f"calls[{i}] is not valid: expected (args tuple, kwargs dict)")
        sink = self.blob_sink()
        payloads = dumps_calls(fn, calls, blobs=sink)  # a by-value function is pickled once for the batch
        self.hold_blobs(sink)
        per_call = sink.per_call
        task_ids = ids.new_ids(len(calls))
        per_md = isinstance(metadata, Sequence)
        # validate the shared options once, then stamp out copies
        template = self.make_task(
            fn, calls[0][0], calls[0][1], task_id=task_ids[0], now=now, payload=payloads[0], blobs=per_call[0],
            key=keys[0] if keys is not None else None,
            metadata=metadata[0] if per_md else metadata, **options,  # type: ignore[index,arg-type]
        )
        replace = msgspec.structs.replace
        out = [template]
        if keys is None and not metadata:  # map: only id and payload differ (metadata: read-only)
            if any(per_call):
                out += [replace(template, id=i, payload=p, blobs=b)
                        for i, p, b in zip(task_ids[1:], payloads[1:], per_call[1:])]
            else:
                out += [replace(template, id=i, payload=p) for i, p in zip(task_ids[1:], payloads[1:])]
            return out
        for i in range(1, len(calls)):
            md = metadata[i] if per_md else metadata  # type: ignore[index]
            out.append(replace(
                template, id=task_ids[i], payload=payloads[i], blobs=per_call[i],
                key=keys[i] if keys is not None else None,
                metadata=dict(md) if md else {},  # type: ignore[arg-type]
            ))
        return out

    def map(
        self,
        fn: Callable[..., Any],
        iterable: Iterable[Any],
        chunksize: Any,
        options: Mapping[str, Any],
        accept: Accept,
    ) -> list[tuple[str, str, cf.Future[TaskResult]]]:
        """``(id, queue, future)`` per item of a ``map``, its tasks handed to ``accept``."""
        none: dict[str, Any] = {}  # one empty kwargs for every call: only read, never kept
        key = options.get("key")
        if type(chunksize) is int and chunksize == 1:
            if key is None:
                tasks = self.build_tasks(fn, [((item,), none) for item in iterable], **options)
            else:
                items = list(iterable)
                opts = {k: v for k, v in options.items() if k != "key"}
                tasks = self.build_tasks(fn, [((item,), none) for item in items], keys=map_keys(key, items), **opts)
            return [(t.id, t.queue, f) for t, f in zip(tasks, accept(tasks))]
        if key is not None:
            raise ConfigError(f"key is not valid with chunksize={chunksize!r}: a chunk is one task for many "
                              "items; map with chunksize=1 to key each item")
        items = list(iterable)
        size = _chunks.chunk_length(chunksize, len(items), self.session.config.concurrency or os.cpu_count() or 1)
        opts = dict(options)
        retries = integer("retries", opts.pop("retries", 0), minimum=0)
        retry_delay = seconds("retry_delay", opts.pop("retry_delay", 1.0), allow_zero=True) or 0.0
        timeout = seconds("timeout", opts.pop("timeout", None))
        if not callable(fn):
            raise ConfigError(f"fn={fn!r} is not valid: expected a callable")
        for name in ("on_success", "on_failure"):
            if opts.get(name) is not None:
                raise ConfigError(f"{name} is not valid with chunksize={chunksize!r}: a chunk is one task "
                                  "for many items; map with chunksize=1 for a callback per item")
        if not items:
            return []
        sink = self.blob_sink()
        fn_payload = dumps_call(fn, blobs=sink)  # the function once; each chunk carries its items
        fn_blobs = self.hold_blobs(sink)
        runner = _chunks.run_chunk_async if inspect.iscoroutinefunction(fn) else _chunks.run_chunk
        chunks = [items[i : i + size] for i in range(0, len(items), size)]
        tasks = self.build_tasks(runner, [((fn_payload, c, retries, retry_delay), none) for c in chunks], **opts)
        name = callable_name(fn)
        tasks = [
            msgspec.structs.replace(t, name=name, timeout=timeout * len(c) if timeout else None,
                                    blobs=tuple(dict.fromkeys(t.blobs + fn_blobs)) if fn_blobs else t.blobs)
            for t, c in zip(tasks, chunks)
        ]
        out: list[tuple[str, str, cf.Future[TaskResult]]] = []
        for t, f, c in zip(tasks, accept(tasks), chunks):
            futs: list[ResultFuture[TaskResult]] = [ResultFuture() for _ in c]
            f.add_done_callback(functools.partial(_chunks.resolve_items, futs, n=len(c)))
            out += [(_chunks.item_id(t.id, i), t.queue, g) for i, g in enumerate(futs)]
        return out

    def follow_ups(self, result: TaskResult, task: Task) -> list[Task]:
        """Tasks for ``on_success`` / ``on_failure`` callbacks of a finished task."""
        if result.status is TaskStatus.SUCCEEDED and task.on_success is not None:
            arg = result.payload if result.payload is not None else dumps(None)
            cb = task.on_success
        elif result.status is TaskStatus.FAILED and task.on_failure is not None:
            arg = dumps(TaskError.from_info(task.id, result.error))
            cb = task.on_failure
        else:
            return []
        return [
            Task(
                id=ids.new_id(),
                payload=dumps_call(run_callback, (cb, arg), {}),
                name=f"{task.name}:callback",
                queue=task.queue,
                priority=task.priority,
                created_at=time.time(),
                max_deliveries=task.max_deliveries,
                metadata={"callback_of": task.id},
            )
        ]

    # --- blobs ----------------------------------------------------------------------------------
    def blob_sink(self) -> BlobSink:
        """A sink for the large values of payloads about to be made (digests stored lately skip it)."""
        return BlobSink(self._known_blobs)

    def hold_blobs(self, sink: BlobSink) -> tuple[str, ...]:
        """Keep the bytes of a sink's new blobs until the flush stores them; the digests of the
        payload just made."""
        for d, data in sink.data.items():
            if data is not None:
                self._blob_bytes[d] = data
        return sink.take()

    def release_blobs(self, tasks: Sequence[Task], *, stored: bool, later: Sequence[Task] = ()) -> None:
        """Drop the held bytes of ``tasks``' blobs. Unless they were ``stored``, bytes that a
        task still to be stored (in the buffer, or ``later``) refers to stay: storing that task
        stores them."""
        digests = {d for t in tasks for d in t.blobs}
        if not digests:
            return
        if not stored:
            digests -= {d for t in (*self.buffer, *later) if t.blobs for d in t.blobs}
        for d in digests:
            self._blob_bytes.pop(d, None)

    async def _store_blobs(self, batch: Sequence[Task]) -> None:
        """Store the blobs a batch of tasks refers to (each once per storage) and record the
        tasks as their owners, before the tasks themselves."""
        owners = {"t:" + t.id: t.blobs for t in batch if t.blobs}
        if not owners:
            return
        s = self.session
        q, now = s.queue, time.time()
        digests = list(dict.fromkeys(d for ds in owners.values() for d in ds))
        held = {d: self._blob_bytes[d] for d in digests if d in self._blob_bytes}
        if held:
            missing = await q.missing_blobs(list(held))
            if missing:
                await q.put_blobs({d: held[d] for d in missing}, next(iter(owners)), now=now)
            if s.worker is not None:  # this process's own workers need not fetch them back
                await anyio.to_thread.run_sync(s.blobs.seed, q, held)
        await q.add_blob_owners(owners, now=now)
        for d in digests:
            self._known_blobs[d] = now

    # --- handing over and storing ---------------------------------------------------------------
    def accept(self, tasks: Sequence[Task]) -> list[ResultFuture[TaskResult]]:
        """Register waiters and hand tasks to the flusher. Thread-safe; never blocks."""
        s = self.session
        try:
            s.check_accepting()
        except ClosedMeanwhile:
            raise  # the caller hands them over again once reopened
        except BaseException:
            self.release_blobs(tasks, stored=False)  # refused for good: nothing will store them
            raise
        if len(tasks) > 1:
            self.units[tasks[0].id] = len(tasks)
        futs = self.waiters.register(tasks, time.time())
        self.buffer.extend(tasks)
        if not self._kick_pending:
            self._kick_pending = True
            assert self._kick is not None and s.loop is not None
            if s.on_loop_thread():
                self._kick.set()
            else:
                s.loop.call_soon_threadsafe(self._kick.set)
        return futs

    def wake(self) -> None:
        """Wake the flusher (on the loop)."""
        assert self._kick is not None
        self._kick.set()

    async def _flush_loop(self) -> None:
        assert self._kick is not None
        while True:
            await self._kick.wait()
            self._kick.clear()
            self._kick_pending = False
            await self.flush()

    async def flush(self) -> None:
        """Wait until every task handed over so far is durably stored."""
        s = self.session
        if not s.opened:
            return
        self.after_stored_here()  # tasks stored by enqueue() on another thread: their events
        assert self._flush_lock is not None and s.loop is not None
        async with self._flush_lock:
            while True:
                storing = self._storing
                if storing is None or storing.done():
                    self._storing = None
                    if not self.buffer:
                        return
                    batch: list[Task] = []
                    pop = self.buffer.popleft
                    with contextlib.suppress(IndexError):
                        while len(batch) < 20000:
                            batch.append(pop())
                    storing = self._storing = s.loop.create_task(self._store_batch(batch))
                # Cancelling this wait (asyncio.wait_for, an anyio scope) leaves the write going
                # on: the batch was taken from the buffer and nothing else would store it.
                await asyncio.shield(storing)

    async def _store_batch(self, batch: list[Task], later: Sequence[Task] = ()) -> None:
        s = self.session
        err: BaseException | None = None
        stamp = time.time()  # before the store: a fast worker's `started` must come after it
        dups: dict[str, str] = {}
        seal_tasks(batch)  # last, after every field is set (Executor.map's chunks set some late)
        for attempt in range(4):
            try:
                await self._store_blobs(batch)
                dups = await s.queue.enqueue(batch) or {}
                err = None
                break
            except StorageUnwritable as exc:  # disk full, read-only: retrying only delays the error
                err = exc
                break
            except ConfigError as exc:  # e.g. an unknown dependency: refused, not transient
                units = _split_units(batch, self.units)
                if len(units) > 1:
                    # store each call's tasks on their own, in order: only the refused call's
                    # tasks fail, and a task depending on an earlier call's still finds it
                    for i, unit in enumerate(units):
                        await self._store_batch(unit, [t for u in units[i + 1:] for t in u])
                    return
                err = exc
                break
            except Exception as exc:
                err = exc
                await anyio.sleep(0.05 * 4**attempt)
        # stored: their bytes are not needed here any more (a later task sharing one finds it
        # stored); not stored: keep those a task still waiting in the buffer shares
        self.release_blobs(batch, stored=err is None, later=later)
        i, starts = 0, self.units
        while i < len(batch):
            i += starts.pop(batch[i].id, 1)
        if i > len(batch) and self.buffer:  # the call's rest waits at the buffer's head
            starts[self.buffer[0].id] = i - len(batch)
        if err is not None:
            # Tell every waiter loudly rather than drop the tasks silently.
            if not isinstance(err, ConfigError):  # a refused task is the caller's error, raised to it
                log.error("could not store %d tasks in %s: %s", len(batch), masked(s.tasks_url), err)
            e = err if isinstance(err, (ConfigError, StorageError)) else StorageError(
                f"could not store tasks in {masked(s.tasks_url)}: {err}"
            )
            self.waiters.fail(batch, e)
            return
        if dups:
            self.waiters.adopt(dups)
            batch = [t for t in batch if t.id not in dups]
        kind = EventType.ENQUEUED.value
        s.events.emit_many([
            TaskEvent(task_id=t.id, type=kind, timestamp=stamp, queue=t.queue,
                      detail=None if t.key is None else f"key {t.key}")
            for t in batch
        ])
        s.queue.notify()
        with_deps = [t for t in batch if t.depends_on]
        if with_deps:
            await self._settle_stillborn(with_deps)

    async def _settle_stillborn(self, tasks: list[Task]) -> None:
        """Tasks stored CANCELLED at once because a dependency had already failed, been
        cancelled or expired: give them their CANCELLED result (every task ends with one)."""
        q = self.session.queue
        states = await q.statuses([t.id for t in tasks])
        dead = [t for t in tasks if states.get(t.id) is TaskStatus.CANCELLED]
        if not dead:
            return
        deps = await q.statuses(sorted({d for t in dead for d in t.depends_on}))
        bad = {TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.EXPIRED}
        pairs = [(t, next((d for d in t.depends_on if deps.get(d) in bad), t.depends_on[0])) for t in dead]
        await self._record_cancelled(pairs)

    # --- the sync enqueue()'s fast path ----------------------------------------------------------
    def store_here(self, task: Task) -> bool:
        """Store ``task`` on the calling thread (see ``TaskQueue.enqueue_blocking``) when the
        backend can and nothing handed over earlier is still on its way to storage, so order
        and dependencies hold. False: go through the loop."""
        s = self.session
        q = s.queue if s.opened else None
        lock = self._flush_lock
        if (
            q is None or s.closing or not q.blocking_enqueue or task.depends_on or task.blobs
            or task.key is not None or self.buffer or lock is None or lock.locked()
            or (self._storing is not None and not self._storing.done())  # a cut-short flush's batch
            or s.on_loop_thread()
        ):
            return False
        serves = s.serves(task.queue)
        stamp = time.time()  # before the store, as for batches: `enqueued` precedes `started`
        meta = self.waiters.meta
        if serves:  # a worker here runs it: close(drain=True) waits for it
            meta[task.id] = (task.queue, task.eta or 0.0, stamp)
        seal_tasks((task,))
        try:
            ready = q.enqueue_blocking([task])
        except BaseException:
            meta.pop(task.id, None)
            raise
        if ready is None:  # the backend is closing: take the loop's way
            meta.pop(task.id, None)
            return False
        self._stored_here.append((task, stamp, ready))
        if not self._stored_here_kick:
            loop = s.loop
            assert loop is not None
            self._stored_here_kick = True
            try:
                if serves:  # a worker here waits for it: wake the loop now
                    loop.call_soon_threadsafe(self.after_stored_here)
                else:  # only events to write: one wake-up per 20 ms, not one per call (~0.3 ms each)
                    loop.call_soon_threadsafe(loop.call_later, 0.02, self.after_stored_here)
            except RuntimeError:  # the loop closed meanwhile: the task is stored; its event is not
                self._stored_here_kick = False
        return True

    def after_stored_here(self) -> None:
        """On the loop: the events and wake-ups of tasks ``store_here`` stored."""
        self._stored_here_kick = False
        items = []
        with contextlib.suppress(IndexError):
            while True:
                items.append(self._stored_here.popleft())
        if not items:
            return
        s = self.session
        s.events.emit_many([
            TaskEvent(task_id=t.id, type=EventType.ENQUEUED.value, timestamp=stamp, queue=t.queue)
            for t, stamp, _ in items
        ])
        s.queue.after_blocking_enqueue([t for t, _, _ in items], any(r for _, _, r in items))


def run_callback(callback: bytes, argument: bytes) -> Any:
    """Body of an ``on_success``/``on_failure`` task: call the callback with the result or error."""
    return loads(callback)(loads(argument))


class _Recent(dict[str, float]):
    """Digests with the time they were last stored here: ``in`` only while recent enough that
    no sweep can have removed them (a sink then skips copying their bytes)."""

    def __init__(self, within: float) -> None:
        super().__init__()
        self.within = within

    def __contains__(self, key: object) -> bool:
        t = self.get(key)  # type: ignore[call-overload]
        return t is not None and time.time() - t < self.within


def _split_units(batch: list[Task], starts: Mapping[str, int]) -> list[list[Task]]:
    """Consecutive runs of tasks handed over by one call (a lone task is its own unit)."""
    units: list[list[Task]] = []
    i = 0
    while i < len(batch):
        n = starts.get(batch[i].id) or 1
        units.append(batch[i : i + n])
        i += n
    return units
