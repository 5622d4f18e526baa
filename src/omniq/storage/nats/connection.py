"""The NATS connection and its JetStream primitives (``JetStream``), shared by every part of the
backend."""

from __future__ import annotations

import asyncio
import datetime
import json
import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

import anyio
import msgspec
import nats.errors
import nats.js.errors
import nats.js.object_store
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from ...errors import StorageError
from ...logs import get_logger
from ...models import TaskResult
from ..base import (
    Backend,
    Signal,
    masked,
)
from .guard import (
    TRANSIENT,
    ConnectionLost,
    close_quietly,
    gather,
    guarded,
    plain_error,
    why_unreachable,
)
from .records import (
    DEFAULT_SERVER,
    EXPECT_LAST,
    KV_OPERATION,
    RECONNECT_TIMEOUT,
    RECONNECT_WAIT,
    STREAM_NAME_IN_USE,
    WRONG_LAST_SEQUENCE,
    Rec,
    decode_result,
    parse_url,
    token,
)

log = get_logger("omniq.storage.nats")

class StoredMsg(msgspec.Struct):
    """An index or event message as read back: sequence, subject, data."""

    seq: int
    subject: str
    data: bytes
    headers: dict[str, str] | None = None


class JetStream(Backend):
    """One NATS connection and the JetStream primitives every part of the backend uses: connect
    and reconnect, streams and buckets, publish with acks, compare-and-set, direct gets, scans.
    The parts (tasks, leases, schedules, results, events, blobs) build on it; ``NatsBackend``
    is all of them on one connection."""
    cross_process_wakeups = True

    _wakeup: anyio.Event  # the task queue's wake-up (``TaskQueue.__init__``)

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
        self._held: dict[str, tuple[int, Rec]] = {}  # our leases: revision + record we wrote
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
                masked(self.url), f" ({why_unreachable(cause)})" if cause is not None else "",
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
            await close_quietly(nc)
            raise StorageError(
                f"cannot connect to NATS at {masked(self.url)}: {why_unreachable(cause)}"
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
            await close_quietly(nc)
            if isinstance(e, (nats.errors.Error, asyncio.TimeoutError)):
                raise StorageError(
                    f"NATS {masked(self.url)}: cannot set up JetStream storage: {plain_error(e)}"
                ) from e
            raise

    def _fail_in_flight(self, nc: NATS) -> None:
        """The connection dropped: replies awaited on it will not come; fail them now (their
        calls are run again after the reconnect) instead of letting each time out."""
        lost = ConnectionLost()
        for fut in list(self._replies.values()):
            if not fut.done():
                fut.set_result(lost)
        for fut in list(getattr(nc, "_resp_map", {}).values()):  # nats-py's request futures
            if isinstance(fut, asyncio.Future) and not fut.done():
                fut.set_exception(ConnectionLost())

    def _may_retry(self, e: BaseException, disconnects: int) -> bool:
        """Run a failed call again? Only for a transient error of a connected backend whose
        connection dropped during the call, is down, or came back moments ago."""
        nc = self._nc
        if nc is None or self._closing or nc.is_closed or not isinstance(e, TRANSIENT):
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
            await close_quietly(nc)

    @guarded
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

    async def _get_result(self, task_id: str) -> TaskResult | None:
        m = await self._get_last(f"KV_{self.results_bucket}", self._result_subject(task_id))
        return None if m is None else decode_result(m.data)

    async def _get_last(self, stream: str, subject: str) -> StoredMsg | None:
        try:
            m = await self.js.get_msg(stream, subject=subject, direct=True)
        except nats.js.errors.NotFoundError:
            return None
        headers = m.headers or None
        if headers and headers.get(KV_OPERATION) in ("DEL", "PURGE"):
            return None
        return StoredMsg(m.seq or 0, m.subject or subject, m.data or b"", headers)

    async def _next_index(self, subject: str, start: int) -> StoredMsg | None:
        """The first index message at or after ``start`` matching ``subject`` (wildcards ok)."""
        try:
            m = await self.js.get_msg(
                self.index_stream, seq=max(start, 1), subject=subject, next=True, direct=True
            )
        except nats.js.errors.NotFoundError:
            return None
        return StoredMsg(m.seq or 0, m.subject or "", m.data or b"")

    async def _read_index(self, subject: str) -> list[StoredMsg]:
        """Every index message of ``subject``, in order (one request each: for small sets)."""
        out: list[StoredMsg] = []
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
        await gather(self._delete_msg(self.index_stream, s) for s in seqs)

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

    async def _on_wake(self, msg: Msg) -> None:
        """A wake-up published by any process (the task queue's: see ``tasks.py``)."""
