"""NATS JetStream backend: task queue, result store and event store on one NATS connection.

URL: ``nats://[user:password@]host[:port][?namespace=NAME&timeout=SECONDS&max_events=N]``.
``namespace`` (default ``omniq``; letters, digits, ``_`` and ``-``) prefixes every stream, bucket
and subject, so several deployments (or test runs) share one server without seeing each other.
``timeout`` bounds the initial connect and each JetStream request (default 5 s).

Why not "a work-queue stream, ack-wait as the lease, nak with delay for retries"?
That design hands each message to one consumer, but cannot answer what the contract asks: the
status of any task by id, cancel a queued task, exact priority then FIFO order across queues,
dependencies, counts, and leases and etas judged by the caller's ``now`` (the contract suite runs
on a fake clock). So the authoritative state is a key-value record per task, and streams are
only indexes pointing at records:

* ``KV OMNIQ_<ns>_TASKS``: one entry per task (msgpack ``_Rec``: the ``Task`` with its status,
  lease and delivery count, plus dependency links). Every change is a compare-and-set on the
  entry's revision (``Nats-Expected-Last-Subject-Sequence``), so a claim, a lease extension, a
  schedule slot or a dependency release happens exactly once however many processes race.
* ``OMNIQ_<ns>_INDEX`` stream (limits retention, messages deleted as they are used), subjects
  under ``omniq.<ns>.ix.``:

  - ``q.r.<priority>.<queue>``: the ready line. A claim lists the live subjects (stream info),
    walks priority levels from the highest and reads each level's messages in stream order
    (direct get, ``next_by_subj``), which is FIFO across queues of equal priority.
  - ``q.d.<eta in 0.1 s>``: delayed tasks; a claim promotes those due by ``now``.
  - ``x.<second>``: tasks with a ttl, for ``expire``.
  - ``l.<task>.<claim number>``: one subject per live lease, for ``reap``.
  - ``k.<hex of result key>.<task>`` and ``e.<second>``: results by key and by expiry.

  An index message stands for a record only while the record's ``index_seq`` names it; every
  writer publishes the index message *before* the compare-and-set that points the record at it,
  so a crash between the two leaves an orphan message (skipped, cleaned later), never a task
  that nothing points to. Stale messages are deleted by whoever reads them.
* ``KV OMNIQ_<ns>_RESULTS``: one entry per result (msgpack ``TaskResult``). NATS 2.9 has no
  per-key TTL, so ``expires_at`` is kept in the entry and ``purge_results`` deletes what is due
  through the ``e.`` index (a bucket-wide ``max_age`` would also drop results without a ttl).
* ``OMNIQ_<ns>_EVENTS`` stream, subject ``omniq.<ns>.ev.<task>``: per-task queries use a
  filtered consumer; capped by ``max_events`` (oldest dropped).
* ``KV OMNIQ_<ns>_META``: schedules (``s.<id>``, fired by compare-and-set) and worker
  heartbeats (``w.<id>``).
* Object store ``OMNIQ_<ns>_BLOBS`` (stream ``OBJ_OMNIQ_<ns>_BLOBS``): one object per blob, named
  by its digest, in the layout of nats-py's ``ObjectStore`` (chunks on ``$O.<bucket>.C.<nuid>``,
  then one meta message on ``$O.<bucket>.M.<base64 name>``), so a blob larger than
  ``max_payload`` is many messages. The meta message is written last, by a compare-and-set that
  expects no meta yet: a reader finds an object only once all of it is stored, a crash mid-put
  leaves chunks no meta names (never a blob), and of two processes storing one digest at once
  the loser purges its own chunks. ``meta.mtime`` is the caller's ``now`` at creation.
* ``KV OMNIQ_<ns>_BLOB_OWNERS``: key ``<digest>.<owner token>`` -> ``repr(recorded_at)``. A put
  writes its owner keys before it looks which blobs are stored; ``sweep_blobs`` drops dead owner
  keys, then takes each blob left without one in two steps: its meta moves to the name
  ``trash/<digest>``, the blob's owner keys are listed again, and the meta moves back when a put
  marked an owner meanwhile (that put may have found the blob stored), else the chunks go. A
  reader that misses a blob looks for its ``trash/`` meta before calling it missing.
* Wake-ups: core NATS ``omniq.<ns>.wake`` (not stored), published on enqueue, retry, release and
  requeue; every connected backend wakes its waiting workers from it.

Reconnects: the client reconnects by itself after a drop (a server restart, a network cut),
every 0.5 s for as long as it takes, and re-subscribes (wake-ups, replies); one WARNING names the
(masked) URL when the connection is lost and one when it is back. Replies awaited when it drops
are failed at once, and a call that failed because of the drop is run again once the client is
back (for up to 30 s, ``RECONNECT_TIMEOUT``). A retry takes over what its first attempt did
before the reply was lost: ``enqueue`` accepts records already stored as the very same tasks,
``claim`` takes the tasks leased to this worker at this ``now`` from index messages still there,
``finish`` resolves the dependents of tasks it had already ended, and events carry a
content-derived ``Nats-Msg-Id`` so JetStream stores a re-sent event once. Every other write is
a compare-and-set that a second run leaves alone. (A claim whose lease write went through
unanswered after other tasks were leased in the same call returns those; the unanswered one
waits for its lease to lapse, then runs: at-least-once.)

Deletes use a subject purge, which leaves no tombstones behind, so scans do not slow down with
history. Trade-offs: a claim costs about five round trips (~1 ms on loopback) against one SQL
statement elsewhere; ``counts``, ``oldest_queued`` and ``purge`` scan every task record (fine for
``health()`` now and then, not for a tight loop); a record or result is one NATS message, so a
payload above the server's ``max_payload`` (1 MB by default) is refused with ``StorageError``.
An enqueue batch is all-or-nothing for duplicate ids and unknown dependencies (checked before
anything is visible), but NATS 2.9 has no multi-message transactions: a crash half-way through a
batch can leave part of it stored.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import datetime
import functools
import hashlib
import io
import json
import logging
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from copy import copy
from typing import Any, ParamSpec, TypeVar
from urllib.parse import parse_qs, urlsplit

import msgspec
import nats.errors
import nats.js.errors
import nats.js.object_store
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from ..errors import ConfigError, StorageError
from ..lifecycle import (
    Cascade,
    claimable,
    expires,
    fired,
    lease_lapsed,
    on_dependency_end,
    on_lapse,
    ready_status,
    slot_fires,
)
from ..logs import get_logger
from ..models import Schedule, Task, TaskEvent, TaskResult, TaskStatus
from .base import (
    KEY_WRITE_GRACE,
    EventStore,
    Finished,
    Overrun,
    Reaped,
    ResultStore,
    Signal,
    TaskQueue,
    WorkerInfo,
    check_claim,
    check_new_tasks,
    check_outcomes,
    holds_key,
    keyed,
    masked,
    plan_enqueue,
    plan_keys,
    stand_in_task,
)
from .blobs import (
    LIVE_TASK_STATUSES,
    Blob,
    check_blobs,
    check_digests,
    check_owners,
    nbytes,
    result_owner,
    task_owner,
)

log = get_logger(__name__)

QUEUED = TaskStatus.QUEUED
PENDING = TaskStatus.PENDING
RUNNING = TaskStatus.RUNNING
CANCELLED = TaskStatus.CANCELLED

DEFAULT_SERVER = "nats://127.0.0.1:4222"
DEFAULT_NAMESPACE = "omniq"
DEFAULT_TIMEOUT = 5.0
DEFAULT_MAX_EVENTS = 1_000_000
RECONNECT_WAIT = 0.5  # seconds between reconnect attempts to one server
RECONNECT_TIMEOUT = 30.0  # seconds a call waits for a lost connection to come back
MSG_ID = "Nats-Msg-Id"  # JetStream drops a second message with the same id (events, on retry)
EXPECT_LAST = "Nats-Expected-Last-Subject-Sequence"
KV_OPERATION = "KV-Operation"
WRONG_LAST_SEQUENCE = (10071, 10164)  # JetStream error codes of a lost compare-and-set
STREAM_NAME_IN_USE = 10058  # add_stream on an existing stream with another configuration
BATCH = 256  # requests in flight at once
DUE_STEP = 10  # delayed-task index granularity: 1/10 s
EVENT_CLOCK_SLACK = 300.0  # seconds: query_events(since) starts reading this long before it
BLOB_CHUNK = 256 * 1024  # bytes per object-store chunk message (at most half of max_payload)
BLOB_WINDOW = 32  # chunks published per round trip
TRASH = "trash/"  # object name prefix of a blob a sweep is taking away
TRASH_STALE = 3600.0  # seconds after which a trash meta is a crashed sweep's, for any to settle

_NAMESPACE_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_PLAIN_TOKEN_RE = re.compile(r"[A-Za-z0-9][-_A-Za-z0-9]*")


# --- pure helpers ------------------------------------------------------------------------------------


class _Rec(msgspec.Struct, array_like=True):
    """A stored task: the Task plus what only the queue needs."""

    task: Task
    index_seq: int = 0  # the ready/due index message that stands for this task (0: none)
    claim_no: int = 0  # claims so far; names the lease index subject of the current claim
    finished_at: float | None = None
    waiting: list[str] = msgspec.field(default_factory=list)  # dependencies not yet succeeded
    dependents: list[str] = msgspec.field(default_factory=list)  # tasks waiting for this one


class _KeyMark(msgspec.Struct, array_like=True):
    """An idempotency key's marker (``k.<key>`` in the meta bucket): the key's latest task
    ("" once that task was purged unsuccessful), when the marker was written, and whether that
    task's record was purged after it succeeded (it holds the key while its result lasts)."""

    task: str
    at: float
    purged: bool = False


_UNREADABLE = -1  # index_seq of the stand-in of a record that does not decode
_encode = msgspec.msgpack.Encoder().encode
_decode_rec = msgspec.msgpack.Decoder(_Rec).decode
_decode_keymark = msgspec.msgpack.Decoder(_KeyMark).decode
_decode_result = msgspec.msgpack.Decoder(TaskResult).decode
_decode_event = msgspec.msgpack.Decoder(TaskEvent).decode
_decode_schedule = msgspec.msgpack.Decoder(Schedule).decode
_decode_worker = msgspec.msgpack.Decoder(WorkerInfo).decode


