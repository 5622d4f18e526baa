"""``RedisBackend``: task queue, result store and event store on one Redis server, running the
scripts of ``scripts.py``; its URL options and record encoding."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import re
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import msgspec
import redis.asyncio as aioredis
from redis import exceptions as rex
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ...errors import ConfigError, StorageError
from ...logs import get_logger
from ...models import Schedule, Task, TaskEvent, TaskResult, TaskStatus
from .._codec import decoder, encode
from .._reconnect import Backoff
from ..base import (
    EventStore,
    Finished,
    Overrun,
    Reaped,
    ResultStore,
    Signal,
    TaskQueue,
    WorkerInfo,
    masked,
)
from ..blobs import Blob, nbytes
from ..checks import check_new_tasks, events_in_order
from ..enqueue import plan_enqueue
from ..rows import stand_in_task
from .scripts import BLOB_PIECE, SCRIPTS

log = get_logger("omniq.storage.redis")

DEFAULT_PREFIX = "omniq"
DEFAULT_MAX_EVENTS = 1_000_000
DEFAULT_RECONNECT_TIMEOUT = 30.0
#: Stream ids kept per task for ``query_events(task_id=...)`` (lifecycle events are a handful).
MAX_TASK_EVENTS = 1_000
#: Worker records whose last heartbeat is this much older than a new one are forgotten.
FORGET_WORKERS_AFTER = 86_400.0
#: Tasks removed per ``purge`` script call (each call holds the server briefly).
PURGE_BATCH = 1_000
#: Owner records and blobs looked at per ``sweep_blobs`` script call.
SWEEP_BATCH = 1_000


# --- encoding -------------------------------------------------------------------------------------

_decode_task = decoder(Task).decode
_decode_result = decoder(TaskResult).decode
_decode_schedule = decoder(Schedule).decode
_decode_worker = decoder(WorkerInfo).decode
_decode_event = decoder(TaskEvent).decode
_STATUS = {s.value.encode(): s for s in TaskStatus}
_TASK_FIELDS = ("b", "s", "w", "l", "d", "a", "e", "c", "q")
_NF = len(_TASK_FIELDS) + 1  # then the task id
_COUNT_SEP = b"\x1f"


def _f(x: float | None) -> str:
    """A float as exact text for Redis and Lua ('' for None)."""
    return "" if x is None else repr(float(x))


def _task(v: Sequence[Any], i: int = 0) -> Task:
    """A Task from ``_TASK_FIELDS`` values and the id at ``v[i:]``: the blob, overlaid with the
    state. A blob that does not decode (any exception) becomes a stand-in that fails alone."""
    try:
        t = _decode_task(v[i])
    except Exception as exc:
        q = v[i + 8]
        t = stand_in_task(v[i + 9].decode(), exc, queue=q.decode() if q else "default")
    t.status = _STATUS[v[i + 1]]
    w = v[i + 2]
    t.worker = None if w is None else w.decode()
    lease = v[i + 3]
    t.lease_until = None if lease is None else float(lease)
    t.deliveries = int(v[i + 4])
    t.attempts = int(v[i + 5])
    eta = v[i + 6]
    t.eta = None if eta is None else float(eta)
    t.cancel_requested = v[i + 7] == b"1"
    return t


def _tasks(v: Sequence[Any], start: int, n: int) -> tuple[list[Task], int]:
    """``n`` tasks from ``v[start:]``; returns them and the index after them."""
    return [_task(v, start + k * _NF) for k in range(n)], start + n * _NF


def _cancelled(v: Sequence[Any], start: int) -> list[tuple[Task, str]]:
    """The cancelled part of a finish or reap reply at ``v[start:]``: a count, then for each a
    reason followed by its task's fields; (task, reason) pairs."""
    step = 1 + _NF
    first = start + 1
    return [
        (_task(v, i + 1), v[i].decode()) for i in range(first, first + int(v[start]) * step, step)
    ]


def _event_ms(ts: float) -> int:
    """An event's stream id time: its timestamp in whole ms (0 for nonsense times)."""
    if not math.isfinite(ts) or ts <= 0:
        return 0
    return min(int(ts * 1000), 2**62)


