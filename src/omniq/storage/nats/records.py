"""Names, records and the pure rules of the NATS backend: the URL, subject tokens, a task's
stored record (``Rec``) and what a reader does with an index message. No I/O."""

from __future__ import annotations

import base64
import datetime
import math
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec
import nats.errors
import nats.js.errors
import nats.js.object_store

from ...errors import ConfigError
from ...lifecycle import (
    PENDING,
    QUEUED,
    RUNNING,
    claimable,
    lease_lapsed,
    on_lapse,
)
from ...models import Schedule, Task, TaskEvent, TaskResult, TaskStatus
from .._codec import decoder
from ..base import WorkerInfo, masked
from ..enqueue import KeyMark

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


class Rec(msgspec.Struct, array_like=True):
    """A stored task: the Task plus what only the queue needs."""

    task: Task
    index_seq: int = 0  # the ready/due index message that stands for this task (0: none)
    claim_no: int = 0  # claims so far; names the lease index subject of the current claim
    finished_at: float | None = None
    waiting: list[str] = msgspec.field(default_factory=list)  # dependencies not yet succeeded
    dependents: list[str] = msgspec.field(default_factory=list)  # tasks waiting for this one




UNREADABLE = -1  # index_seq of the stand-in of a record that does not decode
decode_rec = decoder(Rec).decode
decode_keymark = decoder(KeyMark).decode
decode_result = decoder(TaskResult).decode
decode_event = decoder(TaskEvent).decode
decode_schedule = decoder(Schedule).decode
decode_worker = decoder(WorkerInfo).decode


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


def due_bucket(eta: float) -> int:
    return math.floor(eta * DUE_STEP)


def whole_second(t: float) -> int:
    return math.floor(t)


def index_kind(rec: Rec) -> str:
    """The index a freshly stored record needs: ``ready``, ``due`` or none (``""``)."""
    t = rec.task
    if t.status is QUEUED:
        return "ready"
    if t.status is PENDING and not rec.waiting and t.eta is not None:
        return "due"
    return ""


def ready_verdict(seq: int, got: tuple[int, Rec] | None, now: float) -> str:
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


def leased_by_lost_claim(seq: int, rec: Rec, worker: str, now: float) -> bool:
    """Did a claim by ``worker`` at ``now`` lease this record from index message ``seq``?"""
    t = rec.task
    return (
        t.status is RUNNING
        and t.worker == worker
        and rec.index_seq == seq
        and t.lease_until is not None
        and t.lease_until > now
    )


def due_verdict(seq: int, got: tuple[int, Rec] | None, now: float) -> str:
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


def blob_created(info: dict[str, Any]) -> float:
    """When a blob was stored: its meta's ``mtime`` (0 when unreadable: old enough)."""
    try:
        return datetime.datetime.fromisoformat(str(info.get("mtime"))).timestamp()
    except ValueError:
        return 0.0


def lost_cas(ack: object) -> bool:
    return isinstance(ack, nats.js.errors.APIError) and ack.err_code in WRONG_LAST_SEQUENCE


def end_record(rec: Rec, status: TaskStatus, now: float) -> None:
    rec.task.status = status
    rec.task.lease_until = None
    rec.finished_at = now
    rec.waiting = []


def held_by(worker: str) -> Callable[[Rec], bool]:
    return lambda rec: rec.task.worker == worker


def still_lapsed(claim_no: int, now: float) -> Callable[[Rec], bool]:
    """Still the same claim, its lease still lapsed, not cancelled, deliveries left?"""

    def check(rec: Rec) -> bool:
        t = rec.task
        return rec.claim_no == claim_no and lease_lapsed(t.lease_until, now) and lapse_fate(t) is QUEUED

    return check


def lapse_fate(t: Task) -> TaskStatus:
    """The lifecycle's verdict on a task whose lease lapsed."""
    return on_lapse(
        cancel_requested=t.cancel_requested, deliveries=t.deliveries, max_deliveries=t.max_deliveries
    )


def unchanged(t: Task) -> None:
    """A requeue after a lapsed lease keeps the delivery count."""