def parse_url(url: str) -> tuple[str, str, float, int]:
    """``(server URL, namespace, timeout, max_events)`` of a ``nats://`` URL."""
    if not isinstance(url, str) or not url.lower().startswith("nats://"):
        raise ConfigError(f"not a nats:// URL: {url!r}")
    parts = urlsplit(url)
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"namespace", "timeout", "max_events"})
    if unknown:
        raise ConfigError(
            f"NATS URL {masked(url)!r}: unknown parameter {unknown[0]!r}; valid: namespace, "
            "timeout, max_events"
        )
    if parts.path not in ("", "/"):
        raise ConfigError(
            f"NATS URL {masked(url)!r} has a path {parts.path!r}; name the namespace with "
            "?namespace=NAME instead"
        )
    namespace = query.get("namespace", [DEFAULT_NAMESPACE])[-1]
    if not _NAMESPACE_RE.fullmatch(namespace):
        raise ConfigError(
            f"NATS URL {masked(url)!r}: namespace must be 1-64 letters, digits, '_' or '-', "
            f"got {namespace!r}"
        )
    try:
        timeout = float(query.get("timeout", [DEFAULT_TIMEOUT])[-1])
        max_events = int(query.get("max_events", [DEFAULT_MAX_EVENTS])[-1])
    except ValueError as e:
        raise ConfigError(f"NATS URL {masked(url)!r}: {e}") from None
    if not timeout > 0 or max_events < 1:
        raise ConfigError(f"NATS URL {masked(url)!r}: timeout and max_events must be positive")
    server = f"nats://{parts.netloc}" if parts.netloc else DEFAULT_SERVER
    return server, namespace, timeout, max_events


def token(s: str) -> str:
    """``s`` as one subject token / KV key: kept when plainly safe, else ``=`` + base64url."""
    if _PLAIN_TOKEN_RE.fullmatch(s):
        return s
    return "=" + base64.urlsafe_b64encode(s.encode()).decode().rstrip("=")


def untoken(tok: str) -> str:
    """The string ``token`` encoded."""
    if not tok.startswith("="):
        return tok
    raw = tok[1:]
    return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()


def _due_bucket(eta: float) -> int:
    return math.floor(eta * DUE_STEP)


def _second(t: float) -> int:
    return math.floor(t)


def _plain_error(e: BaseException) -> str:
    """A NATS client error in words a user can act on."""
    if isinstance(e, nats.errors.MaxPayloadError):
        return "a message is larger than the server's max_payload (raise it in nats-server.conf)"
    if isinstance(e, nats.js.errors.ServiceUnavailableError):
        return "JetStream is not available on that server (start nats-server with -js)"
    if isinstance(e, nats.js.errors.NoStreamResponseError):
        return "no JetStream stream answered (is JetStream enabled, and were streams deleted?)"
    if isinstance(e, (nats.errors.TimeoutError, asyncio.TimeoutError)):
        return "the server did not answer in time"
    if isinstance(e, nats.errors.ConnectionClosedError):
        return "the connection is closed"
    if isinstance(e, nats.js.errors.APIError) and e.description:
        return f"{e.description} (JetStream error {e.err_code})"
    return str(e) or type(e).__name__


P = ParamSpec("P")
R = TypeVar("R")


class _ConnectionLost(nats.errors.Error):
    """The connection dropped while a reply was awaited: the request may or may not have run."""

    def __str__(self) -> str:
        return "the connection was lost before the server answered"


#: Errors after which a call is run again when the connection dropped meanwhile (or is down, or
#: just came back): nothing was done, or the call is safe to repeat (see "Reconnects" above).
_TRANSIENT = (
    _ConnectionLost,
    nats.errors.TimeoutError,
    asyncio.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.NoStreamResponseError,
)

#: Which attempt of a guarded call is running (0: the first): a retry may find the work of an
#: attempt whose reply was lost, and must take it as its own rather than fail or repeat it.
_ATTEMPT: contextvars.ContextVar[int] = contextvars.ContextVar("omniq_nats_attempt", default=0)