def _lex_bounds(prefix: str) -> tuple[bytes, bytes]:
    """``ZRANGEBYLEX`` bounds for members that start with ``prefix`` (bytewise, as Redis)."""
    if not prefix:
        return b"-", b"+"
    p = prefix.encode()
    end = p.rstrip(b"\xff")
    if not end:
        return b"[" + p, b"+"
    return b"[" + p, b"(" + end[:-1] + bytes([end[-1] + 1])


# --- URL ------------------------------------------------------------------------------------------

_OWN_OPTIONS = ("prefix", "max_events", "reconnect_timeout")
_N = TypeVar("_N", int, float)
_BAD_PREFIX = re.compile(r"[\s*?\[\]\\]")


class RedisOptions(msgspec.Struct, frozen=True):
    """What ``parse_url`` found: the URL redis-py gets, and OmniQ's own options."""

    client_url: str
    prefix: str = DEFAULT_PREFIX
    max_events: int = DEFAULT_MAX_EVENTS
    reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT


def parse_url(url: str) -> RedisOptions:
    """Split OmniQ's query options (``prefix``, ``max_events``, ``reconnect_timeout``) off a
    ``redis://`` / ``rediss://`` URL; the rest is left for redis-py."""
    if not isinstance(url, str) or not url.lower().startswith(("redis://", "rediss://")):
        raise ConfigError(f"not a redis:// or rediss:// URL: {masked(str(url))!r}")
    parts = urlsplit(url)
    if parts.fragment:
        raise ConfigError(f"redis URL {masked(url)!r} has a '#fragment'; use ?prefix=... instead")
    rest: list[tuple[str, str]] = []
    own: dict[str, str] = {}
    for k, v in parse_qsl(parts.query, keep_blank_values=True):
        if k in _OWN_OPTIONS:
            own[k] = v
        else:
            rest.append((k, v))
    prefix = own.get("prefix", DEFAULT_PREFIX)
    if not prefix or _BAD_PREFIX.search(prefix):
        raise ConfigError(
            f"redis URL {masked(url)!r}: prefix must be a non-empty key prefix without spaces or "
            f"glob characters (* ? [ ] \\), got {prefix!r}"
        )
    max_events = _option(
        url, own, "max_events", int, lambda n: n >= 1, "a whole number >= 1", DEFAULT_MAX_EVENTS
    )
    reconnect = _option(
        url, own, "reconnect_timeout", float, lambda x: 0 <= x < math.inf, "seconds >= 0",
        DEFAULT_RECONNECT_TIMEOUT,
    )  # fmt: skip
    client_url = urlunsplit(parts._replace(query=urlencode(rest)))
    return RedisOptions(client_url, prefix, max_events, reconnect)


def _option(
    url: str,
    own: dict[str, str],
    name: str,
    parse: Callable[[str], _N],
    ok: Callable[[_N], bool],
    what: str,
    default: _N,
) -> _N:
    """Option ``name`` of a redis URL, parsed and checked (``default`` when it is not given);
    a value that does not parse or is not ``ok`` is a ConfigError saying it must be ``what``."""
    if name not in own:
        return default
    try:
        value = parse(own[name])
    except ValueError:
        value = None
    if value is None or not ok(value):
        raise ConfigError(f"redis URL {masked(url)!r}: {name} must be {what}, got {own[name]!r}")
    return value


def _cause(e: BaseException) -> str:
    """A connection failure in plain words."""
    chain: list[BaseException] = []
    cur: BaseException | None = e
    while cur is not None and len(chain) < 5:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    text = " ".join(str(x) for x in chain).lower()
    if isinstance(e, rex.AuthenticationError) or "auth" in text or "wrongpass" in text:
        return f"the server refused the credentials ({e})"
    if any(isinstance(x, ConnectionRefusedError) for x in chain) or "refused" in text:
        return "connection refused: is a Redis server listening there?"
    if "name or service not known" in text or "nodename nor servname" in text:
        return "unknown host name"
    if isinstance(e, (rex.TimeoutError, TimeoutError)) or "timed out" in text or "timeout" in text:
        return "the server did not answer in time"
    if "closed by server" in text or "connection reset" in text:
        return "the server closed the connection"
    return str(e) or type(e).__name__


_RETRYABLE = (rex.ConnectionError, rex.TimeoutError, ConnectionError, OSError)


async def _aclose(obj: Any) -> None:
    """Close a client or pub/sub object (``aclose`` since redis-py 5.0.1, ``close`` before)."""
    closer = getattr(obj, "aclose", None) or obj.close
    with contextlib.suppress(Exception):
        await closer()


class RedisOperators(TaskQueue):
    """The operators' part of ``RedisBackend`` (``oq.tasks`` / ``retry`` / ``purge``): pages
    from the ``ix:`` sorted sets, requeue and purge scripts. A class of its own so that
    ``RedisBackend`` stays readable; it runs on ``RedisBackend``'s connection and scripts."""

    prefix: str
    _indexed = False  # the oq.tasks() sets hold every task (see _index_older_tasks)

    async def _eval(self, name: str, args: Sequence[Any], *, once: bool = False) -> Any:
        raise NotImplementedError

    async def _call(self, fn: Callable[[Any], Awaitable[Any]]) -> Any:
        raise NotImplementedError

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    async def purge_tasks(
        self, *, before: float, statuses: Collection[TaskStatus] | None = None
    ) -> list[str]:
        wanted = [] if statuses is None else [st.value for st in statuses]
        gone: list[str] = []
        skipped = 0  # final tasks of other statuses, left in the finish-time index
        while True:
            v = await self._eval("purge", [_f(before), PURGE_BATCH, skipped, *wanted])
            ids = [b.decode() for b in v[1:]]
            gone.extend(ids)
            skipped += int(v[0]) - len(ids)
            if int(v[0]) < PURGE_BATCH:
                return gone

    async def _list_tasks(
        self, statuses: Collection[TaskStatus] | None, queue: str | None, name: str | None, limit: int,
        before: str | None,
    ) -> list[Task]:
        """Sorted sets of ids by status and by queue and status (``ix:``), read backwards
        from ``before`` (ZREVRANGEBYLEX), merged; a ``name`` is matched on the records, reading
        on in batches until the page is full. Tasks stored by an OmniQ older than these sets
        are put into them on the first list of a namespace (``_index_older_tasks``)."""
        await self._index_older_tasks()
        if queue is None:
            indexes = ["all"] if statuses is None else [f"s:{st.value}" for st in statuses]
        else:
            indexes = [f"q:{queue}\x1f{st.value}" for st in (statuses or TaskStatus)]
        want = limit if name is None else max(4 * limit, 256)
        page: list[Task] = []
        below = before or ""
        while len(page) < limit:
            v = await self._eval("list_tasks", [below, want, *indexes])
            page.extend(t for t in (_task(v, i) for i in range(1, len(v), _NF)) if name is None or t.name == name)
            if v[0] is None:
                break
            below = v[0].decode()
        return page[:limit]

    async def _index_older_tasks(self) -> None:
        """Once per namespace (marked by ``P:ix:v``): tasks an OmniQ older than the ``ix:``
        sets stored are found (SCAN of ``P:t:*``) and put into them, so they are listed too."""
        if self._indexed:
            return
        mark = self._key("ix", "v")
        if not await self._call(lambda r: r.exists(mark)):
            head = len(self._key("t", ""))

            async def scan(r: Any) -> list[str]:
                found: list[str] = []
                cursor = 0
                while True:
                    cursor, keys = await r.scan(cursor, match=self._key("t", "*"), count=1000)
                    found.extend(k.decode()[head:] for k in keys)
                    if not cursor:
                        return found

            ids = await self._call(scan)
            for i in range(0, len(ids), 500):
                await self._eval("index_tasks", ids[i : i + 500])
            await self._call(lambda r: r.set(mark, b"1"))
        self._indexed = True

    async def requeue(self, task_id: str, *, now: float, attempts: int) -> TaskStatus | None:
        t = await self.get_task(task_id)
        if t is None:
            return None
        blob = b""
        if t.expires_at is not None:  # its ttl is spent: the record goes without it (not sealed)
            t.expires_at = None
            blob = encode(t)
        v = await self._eval("requeue", [task_id, attempts, blob])
        if v is None:
            return None
        if v in (b"failed", b"cancelled", b"expired"):
            self.notify()
        return _STATUS[v]