def _guard(fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Turn NATS client errors into ``StorageError`` naming the (masked) URL; run the call again
    when it failed because the connection dropped, once the client has reconnected (for up to
    ``RECONNECT_TIMEOUT`` seconds)."""

    @functools.wraps(fn)
    async def run(*args: P.args, **kwargs: P.kwargs) -> R:
        backend = args[0]
        url = getattr(backend, "url", "nats://")
        deadline: float | None = None
        attempt = 0
        delay = 0.05
        while True:
            disconnects = getattr(backend, "_disconnects", 0)
            token = _ATTEMPT.set(attempt)
            try:
                return await fn(*args, **kwargs)
            except (nats.errors.Error, asyncio.TimeoutError) as e:
                retry = isinstance(backend, NatsBackend) and backend._may_retry(e, disconnects)
                now = time.monotonic()
                if retry and deadline is None:
                    deadline = now + RECONNECT_TIMEOUT
                if not retry or deadline is None or now >= deadline:
                    gave_up = f"; gave up after {RECONNECT_TIMEOUT:g} s" if retry else ""
                    raise StorageError(f"NATS {masked(url)}: {_plain_error(e)}{gave_up}") from e
                log.debug("NATS %s: %s; trying again", masked(url), _plain_error(e))
                assert isinstance(backend, NatsBackend)
                await backend._wait_connected(min(delay, deadline - now))
                delay = min(delay * 2, 1.0)
                attempt += 1
            finally:
                _ATTEMPT.reset(token)

    return run


class _Msg(msgspec.Struct):
    """An index or event message as read back: sequence, subject, data."""

    seq: int
    subject: str
    data: bytes
    headers: dict[str, str] | None = None


# --- the backend ---------------------------------------------------------------------------------------


class NatsBackend(TaskQueue, ResultStore, EventStore):
    """Task queue, result store and event store in one NATS JetStream namespace."""

    cross_process_wakeups = True

    def __init__(self, url: str = DEFAULT_SERVER) -> None:
        super().__init__()
        self.url = url
        self.server, self.namespace, self.timeout, self.max_events = parse_url(url)
        ns = self.namespace
        self._p = f"omniq.{ns}"
        self.tasks_bucket = f"OMNIQ_{ns}_TASKS"
        self.results_bucket = f"OMNIQ_{ns}_RESULTS"
        self.meta_bucket = f"OMNIQ_{ns}_META"
        self.index_stream = f"OMNIQ_{ns}_INDEX"
        self.events_stream = f"OMNIQ_{ns}_EVENTS"
        self.blobs_bucket = f"OMNIQ_{ns}_BLOBS"
        self.blobs_stream = f"OBJ_{self.blobs_bucket}"
        self.blob_owners_bucket = f"OMNIQ_{ns}_BLOB_OWNERS"
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._next_due: float | None = None  # when the earliest delayed task falls due
        self._held: dict[str, tuple[int, _Rec]] = {}  # our leases: revision + record we wrote
        self._jobs: set[asyncio.Future[None]] = set()  # wake-up publishes in flight
        self._events_appended = Signal()  # set by <ns>.evwake (subscribed on first wait)
        self._events_sub: Any = None
        self._replies: dict[str, asyncio.Future[api.PubAck | BaseException]] = {}
        self._reply_no = 0
        self._reply_prefix = ""
        self._closing = False
        self._down_since: float | None = None  # monotonic time the connection was lost
        self._up_since = 0.0  # monotonic time of the last reconnect
        self._disconnects = 0

    # --- lifecycle ------------------------------------------------------------------------------------
    @property
    def streams(self) -> list[str]:
        """Every stream this namespace uses (KV buckets are streams named ``KV_<bucket>``)."""
        return [
            f"KV_{self.tasks_bucket}",
            f"KV_{self.results_bucket}",
            f"KV_{self.meta_bucket}",
            self.index_stream,
            self.events_stream,
            f"KV_{self.blob_owners_bucket}",
            self.blobs_stream,
        ]

    async def _open(self) -> None:
        self._closing = False
        self._down_since = None
        nc = NATS()

        seen: list[Exception] = []  # what went wrong, for a plain-words error

        async def quiet(e: Exception) -> None:
            seen.append(e)
            log.debug("NATS %s: %s", masked(self.url), e)

        async def disconnected() -> None:
            if self._nc is not nc or self._closing:
                return
            self._disconnects += 1
            self._fail_in_flight(nc)
            if self._down_since is not None:
                return
            self._down_since = time.monotonic()
            cause = next((x for x in reversed(seen)), None)
            log.warning(
                "lost the connection to NATS at %s%s; reconnecting (calls wait for it)",
                masked(self.url), f" ({_why(cause)})" if cause is not None else "",
            )  # fmt: skip

        async def reconnected() -> None:
            if self._nc is not nc or self._closing:
                return
            since, self._down_since = self._down_since, None
            self._up_since = time.monotonic()
            log.warning(
                "reconnected to NATS at %s after %.2f s", masked(self.url),
                time.monotonic() - since if since is not None else 0.0,
            )  # fmt: skip
            self._wakeup.set()  # wake-ups published meanwhile were lost: look for work now

        async def closed() -> None:
            if self._nc is nc and not self._closing:
                log.error("NATS %s: the connection is closed and will not come back",
                          masked(self.url))  # fmt: skip

        try:
            # One retry for the first connection (nats-py would retry for minutes): an unreachable
            # server is reported within seconds. Reconnecting after a later drop keeps trying for
            # about a minute (the options are switched back below).
            await asyncio.wait_for(
                nc.connect(
                    servers=[self.server],
                    connect_timeout=max(1, math.ceil(self.timeout)),
                    allow_reconnect=False,
                    max_reconnect_attempts=1,
                    reconnect_time_wait=1,
                    error_cb=quiet,
                    disconnected_cb=disconnected,
                    reconnected_cb=reconnected,
                    closed_cb=closed,
                    name=f"omniq:{self.namespace}",
                ),
                self.timeout * 3,
            )
        except (OSError, nats.errors.Error, asyncio.TimeoutError) as e:
            cause = next((x for x in seen if not isinstance(x, nats.errors.NoServersError)), e)
            await _close_quietly(nc)
            raise StorageError(
                f"cannot connect to NATS at {masked(self.url)}: {_why(cause)}"
            ) from e
        nc.options["allow_reconnect"] = True
        nc.options["max_reconnect_attempts"] = -1  # a worker outlives any outage
        nc.options["reconnect_time_wait"] = RECONNECT_WAIT
        self._nc = nc
        self._js = nc.jetstream(timeout=self.timeout)
        try:
            await self._ensure_storage()
            await nc.subscribe(f"{self._p}.wake", cb=self._on_wake)
            self._reply_prefix = nc.new_inbox()
            await nc.subscribe(f"{self._reply_prefix}.*", cb=self._on_reply)
        except BaseException as e:
            self._nc = self._js = None
            await _close_quietly(nc)
            if isinstance(e, (nats.errors.Error, asyncio.TimeoutError)):
                raise StorageError(
                    f"NATS {masked(self.url)}: cannot set up JetStream storage: {_plain_error(e)}"
                ) from e
            raise

    def _fail_in_flight(self, nc: NATS) -> None:
        """The connection dropped: replies awaited on it will not come; fail them now (their
        calls are run again after the reconnect) instead of letting each time out."""
        lost = _ConnectionLost()
        for fut in list(self._replies.values()):
            if not fut.done():
                fut.set_result(lost)
        for fut in list(getattr(nc, "_resp_map", {}).values()):  # nats-py's request futures
            if isinstance(fut, asyncio.Future) and not fut.done():
                fut.set_exception(_ConnectionLost())

    def _may_retry(self, e: BaseException, disconnects: int) -> bool:
        """Run a failed call again? Only for a transient error of a connected backend whose
        connection dropped during the call, is down, or came back moments ago."""
        nc = self._nc
        if nc is None or self._closing or nc.is_closed or not isinstance(e, _TRANSIENT):
            return False
        return (
            disconnects != self._disconnects
            or self._down_since is not None
            or not nc.is_connected
            or time.monotonic() - self._up_since < RECONNECT_TIMEOUT / 3
        )

    async def _wait_connected(self, pause: float) -> None:
        """Sleep ``pause`` seconds, then until the client is connected again (or closed)."""
        await asyncio.sleep(pause)
        deadline = time.monotonic() + RECONNECT_TIMEOUT
        while (nc := self._nc) is not None and not nc.is_closed and not nc.is_connected:
            if time.monotonic() > deadline:
                return
            await asyncio.sleep(0.05)

    async def _ensure_storage(self) -> None:
        js = self.js
        try:
            await js.create_object_store(bucket=self.blobs_bucket, storage=api.StorageType.FILE)
        except nats.js.errors.BadRequestError as e:
            if e.err_code != STREAM_NAME_IN_USE:
                raise
        buckets = (self.tasks_bucket, self.results_bucket, self.meta_bucket, self.blob_owners_bucket)
        for bucket in buckets:
            try:
                await js.create_key_value(
                    bucket=bucket, history=1, direct=True, storage=api.StorageType.FILE
                )
            except nats.js.errors.BadRequestError as e:
                if e.err_code != STREAM_NAME_IN_USE:
                    raise
        streams = [
            api.StreamConfig(
                name=self.index_stream,
                subjects=[f"{self._p}.ix.>"],
                storage=api.StorageType.FILE,
                allow_direct=True,
            ),
            api.StreamConfig(
                name=self.events_stream,
                subjects=[f"{self._p}.ev.>"],
                storage=api.StorageType.FILE,
                max_msgs=self.max_events,
                discard=api.DiscardPolicy.OLD,
                allow_direct=True,
            ),
        ]
        for config in streams:
            try:
                await js.add_stream(config)
            except nats.js.errors.BadRequestError as e:
                if e.err_code != STREAM_NAME_IN_USE:
                    raise

    async def _close(self) -> None:
        self._closing = True
        nc, self._nc, self._js = self._nc, None, None
        self._events_sub = None  # closed with the connection
        self._held.clear()
        if nc is not None:
            await _close_quietly(nc)

    @_guard
    async def drop(self) -> None:
        """Delete this namespace's streams and buckets: all its tasks, results and events."""
        for name in self.streams:
            try:
                await self.js.delete_stream(name)
            except nats.js.errors.NotFoundError:
                pass

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise StorageError(f"{masked(self.url)} is not connected: call connect() first")
        return self._js

    # --- low-level stream operations ------------------------------------------------------------------
    def _task_subject(self, task_id: str) -> str:
        return f"$KV.{self.tasks_bucket}.{token(task_id)}"

    def _result_subject(self, task_id: str) -> str:
        return f"$KV.{self.results_bucket}.{token(task_id)}"

    async def _get_last(self, stream: str, subject: str) -> _Msg | None:
        try:
            m = await self.js.get_msg(stream, subject=subject, direct=True)
        except nats.js.errors.NotFoundError:
            return None
        headers = m.headers or None
        if headers and headers.get(KV_OPERATION) in ("DEL", "PURGE"):
            return None
        return _Msg(m.seq or 0, m.subject or subject, m.data or b"", headers)

    async def _next_index(self, subject: str, start: int) -> _Msg | None:
        """The first index message at or after ``start`` matching ``subject`` (wildcards ok)."""
        try:
            m = await self.js.get_msg(
                self.index_stream, seq=max(start, 1), subject=subject, next=True, direct=True
            )
        except nats.js.errors.NotFoundError:
            return None
        return _Msg(m.seq or 0, m.subject or "", m.data or b"")

    async def _read_index(self, subject: str) -> list[_Msg]:
        """Every index message of ``subject``, in order (one request each: for small sets)."""
        out: list[_Msg] = []
        start = 1
        while (m := await self._next_index(subject, start)) is not None:
            out.append(m)
            start = m.seq + 1
        return out

    async def _subjects(self, stream: str, subjects: str) -> dict[str, int]:
        """``{subject: message count}`` of the live subjects matching ``subjects``."""
        info = await self.js.stream_info(stream, subjects_filter=subjects)
        return dict(info.state.subjects or {})

    async def _publish(
        self, items: Sequence[tuple[str, bytes, dict[str, str] | None]]
    ) -> list[api.PubAck | BaseException]:
        """Publish in order, pipelined: one round trip for the lot. Failures come back in place."""
        # Our own reply mux rather than js.publish_async: nats-py 2.16 loses the future of a
        # publish the server refuses (its reply handler raises instead of failing the future),
        # and a lost compare-and-set is exactly such a refusal.
        if not items:
            return []
        nc = self._nc
        if nc is None:
            raise StorageError(f"{masked(self.url)} is not connected: call connect() first")
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[api.PubAck | BaseException]] = []
        try:
            for subject, data, headers in items:
                self._reply_no += 1
                key = str(self._reply_no)
                fut: asyncio.Future[api.PubAck | BaseException] = loop.create_future()
                self._replies[key] = fut
                futures.append(fut)
                await nc.publish(
                    subject, data, reply=f"{self._reply_prefix}.{key}", headers=headers
                )
            done = await asyncio.wait_for(asyncio.gather(*futures), self.timeout * 2)
        finally:
            for fut in futures:
                if not fut.done():
                    fut.cancel()
            for key in [k for k, f in self._replies.items() if f.done()]:
                del self._replies[key]
        return list(done)

    async def _on_reply(self, msg: Msg) -> None:
        """A JetStream publish acknowledgement (or refusal) for ``_publish``."""
        fut = self._replies.pop(msg.subject.rpartition(".")[2], None)
        if fut is None or fut.done():
            return
        if msg.headers and msg.headers.get("Status") == "503":
            fut.set_result(nats.js.errors.NoStreamResponseError())
            return
        try:
            resp = json.loads(msg.data)
            if "error" in resp:
                nats.js.errors.APIError.from_error(resp["error"])  # raises the typed error
            fut.set_result(api.PubAck.from_response(resp))
        except Exception as e:  # the refusal itself, or a reply we cannot read
            fut.set_result(e)

    async def _publish_ok(
        self, items: Sequence[tuple[str, bytes, dict[str, str] | None]]
    ) -> list[int]:
        """Like ``_publish``, raising the first failure; the stream sequences."""
        out: list[int] = []
        for ack in await self._publish(items):
            if isinstance(ack, BaseException):
                raise ack
            out.append(ack.seq)
        return out

    async def _cas(self, subject: str, data: bytes, last: int) -> int | None:
        """Write iff the subject's last revision is ``last`` (0: absent); None if someone was first."""
        [ack] = await self._publish([(subject, data, {EXPECT_LAST: str(last)})])
        if isinstance(ack, nats.js.errors.APIError) and ack.err_code in WRONG_LAST_SEQUENCE:
            return None
        if isinstance(ack, BaseException):
            raise ack
        return ack.seq

    async def _delete_index(self, seqs: Iterable[int]) -> None:
        """Delete index messages (already gone is fine)."""
        await _gather(self._delete_msg(self.index_stream, s) for s in seqs)

    async def _delete_msg(self, stream: str, seq: int) -> None:
        """Best effort: a message left behind is stale and whoever reads it next deletes it."""
        try:
            await self.js.delete_msg(stream, seq)
        except nats.js.errors.APIError:
            pass  # deleted already (someone else cleaned it up: 400 or 500 "no message found")
        except (nats.errors.Error, asyncio.TimeoutError) as e:
            log.debug("NATS %s: deleting message %s of %s failed: %s", self.url, seq, stream, e)

    async def _unlease(self, subject: str) -> None:
        """Drop a lease index subject after the record changed (best effort: ``reap`` drops
        stale ones too), so a failure here never hides a change that was made."""
        try:
            await self._purge(self.index_stream, subject)
        except (nats.errors.Error, asyncio.TimeoutError) as e:
            log.debug("NATS %s: dropping lease index %s failed: %s", self.url, subject, e)

    async def _purge(self, stream: str, subject: str) -> None:
        await self.js.purge_stream(stream, subject=subject)

    async def _scan(
        self,
        stream: str,
        subject: str,
        *,
        last_per_subject: bool = False,
        start_time: float | None = None,
    ) -> list[Msg]:
        """Every message of ``subject`` (or the last one per subject) through a short-lived consumer."""
        if last_per_subject:
            policy = api.DeliverPolicy.LAST_PER_SUBJECT
        elif start_time is not None:
            policy = api.DeliverPolicy.BY_START_TIME
        else:
            policy = api.DeliverPolicy.ALL
        config = api.ConsumerConfig(
            ack_policy=api.AckPolicy.NONE,
            deliver_policy=policy,
            opt_start_time=(
                datetime.datetime.fromtimestamp(max(start_time, 0.0), datetime.timezone.utc)
                if start_time is not None and not last_per_subject
                else None
            ),
            inactive_threshold=60.0,
            mem_storage=True,
            filter_subject=subject,
        )
        sub = await self.js.pull_subscribe(subject, stream=stream, config=config)
        out: list[Msg] = []
        name = config.name
        try:
            info = await sub.consumer_info()
            left = info.num_pending or 0
            while left > 0:
                try:
                    msgs = await sub.fetch(min(left, 1024), timeout=self.timeout)
                except nats.errors.TimeoutError:
                    break  # messages deleted while we read
                out.extend(msgs)
                left = msgs[-1].metadata.num_pending if msgs else 0
        finally:
            try:
                await sub.unsubscribe()
                if name:
                    await self.js.delete_consumer(stream, name)
            except nats.errors.Error:
                pass  # it goes away by itself after inactive_threshold
        return out

    # --- task records -----------------------------------------------------------------------------------
    async def _get_rec(self, task_id: str) -> tuple[int, _Rec] | None:
        m = await self._get_last(f"KV_{self.tasks_bucket}", self._task_subject(task_id))
        if m is None:
            return None
        try:
            return m.seq, _decode_rec(m.data)
        except Exception as exc:  # any: a record nested too deep raises RecursionError
            log.error("unreadable task record %s (%d bytes): %s", task_id, len(m.data),
                      type(exc).__name__)
            # a stand-in that fails when run, saying why; a claimer points it at its index
            # message (index_seq), so it is claimed, written over and ends with a TaskResult
            return m.seq, _Rec(task=stand_in_task(task_id, exc), index_seq=_UNREADABLE)

    async def _get_recs(self, task_ids: Iterable[str]) -> dict[str, tuple[int, _Rec]]:
        ids = list(dict.fromkeys(task_ids))
        got = await _gather(self._get_rec(i) for i in ids)
        return {i: g for i, g in zip(ids, got, strict=True) if g is not None}

    def _index_item(self, rec: _Rec, kind: str) -> tuple[str, bytes, None]:
        t = rec.task
        if kind == "ready":
            subject = f"{self._p}.ix.q.r.{t.priority}.{token(t.queue)}"
        else:
            subject = f"{self._p}.ix.q.d.{_due_bucket(t.eta or 0.0)}"
        return subject, t.id.encode(), None

    async def _transition(
        self,
        task_id: str,
        change: Callable[[_Rec], str | None],
        cached: tuple[int, _Rec] | None = None,
    ) -> tuple[int, _Rec] | None:
        """Read-modify-write one record by compare-and-set, retried until it holds.

        ``change`` edits the record and says what to write: None (nothing), ``""`` (just the
        record), ``"ready"``/``"due"`` (the record, pointed at a new index message published
        first). It may run more than once, on fresh copies. Returns the written revision+record.
        """
        while True:
            got = cached if cached is not None else await self._get_rec(task_id)
            cached = None
            if got is None:
                return None
            rev, rec = got
            rec = _decode_rec(_encode(rec))  # a private copy: a retry starts from stored state
            need = change(rec)
            if need is None:
                return None
            seq = 0
            if need:
                [seq] = await self._publish_ok([self._index_item(rec, need)])
                rec.index_seq = seq
            new_rev = await self._cas(self._task_subject(task_id), _encode(rec), rev)
            if new_rev is not None:
                return new_rev, rec
            if seq:
                await self._delete_index([seq])  # an orphan now: the record never pointed at it

    def _wake(self, eta: float | None = None) -> None:
        """Tell every connected backend (this one too) that work may be ready (at ``eta``)."""
        if eta is None:
            self.notify()
        else:
            self._due_at(eta)
        nc = self._nc
        if nc is None:
            return
        data = b"" if eta is None else repr(eta).encode()
        job = asyncio.ensure_future(_publish_quietly(nc, f"{self._p}.wake", data))
        self._jobs.add(job)  # keep a reference until done (the loop holds only weak ones)
        job.add_done_callback(self._jobs.discard)

    async def _on_wake(self, msg: Msg) -> None:
        if msg.data:
            try:
                self._due_at(float(msg.data))
            except ValueError:
                self._wakeup.set()
        else:
            self._wakeup.set()

    def _due_at(self, eta: float) -> None:
        if self._next_due is None or eta < self._next_due:
            self._next_due = eta
        self._wakeup.set()  # waiters re-time their sleep

    # --- tasks ------------------------------------------------------------------------------------------
    @_guard
    async def enqueue(self, tasks: Sequence[Task]) -> dict[str, str]:
        check_new_tasks(tasks)
        if not tasks:
            return {}
        return await self._insert(tasks, time.time())

    def _key_subject(self, key: str) -> str:
        tok = token(key)
        if len(tok) > 200:  # a long key: its digest (the marker names the task, not the key)
            tok = "~" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        return f"$KV.{self.meta_bucket}.k.{tok}"

    async def _claim_keys(
        self, tasks: Sequence[Task], now: float
    ) -> tuple[dict[str, str], list[str], dict[str, int]]:
        """Point each key of the batch at its first task by compare-and-set on its marker,
        unless another task holds it: (key -> holder, for keys held; holders known only by a
        stored success; key -> revision of the markers written here).

        A marker is written *before* its task's record, so a marker whose task is not there yet
        may be a write in progress: it is waited for, up to ``KEY_WRITE_GRACE`` seconds after
        it was written (then its writer is taken to have died in between). ``purge`` marks the
        keys of the tasks it removes, so a purged task is never taken for one being written."""
        first: dict[str, str] = {}
        for t in tasks:
            if t.key is not None:
                first.setdefault(t.key, t.id)
        holders: dict[str, str] = {}
        gone: list[str] = []
        written: dict[str, int] = {}
        stream = f"KV_{self.meta_bucket}"

        async def one(key: str, tid: str) -> None:
            subject = self._key_subject(key)
            delay = 0.005
            while True:
                m = await self._get_last(stream, subject)
                rev = 0 if m is None else m.seq
                if m is not None:
                    mark = _decode_keymark(m.data)
                    if mark.task == tid:
                        written[key] = m.seq  # ours (an earlier attempt of this call)
                        return
                    if mark.task:
                        got = await self._get_rec(mark.task)
                        if got is not None:
                            st = got[1].task.status
                            ok = False
                            if st is TaskStatus.SUCCEEDED and self.results_here:
                                r = await self._get_result(mark.task)
                                ok = r is not None and r.status is TaskStatus.SUCCEEDED
                            if holds_key(st, ok, self.results_here):
                                holders[key] = mark.task
                                return
                        elif mark.purged:
                            r = await self._get_result(mark.task)
                            if r is not None and r.status is TaskStatus.SUCCEEDED:
                                holders[key] = mark.task
                                gone.append(mark.task)
                                return
                        elif time.time() - mark.at < KEY_WRITE_GRACE:
                            await asyncio.sleep(delay)  # its task may be being stored
                            delay = min(delay * 2, 0.1)
                            continue
                seq = await self._cas(subject, _encode(_KeyMark(tid, now)), rev)
                if seq is not None:
                    written[key] = seq
                    return

        await _gather(one(k, tid) for k, tid in first.items())
        return holders, gone, written

    async def _free_keys(self, written: Mapping[str, int], now: float) -> None:
        """Best effort, after a failed enqueue: markers written here point at no task; free them
        (a marker someone replaced meanwhile is left alone)."""
        with contextlib.suppress(Exception):
            await _gather(
                self._cas(self._key_subject(k), _encode(_KeyMark("", now)), seq)
                for k, seq in written.items()
            )

    async def _forget_keys(self, recs: Sequence[_Rec], now: float) -> None:
        """``purge`` removed these records: mark their keys free (or held while a stored success
        lasts), unless someone re-keyed them meanwhile."""
        stream = f"KV_{self.meta_bucket}"

        async def one(rec: _Rec) -> None:
            assert rec.task.key is not None
            subject = self._key_subject(rec.task.key)
            m = await self._get_last(stream, subject)
            if m is None or _decode_keymark(m.data).task != rec.task.id:
                return
            ok = rec.task.status is TaskStatus.SUCCEEDED
            mark = _KeyMark(rec.task.id if ok else "", now, purged=ok)
            await self._cas(subject, _encode(mark), m.seq)

        await _gather(one(r) for r in recs if r.task.key is not None)

    async def _insert(self, tasks: Sequence[Task], now: float) -> dict[str, str]:
        """Store a validated batch: key markers, index messages, then records created only if
        absent. Returns the duplicates of held keys (see ``TaskQueue.enqueue``)."""
        dups: dict[str, str] = {}
        written: dict[str, int] = {}
        if keyed(tasks):
            holders, gone, written = await self._claim_keys(tasks, now)
            tasks, dups = plan_keys(tasks, holders, gone)
            if not tasks:
                return dups
        try:
            await self._insert_records(tasks, now)
        except BaseException as e:
            if written and not isinstance(e, _TRANSIENT):  # (a transient one runs again)
                await self._free_keys(written, now)
            raise
        return dups

    async def _insert_records(self, tasks: Sequence[Task], now: float) -> None:
        """Store a validated batch: index messages first, then records created only if absent."""
        batch = {t.id for t in tasks}
        outside = {d for t in tasks for d in t.depends_on if d not in batch}
        known = {i: r.task.status for i, (_, r) in (await self._get_recs(outside)).items()}
        plans = plan_enqueue(tasks, known)
        recs: list[_Rec] = []
        for given, (status, waiting) in zip(tasks, plans, strict=True):
            t = copy(given)
            t.status = status
            recs.append(
                _Rec(
                    task=t, waiting=list(waiting), finished_at=now if status is CANCELLED else None
                )
            )
        indexed = [(r, k) for r in recs if (k := _index_kind(r))]
        seqs = await self._publish_ok([self._index_item(r, k) for r, k in indexed])
        for (r, _), seq in zip(indexed, seqs, strict=True):
            r.index_seq = seq
        acks: list[api.PubAck | BaseException | None] = list(
            await self._publish(
                [(self._task_subject(r.task.id), _encode(r), {EXPECT_LAST: "0"}) for r in recs]
            )
        )
        failed = [(r, a) for r, a in zip(recs, acks, strict=True) if isinstance(a, BaseException)]
        if failed and _ATTEMPT.get() > 0:
            mine = await self._stored_before([r for r, a in failed if _lost_cas(a)])
            failed = [(r, a) for r, a in failed if r.task.id not in mine]
            acks = [a if r.task.id not in mine else None for r, a in zip(recs, acks, strict=True)]
        if failed:
            lost = next((a for _, a in failed if isinstance(a, _TRANSIENT)), None)
            if lost is not None:  # the call runs again, and takes what was stored as its own:
                raise lost  # so leave it all in place (a record may exist without its ack)
            created = [
                r
                for r, a in zip(recs, acks, strict=True)
                if a is not None and not isinstance(a, BaseException)
            ]
            await _gather(
                self._purge(f"KV_{self.tasks_bucket}", self._task_subject(r.task.id))
                for r in created
            )
            await self._delete_index(seqs)
            rec, error = failed[0]
            if isinstance(error, nats.js.errors.APIError) and error.err_code in WRONG_LAST_SEQUENCE:
                raise ConfigError(f"task id {rec.task.id!r} already exists")
            raise error
        expiring = [
            (f"{self._p}.ix.x.{_second(r.task.expires_at)}", r.task.id.encode(), None)
            for r in recs
            if r.task.expires_at is not None and not r.task.status.is_final
        ]
        await self._publish_ok(expiring)
        await self._register_dependents(recs, now)
        if any(k == "ready" for _, k in indexed):
            self._wake()
        etas = [r.task.eta for r, k in indexed if k == "due" and r.task.eta is not None]
        if etas:
            self._wake(min(etas))

    async def _stored_before(self, recs: Sequence[_Rec]) -> set[str]:
        """Ids of ``recs`` already stored as these very tasks (same payload and creation time):
        an earlier attempt of this enqueue wrote them, then lost its reply."""
        stored = await self._get_recs(r.task.id for r in recs)
        return {
            r.task.id
            for r in recs
            if (got := stored.get(r.task.id)) is not None
            and got[1].task.payload == r.task.payload
            and got[1].task.created_at == r.task.created_at
        }

    async def _register_dependents(self, recs: Sequence[_Rec], now: float) -> None:
        """Link waiting tasks to their dependencies; settle them if a dependency ended first."""
        children: dict[str, list[str]] = {}
        for r in recs:
            for d in r.waiting:
                children.setdefault(d, []).append(r.task.id)
        if not children:
            return

        async def link(dep: str, kids: list[str]) -> None:
            ended: list[TaskStatus] = []

            def add(rec: _Rec) -> str | None:
                if rec.task.status.is_final:
                    ended.append(rec.task.status)
                    return None
                rec.dependents.extend(k for k in kids if k not in rec.dependents)
                return ""

            await self._transition(dep, add)
            if ended:  # it ended between our look and the link: settle the children ourselves
                for kid in kids:
                    if ended[-1] is TaskStatus.SUCCEEDED:
                        await self._dep_succeeded(kid, dep, now)
                    else:
                        got = await self._dep_failed(kid, dep, now)
                        if got is not None:
                            await self._resolve([got], now)

        await _gather(link(d, kids) for d, kids in children.items())

    async def _dep_succeeded(self, child: str, dep: str, now: float) -> Task | None:
        """``dep`` succeeded: the child waits for one fewer; returns it if it waits no more."""
        released: list[bool] = []

        def change(rec: _Rec) -> str | None:
            released.clear()
            if rec.task.status is not PENDING or dep not in rec.waiting:
                return None
            rec.waiting.remove(dep)
            fate = on_dependency_end(TaskStatus.SUCCEEDED, others_left=bool(rec.waiting))
            if fate is not Cascade.RELEASE:
                return ""
            released.append(True)
            if ready_status(rec.task.eta, now) is QUEUED:
                rec.task.status = QUEUED
                return "ready"
            return "due"

        got = await self._transition(child, change)
        if got is None or not released:
            return None
        t = got[1].task
        if t.status is QUEUED:
            self._wake()
        elif t.eta is not None:
            self._wake(t.eta)
        return copy(t)

    async def _dep_failed(self, child: str, dep: str, now: float) -> _Rec | None:
        """``dep`` failed, was cancelled or expired: a child still waiting is cancelled."""

        def change(rec: _Rec) -> str | None:
            if rec.task.status is not PENDING or not rec.waiting:
                return None
            _end(rec, CANCELLED, now)
            return ""

        got = await self._transition(child, change)
        return None if got is None else got[1]

    async def _resolve(self, ended: Sequence[_Rec], now: float) -> Finished:
        """Release or cancel (transitively) the dependents of records that just became final."""
        out = Finished()
        stack = list(ended)
        while stack:
            rec = stack.pop()
            dep, status = rec.task.id, rec.task.status
            for child in rec.dependents:
                # RELEASE or WAIT is the child's to tell (its record knows what else it waits for)
                if on_dependency_end(status, others_left=True) is Cascade.CANCEL:
                    cancelled = await self._dep_failed(child, dep, now)
                    if cancelled is not None:
                        out.cancelled.append((copy(cancelled.task), dep))
                        stack.append(cancelled)
                elif status is TaskStatus.SUCCEEDED:
                    released = await self._dep_succeeded(child, dep, now)
                    if released is not None:
                        out.released.append(released)
        return out

    @_guard
    async def claim(
        self,
        worker: str,
        *,
        queues: Sequence[str] | None,
        limit: int,
        lease: float,
        now: float,
    ) -> list[Task]:
        names = check_claim(queues, limit, lease)
        if limit == 0 or names == []:
            return []
        subjects = await self._subjects(self.index_stream, f"{self._p}.ix.q.>")
        levels: dict[int, list[str]] = {}  # priority -> its ready subjects (named queues only)
        due: list[int] = []
        wanted = None if names is None else {token(q) for q in names}
        for subject in subjects:
            parts = subject.split(".")
            if parts[4] == "r":
                if wanted is None or parts[6] in wanted:
                    levels.setdefault(int(parts[5]), []).append(subject)
            elif parts[4] == "d":
                due.append(int(parts[5]))
        if due and min(due) / DUE_STEP <= now:
            for subject in await self._promote(sorted(b for b in due if b / DUE_STEP <= now), now):
                parts = subject.split(".")
                if wanted is None or parts[6] in wanted:
                    levels.setdefault(int(parts[5]), [])
                    if subject not in levels[int(parts[5])]:
                        levels[int(parts[5])].append(subject)
            due = [b for b in due if b / DUE_STEP > now]
        found = (min(due) + 1) / DUE_STEP if due else None
        # keep a due time a wake-up message told us of that this read does not show yet
        known = self._next_due if self._next_due is not None and self._next_due > now else None
        self._next_due = min((x for x in (found, known) if x is not None), default=None)
        claimed: list[Task] = []
        try:
            for priority in sorted(levels, reverse=True):
                if len(claimed) >= limit:
                    break
                # every queue: one wildcard walk gives stream order across all of them
                filters = [f"{self._p}.ix.q.r.{priority}.*"] if names is None else levels[priority]
                await self._claim_level(filters, worker, limit, lease, now, claimed)
        except (nats.errors.Error, asyncio.TimeoutError) as e:
            if not claimed:
                raise
            log.warning(
                "NATS %s: claim cut short (%s); keeping the %d tasks leased so far",
                masked(self.url), _plain_error(e), len(claimed),
                exc_info=log.isEnabledFor(logging.DEBUG),
            )  # fmt: skip
        return claimed

    async def _claim_level(
        self,
        filters: list[str],
        worker: str,
        limit: int,
        lease: float,
        now: float,
        claimed: list[Task],
    ) -> None:
        """Claim from one priority level: merge its subjects by stream sequence (FIFO)."""
        heads = await _gather(self._next_index(f, 1) for f in filters)
        while len(claimed) < limit:
            batch: list[_Msg] = []
            while len(batch) < limit - len(claimed):  # the next messages in stream order
                live = [i for i, h in enumerate(heads) if h is not None]
                if not live:
                    break
                i = min(live, key=lambda j: heads[j].seq)  # type: ignore[union-attr]
                head = heads[i]
                assert head is not None
                batch.append(head)
                heads[i] = await self._next_index(filters[i], head.seq + 1)
            if not batch:
                return
            recs = await self._get_recs(m.data.decode() for m in batch)
            stale: list[int] = []
            ready: list[tuple[tuple[int, _Rec], str, int]] = []
            retry = _ATTEMPT.get() > 0
            for m in batch:
                got = recs.get(m.data.decode())
                if got is not None and got[1].index_seq == _UNREADABLE:
                    got[1].index_seq = m.seq  # an unreadable record: its stand-in is claimed
                if retry and got is not None and _leased_by_lost_claim(m.seq, got[1], worker, now):
                    # an earlier attempt of this claim leased it, then lost the reply: ours
                    task_id = m.data.decode()
                    lease_subject = self._lease_subject(task_id, got[1].claim_no)
                    await self._publish_ok([(lease_subject, b"", None)])
                    self._remember(task_id, got)
                    claimed.append(copy(got[1].task))
                    stale.append(m.seq)
                    continue
                verdict = _ready_verdict(m.seq, got, now)
                if verdict == "stale":
                    stale.append(m.seq)
                elif verdict == "claim":
                    assert got is not None
                    ready.append((got, m.data.decode(), m.seq))
            taken = await _gather(self._take(g, i, s, worker, lease, now) for g, i, s in ready)
            for (_, _, seq), task in zip(ready, taken, strict=True):
                if task is not None:
                    claimed.append(task)
                    stale.append(seq)
            await self._delete_index(stale)

    async def _take(
        self, got: tuple[int, _Rec], task_id: str, seq: int, worker: str, lease: float, now: float
    ) -> Task | None:
        """Lease one ready task by compare-and-set; the lease index is published alongside."""

        def change(rec: _Rec) -> str | None:
            if rec.task.status is not QUEUED or rec.index_seq != seq:
                return None
            if rec.task.expires_at is not None and rec.task.expires_at <= now:
                return None
            t = rec.task
            t.status, t.worker, t.lease_until = RUNNING, worker, now + lease
            t.deliveries += 1
            rec.claim_no += 1
            return ""

        # the lease subject is written with the record (a reaper ignores a claim number ahead of
        # the record's, so it may land first)
        lease_subject = self._lease_subject(task_id, got[1].claim_no + 1)
        published, done = await asyncio.gather(
            self._publish_ok([(lease_subject, b"", None)]),
            self._transition(task_id, change, cached=got),
            return_exceptions=True,
        )
        if isinstance(done, BaseException):
            if not isinstance(published, BaseException):
                await self._unlease(lease_subject)
            raise done
        if isinstance(published, BaseException) and done is not None:
            await self._publish_ok([(lease_subject, b"", None)])  # once more, or fail the claim
        if done is None:
            await self._unlease(lease_subject)
            return None
        if done[1].claim_no != got[1].claim_no + 1:  # claimed after a retry with a newer record
            await self._publish_ok([(self._lease_subject(task_id, done[1].claim_no), b"", None)])
        self._remember(task_id, done)
        return copy(done[1].task)

    def _lease_subject(self, task_id: str, claim_no: int) -> str:
        return f"{self._p}.ix.l.{token(task_id)}.{claim_no}"

    def _remember(self, task_id: str, got: tuple[int, _Rec]) -> None:
        if len(self._held) > 10_000:
            self._held.clear()  # a worker that never reports back: start over
        self._held[task_id] = got

    async def _promote(self, buckets: list[int], now: float) -> list[str]:
        """Delayed tasks whose eta passed become QUEUED; returns their ready subjects."""
        subjects: list[str] = []
        for b in buckets:
            msgs = await self._read_index(f"{self._p}.ix.q.d.{b}")
            recs = await self._get_recs(m.data.decode() for m in msgs)
            done: list[int] = []
            for m in msgs:
                task_id = m.data.decode()
                got = recs.get(task_id)
                verdict = _due_verdict(m.seq, got, now)
                if verdict == "stale":
                    done.append(m.seq)
                elif verdict == "promote":

                    def change(rec: _Rec, seq: int = m.seq) -> str | None:
                        if _due_verdict(seq, (0, rec), now) != "promote":
                            return None
                        rec.task.status = QUEUED
                        return "ready"

                    moved = await self._transition(task_id, change, cached=got)
                    done.append(m.seq)
                    if moved is not None:
                        subjects.append(self._index_item(moved[1], "ready")[0])
            await self._delete_index(done)
        return subjects

    @_guard
    async def finish(
        self, worker: str, outcomes: Sequence[tuple[str, TaskStatus]], *, now: float
    ) -> Finished:
        check_outcomes(outcomes)

        retry = _ATTEMPT.get() > 0

        async def one(task_id: str, status: TaskStatus) -> _Rec | None:
            ended_before: list[_Rec] = []

            def change(rec: _Rec) -> str | None:
                ended_before.clear()
                if rec.task.status is not RUNNING or rec.task.worker != worker:
                    if retry and rec.task.status is status and rec.task.worker == worker:
                        ended_before.append(rec)  # our lost attempt ended it
                    return None
                _end(rec, status, now)
                return ""

            got = await self._transition(task_id, change, cached=self._held.pop(task_id, None))
            if got is None:
                if ended_before:
                    await self._unlease(self._lease_subject(task_id, ended_before[0].claim_no))
                    return ended_before[0]
                return None
            await self._unlease(self._lease_subject(task_id, got[1].claim_no))
            return got[1]

        ended = [r for r in await _gather(one(i, s) for i, s in outcomes) if r is not None]
        if not any(r.dependents for r in ended):
            return Finished()
        return await self._resolve(ended, now)

    async def _requeue(
        self,
        task_id: str,
        allowed: Callable[[_Rec], bool],
        edit: Callable[[Task], None],
        cached: tuple[int, _Rec] | None = None,
        *,
        eta: float | None = None,
    ) -> _Rec | None:
        """End a lease and put the task back: QUEUED, or PENDING until ``eta`` (wall clock)."""

        def change(rec: _Rec) -> str | None:
            t = rec.task
            if t.status is not RUNNING or not allowed(rec):
                return None
            edit(t)
            t.worker = None
            t.lease_until = None
            if eta is not None and ready_status(eta, time.time()) is PENDING:
                t.status = PENDING
                return "due"
            t.status = QUEUED
            return "ready"

        got = await self._transition(task_id, change, cached=cached)
        if got is None:
            return None
        await self._unlease(self._lease_subject(task_id, got[1].claim_no))
        t = got[1].task
        if t.status is QUEUED:
            self._wake()
        elif t.eta is not None:
            self._wake(t.eta)
        return got[1]

    @_guard
    async def retry(self, worker: str, task_id: str, *, eta: float, attempts: int) -> None:
        def edit(t: Task) -> None:
            t.attempts = attempts
            t.eta = eta

        # retry has no ``now``: the wall clock decides QUEUED or PENDING, as in the other backends
        await self._requeue(task_id, _held_by(worker), edit, self._held.pop(task_id, None), eta=eta)

    @_guard
    async def release(self, worker: str, task_ids: Sequence[str]) -> None:
        def edit(t: Task) -> None:
            t.deliveries = max(t.deliveries - 1, 0)

        for task_id in task_ids:  # in order: they go back to the line in this order
            await self._requeue(task_id, _held_by(worker), edit, self._held.pop(task_id, None))

    @_guard
    async def extend(self, worker: str, task_ids: Sequence[str], *, lease_until: float) -> None:
        async def one(task_id: str) -> None:
            def change(rec: _Rec) -> str | None:
                if rec.task.status is not RUNNING or rec.task.worker != worker:
                    return None
                rec.task.lease_until = lease_until
                return ""

            got = await self._transition(task_id, change, cached=self._held.get(task_id))
            if got is not None:
                self._remember(task_id, got)
            else:
                self._held.pop(task_id, None)

        await _gather(one(i) for i in task_ids)

    @_guard
    async def overrun(self, *, now: float, limit: int = 100) -> list[Overrun]:
        ids = [untoken(subject.split(".")[4])
               for subject in await self._subjects(self.index_stream, f"{self._p}.ix.l.>")]
        recs = await self._get_recs(dict.fromkeys(ids))
        lapsed = [
            Overrun(task_id=t.id, queue=t.queue, worker=t.worker, lease_until=t.lease_until)
            for _, rec in recs.values()
            if (t := rec.task).status is RUNNING and t.lease_until is not None
            and lease_lapsed(t.lease_until, now)
        ]
        return sorted(lapsed, key=lambda o: o.lease_until)[:limit]

    @_guard
    async def reap(self, *, now: float) -> Reaped:
        out = Reaped(requeued=[], dead=[])
        leases: list[tuple[str, int, str]] = []  # (task id, claim number, subject)
        for subject in await self._subjects(self.index_stream, f"{self._p}.ix.l.>"):
            parts = subject.split(".")
            leases.append((untoken(parts[4]), int(parts[5]), subject))
        if not leases:
            return out
        recs = await self._get_recs(i for i, _, _ in leases)
        ended: list[_Rec] = []
        for task_id, claim_no, subject in leases:
            got = recs.get(task_id)
            if got is None or got[1].task.status.is_final or got[1].claim_no > claim_no:
                await self._unlease(subject)  # that claim is over for good
                continue
            t = got[1].task
            if got[1].claim_no < claim_no or t.status is not RUNNING:
                continue  # a claim in progress, or a lease already given back
            if not lease_lapsed(t.lease_until, now):
                continue
            final = _on_lapse(t)
            if final is not QUEUED:

                def change(rec: _Rec, n: int = claim_no, final: TaskStatus = final) -> str | None:
                    x = rec.task
                    if x.status is not RUNNING or rec.claim_no != n:
                        return None
                    if not lease_lapsed(x.lease_until, now):
                        return None
                    _end(rec, final, now)
                    return ""

                done = await self._transition(task_id, change, cached=got)
                if done is not None:
                    await self._unlease(subject)
                    ended.append(done[1])
                    if final is CANCELLED:
                        out.cancelled.append((copy(done[1].task), task_id))
                    else:
                        out.dead.append(copy(done[1].task))
            else:
                lapsed = await self._requeue(
                    task_id, _lapsed(claim_no, now), _unchanged, cached=got
                )
                if lapsed is not None:
                    out.requeued.append(copy(lapsed.task))
        if ended:
            out.cancelled.extend((await self._resolve(ended, now)).cancelled)
        return out

    @_guard
    async def expire(self, *, now: float) -> list[Task]:
        expired: list[_Rec] = []
        for subject in await self._subjects(self.index_stream, f"{self._p}.ix.x.>"):
            if int(subject.split(".")[-1]) > now:
                continue
            msgs = await self._read_index(subject)
            recs = await self._get_recs(m.data.decode() for m in msgs)
            done: list[int] = []
            for m in msgs:
                got = recs.get(m.data.decode())
                if got is None or got[1].task.status.is_final:
                    done.append(m.seq)
                    continue

                def change(rec: _Rec) -> str | None:
                    if not expires(rec.task.status, rec.task.expires_at, now):
                        return None
                    _end(rec, TaskStatus.EXPIRED, now)
                    return ""

                ended = await self._transition(m.data.decode(), change, cached=got)
                if ended is not None:
                    expired.append(ended[1])
                    done.append(m.seq)
            await self._delete_index(done)
        out = [copy(r.task) for r in expired]
        if any(r.dependents for r in expired):
            out.extend(t for t, _ in (await self._resolve(expired, now)).cancelled)
        return out

    @_guard
    async def cancel(self, task_ids: Sequence[str], *, now: float) -> dict[str, TaskStatus]:
        before: dict[str, TaskStatus] = {}
        ended: list[_Rec] = []
        for task_id in dict.fromkeys(task_ids):
            seen: list[TaskStatus] = []

            def change(rec: _Rec, seen: list[TaskStatus] = seen) -> str | None:
                seen[:] = [rec.task.status]
                if rec.task.status in (QUEUED, PENDING):
                    _end(rec, CANCELLED, now)
                    return ""
                if rec.task.status is RUNNING and not rec.task.cancel_requested:
                    rec.task.cancel_requested = True
                    return ""
                return None

            got = await self._transition(task_id, change)
            if seen:
                before[task_id] = seen[0]
            if got is not None and got[1].task.status is CANCELLED:
                ended.append(got[1])
        if any(r.dependents for r in ended):
            for t, _ in (await self._resolve(ended, now)).cancelled:
                before[t.id] = PENDING
        return before

    @_guard
    async def get_task(self, task_id: str) -> Task | None:
        got = await self._get_rec(task_id)
        return None if got is None else got[1].task

    @_guard
    async def statuses(self, task_ids: Sequence[str]) -> dict[str, TaskStatus]:
        return {i: r.task.status for i, (_, r) in (await self._get_recs(task_ids)).items()}

    @_guard
    async def cancel_requests(self, task_ids: Sequence[str]) -> list[str]:
        recs = await self._get_recs(task_ids)
        return [
            i
            for i in task_ids
            if (g := recs.get(i)) is not None
            and g[1].task.cancel_requested
            and g[1].task.status is RUNNING
        ]

    async def _all_recs(self) -> list[tuple[str, _Rec]]:
        msgs = await self._scan(
            f"KV_{self.tasks_bucket}", f"$KV.{self.tasks_bucket}.>", last_per_subject=True
        )
        out = []
        for m in msgs:
            if m.headers and m.headers.get(KV_OPERATION) in ("DEL", "PURGE"):
                continue
            try:
                out.append((m.subject, _decode_rec(m.data)))
            except Exception as exc:  # counted once a claim has written its stand-in over it
                log.warning("ignoring unreadable task record %s: %s", m.subject, type(exc).__name__)
        return out

    @_guard
    async def counts(self) -> dict[str, dict[str, int]]:
        """A scan of every task record: for ``health()``, not for a hot loop."""
        out: dict[str, dict[str, int]] = {}
        for _, rec in await self._all_recs():
            by_status = out.setdefault(rec.task.queue, {})
            by_status[rec.task.status.value] = by_status.get(rec.task.status.value, 0) + 1
        return out

    @_guard
    async def oldest_queued(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for _, rec in await self._all_recs():
            t = rec.task
            if t.status is QUEUED and (t.queue not in out or t.created_at < out[t.queue]):
                out[t.queue] = t.created_at
        return out

    @_guard
    async def purge(self, *, before: float) -> int:
        gone = [
            (subject, rec)
            for subject, rec in await self._all_recs()
            if rec.task.status.is_final and rec.finished_at is not None and rec.finished_at < before
        ]
        await _gather(self._purge(f"KV_{self.tasks_bucket}", s) for s, _ in gone)
        await self._forget_keys([r for _, r in gone], time.time())
        return len(gone)

    # --- schedules ----------------------------------------------------------------------------------------
    def _schedule_subject(self, schedule_id: str) -> str:
        return f"$KV.{self.meta_bucket}.s.{token(schedule_id)}"

    async def _get_schedule(self, schedule_id: str) -> tuple[int, Schedule] | None:
        m = await self._get_last(f"KV_{self.meta_bucket}", self._schedule_subject(schedule_id))
        return None if m is None else (m.seq, _decode_schedule(m.data))

    @_guard
    async def add_schedule(self, schedule: Schedule) -> None:
        await self._publish_ok([(self._schedule_subject(schedule.id), _encode(schedule), None)])

    @_guard
    async def get_schedules(self) -> list[Schedule]:
        msgs = await self._scan(f"KV_{self.meta_bucket}", f"$KV.{self.meta_bucket}.s.>",
                                last_per_subject=True)  # fmt: skip
        return [_decode_schedule(m.data) for m in msgs if m.data]

    @_guard
    async def set_schedule_paused(
        self, schedule_id: str, paused: bool, next_run: float | None
    ) -> bool:
        while True:
            got = await self._get_schedule(schedule_id)
            if got is None:
                return False
            rev, s = got
            s.paused = paused
            if not paused or next_run is not None:
                s.next_run = next_run
            if await self._cas(self._schedule_subject(schedule_id), _encode(s), rev) is not None:
                return True

    @_guard
    async def delete_schedule(self, schedule_id: str) -> bool:
        if await self._get_schedule(schedule_id) is None:
            return False
        await self._purge(f"KV_{self.meta_bucket}", self._schedule_subject(schedule_id))
        return True

    @_guard
    async def fire_schedule(
        self,
        schedule_id: str,
        *,
        expected_next_run: float,
        next_run: float | None,
        now: float,
        task: Task,
    ) -> bool:
        """The slot is taken by compare-and-set on the schedule entry, then the task is stored."""
        check_new_tasks([task])
        while True:
            got = await self._get_schedule(schedule_id)
            if got is None:
                return False
            rev, s = got
            if not slot_fires(s, expected_next_run):
                return False
            if await self._get_rec(task.id) is not None:
                raise ConfigError(f"task id {task.id!r} already exists")
            s = fired(s, next_run=next_run, now=now, task_id=task.id)
            if await self._cas(self._schedule_subject(schedule_id), _encode(s), rev) is not None:
                break
        await self._insert([task], now)
        return True

    # --- workers -------------------------------------------------------------------------------------------
    def _worker_subject(self, worker_id: str) -> str:
        return f"$KV.{self.meta_bucket}.w.{token(worker_id)}"

    @_guard
    async def heartbeat(self, info: WorkerInfo) -> None:
        await self._publish_ok([(self._worker_subject(info.id), _encode(info), None)])

    @_guard
    async def remove_worker(self, worker_id: str) -> None:
        await self._purge(f"KV_{self.meta_bucket}", self._worker_subject(worker_id))

    @_guard
    async def workers(self) -> list[WorkerInfo]:
        msgs = await self._scan(f"KV_{self.meta_bucket}", f"$KV.{self.meta_bucket}.w.>",
                                last_per_subject=True)  # fmt: skip
        return sorted((_decode_worker(m.data) for m in msgs if m.data), key=lambda w: w.id)

    # --- wake-ups ----------------------------------------------------------------------------------------------
    async def wait_for_tasks(self, timeout: float) -> None:
        """Wake on a wake-up from any process, or when the earliest delayed task falls due."""
        if self._next_due is not None:
            timeout = min(timeout, max(self._next_due - time.time(), 0.0))
        await super().wait_for_tasks(timeout)

    # --- results -------------------------------------------------------------------------------------------
    @_guard
    async def put_results(self, results: Sequence[TaskResult]) -> None:
        items: list[tuple[str, bytes, dict[str, str] | None]] = []
        for r in results:
            if not isinstance(r, TaskResult):
                raise ConfigError(f"results must hold TaskResult, got {type(r).__name__}")
            tid = token(r.task_id)
            items.append((self._result_subject(r.task_id), _encode(r), None))
            if r.key is not None:
                items.append((f"{self._p}.ix.k.k{r.key.encode().hex()}.{tid}", b"", None))
            if r.expires_at is not None:
                items.append((f"{self._p}.ix.e.{_second(r.expires_at)}", r.task_id.encode(), None))
        for i in range(0, len(items), 1000):
            await self._publish_ok(items[i : i + 1000])

    async def _get_result(self, task_id: str) -> TaskResult | None:
        m = await self._get_last(f"KV_{self.results_bucket}", self._result_subject(task_id))
        return None if m is None else _decode_result(m.data)

    @_guard
    async def get_result(self, task_id: str) -> TaskResult | None:
        return await self._get_result(task_id)

    @_guard
    async def get_results(self, task_ids: Sequence[str]) -> dict[str, TaskResult]:
        ids = list(dict.fromkeys(task_ids))
        got = await _gather(self._get_result(i) for i in ids)
        return {i: r for i, r in zip(ids, got, strict=True) if r is not None}

    @_guard
    async def find_results(self, *, key_prefix: str) -> list[TaskResult]:
        if not isinstance(key_prefix, str):
            raise ConfigError(f"key_prefix must be a str, got {type(key_prefix).__name__}")
        want = key_prefix.encode().hex()
        found: dict[str, str] = {}  # task id -> index subject
        for subject in await self._subjects(self.index_stream, f"{self._p}.ix.k.>"):
            parts = subject.split(".")
            if parts[4][1:].startswith(want):
                found[untoken(parts[5])] = subject
        got = await _gather(self._get_result(i) for i in found)
        out: list[TaskResult] = []
        stale: list[str] = []
        for subject, r in zip(found.values(), got, strict=True):
            if r is None or r.key is None or f"k{r.key.encode().hex()}" != subject.split(".")[4]:
                stale.append(subject)  # deleted, or overwritten under another key
            if r is not None and r.key is not None and r.key.startswith(key_prefix):
                out.append(r)
        await _gather(self._purge(self.index_stream, s) for s in stale)
        out.sort(key=lambda r: r.key or "")
        return out

    @_guard
    async def delete_results(self, task_ids: Sequence[str]) -> int:
        found = await self.get_results(task_ids)
        await _gather(self._delete_result(i) for i in found)
        return len(found)

    async def _delete_result(self, task_id: str) -> None:
        await self._purge(f"KV_{self.results_bucket}", self._result_subject(task_id))
        await self._purge(self.index_stream, f"{self._p}.ix.k.*.{token(task_id)}")

    @_guard
    async def purge_results(self, *, now: float) -> int:
        gone: set[str] = set()
        for subject in await self._subjects(self.index_stream, f"{self._p}.ix.e.>"):
            second = int(subject.split(".")[-1])
            if second > now:
                continue
            msgs = await self._read_index(subject)
            results = await self.get_results([m.data.decode() for m in msgs])
            done: list[int] = []
            for m in msgs:
                r = results.get(m.data.decode())
                if r is None or r.expires_at is None or _second(r.expires_at) != second:
                    done.append(m.seq)  # gone, or its expiry changed
                elif r.expires_at <= now:
                    gone.add(r.task_id)
                    done.append(m.seq)
            await _gather(self._delete_result(i) for i in gone)
            await self._delete_index(done)
        return len(gone)

    # --- events -------------------------------------------------------------------------------------------
    @_guard
    async def append_events(self, events: Sequence[TaskEvent]) -> None:
        items: list[tuple[str, bytes, dict[str, str] | None]] = []
        for e in events:
            if not isinstance(e, TaskEvent):
                raise ConfigError(f"events must hold TaskEvent, got {type(e).__name__}")
            data = _encode(e)
            msg_id = hashlib.blake2b(data, digest_size=16).hexdigest()  # same on a retry
            items.append((f"{self._p}.ev.{token(e.task_id)}", data, {MSG_ID: msg_id}))
        for i in range(0, len(items), 1000):
            await self._publish_ok(items[i : i + 1000])
        nc = self._nc
        if nc is not None and items:  # live subscriptions elsewhere read the stream now
            job = asyncio.ensure_future(_publish_quietly(nc, f"{self._p}.evwake", b""))
            self._jobs.add(job)
            job.add_done_callback(self._jobs.discard)

    async def wait_for_events(self, timeout: float) -> None:
        """Return when any process's ``append_events`` published on ``<ns>.evwake`` (a core
        subject, not stored; subscribed on the first wait, so workers never receive it)."""
        nc = self._nc
        if self._events_sub is None and nc is not None:
            async def appended(msg: Msg) -> None:
                self._events_appended.set()

            self._events_sub = await nc.subscribe(f"{self._p}.evwake", cb=appended)
        await self._events_appended.wait(timeout)

    @_guard
    async def query_events(
        self,
        *,
        task_id: str | None = None,
        since: float | None = None,
        types: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> list[TaskEvent]:
        """``since`` is inclusive. Reading starts ``EVENT_CLOCK_SLACK`` s before ``since`` on the
        server's clock, so an event stamped more than that ahead of the server is not found."""
        subject = f"{self._p}.ev.{token(task_id) if task_id is not None else '>'}"
        start = None if since is None else since - EVENT_CLOCK_SLACK
        msgs = await self._scan(self.events_stream, subject, start_time=start)
        events = [_decode_event(m.data) for m in msgs]
        if since is not None:
            events = [e for e in events if e.timestamp >= since]
        if types is not None:
            wanted = {str(t) for t in ([types] if isinstance(types, str) else types)}
            events = [e for e in events if e.type in wanted]
        events.sort(key=lambda e: e.timestamp)  # stable: ties keep append (stream) order
        return events if limit is None else events[:limit]

    @_guard
    async def purge_events(self, *, before: float) -> int:
        msgs = await self._scan(self.events_stream, f"{self._p}.ev.>")
        old = [m.metadata.sequence.stream for m in msgs if _decode_event(m.data).timestamp < before]
        await _gather(self._delete_msg(self.events_stream, s) for s in old)
        return len(old)

    # --- blobs ----------------------------------------------------------------------------------------------
    def _blob_meta_subject(self, name: str) -> str:
        return f"$O.{self.blobs_bucket}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"

    def _blob_chunk_subject(self, nuid: str) -> str:
        return f"$O.{self.blobs_bucket}.C.{nuid}"

    def _blob_owner_subject(self, digest: str, owner: str) -> str:
        return f"$KV.{self.blob_owners_bucket}.{digest}.{token(owner)}"

    async def _blob_meta(self, name: str) -> tuple[int, dict[str, Any]] | None:
        """The meta message of object ``name``: its sequence and its fields (None: none)."""
        m = await self._get_last(self.blobs_stream, self._blob_meta_subject(name))
        return None if m is None else (m.seq, json.loads(m.data))

    async def _blob_metas(self, digests: Sequence[str]) -> dict[str, tuple[int, dict[str, Any]]]:
        """The meta messages of the objects stored (and not deleted) under these digests."""
        got = await _gather(self._blob_meta(d) for d in digests)
        return {d: g for d, g in zip(digests, got, strict=True) if g is not None and not g[1].get("deleted")}

    async def _own(self, owners: dict[str, list[str]], now: float) -> None:
        at = repr(float(now)).encode()
        items = [(self._blob_owner_subject(d, o), at, None) for o, ds in owners.items() for d in ds]
        for i in range(0, len(items), 1000):
            await self._publish_ok(items[i : i + 1000])

    @_guard
    async def put_blobs(self, blobs: Mapping[str, Blob], owner: str, *, now: float) -> int:
        given = check_blobs(blobs, owner)
        if not given:
            return 0
        await self._own({owner: list(given)}, now)  # first: a sweep now sees the owner
        found = await _gather(self._blob_meta(d) for d in given)
        written = 0
        for (d, data), meta in zip(given.items(), found, strict=True):
            if meta is None or meta[1].get("deleted"):
                written += await self._put_blob(d, data, now, 0 if meta is None else meta[0])
        return written

    async def _put_blob(self, digest: str, data: Blob, now: float, last: int) -> int:
        """Chunks, then the meta message by compare-and-set on ``last`` (0: none yet); bytes
        written (0 when another process stored the blob first: our chunks are purged)."""
        nc = self._nc
        size = min(BLOB_CHUNK, max(1024, (nc.max_payload if nc is not None else 0) // 2))
        nuid = secrets.token_hex(11)
        subject = self._blob_chunk_subject(nuid)
        view = memoryview(data)
        n = nbytes(data)
        sha = hashlib.sha256()
        chunks = 0
        try:
            for start in range(0, n, size * BLOB_WINDOW):
                items: list[tuple[str, bytes, dict[str, str] | None]] = []
                for i in range(start, min(n, start + size * BLOB_WINDOW), size):
                    piece = bytes(view[i : i + size])
                    sha.update(piece)
                    items.append((subject, piece, None))
                await self._publish_ok(items)
                chunks += len(items)
            info = api.ObjectInfo(
                name=digest, bucket=self.blobs_bucket, nuid=nuid, size=n,
                mtime=datetime.datetime.fromtimestamp(now, datetime.timezone.utc).isoformat(),
                chunks=chunks,
                digest="SHA-256=" + base64.urlsafe_b64encode(sha.digest()).decode(),
                options=api.ObjectMetaOptions(max_chunk_size=size),
            )  # fmt: skip
            seq = await self._cas(
                self._blob_meta_subject(digest), json.dumps(info.as_dict()).encode(), last
            )
        except BaseException:
            await self._purge_quietly(subject)
            raise
        if seq is None:  # stored by someone else meanwhile: theirs is the blob
            await self._purge_quietly(subject)
            return 0
        return n

    async def _purge_quietly(self, subject: str) -> None:
        try:
            await self._purge(self.blobs_stream, subject)
        except (nats.errors.Error, asyncio.TimeoutError) as e:
            log.debug("NATS %s: purging %s failed: %s", masked(self.url), subject, e)

    @_guard
    async def add_blob_owners(self, owners: Mapping[str, Sequence[str]], *, now: float) -> None:
        await self._own(check_owners(owners), now)

    @_guard
    async def get_blobs(self, digests: Sequence[str]) -> dict[str, bytes]:
        ds = check_digests(digests)
        got = await _gather(self._read_blob(d) for d in ds)
        return {d: data for d, data in zip(ds, got, strict=True) if data is not None}

    async def _read_blob(self, digest: str) -> bytes | None:
        """A blob's bytes (checked against the digest in its meta); a blob a sweep is taking
        away is read from its trash name."""
        obs = nats.js.object_store.ObjectStore(self.blobs_bucket, self.blobs_stream, self.js)
        for name in (digest, TRASH + digest):
            meta = await self._blob_meta(name)
            if meta is None or meta[1].get("deleted"):
                continue
            out = io.BytesIO()
            # chunks purged under a reader (a sweep) would leave it waiting: bounded
            wait = self.timeout * 4 + int(meta[1].get("size") or 0) / 1e6
            try:
                await asyncio.wait_for(obs.get(name, writeinto=out), wait)
            except nats.js.errors.ObjectNotFoundError:
                continue
            return out.getvalue()
        return None

    @_guard
    async def missing_blobs(self, digests: Sequence[str]) -> set[str]:
        ds = check_digests(digests)
        return set(ds).difference(await self._blob_metas(ds))

    async def _live_owners(self, owners: set[str]) -> set[str]:
        tasks = {tid: o for o in owners if (tid := task_owner(o)) is not None}
        results = {rid: o for o in owners if (rid := result_owner(o)) is not None}
        recs = await self._get_recs(tasks)
        live = {tasks[t] for t, (_, r) in recs.items() if r.task.status.value in LIVE_TASK_STATUSES}
        ids = list(results)
        there = await _gather(
            self._get_last(f"KV_{self.results_bucket}", self._result_subject(i)) for i in ids
        )
        live.update(results[i] for i, m in zip(ids, there, strict=True) if m is not None)
        return live

    @_guard
    async def sweep_blobs(self, *, older_than: float) -> int:
        # blobs first, then owners: a blob listed here had its first owner key written before
        metas = await self._scan(
            self.blobs_stream, f"$O.{self.blobs_bucket}.M.>", last_per_subject=True
        )
        stored: dict[str, float] = {}  # digest -> created at
        trash: list[tuple[str, dict[str, Any]]] = []
        stale = time.time() - TRASH_STALE
        for m in metas:
            info = json.loads(m.data)
            name = str(info.get("name", ""))
            if info.get("deleted"):
                continue
            if name.startswith(TRASH):
                with contextlib.suppress(ValueError):
                    if float(info.get("description") or 0) < stale:
                        trash.append((name[len(TRASH) :], info))
                continue
            stored[name] = _created(info)
        keys = await self._scan(
            f"KV_{self.blob_owners_bucket}", f"$KV.{self.blob_owners_bucket}.>",
            last_per_subject=True,
        )  # fmt: skip
        owned: set[str] = set()
        old: list[tuple[str, str, str]] = []  # (subject, digest, owner)
        for m in keys:
            if m.headers and m.headers.get(KV_OPERATION) in ("DEL", "PURGE"):
                continue
            parts = m.subject.split(".")
            if len(parts) != 4:
                continue
            d, owner = parts[2], untoken(parts[3])
            try:
                at = float(m.data)
            except ValueError:
                at = 0.0
            if at >= older_than:
                owned.add(d)
            else:
                old.append((m.subject, d, owner))
        live = await self._live_owners({o for _, _, o in old})
        dead = []
        for subject, d, owner in old:
            if owner in live:
                owned.add(d)
            else:
                dead.append(subject)
        await _gather(self._purge(f"KV_{self.blob_owners_bucket}", s) for s in dead)
        doomed: list[tuple[str, dict[str, Any] | None]] = [
            (d, None) for d, created in sorted(stored.items())
            if created < older_than and d not in owned
        ]  # fmt: skip
        doomed.extend(trash)
        return sum(await _gather(self._take_blob(d, info) for d, info in doomed))

    async def _take_blob(self, digest: str, trashed: dict[str, Any] | None) -> int:
        """Delete one blob nobody owned when the sweep looked: its meta moves to the trash
        name first, and back when an owner was marked meanwhile. 1 when it is gone."""
        js, home = self.js, self._blob_meta_subject(digest)
        if trashed is None:
            meta = await self._blob_meta(digest)
            if meta is None or meta[1].get("deleted"):
                return 0
            trashed = dict(meta[1], name=TRASH + digest, description=repr(time.time()))
            await self._publish_ok(
                [(self._blob_meta_subject(TRASH + digest), json.dumps(trashed).encode(),
                  {api.Header.ROLLUP: "sub"})]
            )  # fmt: skip
            await self._purge(self.blobs_stream, home)
        else:  # a crashed sweep's: unless it never took the blob away
            meta = await self._blob_meta(digest)
            if meta is not None and meta[1].get("nuid") == trashed.get("nuid"):
                await self._purge(self.blobs_stream, self._blob_meta_subject(TRASH + digest))
                return 0
        chunks = self._blob_chunk_subject(str(trashed.get("nuid")))
        owners = await self._subjects(
            f"KV_{self.blob_owners_bucket}", f"$KV.{self.blob_owners_bucket}.{digest}.>"
        )
        gone = 0
        if owners:  # a put owns it now: it stays (unless that put stored it again itself)
            back = dict(trashed, name=digest, description=None)
            if await self._cas(home, json.dumps(back).encode(), 0) is None:
                await js.purge_stream(self.blobs_stream, subject=chunks)
        else:
            await js.purge_stream(self.blobs_stream, subject=chunks)
            gone = 1
        await self._purge(self.blobs_stream, self._blob_meta_subject(TRASH + digest))
        return gone


# --- record rules (pure) -----------------------------------------------------------------------------


def _index_kind(rec: _Rec) -> str:
    """The index a freshly stored record needs: ``ready``, ``due`` or none (``""``)."""
    t = rec.task
    if t.status is QUEUED:
        return "ready"
    if t.status is PENDING and not rec.waiting and t.eta is not None:
        return "due"
    return ""


def _ready_verdict(seq: int, got: tuple[int, _Rec] | None, now: float) -> str:
    """What a claimer does with ready-index message ``seq``: claim, skip or delete (stale)."""
    if got is None:
        return "skip"  # being stored right now (or an orphan of a crashed enqueue)
    rec = got[1]
    if rec.task.status.is_final or seq < rec.index_seq:
        return "stale"
    if seq > rec.index_seq:
        return "skip"  # published for a change not yet written (or that lost its race)
    if rec.task.status is not QUEUED:
        return "stale"
    if not claimable(QUEUED, eta=None, expires_at=rec.task.expires_at, waiting=False, now=now):
        return "skip"  # expired: expire() ends it; another clock may still claim it
    return "claim"


def _leased_by_lost_claim(seq: int, rec: _Rec, worker: str, now: float) -> bool:
    """Did a claim by ``worker`` at ``now`` lease this record from index message ``seq``?"""
    t = rec.task
    return (
        t.status is RUNNING
        and t.worker == worker
        and rec.index_seq == seq
        and t.lease_until is not None
        and t.lease_until > now
    )


def _due_verdict(seq: int, got: tuple[int, _Rec] | None, now: float) -> str:
    """What a claimer does with due-index message ``seq``: promote, skip or delete (stale)."""
    if got is None:
        return "skip"
    rec = got[1]
    if rec.task.status.is_final or seq < rec.index_seq:
        return "stale"
    if seq > rec.index_seq:
        return "skip"
    if rec.task.status is not PENDING or rec.waiting:
        return "stale"
    if not claimable(PENDING, eta=rec.task.eta, expires_at=None, waiting=False, now=now):
        return "skip"  # not due yet
    return "promote"


def _created(info: dict[str, Any]) -> float:
    """When a blob was stored: its meta's ``mtime`` (0 when unreadable: old enough)."""
    try:
        return datetime.datetime.fromisoformat(str(info.get("mtime"))).timestamp()
    except ValueError:
        return 0.0


def _lost_cas(ack: object) -> bool:
    return isinstance(ack, nats.js.errors.APIError) and ack.err_code in WRONG_LAST_SEQUENCE


def _end(rec: _Rec, status: TaskStatus, now: float) -> None:
    rec.task.status = status
    rec.task.lease_until = None
    rec.finished_at = now
    rec.waiting = []


def _held_by(worker: str) -> Callable[[_Rec], bool]:
    return lambda rec: rec.task.worker == worker


def _lapsed(claim_no: int, now: float) -> Callable[[_Rec], bool]:
    """Still the same claim, its lease still lapsed, not cancelled, deliveries left?"""

    def check(rec: _Rec) -> bool:
        t = rec.task
        return rec.claim_no == claim_no and lease_lapsed(t.lease_until, now) and _on_lapse(t) is QUEUED

    return check


def _on_lapse(t: Task) -> TaskStatus:
    """The lifecycle's verdict on a task whose lease lapsed."""
    return on_lapse(
        cancel_requested=t.cancel_requested, deliveries=t.deliveries, max_deliveries=t.max_deliveries
    )


def _unchanged(t: Task) -> None:
    """A requeue after a lapsed lease keeps the delivery count."""


async def _gather(aws: Iterable[Awaitable[R]]) -> list[R]:
    """Run awaitables concurrently, at most ``BATCH`` at a time, results in order."""
    items = list(aws)
    out: list[R] = []
    for i in range(0, len(items), BATCH):
        out.extend(await asyncio.gather(*items[i : i + BATCH]))
    return out


async def _close_quietly(nc: NATS) -> None:
    try:
        await nc.close()
    except Exception:  # closing a half-open connection: nothing left to save
        log.debug("closing NATS connection failed", exc_info=True)


async def _publish_quietly(nc: NATS, subject: str, data: bytes) -> None:
    try:
        await nc.publish(subject, data)
    except nats.errors.Error:
        log.debug("wake-up publish failed", exc_info=True)  # workers poll anyway


def _why(e: BaseException) -> str:
    """Why a connection failed, in plain words."""
    if isinstance(e, ConnectionRefusedError):
        return "connection refused (is nats-server running and listening there?)"
    if isinstance(e, (asyncio.TimeoutError, nats.errors.TimeoutError)):
        return "no answer in time (wrong host or port, or a firewall?)"
    if isinstance(e, nats.errors.NoServersError):
        return "no server reachable"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    if isinstance(e, nats.errors.Error) and "authorization" in str(e).lower():
        return "authorization failed (check user and password)"
    return str(e) or type(e).__name__


__all__ = ["NatsBackend", "parse_url", "token", "untoken"]