class RedisBackend(RedisOperators, ResultStore, EventStore):
    """Task queue, result store and event store in one Redis namespace (see module docstring)."""

    cross_process_wakeups = True

    def __init__(self, url: str = "redis://127.0.0.1:6379/0") -> None:
        super().__init__()
        self.url = url
        self.options = parse_url(url)
        self.prefix = self.options.prefix
        self._redis: aioredis.Redis | None = None
        self._listener: asyncio.Task[None] | None = None
        self._events_appended = Signal()  # set by <prefix>:evwake messages
        self._next_due: float | None = None  # earliest eta of a delayed task, last we heard
        self._down_since: float | None = None  # monotonic time the connection was lost

    # --- lifecycle --------------------------------------------------------------------------
    async def _open(self) -> None:
        kwargs: dict[str, Any] = {"retry": Retry(NoBackoff(), 0)}  # we retry (and log) ourselves
        if "socket_connect_timeout" not in self.options.client_url:
            kwargs["socket_connect_timeout"] = 10.0
        try:
            client = aioredis.Redis.from_url(self.options.client_url, **kwargs)
        except (TypeError, ValueError) as e:
            raise ConfigError(
                f"redis URL {masked(self.url)!r}: {e} (OmniQ's own options: "
                + ", ".join(_OWN_OPTIONS) + ")"
            ) from e
        try:
            await client.ping()
        except (rex.RedisError, OSError) as e:
            await _aclose(client)
            raise StorageError(f"cannot connect to Redis at {masked(self.url)}: {_cause(e)}") from e
        self._redis = client

    async def _close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(BaseException):
                await listener
        client, self._redis = self._redis, None
        if client is not None:
            await _aclose(client)

    # --- calls ------------------------------------------------------------------------------
    async def _call(self, fn: Callable[[Any], Awaitable[Any]]) -> Any:
        """Run ``fn(client)``; retry a lost connection for ``reconnect_timeout`` seconds,
        logging once when it is lost and once when it is back; other errors -> StorageError."""
        backoff = Backoff(self.options.reconnect_timeout, first=0.02)
        while True:
            client = self._redis
            if client is None:
                raise StorageError(f"{masked(self.url)} is not connected: call connect() first")
            try:
                result = await fn(client)
            except rex.AuthenticationError as e:
                raise StorageError(f"Redis {masked(self.url)}: {_cause(e)}") from e
            except _RETRYABLE as e:
                now = time.monotonic()
                if self._down_since is None:
                    self._down_since = now
                    log.warning(
                        "lost the connection to Redis at %s (%s); reconnecting",
                        masked(self.url), _cause(e),
                    )
                    with contextlib.suppress(Exception):
                        await client.connection_pool.disconnect(inuse_connections=False)
                if backoff.expired():
                    raise StorageError(
                        f"Redis {masked(self.url)}: {_cause(e)}; gave up reconnecting after "
                        f"{self.options.reconnect_timeout:g} s"
                    ) from e
                await anyio.sleep(backoff.pause())
                continue
            except rex.ResponseError as e:
                raise StorageError(f"Redis {masked(self.url)}: {e}") from e
            except rex.RedisError as e:
                raise StorageError(f"Redis {masked(self.url)}: {e}") from e
            if self._down_since is not None:
                log.warning(
                    "reconnected to Redis at %s after %.2f s",
                    masked(self.url), time.monotonic() - self._down_since,
                )
                self._down_since = None
            return result

    async def _eval(self, name: str, args: Sequence[Any], *, once: bool = False) -> Any:
        """Run a named script. ``once``: a retried call returns the first run's reply."""
        script = SCRIPTS[name]
        keys = [f"{self.prefix}:once:{os.urandom(9).hex()}"] if once else []
        argv = [self.prefix, *args]

        async def run(r: Any) -> Any:
            try:
                return await r.evalsha(script.sha, len(keys), *keys, *argv)
            except rex.NoScriptError:
                await r.script_load(script.source)
                return await r.evalsha(script.sha, len(keys), *keys, *argv)

        return await self._call(run)

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    # --- tasks ------------------------------------------------------------------------------
    async def _insert(self, tasks: Sequence[Task], now: float, script: str, head: list[Any]) -> Any:
        """Plan and store a validated batch with ``script`` (``enqueue`` or ``fire_schedule``);
        re-plan when a dependency changed status in between (the script checks)."""
        deps = list(dict.fromkeys(d for t in tasks for d in t.depends_on))
        for _ in range(100):
            known: dict[str, TaskStatus] = {}
            if deps:
                known = await self.statuses(deps)
                plans = plan_enqueue(tasks, known)
            else:  # the common case, without the dependency planning
                plans = [
                    (TaskStatus.QUEUED if t.eta is None else t.status, []) for t in tasks
                ]
            args: list[Any] = [*head, _f(now), len(known)]
            for d, s in known.items():
                args += (d, s.value)
            args.append(len(tasks))
            for t, (status, waiting) in zip(tasks, plans):
                args += (
                    t.id, t.queue, str(-t.priority), status.value, _f(t.eta), _f(t.expires_at),
                    _f(t.created_at), t.max_deliveries, t.deliveries, t.attempts, encode(t),
                    t.key or "", len(waiting), *waiting,
                )  # fmt: skip
            reply = await self._eval(script, args, once=True)
            if reply[0] == b"stale":
                continue
            if reply[0] == b"exists":
                raise ConfigError(f"task id {reply[1].decode()!r} already exists")
            return reply
        raise StorageError(f"Redis {masked(self.url)}: dependencies kept changing during enqueue")

    async def enqueue(self, tasks: Sequence[Task]) -> dict[str, str]:
        check_new_tasks(tasks)
        if not tasks:
            return {}
        reply = await self._insert(tasks, time.time(), "enqueue", ["1" if self.results_here else "0"])
        ids = [x.decode() for x in reply[1:]]
        dups = dict(zip(ids[::2], ids[1::2]))
        self._woken([t for t in tasks if t.id not in dups] if dups else tasks)
        return dups

    def _woken(self, tasks: Sequence[Task]) -> None:
        """Wake local waiters at once (the published message wakes other processes)."""
        etas = [t.eta for t in tasks if t.eta is not None]
        if etas:
            self._note_due(min(etas))
        self.notify()

    async def _claim(
        self, worker: str, names: list[str] | None, limit: int, lease: float, now: float
    ) -> list[Task]:
        qargs: list[Any] = [-1] if names is None else [len(names), *names]
        reply = await self._eval(
            "claim", [_f(now), worker, _f(now + lease), limit, *qargs], once=True
        )
        nd = reply[0]
        self._next_due = None if nd is None else float(nd)
        return [_task(reply, i) for i in range(1, len(reply), _NF)]

    async def _finish(self, worker: str, outcomes: Sequence[tuple[str, TaskStatus]], now: float) -> Finished:
        args: list[Any] = [_f(now), worker, len(outcomes)]
        for task_id, status in outcomes:
            args += (task_id, status.value)
        v = await self._eval("finish", args, once=True)
        released, i = _tasks(v, 1, int(v[0]))
        cancelled = _cancelled(v, i)
        if released:
            self.notify()
        return Finished(released=released, cancelled=cancelled)

    async def retry(self, worker: str, task_id: str, *, eta: float, attempts: int) -> None:
        now = time.time()  # retry has no ``now``: the wall clock decides, as in the others
        if await self._eval("retry", [worker, task_id, _f(eta), attempts, _f(now)]):
            if eta > now:
                self._note_due(eta)
            self.notify()

    async def release(self, worker: str, task_ids: Sequence[str]) -> None:
        if task_ids and await self._eval("release", [worker, *task_ids]):
            self.notify()

    async def extend(self, worker: str, task_ids: Sequence[str], *, lease_until: float) -> None:
        if task_ids:
            await self._eval("extend", [worker, _f(lease_until), *task_ids])

    async def overrun(self, *, now: float, limit: int = 100) -> list[Overrun]:
        key = self._key("leases")
        pairs = await self._call(
            lambda r: r.zrangebyscore(key, "-inf", f"({_f(now)}", start=0, num=limit, withscores=True)
        )
        out = []
        for raw, lease_until in pairs:
            t = await self.get_task(raw.decode())
            if t is not None and t.status is TaskStatus.RUNNING:
                out.append(Overrun(task_id=t.id, queue=t.queue, worker=t.worker, lease_until=float(lease_until)))
        return out

    async def reap(self, *, now: float) -> Reaped:
        v = await self._eval("reap", [_f(now)], once=True)
        requeued, i = _tasks(v, 1, int(v[0]))
        dead, i = _tasks(v, i + 1, int(v[i]))
        cancelled = _cancelled(v, i)
        if requeued:
            self.notify()
        return Reaped(requeued=requeued, dead=dead, cancelled=cancelled)

    async def expire(self, *, now: float) -> list[Task]:
        v = await self._eval("expire", [_f(now)], once=True)
        return [_task(v, i) for i in range(0, len(v), _NF)]

    async def cancel(self, task_ids: Sequence[str], *, now: float) -> dict[str, TaskStatus]:
        if not task_ids:
            return {}
        v = await self._eval("cancel", [_f(now), *dict.fromkeys(task_ids)], once=True)
        return {v[i].decode(): _STATUS[v[i + 1]] for i in range(0, len(v), 2)}

    async def get_task(self, task_id: str) -> Task | None:
        key = self._key("t", task_id)
        v = await self._call(lambda r: r.hmget(key, _TASK_FIELDS))
        v = [*v, task_id.encode()]
        return None if v[0] is None else _task(v)

    async def statuses(self, task_ids: Sequence[str]) -> dict[str, TaskStatus]:
        if not task_ids:
            return {}
        ids = list(task_ids)
        v = await self._eval("statuses", ids)
        return {i: _STATUS[s] for i, s in zip(ids, v) if s is not None}

    async def cancel_requests(self, task_ids: Sequence[str]) -> list[str]:
        if not task_ids:
            return []
        return [i.decode() for i in await self._eval("cancel_requests", list(task_ids))]

    async def counts(self) -> dict[str, dict[str, int]]:
        key = self._key("counts")
        raw = await self._call(lambda r: r.hgetall(key))
        out: dict[str, dict[str, int]] = {}
        for field, n in raw.items():
            queue, _, status = field.rpartition(_COUNT_SEP)
            if int(n) > 0:
                out.setdefault(queue.decode(), {})[status.decode()] = int(n)
        return out

    async def oldest_queued(self) -> dict[str, float]:
        v = await self._eval("oldest_queued", [])
        return {v[i].decode(): float(v[i + 1]) for i in range(0, len(v), 2)}

    # --- schedules --------------------------------------------------------------------------
    async def add_schedule(self, schedule: Schedule) -> None:
        s = schedule
        await self._eval(
            "put_schedule",
            [s.id, encode(s), "1" if s.paused else "0", _f(s.next_run), _f(s.last_run),
             s.last_task_id or ""],
        )  # fmt: skip

    async def get_schedules(self) -> list[Schedule]:
        v = await self._eval("get_schedules", [])
        out: list[Schedule] = []
        for i in range(0, len(v), 5):
            s = _decode_schedule(v[i])
            s.paused = v[i + 1] == b"1"
            s.next_run = None if v[i + 2] is None else float(v[i + 2])
            s.last_run = None if v[i + 3] is None else float(v[i + 3])
            s.last_task_id = None if v[i + 4] is None else v[i + 4].decode()
            out.append(s)
        return out

    async def set_schedule_paused(
        self, schedule_id: str, paused: bool, next_run: float | None
    ) -> bool:
        set_next = not paused or next_run is not None
        args = [schedule_id, "1" if paused else "0", "1" if set_next else "0", _f(next_run)]
        return bool(await self._eval("pause_schedule", args))

    async def delete_schedule(self, schedule_id: str) -> bool:
        return bool(await self._eval("delete_schedule", [schedule_id]))

    async def _fire_schedule(
        self, schedule_id: str, expected_next_run: float, next_run: float | None, now: float, task: Task
    ) -> bool:
        head = [schedule_id, _f(expected_next_run), _f(next_run), _f(now), task.id]
        reply = await self._insert([task], now, "fire_schedule", head)
        if reply[0] != b"ok":
            return False
        self._woken([task])
        return True

    # --- workers ----------------------------------------------------------------------------
    async def heartbeat(self, info: WorkerInfo) -> None:
        forget = info.last_heartbeat - FORGET_WORKERS_AFTER
        await self._eval(
            "heartbeat", [info.id, encode(info), _f(info.last_heartbeat), _f(forget)]
        )

    async def remove_worker(self, worker_id: str) -> None:
        await self._eval("remove_worker", [worker_id])

    async def workers(self) -> list[WorkerInfo]:
        key = self._key("workers")
        raw = await self._call(lambda r: r.hgetall(key))
        return sorted((_decode_worker(b) for b in raw.values()), key=lambda w: w.id)

    # --- wake-ups ---------------------------------------------------------------------------
    def _ensure_listener(self) -> None:
        if self._redis is not None and (self._listener is None or self._listener.done()):
            self._listener = asyncio.get_running_loop().create_task(
                self._listen(), name=f"omniq-redis-wake:{self.prefix}"
            )

    async def wait_for_events(self, timeout: float) -> None:
        """Return when any process's ``append_events`` published on ``<prefix>:evwake``."""
        self._ensure_listener()
        await self._events_appended.wait(timeout)

    async def wait_for_tasks(self, timeout: float) -> None:
        """Return on ``notify``, on a wake-up published by any process, or when the earliest
        delayed task falls due (wall clock), at the latest after ``timeout``."""
        self._ensure_listener()
        await super().wait_for_tasks(timeout)

    async def _listen(self) -> None:
        """Turn messages on ``<prefix>:wake`` into local wake-ups; resubscribe when the
        connection drops (waiters fall back to their timeouts meanwhile)."""
        channel, events_channel = self._key("wake"), self._key("evwake")
        delay = 0.1
        lost_at: float | None = None
        while self._redis is not None:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(channel, events_channel)
                if lost_at is not None:
                    log.warning(
                        "wake-up channel on %s resubscribed after %.2f s",
                        masked(self.url), time.monotonic() - lost_at,
                    )
                    lost_at = None
                    self.notify()  # something may have been published meanwhile
                delay = 0.1
                async for msg in pubsub.listen():
                    if msg.get("channel") in (events_channel, events_channel.encode()):
                        self._events_appended.set()
                        continue
                    data = msg.get("data")
                    if data:
                        self._note_due(float(data))
                    self._wakeup.set()
            except asyncio.CancelledError:
                raise
            except (rex.RedisError, OSError) as e:
                if lost_at is None:
                    lost_at = time.monotonic()
                    log.warning(
                        "lost the wake-up channel on %s (%s); resubscribing",
                        masked(self.url), _cause(e),
                    )
            finally:
                await _aclose(pubsub)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    # --- results ----------------------------------------------------------------------------
    async def _put_results(self, results: Sequence[TaskResult]) -> None:
        args: list[Any] = [len(results)]
        wall = time.time()
        for r in results:
            px = ""
            if r.expires_at is not None and r.expires_at > wall:
                # Redis drops it by itself; purge_results cleans the index (and any result
                # whose expiry is not in the future on this clock, e.g. a test's fake clock)
                px = str(max(1, math.ceil((r.expires_at - wall) * 1000)))
            key = "" if r.key is None else "=" + r.key
            args += (r.task_id, encode(r), key, _f(r.expires_at), px)
        await self._eval("put_results", args)

    async def get_result(self, task_id: str) -> TaskResult | None:
        key = self._key("r", task_id)
        blob = await self._call(lambda r: r.get(key))
        return None if blob is None else _decode_result(blob)

    async def get_results(self, task_ids: Sequence[str]) -> dict[str, TaskResult]:
        if not task_ids:
            return {}
        keys = [self._key("r", i) for i in task_ids]
        blobs = await self._call(lambda r: r.mget(keys))
        return {i: _decode_result(b) for i, b in zip(task_ids, blobs) if b is not None}

    async def find_results(self, *, key_prefix: str) -> list[TaskResult]:
        if not isinstance(key_prefix, str):
            raise ConfigError(f"key_prefix must be a str, got {type(key_prefix).__name__}")
        lo, hi = _lex_bounds(key_prefix)
        found = [_decode_result(b) for b in await self._eval("find_results", [lo, hi])]
        return [r for r in found if r.key is not None and r.key.startswith(key_prefix)]

    async def delete_results(self, task_ids: Sequence[str]) -> int:
        if not task_ids:
            return 0
        return int(await self._eval("delete_results", list(task_ids)))

    async def purge_results(self, *, now: float) -> int:
        return int(await self._eval("purge_results", [_f(now)]))

    # --- events -----------------------------------------------------------------------------
    async def _append_events(self, events: Sequence[TaskEvent]) -> None:
        args: list[Any] = [self.options.max_events, MAX_TASK_EVENTS, len(events)]
        for e in events:
            args += (_event_ms(e.timestamp), e.task_id, encode(e))
        await self._eval("append_events", args, once=True)

    async def _query_events(
        self, task_id: str | None, since: float | None, types: list[str] | None, limit: int | None
    ) -> list[TaskEvent]:
        if task_id is not None:
            events = [_decode_event(b) for b in await self._eval("task_events", [task_id])]
        else:
            events = await self._read_stream(None if since is None else _event_ms(since))
        return events_in_order(events, since, types, limit)

    async def _read_stream(self, from_ms: int | None) -> list[TaskEvent]:
        """Every event whose stream id is at or after ``from_ms`` (all when None)."""
        key = self._key("ev")
        start = "-" if from_ms is None else str(from_ms)
        out: list[TaskEvent] = []
        while True:
            rows = await self._call(
                functools.partial(_xrange, key=key, start=start, count=10_000)
            )
            out.extend(_decode_event(fields[b"e"]) for _, fields in rows)
            if len(rows) < 10_000:
                return out
            start = "(" + rows[-1][0].decode()

    async def purge_events(self, *, before: float, task_ids: Collection[str] | None = None) -> int:
        if task_ids is None:
            return int(await self._eval("purge_events", [_f(before), _event_ms(before)]))
        ids, n = list(task_ids), 0
        for i in range(0, len(ids), 200):  # a script blocks the server: short ones
            n += int(await self._eval("purge_task_events", [_f(before), *ids[i : i + 200]]))
        return n


    # --- blobs -------------------------------------------------------------------------------
    async def _put_blobs(self, given: dict[str, Blob], owner: str, now: float) -> int:
        """Owners first and the stored ones found in one script; then each missing blob in a
        script of its own (``SET NX``), so only those are sent."""
        missing = await self._eval("own_blobs", [_f(now), owner, *given])
        written = 0
        for raw in missing:
            d = raw.decode()
            data = given[d]
            if nbytes(data) > BLOB_PIECE:
                stored = await self._put_in_pieces(d, data, now)
            else:
                stored = await self._eval("store_blob", [_f(now), d, data])
            if stored:
                written += nbytes(data)
        return written

    async def _put_in_pieces(self, d: str, data: Blob, now: float) -> bool:
        """A large blob in pieces (SETRANGE: a retried piece lands in the same place) under a key
        of its own that expires, then made the blob in one step: no request holds the whole
        value (one would be copied whole into the client's buffers), and a crash midway leaves
        no blob."""
        view = memoryview(data).cast("B")
        part = self._key("bt", f"{d}:{os.urandom(6).hex()}")
        for off in range(0, len(view), BLOB_PIECE):
            piece = view[off : off + BLOB_PIECE]

            async def put(r: Any, o: int = off, p: memoryview = piece) -> Any:
                return await r.setrange(part, o, p)

            await self._call(put)
            if off == 0:
                await self._call(lambda r: r.pexpire(part, 3_600_000))
        return bool(await self._eval("commit_blob", [_f(now), d, part]))

    async def _add_blob_owners(self, owners: dict[str, list[str]], now: float) -> None:
        args: list[Any] = [_f(now), len(owners)]
        for o, ds in owners.items():
            args += (o, len(ds), *ds)
        await self._eval("add_blob_owners", args)

    async def _get_blobs(self, ds: list[str]) -> dict[str, bytes]:
        keys = [self._key("b", d) for d in ds]
        got = await self._call(lambda r: r.mget(keys))
        return {d: b for d, b in zip(ds, got, strict=True) if b is not None}

    async def _missing_blobs(self, ds: list[str]) -> set[str]:
        return {raw.decode() for raw in await self._eval("missing_blobs", ds)}

    async def sweep_blobs(self, *, older_than: float) -> int:
        """Two passes of short scripts (``SWEEP_BATCH`` records each): dead owners, then blobs
        left without one."""
        before = _f(older_than)
        gone = 0
        for script in ("sweep_blob_owners", "sweep_blobs"):
            offset = 0
            while True:
                seen, removed = await self._eval(script, [before, offset, SWEEP_BATCH])
                offset += int(seen) - int(removed)  # what stays is skipped next time
                if script == "sweep_blobs":
                    gone += int(removed)
                if int(seen) < SWEEP_BATCH:
                    break
        return gone


async def _xrange(r: Any, *, key: str, start: str, count: int) -> Any:
    return await r.xrange(key, min=start, max="+", count=count)


__all__ = ["RedisBackend", "RedisOptions", "parse_url"]
