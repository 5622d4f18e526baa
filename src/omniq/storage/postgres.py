"""PostgreSQL backend (asyncpg): task queue, result store and event store in one schema.

URL: ``postgresql://user:password@host:5432/dbname?schema=NAME&pool_size=10`` (``postgres://``
too). Query parameters of our own, taken out before the rest reaches asyncpg (so ``sslmode=``
and friends still work):

- ``schema``: the PostgreSQL schema holding the ``omniq_*`` tables (default ``public``). It is
  created when missing, so one database can hold several independent queues; the test suite
  gives every test its own schema. Letters, digits and ``_`` only.
- ``pool_size``: most connections this backend opens at once (default 10), plus one dedicated
  ``LISTEN`` connection.
- ``reconnect_timeout``: seconds an operation keeps retrying a lost connection (a server
  restart, a network cut) before it raises ``StorageError`` (default 30).

The tables are created on connect (idempotent), inside a transaction that first takes an
advisory lock, so workers connecting at the same moment to an empty database do not race.

Semantics mirror ``sqlite.py`` (the reference implementation); what PostgreSQL changes:

- **Claim is one statement**: ``UPDATE ... WHERE seq = ANY(ARRAY(SELECT ... FOR UPDATE SKIP
  LOCKED LIMIT n)) RETURNING``. Concurrent claimers skip each other's rows instead of waiting.
  The pick takes QUEUED rows and PENDING rows whose ``eta`` has passed in one go, so a delayed
  task needs nobody to promote it first (due rows are also promoted to QUEUED in passing, so
  ``counts()`` looks as it does on SQLite).
- **Dependencies under concurrency** (SQLite serializes writers; PostgreSQL does not, at READ
  COMMITTED): ``enqueue`` reads its dependencies ``FOR SHARE``, so a dependency cannot finish
  unseen while its dependent is being inserted; resolving dependents locks the dependent rows
  first and checks their dependencies in a *later* statement (a fresh snapshot), so two
  dependencies finishing at once cannot both miss the release.
- **Wake-ups**: ``enqueue``, ``retry``, ``release`` (and releases of dependents, and requeues by
  ``reap``) send ``NOTIFY`` on the queue's channel inside their own transaction; a dedicated
  ``LISTEN`` connection wakes ``wait_for_tasks`` in every process. The payload is empty for
  "ready now" or the ``eta`` of a delayed task, which waiters remember to wake when it falls
  due. A lost ``LISTEN`` connection is re-opened in the background (waiters fall back to their
  timeout meanwhile).

**Connection drops and retries.** After a connection error an operation is run again on a new
connection, at once and then with back-off (up to 1 s apart) for ``reconnect_timeout`` seconds,
so a server restart is waited out; one WARNING names the (masked) URL when the connection is
lost and one when it is back, not a traceback per attempt. A deadlock or serialization failure
(rolled back) is retried twice. The hard case is a
connection lost *after* the server committed but before the reply arrived: a blind retry would
then do the work twice, or report nothing where the first attempt changed things. So each
operation is made safe to retry:

- reads, and writes guarded so that a second run changes nothing (``extend``, ``retry``,
  ``release``, ``heartbeat``, ``put_results``, schedule upserts, purges): simply run again
  (a purge's count may then miss what the lost attempt deleted);
- ``claim`` stamps its rows with a random claim token; the retry first collects rows still
  leased under that token, so a lost reply never strands leased tasks until their lease lapses
  and never leases them twice;
- ``enqueue``: when every id is already stored with identical bytes, the lost attempt committed;
- ``fire_schedule``: when the schedule's ``last_task_id`` is our task, the lost attempt won;
- ``finish``, ``reap``, ``expire``, ``cancel`` (whose results tell the orchestrator which results
  to write) and ``append_events`` (not idempotent: events would be duplicated) record an
  operation id in ``omniq_ops`` in the same transaction whenever there is something to report;
  the retry returns the recorded outcome instead of running again. Records are deleted after
  ten minutes.

Times for leases, etas and expiry are always the caller's ``now`` (never the server clock);
``retry`` takes none and, like SQLite, reads the wall clock to choose QUEUED or PENDING.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import socket
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import msgspec

from ..errors import ConfigError, StorageError
from ..logs import get_logger
from ..models import Schedule, Task, TaskEvent, TaskResult, TaskStatus
from ._codec import decoder, encode
from ._reconnect import Backoff
from .base import (
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
    read_task_row,
)
from .blobs import Blob, check_blobs, check_digests, check_owners, nbytes

try:
    import asyncpg
except ImportError:  # pragma: no cover - exercised by installs without the extra
    asyncpg = None

log = get_logger(__name__)

# --- schema --------------------------------------------------------------------------------------

SCHEMA_VERSION = 3  # 2: blobs, 3: idempotency keys (older schemas get the new tables on connect)

#: ``{schema}`` is the quoted schema name; the pool's ``search_path`` points at it afterwards.
SCHEMA = """
CREATE SCHEMA IF NOT EXISTS {schema};
SET LOCAL search_path TO {schema};
CREATE TABLE IF NOT EXISTS omniq_meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS omniq_tasks (
    seq              bigserial PRIMARY KEY,           -- enqueue order (FIFO within a priority)
    id               text NOT NULL UNIQUE,
    queue            text NOT NULL,
    priority         bigint NOT NULL,
    status           text NOT NULL,
    blocked          boolean NOT NULL DEFAULT false,  -- while a dependency has not succeeded
    eta              double precision,
    expires_at       double precision,
    worker           text,
    lease_until      double precision,
    claim_token      text,                            -- which claim() call leased the row
    deliveries       integer NOT NULL DEFAULT 0,
    max_deliveries   integer NOT NULL,
    attempts         integer NOT NULL DEFAULT 0,
    cancel_requested boolean NOT NULL DEFAULT false,
    created_at       double precision NOT NULL,
    finished_at      double precision,
    task             bytea NOT NULL                   -- msgpack Task, overridden by the columns
);
CREATE INDEX IF NOT EXISTS omniq_tasks_ready
    ON omniq_tasks (priority DESC, seq) WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS omniq_tasks_ready_by_queue
    ON omniq_tasks (queue, priority DESC, seq) WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS omniq_tasks_due
    ON omniq_tasks (eta) WHERE status = 'pending' AND NOT blocked;
CREATE INDEX IF NOT EXISTS omniq_tasks_leases
    ON omniq_tasks (lease_until) WHERE status = 'running';
CREATE INDEX IF NOT EXISTS omniq_tasks_expiry
    ON omniq_tasks (expires_at) WHERE status IN ('queued', 'pending') AND expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS omniq_tasks_finished
    ON omniq_tasks (finished_at) WHERE finished_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS omniq_deps (  -- dependencies not yet succeeded when enqueued
    task_id text NOT NULL,
    dep_id  text NOT NULL,
    PRIMARY KEY (task_id, dep_id)
);
CREATE INDEX IF NOT EXISTS omniq_deps_dep ON omniq_deps (dep_id);
CREATE TABLE IF NOT EXISTS omniq_keys (  -- idempotency keys: the latest task stored with each
    key     text PRIMARY KEY,
    task_id text NOT NULL
);
CREATE TABLE IF NOT EXISTS omniq_results (
    task_id     text PRIMARY KEY,
    status      text NOT NULL,
    key         text,
    expires_at  double precision,
    finished_at double precision,
    result      bytea NOT NULL                      -- msgpack TaskResult, payload bytes as-is
);
CREATE INDEX IF NOT EXISTS omniq_results_key
    ON omniq_results (key text_pattern_ops) WHERE key IS NOT NULL;
CREATE INDEX IF NOT EXISTS omniq_results_expiry
    ON omniq_results (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS omniq_events (
    seq       bigserial PRIMARY KEY,
    task_id   text NOT NULL,
    type      text NOT NULL,
    timestamp double precision NOT NULL,
    worker    text,
    queue     text,
    detail    text
);
CREATE INDEX IF NOT EXISTS omniq_events_task ON omniq_events (task_id);
CREATE INDEX IF NOT EXISTS omniq_events_time ON omniq_events (timestamp);
CREATE TABLE IF NOT EXISTS omniq_schedules (
    id       text PRIMARY KEY,
    seq      bigserial NOT NULL,
    next_run double precision,
    paused   boolean NOT NULL,
    schedule bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS omniq_workers (
    id             text PRIMARY KEY,
    last_heartbeat double precision NOT NULL,
    info           bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS omniq_blobs (         -- large values, once each, by SHA-256
    digest     text PRIMARY KEY,                 -- lowercase hex of the data's SHA-256
    created_at double precision NOT NULL,
    size       bigint NOT NULL,
    data       bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS omniq_blob_owners (   -- who refers to each blob ('t:'/'r:' + task id)
    digest      text NOT NULL,
    owner       text NOT NULL,
    recorded_at double precision NOT NULL,
    PRIMARY KEY (digest, owner)
);
CREATE INDEX IF NOT EXISTS omniq_blob_owners_time ON omniq_blob_owners (recorded_at);
CREATE TABLE IF NOT EXISTS omniq_ops (  -- outcomes of writes, for a retry after a lost reply
    id     text PRIMARY KEY,
    at     timestamptz NOT NULL DEFAULT now(),
    result bytea
);
INSERT INTO omniq_meta (key, value) VALUES ('schema_version', '{version}')
    ON CONFLICT (key) DO UPDATE SET value = excluded.value;
"""
SCHEMA_LOCK = "SELECT pg_advisory_xact_lock($1)"
SCHEMA_EXISTS = "SELECT to_regclass($1) IS NOT NULL"  # $1: the quoted schema's omniq_meta
SCHEMA_VERSION_OF = "SELECT value FROM omniq_meta WHERE key = 'schema_version'"

# --- queries, named after the operation ----------------------------------------------------------
# Literal statuses (not parameters) let PostgreSQL match the partial indexes above.

# the layout ``task_from_row`` reads, then what an unreadable ``task`` blob is rebuilt from
TASK_COLUMNS = (
    "seq, task, status, worker, lease_until, deliveries, attempts, eta, cancel_requested, "
    "id, queue, priority, max_deliveries, created_at"
)

INSERT_TASKS = """INSERT INTO omniq_tasks (id, queue, priority, status, blocked, eta, expires_at,
        max_deliveries, deliveries, attempts, created_at, finished_at, task)
    SELECT id, queue, priority, status, blocked, eta, expires_at, max_deliveries, deliveries,
        attempts, created_at, finished_at, task
    FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::boolean[], $6::float8[],
        $7::float8[], $8::integer[], $9::integer[], $10::integer[], $11::float8[], $12::float8[],
        $13::bytea[]) WITH ORDINALITY AS u(id, queue, priority, status, blocked, eta, expires_at,
        max_deliveries, deliveries, attempts, created_at, finished_at, task, ord)
    ORDER BY ord"""
INSERT_TASKS_NOTIFY = f"WITH ins AS ({INSERT_TASKS} RETURNING 1) SELECT pg_notify($14, $15)"
INSERT_DEPS = """INSERT INTO omniq_deps (task_id, dep_id)
    SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT DO NOTHING"""
LOCK_DEPENDENCIES = (
    "SELECT id, status FROM omniq_tasks WHERE id = ANY($1::text[]) ORDER BY id FOR SHARE"
)
STORED_TASKS = "SELECT id, task FROM omniq_tasks WHERE id = ANY($1::text[])"
TASK_STATUSES = "SELECT id, status FROM omniq_tasks WHERE id = ANY($1::text[])"
# keys: enqueue takes the advisory locks of its keys' buckets ($1 the schema's lock space, $2
# the sorted buckets: one order for everyone, so no deadlock), then reads each key's latest task
# with a fresh snapshot, so a racing enqueue of the same key has committed or not begun
LOCK_KEYS = "SELECT pg_advisory_xact_lock($1::int4, b) FROM unnest($2::int4[]) AS b"
KEY_HOLDERS = """SELECT k.key, k.task_id, t.status,
        CASE WHEN t.status IS NULL OR t.status = 'succeeded' THEN
        (SELECT r.status FROM omniq_results r WHERE r.task_id = k.task_id) END
    FROM omniq_keys k LEFT JOIN omniq_tasks t ON t.id = k.task_id WHERE k.key = ANY($1::text[])"""
PUT_KEYS = """INSERT INTO omniq_keys (key, task_id) SELECT * FROM unnest($1::text[], $2::text[])
    ON CONFLICT (key) DO UPDATE SET task_id = excluded.task_id"""
# keys whose task was purged, unless a stored success of it still holds them
PURGE_KEYS = """DELETE FROM omniq_keys k WHERE NOT EXISTS (
        SELECT 1 FROM omniq_tasks t WHERE t.id = k.task_id)
    AND NOT EXISTS (SELECT 1 FROM omniq_results r
        WHERE r.task_id = k.task_id AND r.status = 'succeeded')"""
KEY_BUCKETS = 64  # advisory locks per schema that keyed enqueues take (one per key's bucket)
GET_TASK = f"SELECT {TASK_COLUMNS} FROM omniq_tasks WHERE id = $1"

# claim: $1 worker, $2 lease_until, $3 claim token, $4 now, $5 limit, $6 queue names
_LEASE = (
    """UPDATE omniq_tasks
    SET status = 'running', worker = $1, lease_until = $2, claim_token = $3,
        deliveries = deliveries + 1
    WHERE seq = ANY(ARRAY(
        SELECT seq FROM ({queued} UNION ALL {due}) AS pick ORDER BY priority DESC, seq LIMIT $5))
    RETURNING """
    + TASK_COLUMNS
)
_NOT_EXPIRED = "(expires_at IS NULL OR expires_at > $4)"
_QUEUED_ANY = f"""SELECT * FROM (SELECT seq, priority FROM omniq_tasks
    WHERE status = 'queued' AND {_NOT_EXPIRED}
    ORDER BY priority DESC, seq LIMIT $5 FOR UPDATE SKIP LOCKED) AS q"""
_QUEUED_IN = f"""SELECT s.* FROM unnest($6::text[]) AS n(name) CROSS JOIN LATERAL (
    SELECT seq, priority FROM omniq_tasks
    WHERE status = 'queued' AND queue = n.name AND {_NOT_EXPIRED}
    ORDER BY priority DESC, seq LIMIT $5 FOR UPDATE SKIP LOCKED) AS s"""
_DUE = f"""SELECT * FROM (SELECT seq, priority FROM omniq_tasks
    WHERE status = 'pending' AND NOT blocked AND eta <= $4 AND {_NOT_EXPIRED} {{in_queues}}
    ORDER BY priority DESC, seq LIMIT $5 FOR UPDATE SKIP LOCKED) AS d"""
CLAIM = _LEASE.format(queued=_QUEUED_ANY, due=_DUE.format(in_queues=""))
CLAIM_IN = _LEASE.format(
    queued=_QUEUED_IN, due=_DUE.format(in_queues="AND queue = ANY($6::text[])")
)
CLAIMED_WITH_TOKEN = f"""SELECT {TASK_COLUMNS} FROM omniq_tasks
    WHERE status = 'running' AND lease_until = $1 AND claim_token = $2 AND worker = $3"""
NEXT_DUE = "SELECT min(eta) FROM omniq_tasks WHERE status = 'pending' AND NOT blocked"
PROMOTE_DUE = """WITH promoted AS (UPDATE omniq_tasks SET status = 'queued'
        WHERE status = 'pending' AND NOT blocked AND eta <= $1 RETURNING 1)
    SELECT min(eta) FROM omniq_tasks WHERE status = 'pending' AND NOT blocked AND eta > $1"""

FINISH = """UPDATE omniq_tasks AS t SET status = o.status, finished_at = $3, lease_until = NULL
    FROM unnest($1::text[], $2::text[]) AS o(id, status)
    WHERE t.id = o.id AND t.status = 'running' AND t.worker = $4
    RETURNING t.id"""
DEPENDENTS = """SELECT d.task_id, d.dep_id, t.status FROM omniq_deps d
    JOIN omniq_tasks t ON t.id = d.dep_id WHERE d.dep_id = ANY($1::text[])"""
LOCK_TASKS = "SELECT id FROM omniq_tasks WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE"
RELEASE_DEPENDENTS = f"""UPDATE omniq_tasks AS c SET blocked = false,
        status = CASE WHEN c.eta IS NULL OR c.eta <= $1 THEN 'queued' ELSE 'pending' END
    WHERE c.id = ANY($2::text[]) AND c.status = 'pending' AND c.blocked AND NOT EXISTS (
        SELECT 1 FROM omniq_deps d JOIN omniq_tasks t ON t.id = d.dep_id
        WHERE d.task_id = c.id AND t.status <> 'succeeded')
    RETURNING {TASK_COLUMNS}"""
CANCEL_DEPENDENTS = f"""UPDATE omniq_tasks SET status = 'cancelled', finished_at = $1,
        blocked = false
    WHERE id = ANY($2::text[]) AND status = 'pending' RETURNING {TASK_COLUMNS}"""
NOTIFY = "SELECT pg_notify($1, $2)"
# $1 eta, $2 attempts, $3 id, $4 worker, $5 wall-clock now, $6 channel, $7 payload
RETRY = """UPDATE omniq_tasks
    SET status = CASE WHEN $1::float8 <= $5::float8 THEN 'queued' ELSE 'pending' END,
        blocked = false, eta = $1,
        attempts = $2, worker = NULL, lease_until = NULL
    WHERE id = $3 AND status = 'running' AND worker = $4
    RETURNING pg_notify($6, $7)"""
RELEASE = """UPDATE omniq_tasks SET status = 'queued', worker = NULL, lease_until = NULL,
        deliveries = greatest(deliveries - 1, 0)
    WHERE id = ANY($1::text[]) AND status = 'running' AND worker = $2
    RETURNING pg_notify($3, '')"""
EXTEND = """UPDATE omniq_tasks SET lease_until = $1
    WHERE id = ANY($2::text[]) AND status = 'running' AND worker = $3"""

OVERRUN = """SELECT id, queue, worker, lease_until FROM omniq_tasks
    WHERE status = 'running' AND lease_until < $1 ORDER BY lease_until LIMIT $2"""
LAPSED_LEASES = (
    "SELECT EXISTS (SELECT 1 FROM omniq_tasks WHERE status = 'running' AND lease_until < $1)"
)
CANCEL_LAPSED = f"""UPDATE omniq_tasks SET status = 'cancelled', finished_at = $1,
        lease_until = NULL
    WHERE status = 'running' AND lease_until < $1 AND cancel_requested
    RETURNING {TASK_COLUMNS}"""
FAIL_LAPSED = f"""UPDATE omniq_tasks SET status = 'failed', finished_at = $1, lease_until = NULL
    WHERE status = 'running' AND lease_until < $1 AND deliveries >= max_deliveries
    RETURNING {TASK_COLUMNS}"""
REQUEUE_LAPSED = f"""UPDATE omniq_tasks SET status = 'queued', worker = NULL, lease_until = NULL
    WHERE status = 'running' AND lease_until < $1 AND deliveries < max_deliveries
    RETURNING {TASK_COLUMNS}"""

EXPIRING = """SELECT EXISTS (SELECT 1 FROM omniq_tasks WHERE expires_at IS NOT NULL
    AND expires_at <= $1 AND status IN ('queued', 'pending'))"""
EXPIRE = f"""UPDATE omniq_tasks SET status = 'expired', finished_at = $1, blocked = false
    WHERE expires_at IS NOT NULL AND expires_at <= $1 AND status IN ('queued', 'pending')
    RETURNING {TASK_COLUMNS}"""

LOCK_FOR_CANCEL = (
    "SELECT id, status FROM omniq_tasks WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE"
)
CANCEL_WAITING = """UPDATE omniq_tasks SET status = 'cancelled', finished_at = $1, blocked = false
    WHERE id = ANY($2::text[]) AND status IN ('queued', 'pending') RETURNING id"""
REQUEST_CANCEL = """UPDATE omniq_tasks SET cancel_requested = true
    WHERE id = ANY($1::text[]) AND status = 'running'"""
CANCEL_REQUESTS = """SELECT id FROM omniq_tasks
    WHERE id = ANY($1::text[]) AND status = 'running' AND cancel_requested"""
COUNTS = "SELECT queue, status, count(*) FROM omniq_tasks GROUP BY queue, status"
OLDEST_QUEUED = (
    "SELECT queue, min(created_at) FROM omniq_tasks WHERE status = 'queued' GROUP BY queue"
)
PURGE_TASKS = """WITH gone AS (DELETE FROM omniq_tasks
        WHERE finished_at IS NOT NULL AND finished_at < $1 RETURNING id),
    deps AS (DELETE FROM omniq_deps WHERE task_id IN (SELECT id FROM gone))
    SELECT count(*) FROM gone"""

UPSERT_SCHEDULE = """INSERT INTO omniq_schedules (id, next_run, paused, schedule)
    VALUES ($1, $2, $3, $4)
    ON CONFLICT (id) DO UPDATE SET next_run = excluded.next_run, paused = excluded.paused,
        schedule = excluded.schedule"""
GET_SCHEDULE = "SELECT schedule FROM omniq_schedules WHERE id = $1"
LOCK_SCHEDULE = "SELECT schedule FROM omniq_schedules WHERE id = $1 FOR UPDATE"
GET_SCHEDULES = "SELECT schedule FROM omniq_schedules ORDER BY seq"
DELETE_SCHEDULE = "DELETE FROM omniq_schedules WHERE id = $1"

UPSERT_WORKER = """INSERT INTO omniq_workers (id, last_heartbeat, info) VALUES ($1, $2, $3)
    ON CONFLICT (id) DO UPDATE SET last_heartbeat = excluded.last_heartbeat, info = excluded.info"""
DELETE_WORKER = "DELETE FROM omniq_workers WHERE id = $1"
GET_WORKERS = "SELECT info FROM omniq_workers ORDER BY id"

PUT_RESULTS = """INSERT INTO omniq_results (task_id, status, key, expires_at, finished_at, result)
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[], $5::float8[],
        $6::bytea[])
    ON CONFLICT (task_id) DO UPDATE SET status = excluded.status, key = excluded.key,
        expires_at = excluded.expires_at, finished_at = excluded.finished_at,
        result = excluded.result"""
GET_RESULT = "SELECT result FROM omniq_results WHERE task_id = $1"
GET_RESULTS = "SELECT result FROM omniq_results WHERE task_id = ANY($1::text[])"
# $1 is the prefix with \ % _ escaped, followed by %
FIND_RESULTS = (
    "SELECT result FROM omniq_results WHERE key LIKE $1 ESCAPE '\\' ORDER BY key COLLATE \"C\""
)
DELETE_RESULTS = "DELETE FROM omniq_results WHERE task_id = ANY($1::text[])"
PURGE_RESULTS = "DELETE FROM omniq_results WHERE expires_at IS NOT NULL AND expires_at <= $1"

APPEND_EVENTS = """WITH op AS (INSERT INTO omniq_ops (id) VALUES ($7))
    INSERT INTO omniq_events (task_id, type, timestamp, worker, queue, detail)
    SELECT task_id, type, ts, worker, queue, detail
    FROM unnest($1::text[], $2::text[], $3::float8[], $4::text[], $5::text[], $6::text[])
        WITH ORDINALITY AS u(task_id, type, ts, worker, queue, detail, ord)
    ORDER BY ord"""
QUERY_EVENTS = "SELECT task_id, type, timestamp, worker, queue, detail FROM omniq_events"
PURGE_EVENTS = "DELETE FROM omniq_events WHERE timestamp < $1"

# blobs: owners are recorded first, and stored blobs read FOR SHARE in the same transaction, so
# a sweep (which locks what it deletes FOR UPDATE SKIP LOCKED, then checks owners again with a
# fresh snapshot) never deletes a blob a put just found stored
PUT_BLOB_OWNERS = """INSERT INTO omniq_blob_owners (digest, owner, recorded_at)
    SELECT * FROM unnest($1::text[], $2::text[], $3::float8[])
    ON CONFLICT (digest, owner)
        DO UPDATE SET recorded_at = greatest(omniq_blob_owners.recorded_at, excluded.recorded_at)"""
LOCK_STORED_BLOBS = """SELECT digest FROM omniq_blobs WHERE digest = ANY($1::text[])
    ORDER BY digest FOR SHARE"""
STORED_BLOBS = "SELECT digest FROM omniq_blobs WHERE digest = ANY($1::text[])"
INSERT_BLOB = """INSERT INTO omniq_blobs (digest, created_at, size, data) VALUES ($1, $2, $3, $4)
    ON CONFLICT (digest) DO NOTHING RETURNING size"""
GET_BLOBS = "SELECT digest, data FROM omniq_blobs WHERE digest = ANY($1::text[])"
SWEEP_BLOB_OWNERS = """DELETE FROM omniq_blob_owners o WHERE o.recorded_at < $1
    AND NOT (left(o.owner, 2) = 't:' AND EXISTS (SELECT 1 FROM omniq_tasks t
        WHERE t.id = substr(o.owner, 3) AND t.status IN ('pending', 'queued', 'running')))
    AND NOT (left(o.owner, 2) = 'r:' AND EXISTS (SELECT 1 FROM omniq_results r
        WHERE r.task_id = substr(o.owner, 3)))"""
LOCK_UNOWNED_BLOBS = """SELECT digest FROM omniq_blobs b WHERE b.created_at < $1
    AND NOT EXISTS (SELECT 1 FROM omniq_blob_owners o WHERE o.digest = b.digest)
    FOR UPDATE SKIP LOCKED"""
DELETE_UNOWNED_BLOBS = """DELETE FROM omniq_blobs b WHERE b.digest = ANY($1::text[])
    AND NOT EXISTS (SELECT 1 FROM omniq_blob_owners o WHERE o.digest = b.digest)"""

RECORD_OP = "INSERT INTO omniq_ops (id, result) VALUES ($1, $2)"
GET_OP = "SELECT result FROM omniq_ops WHERE id = $1"
PURGE_OPS = "DELETE FROM omniq_ops WHERE at < now() - interval '10 minutes'"

# --- settings ------------------------------------------------------------------------------------

DEFAULT_SCHEMA = "public"
DEFAULT_POOL_SIZE = 10
DEFAULT_RECONNECT_TIMEOUT = 30.0
EVENTS_PAYLOAD = "events"  # a NOTIFY on the queue's channel saying: events were appended
CHANNEL = "omniq_tasks"  # NOTIFY channel for the default schema (others get a suffix)
CONNECT_TIMEOUT = 10.0
OPS_PURGE_EVERY = 60.0  # seconds between sweeps of old omniq_ops records
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_OWN_PARAMS = ("schema", "pool_size", "reconnect_timeout")

# --- encoding ------------------------------------------------------------------------------------

_decode_result = decoder(TaskResult).decode
_decode_schedule = decoder(Schedule).decode
_decode_worker = decoder(WorkerInfo).decode
_decode_finished = decoder(Finished).decode
_decode_reaped = decoder(Reaped).decode
_decode_tasks = decoder(list[Task]).decode
_decode_statuses = decoder(dict[str, TaskStatus]).decode
_STATUS = {s.value: s for s in TaskStatus}

T = TypeVar("T")
_MISSING: Any = object()  # a recovery found nothing: run the operation again


# _task (from .sqlite): the row layout is shared with the other SQL backend, and so is the
# stand-in of a record that does not decode (it fails alone, saying why; the batch goes on)


def _tasks(rows: Sequence[Any]) -> list[Task]:
    """Tasks in enqueue order (RETURNING gives rows in no defined order)."""
    return [read_task_row(r) for r in sorted(rows, key=lambda r: int(r[0]))]


def _escape_like(prefix: str) -> str:
    """``prefix`` as a LIKE pattern matching strings that start with it."""
    return re.sub(r"([\\%_])", r"\\\1", prefix) + "%"


def _rowcount(status: str) -> int:
    """Rows changed, from a command tag such as ``DELETE 3``."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


class PgURL(msgspec.Struct, frozen=True):
    """A parsed ``postgresql://`` URL: what asyncpg gets, and our own parameters."""

    dsn: str
    schema: str
    pool_size: int
    reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT


def parse_url(url: str) -> PgURL:
    """Split our query parameters (``schema``, ``pool_size``, ``reconnect_timeout``) off a
    ``postgresql://`` URL."""
    if not isinstance(url, str) or url.partition("://")[0].lower() not in (
        "postgresql",
        "postgres",
    ):
        raise ConfigError(f"not a postgresql:// URL: {masked(str(url))!r}")
    parts = urlsplit(url)
    params = parse_qsl(parts.query, keep_blank_values=True)
    own = {k: v for k, v in params if k in _OWN_PARAMS}
    rest = [(k, v) for k, v in params if k not in _OWN_PARAMS]
    schema = own.get("schema", DEFAULT_SCHEMA)
    if not _SCHEMA_NAME.fullmatch(schema):
        raise ConfigError(
            f"postgresql URL {masked(url)!r}: schema={schema!r} is not valid; use 1-63 letters, "
            "digits or _ (not starting with a digit)"
        )
    size_text = own.get("pool_size", str(DEFAULT_POOL_SIZE))
    if not size_text.isdigit() or not 1 <= int(size_text) <= 1000:
        raise ConfigError(
            f"postgresql URL {masked(url)!r}: pool_size={size_text!r} is not valid; "
            "use a whole number from 1 to 1000"
        )
    reconnect_text = own.get("reconnect_timeout", str(DEFAULT_RECONNECT_TIMEOUT))
    try:
        reconnect = float(reconnect_text)
    except ValueError:
        reconnect = -1.0
    if not 0 <= reconnect < float("inf"):
        raise ConfigError(
            f"postgresql URL {masked(url)!r}: reconnect_timeout={reconnect_text!r} is not valid; "
            "use seconds >= 0"
        )
    dsn = urlunsplit(parts._replace(query=urlencode(rest)))
    return PgURL(dsn=dsn, schema=schema, pool_size=int(size_text), reconnect_timeout=reconnect)


def channel_for(schema: str) -> str:
    """The NOTIFY channel of a schema's queue (at most 63 bytes, PostgreSQL's identifier limit)."""
    if schema == DEFAULT_SCHEMA:
        return CHANNEL
    name = f"{CHANNEL}_{schema}"
    if len(name) > 63:
        name = f"{CHANNEL}_{hashlib.blake2b(schema.encode(), digest_size=12).hexdigest()}"
    return name


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _key_space(schema: str) -> int:
    """The first half (int4) of the two-key advisory locks guarding ``schema``'s idempotency keys
    (the two-key lock space does not overlap the one-key space of ``_lock_key``)."""
    digest = hashlib.blake2b(f"omniq-keys:{schema}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)


def _key_bucket(key: str) -> int:
    """Which of the ``KEY_BUCKETS`` advisory locks guards ``key`` (the same in every process)."""
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % KEY_BUCKETS


def _lock_key(schema: str) -> int:
    """The advisory lock (a signed 64-bit key) serializing schema creation for ``schema``."""
    digest = hashlib.blake2b(f"omniq-schema:{schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


# --- errors --------------------------------------------------------------------------------------


def _is_transient(exc: BaseException) -> bool:
    """True for errors after which running the operation again (on a new connection) is sound:
    the connection broke, the server is shutting the session down, or the transaction was
    rolled back by a deadlock or serialization failure."""
    if asyncpg is not None:
        if isinstance(
            exc,
            (
                asyncpg.PostgresConnectionError,  # class 08, incl. "closed in the middle"
                asyncpg.exceptions.OperatorInterventionError,  # 57P01 admin shutdown, ...
                asyncpg.exceptions.DeadlockDetectedError,
                asyncpg.exceptions.SerializationError,
                asyncpg.exceptions.TooManyConnectionsError,
            ),
        ):
            return True
        if isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc):
            return True
        if isinstance(exc, asyncpg.exceptions.InternalClientError):
            # e.g. "cannot switch to state 11; another operation is in progress": the server's
            # FATAL message reached an idle pooled connection; raised before anything is sent
            return True
    return isinstance(exc, (OSError, asyncio.TimeoutError))


def _is_connection_error(exc: BaseException) -> bool:
    if asyncpg is not None and isinstance(
        exc,
        (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError),
    ):
        return False
    return _is_transient(exc)


def describe(exc: BaseException) -> str:
    """A connection or server error in plain words (for messages naming the URL)."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is PostgreSQL running and accepting TCP connections there?)"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc})"
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timed out waiting for the server"
    if asyncpg is not None:
        if isinstance(exc, asyncpg.exceptions.InvalidPasswordError):
            return "password authentication failed"
        if isinstance(exc, asyncpg.exceptions.InvalidAuthorizationSpecificationError):
            return f"the server refused this login: {exc}"
        if isinstance(exc, asyncpg.exceptions.InvalidCatalogNameError):
            return f"the database does not exist ({exc})"
        if isinstance(exc, asyncpg.exceptions.TooManyConnectionsError):
            return "the server has too many connections"
        if isinstance(exc, asyncpg.exceptions.OperatorInterventionError):
            return f"the server closed the session ({exc})"
        if isinstance(exc, asyncpg.PostgresConnectionError):
            return f"the connection broke ({exc})"
        if isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc):
            return "the connection was closed"
        if isinstance(exc, asyncpg.exceptions.InternalClientError):
            return f"the connection is unusable ({exc})"
    if isinstance(exc, OSError):
        return f"network error ({exc.strerror or exc})"
    return f"{type(exc).__name__}: {exc}"


async def _keep_session(conn: Any) -> None:
    """Pool reset hook: our sessions hold no state to undo (asyncpg still rolls back an open
    transaction), so skip the default ``RESET ALL; UNLISTEN *; ...`` round trip per release."""


# --- the backend ---------------------------------------------------------------------------------


class PostgresBackend(TaskQueue, ResultStore, EventStore):
    """Task queue, result store and event store sharing one asyncpg pool and one schema."""

    cross_process_wakeups = True

    def __init__(self, url: str) -> None:
        super().__init__()
        parsed = parse_url(url)
        if asyncpg is None:
            raise ConfigError(
                f"storage URL {masked(url)!r} needs the 'asyncpg' package, which is not "
                "installed: pip install 'omniq[postgres]'"
            )
        self.url = url
        self.schema = parsed.schema
        self.channel = channel_for(parsed.schema)
        self._events_appended = Signal()
        self._dsn = parsed.dsn
        self._pool_size = parsed.pool_size
        self._reconnect_timeout = parsed.reconnect_timeout
        self._settings = {"search_path": _quote_ident(parsed.schema), "application_name": "omniq"}
        self._pool: Any = None
        self._listener: Any = None
        self._relisten: asyncio.Task[None] | None = None
        self._closing = False
        self._ready = False  # connected once: from now on a lost connection is waited out
        self._down_since: float | None = None  # monotonic time the connection was found lost
        self._next_due: float | None = None  # earliest eta of a delayed task, last we knew
        self._ops_purged_at = 0.0

    # --- lifecycle ----------------------------------------------------------------------------------
    async def _open(self) -> None:
        self._closing = False
        self._ready = False
        self._down_since = None
        try:
            # min_size=0: no connection floor kept by asyncpg, whose background re-connects
            # log a traceback per attempt while the server is away; ``_run`` reconnects instead
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=0,
                max_size=self._pool_size,
                server_settings=self._settings,
                reset=_keep_session,
                timeout=CONNECT_TIMEOUT,
            )
            async with self._pool.acquire() as conn:  # the first connection: fail fast
                await conn.fetchval("SELECT 1")
        except Exception as e:
            if self._pool is not None:
                self._pool.terminate()
                self._pool = None
            raise StorageError(
                f"cannot connect to PostgreSQL at {masked(self.url)}: {describe(e)}"
            ) from e
        try:
            await self._run(self._setup)
            await self._listen()
            self._next_due = await self._run(lambda c: c.fetchval(NEXT_DUE))
        except BaseException:
            await self._close()
            raise
        self._ready = True

    async def _setup(self, conn: Any) -> None:
        """Create the schema and tables unless this version already did (advisory-locked)."""
        table = f"{_quote_ident(self.schema)}.omniq_meta"

        async def version() -> str | None:
            if not await conn.fetchval(SCHEMA_EXISTS, table):
                return None
            return await conn.fetchval(SCHEMA_VERSION_OF)

        if await version() == str(SCHEMA_VERSION):
            return
        async with conn.transaction():
            await conn.execute(SCHEMA_LOCK, _lock_key(self.schema))
            found = await version()
            if found is not None and int(found) > SCHEMA_VERSION:
                raise StorageError(
                    f"{masked(self.url)}: schema {self.schema!r} has OmniQ schema version "
                    f"{found}, newer than this OmniQ supports ({SCHEMA_VERSION}); upgrade omniq"
                )
            if found != str(SCHEMA_VERSION):
                await conn.execute(
                    SCHEMA.format(schema=_quote_ident(self.schema), version=SCHEMA_VERSION)
                )

    async def _close(self) -> None:
        self._closing = True
        relisten, self._relisten = self._relisten, None
        if relisten is not None:
            relisten.cancel()
            with contextlib.suppress(BaseException):
                await relisten
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.remove_termination_listener(self._on_listener_lost)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(listener.close(), 5.0)
            if not listener.is_closed():
                listener.terminate()
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), 5.0)
            except Exception:
                pool.terminate()

    async def _run(
        self,
        fn: Callable[[Any], Awaitable[T]],
        *,
        recover: Callable[[Any], Awaitable[Any]] | None = None,
    ) -> T:
        """Run ``fn(connection)``; after a lost connection, again on a new one (at once, then
        with back-off for ``reconnect_timeout`` seconds); after a deadlock, up to twice more.

        ``recover(connection)`` runs before every later attempt: it returns the outcome of an
        earlier attempt that committed although its reply was lost, or ``_MISSING`` to run ``fn``
        again.
        """
        pool = self._pool
        if pool is None:
            raise StorageError(f"{masked(self.url)} is not connected: call connect() first")
        attempt = rollbacks = 0
        backoff = Backoff(self._reconnect_timeout, first=0.05, at_once=True)
        while True:
            attempt += 1
            try:
                async with pool.acquire() as conn:
                    if attempt > 1 and recover is not None:
                        got = await recover(conn)
                        if got is not _MISSING:
                            out = got
                            break
                    out = await fn(conn)
                break
            except (ConfigError, StorageError):
                raise
            except Exception as e:
                if not _is_transient(e) or self._closing:
                    if _is_connection_error(e):
                        raise StorageError(
                            f"lost the connection to PostgreSQL at {masked(self.url)}: "
                            f"{describe(e)}"
                        ) from e
                    raise StorageError(f"PostgreSQL {masked(self.url)}: {describe(e)}") from e
                if not _is_connection_error(e):  # rolled back: run it again
                    rollbacks += 1
                    if rollbacks > 2:
                        raise StorageError(
                            f"PostgreSQL {masked(self.url)}: {describe(e)}"
                        ) from e
                    log.info("PostgreSQL %s: %s; retrying", masked(self.url), describe(e))
                    continue
                with contextlib.suppress(Exception):
                    await pool.expire_connections()  # the others are likely dead too
                if not self._ready:  # still connecting: one more try, then a clear error
                    if attempt > 1:
                        raise StorageError(
                            f"cannot connect to PostgreSQL at {masked(self.url)}: {describe(e)}"
                        ) from e
                    continue
                now = time.monotonic()
                if self._down_since is None:
                    self._down_since = now
                    log.warning(
                        "lost the connection to PostgreSQL at %s: %s; retrying on a new "
                        "connection for up to %g s", masked(self.url), describe(e),
                        self._reconnect_timeout,
                    )  # fmt: skip
                else:
                    log.debug("PostgreSQL %s still away: %s", masked(self.url), describe(e))
                if backoff.expired() and attempt > 1:
                    raise StorageError(
                        f"lost the connection to PostgreSQL at {masked(self.url)}: "
                        f"{describe(e)}; gave up reconnecting after {self._reconnect_timeout:g} s"
                    ) from e
                await anyio.sleep(backoff.pause())
        if self._down_since is not None:
            log.warning(
                "reconnected to PostgreSQL at %s after %.2f s",
                masked(self.url), time.monotonic() - self._down_since,
            )  # fmt: skip
            self._down_since = None
        return out

    async def _run_op(
        self,
        fn: Callable[[Any, str], Awaitable[T]],
        decode: Callable[[bytes], T],
    ) -> T:
        """``_run`` for a write whose outcome must survive a lost reply: ``fn(conn, op_id)``
        records its outcome under ``op_id`` (``_record``) in its own transaction when there is
        something to report; a retry returns that record instead of running again."""
        op_id = os.urandom(12).hex()
        if time.monotonic() - self._ops_purged_at > OPS_PURGE_EVERY:
            self._ops_purged_at = time.monotonic()
            await self._run(lambda c: c.execute(PURGE_OPS))

        async def recover(conn: Any) -> Any:
            row = await conn.fetchrow(GET_OP, op_id)
            return _MISSING if row is None else decode(row[0])

        return await self._run(lambda conn: fn(conn, op_id), recover=recover)

    @staticmethod
    async def _record(conn: Any, op_id: str, outcome: Any) -> None:
        await conn.execute(RECORD_OP, op_id, encode(outcome))

    # --- LISTEN / NOTIFY ------------------------------------------------------------------------
    async def _listen(self) -> None:
        """Open the dedicated LISTEN connection (wake-ups from other processes)."""
        try:
            conn = await asyncpg.connect(
                self._dsn, server_settings=self._settings, timeout=CONNECT_TIMEOUT
            )
        except Exception as e:
            raise StorageError(
                f"cannot connect to PostgreSQL at {masked(self.url)}: {describe(e)}"
            ) from e
        try:
            await conn.add_listener(self.channel, self._on_notify)
        except BaseException:
            conn.terminate()
            raise
        conn.add_termination_listener(self._on_listener_lost)
        self._listener = conn

    def _on_notify(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        if payload == EVENTS_PAYLOAD:  # events were appended (for live subscriptions)
            self._events_appended.set()
            return
        if payload:
            with contextlib.suppress(ValueError):
                self._due_at(float(payload))
                return
        self._wakeup.set()

    def _on_listener_lost(self, conn: Any) -> None:
        if self._closing or conn is not self._listener:
            return
        self._listener = None
        log.warning(
            "PostgreSQL %s: the LISTEN connection was lost; reconnecting (wake-ups fall back "
            "to polling meanwhile)",
            masked(self.url),
        )
        self._wakeup.set()  # waiters look for work now rather than sleep on a dead channel
        if self._relisten is None or self._relisten.done():
            try:
                self._relisten = asyncio.get_running_loop().create_task(self._listen_again())
            except RuntimeError:  # no running loop (interpreter shutting down): nothing to do
                pass

    async def _listen_again(self) -> None:
        """Re-open the LISTEN connection with back-off (0.1 s doubling to 5 s) until it works."""
        delay = 0.1
        while not self._closing:
            try:
                await self._listen()
                break
            except Exception as e:
                log.debug("LISTEN reconnect to %s failed: %s", masked(self.url), describe(e))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        else:
            return
        log.warning("PostgreSQL %s: LISTEN connection restored", masked(self.url))
        with contextlib.suppress(Exception):  # delayed tasks announced while we were deaf
            self._next_due = await self._run(lambda c: c.fetchval(NEXT_DUE))
        self._wakeup.set()  # notifications may have been missed meanwhile

    async def wait_for_tasks(self, timeout: float) -> None:
        """Return on a NOTIFY or ``notify()``, when a delayed task falls due, or at ``timeout``."""
        deadline = anyio.current_time() + timeout
        while not self._wakeup.is_set():
            left = deadline - anyio.current_time()
            if self._next_due is not None:
                left = min(left, self._next_due - time.time())
            if left <= 0:
                break
            with anyio.move_on_after(left):
                await self._wakeup.wait()
        self._wakeup = anyio.Event()

    # --- tasks ----------------------------------------------------------------------------------------
    async def enqueue(self, tasks: Sequence[Task]) -> dict[str, str]:
        check_new_tasks(tasks)
        if not tasks:
            return {}
        blobs = {t.id: encode(t) for t in tasks}
        now = time.time()
        keys = keyed(tasks)

        async def recover(conn: Any) -> Any:
            stored = {r[0]: r[1] for r in await conn.fetch(STORED_TASKS, list(blobs))}
            if not keys:
                # all there, byte for byte: committed
                return (True, {}) if stored == blobs else _MISSING
            # a keyed batch is one transaction: anything of it stored means it committed, and
            # what is missing was a duplicate of the key's holder (nothing stored: run again)
            if not stored or any(blobs[i] != b for i, b in stored.items()):
                return _MISSING
            missing = [t for t in tasks if t.id not in stored]
            holders = {k: tid for k, tid, _, _ in await conn.fetch(
                KEY_HOLDERS, [t.key for t in missing if t.key is not None])}
            return True, {t.id: holders[t.key] for t in missing if t.key in holders}

        ready, dups = await self._run(lambda c: self._insert(c, tasks, blobs, now, keys),
                                      recover=recover)
        if ready:
            self.notify()
        for t in tasks:
            if t.eta is not None and t.id not in dups:
                self._due_at(t.eta)
        return dups

    async def _insert(
        self, conn: Any, tasks: Sequence[Task], blobs: dict[str, bytes], now: float,
        keys: list[str],
    ) -> tuple[bool, dict[str, str]]:
        """Insert a validated batch, with its NOTIFY; True when some task is ready at once,
        and the duplicates of held keys (see ``TaskQueue.enqueue``)."""
        try:
            if keys:
                async with conn.transaction():
                    buckets = sorted({_key_bucket(k) for k in keys})
                    await conn.execute(LOCK_KEYS, _key_space(self.schema), buckets)
                    holders: dict[str, str] = {}
                    gone: list[str] = []  # holders known only by their stored success
                    for k, tid, st, rst in await conn.fetch(KEY_HOLDERS, keys):
                        status = _STATUS[st] if st is not None else None
                        if holds_key(status, rst == "succeeded", self.results_here):
                            holders[k] = tid
                            if st is None:
                                gone.append(tid)
                    store, dups = plan_keys(tasks, holders, gone)
                    ready = False
                    if store:
                        ready = await _insert_tasks(conn, self.channel, store, blobs, now)
                        kept = [t for t in store if t.key is not None]
                        await conn.execute(PUT_KEYS, [t.key for t in kept], [t.id for t in kept])
                    return ready, dups
            if any(t.depends_on for t in tasks):
                async with conn.transaction():
                    return await _insert_tasks(conn, self.channel, tasks, blobs, now), {}
            return await _insert_tasks(conn, self.channel, tasks, blobs, now), {}
        except asyncpg.UniqueViolationError:
            taken = [r[0] for r in await conn.fetch(TASK_STATUSES, list(blobs))]
            if taken:
                raise ConfigError(f"task id {taken[0]!r} already exists") from None
            raise

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
        lease_until = now + lease
        token = os.urandom(8).hex()
        params: tuple[Any, ...]
        if names is None:
            sql, params = CLAIM, (worker, lease_until, token, now, limit)
        else:
            sql, params = CLAIM_IN, (worker, lease_until, token, now, limit, names)

        async def recover(conn: Any) -> Any:
            rows = await conn.fetch(CLAIMED_WITH_TOKEN, lease_until, token, worker)
            return rows or _MISSING

        rows = await self._run(lambda c: c.fetch(sql, *params), recover=recover)
        if self._next_due is not None and self._next_due <= now:
            # what fell due is claimable already; promote the rest so idle workers of other
            # queues do not spin on a past eta, and learn the next one
            self._next_due = await self._run(lambda c: c.fetchval(PROMOTE_DUE, now))
        claimed = [(read_task_row(r), int(r[0])) for r in rows]
        claimed.sort(key=lambda ts: (-ts[0].priority, ts[1]))  # RETURNING has no order
        return [t for t, _ in claimed]

    async def finish(
        self, worker: str, outcomes: Sequence[tuple[str, TaskStatus]], *, now: float
    ) -> Finished:
        check_outcomes(outcomes)
        if not outcomes:
            return Finished()
        ids = [i for i, _ in outcomes]
        statuses = [s.value for _, s in outcomes]

        async def tx(conn: Any, op_id: str) -> Finished:
            async with conn.transaction():
                ended = [r[0] for r in await conn.fetch(FINISH, ids, statuses, now, worker)]
                out = await self._resolve(conn, ended, now)
                if out.released or out.cancelled:
                    await self._record(conn, op_id, out)
                return out

        out = await self._run_op(tx, _decode_finished)
        if out.released:
            self.notify()
        return out

    async def _resolve(self, conn: Any, ids: Sequence[str], now: float) -> Finished:
        """Release or cancel (transitively) the dependents of tasks that just became final.

        Runs inside the caller's transaction. Dependents are locked before their dependencies
        are checked, in a later statement, so concurrent finishes of two dependencies of one
        task serialize on it and the second sees the first (see the module docstring)."""
        out = Finished()
        frontier = list(ids)
        while frontier:
            rows = await conn.fetch(DEPENDENTS, frontier)
            frontier = []
            cause: dict[str, str] = {}
            check: dict[str, None] = {}
            for child, dep, dep_status in rows:
                if dep_status == "succeeded":
                    check[child] = None
                elif dep_status in ("failed", "cancelled", "expired"):
                    cause.setdefault(child, dep)
            if cause:
                cancelled = _tasks(await conn.fetch(CANCEL_DEPENDENTS, now, list(cause)))
                out.cancelled.extend((t, cause[t.id]) for t in cancelled)
                frontier = [t.id for t in cancelled]
            release = [c for c in check if c not in cause]
            if release:
                await conn.execute(LOCK_TASKS, release)
                out.released.extend(_tasks(await conn.fetch(RELEASE_DEPENDENTS, now, release)))
        if out.released:
            await conn.execute(NOTIFY, self.channel, _notify_payload(out.released, now))
        return out

    async def retry(self, worker: str, task_id: str, *, eta: float, attempts: int) -> None:
        now = time.time()  # retry has no ``now``: the wall clock decides QUEUED or PENDING
        payload = "" if eta <= now else repr(eta)
        params = (eta, attempts, task_id, worker, now, self.channel, payload)
        if await self._run(lambda c: c.fetch(RETRY, *params)):
            if eta <= now:
                self.notify()
            else:
                self._due_at(eta)

    async def release(self, worker: str, task_ids: Sequence[str]) -> None:
        if not task_ids:
            return
        ids = list(task_ids)
        if await self._run(lambda c: c.fetch(RELEASE, ids, worker, self.channel)):
            self.notify()

    async def extend(self, worker: str, task_ids: Sequence[str], *, lease_until: float) -> None:
        if task_ids:
            ids = list(task_ids)
            await self._run(lambda c: c.execute(EXTEND, lease_until, ids, worker))

    async def overrun(self, *, now: float, limit: int = 100) -> list[Overrun]:
        rows = await self._run(lambda c: c.fetch(OVERRUN, now, limit))
        return [Overrun(task_id=r[0], queue=r[1], worker=r[2], lease_until=r[3]) for r in rows]

    async def reap(self, *, now: float) -> Reaped:
        if not await self._run(lambda c: c.fetchval(LAPSED_LEASES, now)):
            return Reaped(requeued=[], dead=[])

        async def tx(conn: Any, op_id: str) -> Reaped:
            async with conn.transaction():
                cancelled = _tasks(await conn.fetch(CANCEL_LAPSED, now))
                dead = _tasks(await conn.fetch(FAIL_LAPSED, now))
                requeued = _tasks(await conn.fetch(REQUEUE_LAPSED, now))
                out = Reaped(requeued=requeued, dead=dead, cancelled=[(t, t.id) for t in cancelled])
                ended = [t.id for t in cancelled] + [t.id for t in dead]
                out.cancelled.extend((await self._resolve(conn, ended, now)).cancelled)
                if requeued:
                    await conn.execute(NOTIFY, self.channel, "")
                if out.requeued or out.dead or out.cancelled:
                    await self._record(conn, op_id, out)
                return out

        out = await self._run_op(tx, _decode_reaped)
        if out.requeued:
            self.notify()
        return out

    async def expire(self, *, now: float) -> list[Task]:
        if not await self._run(lambda c: c.fetchval(EXPIRING, now)):
            return []

        async def tx(conn: Any, op_id: str) -> list[Task]:
            async with conn.transaction():
                expired = _tasks(await conn.fetch(EXPIRE, now))
                cascade = await self._resolve(conn, [t.id for t in expired], now)
                out = expired + [t for t, _ in cascade.cancelled]
                if out:
                    await self._record(conn, op_id, out)
                return out

        return await self._run_op(tx, _decode_tasks)

    async def cancel(self, task_ids: Sequence[str], *, now: float) -> dict[str, TaskStatus]:
        if not task_ids:
            return {}
        ids = list(dict.fromkeys(task_ids))

        async def tx(conn: Any, op_id: str) -> dict[str, TaskStatus]:
            async with conn.transaction():
                found = dict(await conn.fetch(LOCK_FOR_CANCEL, ids))  # claimers skip them now
                before = {i: _STATUS[found[i]] for i in ids if i in found}
                ended = [r[0] for r in await conn.fetch(CANCEL_WAITING, now, ids)]
                await conn.execute(REQUEST_CANCEL, ids)
                for t, _ in (await self._resolve(conn, ended, now)).cancelled:
                    before[t.id] = TaskStatus.PENDING
                if before:
                    await self._record(conn, op_id, before)
                return before

        return await self._run_op(tx, _decode_statuses)

    async def get_task(self, task_id: str) -> Task | None:
        row = await self._run(lambda c: c.fetchrow(GET_TASK, task_id))
        return None if row is None else read_task_row(row)

    async def statuses(self, task_ids: Sequence[str]) -> dict[str, TaskStatus]:
        if not task_ids:
            return {}
        ids = list(task_ids)
        rows = await self._run(lambda c: c.fetch(TASK_STATUSES, ids))
        return {i: _STATUS[s] for i, s in rows}

    async def cancel_requests(self, task_ids: Sequence[str]) -> list[str]:
        if not task_ids:
            return []
        ids = list(task_ids)
        found = {r[0] for r in await self._run(lambda c: c.fetch(CANCEL_REQUESTS, ids))}
        return [i for i in dict.fromkeys(ids) if i in found]

    async def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for queue, status, n in await self._run(lambda c: c.fetch(COUNTS)):
            out.setdefault(queue, {})[status] = n
        return out

    async def oldest_queued(self) -> dict[str, float]:
        return {q: t for q, t in await self._run(lambda c: c.fetch(OLDEST_QUEUED))}

    async def purge(self, *, before: float) -> int:
        gone = int(await self._run(lambda c: c.fetchval(PURGE_TASKS, before)))
        if gone:

            async def keys(conn: Any) -> None:
                async with conn.transaction():  # under every key lock: no enqueue re-keys meanwhile
                    await conn.execute(LOCK_KEYS, _key_space(self.schema), list(range(KEY_BUCKETS)))
                    await conn.execute(PURGE_KEYS)

            await self._run(keys)
        return gone

    # --- schedules ----------------------------------------------------------------------------------
    async def add_schedule(self, schedule: Schedule) -> None:
        row = (schedule.id, schedule.next_run, bool(schedule.paused), encode(schedule))
        await self._run(lambda c: c.execute(UPSERT_SCHEDULE, *row))

    async def get_schedules(self) -> list[Schedule]:
        rows = await self._run(lambda c: c.fetch(GET_SCHEDULES))
        return [_decode_schedule(r[0]) for r in rows]

    async def set_schedule_paused(
        self, schedule_id: str, paused: bool, next_run: float | None
    ) -> bool:
        async def tx(conn: Any) -> bool:
            async with conn.transaction():
                row = await conn.fetchrow(LOCK_SCHEDULE, schedule_id)
                if row is None:
                    return False
                s = _decode_schedule(row[0])
                s.paused = paused
                if not paused or next_run is not None:
                    s.next_run = next_run
                await conn.execute(UPSERT_SCHEDULE, s.id, s.next_run, s.paused, encode(s))
                return True

        return await self._run(tx)

    async def delete_schedule(self, schedule_id: str) -> bool:
        status = await self._run(lambda c: c.execute(DELETE_SCHEDULE, schedule_id))
        return _rowcount(status) > 0

    async def fire_schedule(
        self,
        schedule_id: str,
        *,
        expected_next_run: float,
        next_run: float | None,
        now: float,
        task: Task,
    ) -> bool:
        check_new_tasks([task])
        blobs = {task.id: encode(task)}

        async def tx(conn: Any) -> tuple[bool, bool]:
            try:
                async with conn.transaction():
                    row = await conn.fetchrow(LOCK_SCHEDULE, schedule_id)  # the compare-and-set
                    if row is None:
                        return False, False
                    s = _decode_schedule(row[0])
                    if s.paused or s.next_run != expected_next_run:
                        return False, False
                    ready = await _insert_tasks(conn, self.channel, [task], blobs, now)
                    s.next_run, s.last_run, s.last_task_id = next_run, now, task.id
                    await conn.execute(UPSERT_SCHEDULE, s.id, s.next_run, s.paused, encode(s))
                    return True, ready
            except asyncpg.UniqueViolationError:
                raise ConfigError(f"task id {task.id!r} already exists") from None

        async def recover(conn: Any) -> Any:
            row = await conn.fetchrow(GET_SCHEDULE, schedule_id)
            won = row is not None and _decode_schedule(row[0]).last_task_id == task.id
            return (True, task.status is TaskStatus.QUEUED) if won else _MISSING

        fired, ready = await self._run(tx, recover=recover)
        if ready:
            self.notify()
        elif fired and task.eta is not None:
            self._due_at(task.eta)
        return fired

    # --- workers ------------------------------------------------------------------------------------
    async def heartbeat(self, info: WorkerInfo) -> None:
        row = (info.id, info.last_heartbeat, encode(info))
        await self._run(lambda c: c.execute(UPSERT_WORKER, *row))

    async def remove_worker(self, worker_id: str) -> None:
        await self._run(lambda c: c.execute(DELETE_WORKER, worker_id))

    async def workers(self) -> list[WorkerInfo]:
        rows = await self._run(lambda c: c.fetch(GET_WORKERS))
        return [_decode_worker(r[0]) for r in rows]

    # --- results ------------------------------------------------------------------------------------
    async def put_results(self, results: Sequence[TaskResult]) -> None:
        latest: dict[str, TaskResult] = {}
        for r in results:
            if not isinstance(r, TaskResult):
                raise ConfigError(f"results must hold TaskResult, got {type(r).__name__}")
            latest[r.task_id] = r  # the last one wins, as a second put would
        if not latest:
            return
        rs = [latest[k] for k in sorted(latest)]  # one lock order: no deadlocks between batches
        cols = (
            [r.task_id for r in rs],
            [r.status.value for r in rs],
            [r.key for r in rs],
            [r.expires_at for r in rs],
            [r.finished_at for r in rs],
            [encode(r) for r in rs],
        )
        await self._run(lambda c: c.execute(PUT_RESULTS, *cols))

    async def get_result(self, task_id: str) -> TaskResult | None:
        row = await self._run(lambda c: c.fetchrow(GET_RESULT, task_id))
        return None if row is None else _decode_result(row[0])

    async def get_results(self, task_ids: Sequence[str]) -> dict[str, TaskResult]:
        if not task_ids:
            return {}
        ids = list(task_ids)
        rows = await self._run(lambda c: c.fetch(GET_RESULTS, ids))
        found = {r.task_id: r for r in (_decode_result(row[0]) for row in rows)}
        return {i: found[i] for i in ids if i in found}

    async def find_results(self, *, key_prefix: str) -> list[TaskResult]:
        if not isinstance(key_prefix, str):
            raise ConfigError(f"key_prefix must be a str, got {type(key_prefix).__name__}")
        pattern = _escape_like(key_prefix)
        rows = await self._run(lambda c: c.fetch(FIND_RESULTS, pattern))
        return [_decode_result(r[0]) for r in rows]

    async def delete_results(self, task_ids: Sequence[str]) -> int:
        if not task_ids:
            return 0
        ids = list(task_ids)
        return _rowcount(await self._run(lambda c: c.execute(DELETE_RESULTS, ids)))

    async def purge_results(self, *, now: float) -> int:
        return _rowcount(await self._run(lambda c: c.execute(PURGE_RESULTS, now)))

    # --- events -------------------------------------------------------------------------------------
    async def append_events(self, events: Sequence[TaskEvent]) -> None:
        for e in events:
            if not isinstance(e, TaskEvent):
                raise ConfigError(f"events must hold TaskEvent, got {type(e).__name__}")
        if not events:
            return
        cols = (
            [e.task_id for e in events],
            [str(e.type) for e in events],
            [e.timestamp for e in events],
            [e.worker for e in events],
            [e.queue for e in events],
            [e.detail for e in events],
        )

        async def append(conn: Any, op_id: str) -> None:
            await conn.execute(APPEND_EVENTS, *cols, op_id)  # records op_id in the same statement
            await conn.execute(NOTIFY, self.channel, EVENTS_PAYLOAD)  # subscribers elsewhere

        await self._run_op(append, lambda _: None)

    async def wait_for_events(self, timeout: float) -> None:
        """Return on the NOTIFY another process's ``append_events`` sends, or at ``timeout``."""
        await self._events_appended.wait(timeout)

    async def query_events(
        self,
        *,
        task_id: str | None = None,
        since: float | None = None,
        types: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> list[TaskEvent]:
        """``since`` is inclusive (``timestamp >= since``)."""
        where: list[str] = []
        params: list[Any] = []
        if task_id is not None:
            params.append(task_id)
            where.append(f"task_id = ${len(params)}")
        if since is not None:
            params.append(float(since))
            where.append(f"timestamp >= ${len(params)}")
        if types is not None:
            params.append([str(t) for t in ([types] if isinstance(types, str) else types)])
            where.append(f"type = ANY(${len(params)}::text[])")
        sql = QUERY_EVENTS
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY timestamp, seq"
        if limit is not None:
            params.append(int(limit))
            sql += f" LIMIT ${len(params)}"
        rows = await self._run(lambda c: c.fetch(sql, *params))
        return [
            TaskEvent(task_id=r[0], type=r[1], timestamp=r[2], worker=r[3], queue=r[4], detail=r[5])
            for r in rows
        ]

    async def purge_events(self, *, before: float) -> int:
        return _rowcount(await self._run(lambda c: c.execute(PURGE_EVENTS, before)))

    # --- blobs --------------------------------------------------------------------------------------
    async def put_blobs(self, blobs: Mapping[str, Blob], owner: str, *, now: float) -> int:
        """One transaction: owners, then which blobs are stored (locked FOR SHARE against a
        sweep), then the others, in digest order (two puts never wait on each other in a
        cycle). Only the missing blobs' bytes are sent."""
        given = check_blobs(blobs, owner)
        if not given:
            return 0
        ds = sorted(given)

        async def put(conn: Any) -> int:
            async with conn.transaction():
                await conn.execute(PUT_BLOB_OWNERS, ds, [owner] * len(ds), [now] * len(ds))
                stored = {r[0] for r in await conn.fetch(LOCK_STORED_BLOBS, ds)}
                written = 0
                for d in ds:
                    if d not in stored:
                        data = given[d]
                        size = await conn.fetchval(INSERT_BLOB, d, now, nbytes(data), data)
                        written += size or 0  # None: another put stored it first
                return written

        return await self._run(put)

    async def add_blob_owners(self, owners: Mapping[str, Sequence[str]], *, now: float) -> None:
        rows = sorted({(d, o) for o, ds in check_owners(owners).items() for d in ds})
        if not rows:
            return
        cols = ([d for d, _ in rows], [o for _, o in rows], [now] * len(rows))
        await self._run(lambda c: c.execute(PUT_BLOB_OWNERS, *cols))

    async def get_blobs(self, digests: Sequence[str]) -> dict[str, bytes]:
        ds = check_digests(digests)
        if not ds:
            return {}
        return dict(await self._run(lambda c: c.fetch(GET_BLOBS, ds)))

    async def missing_blobs(self, digests: Sequence[str]) -> set[str]:
        ds = check_digests(digests)
        if not ds:
            return set()
        rows = await self._run(lambda c: c.fetch(STORED_BLOBS, ds))
        return set(ds).difference(r[0] for r in rows)

    async def sweep_blobs(self, *, older_than: float) -> int:
        async def sweep(conn: Any) -> int:
            async with conn.transaction():
                await conn.execute(SWEEP_BLOB_OWNERS, older_than)
                doomed = [r[0] for r in await conn.fetch(LOCK_UNOWNED_BLOBS, older_than)]
                if not doomed:
                    return 0
                # a new statement, a new snapshot: owners a put committed meanwhile count
                return _rowcount(await conn.execute(DELETE_UNOWNED_BLOBS, doomed))

        return await self._run(sweep)


# --- helpers run on a connection -----------------------------------------------------------------


def _notify_payload(tasks: Sequence[Task], now: float) -> str:
    """NOTIFY payload: empty when a task is ready now, else the earliest eta (a float)."""
    etas = [t.eta for t in tasks if t.status is TaskStatus.PENDING and t.eta is not None]
    if any(t.status is TaskStatus.QUEUED for t in tasks) or not etas:
        return ""
    return repr(min(etas)) if min(etas) > now else ""


async def _insert_tasks(
    conn: Any, channel: str, tasks: Sequence[Task], blobs: dict[str, bytes], now: float
) -> bool:
    """Insert a validated batch (in the caller's transaction when it has dependencies) and NOTIFY
    when something is ready or delayed; True when some task is ready to claim at once."""
    deps = list({d for t in tasks for d in t.depends_on})
    known: dict[str, TaskStatus] = {}
    if deps:  # FOR SHARE: a dependency cannot finish unseen while its dependents go in
        known = {i: _STATUS[s] for i, s in await conn.fetch(LOCK_DEPENDENCIES, deps)}
    plans = plan_enqueue(tasks, known)
    ready = False
    delayed: list[float] = []
    dep_children: list[str] = []
    dep_parents: list[str] = []
    cols: tuple[list[Any], ...] = tuple([] for _ in range(13))
    for t, (status, waiting) in zip(tasks, plans, strict=True):
        row = (
            t.id, t.queue, t.priority, status.value, bool(waiting), t.eta, t.expires_at,
            t.max_deliveries, t.deliveries, t.attempts, t.created_at,
            now if status is TaskStatus.CANCELLED else None, blobs[t.id],
        )  # fmt: skip
        for col, value in zip(cols, row):
            col.append(value)
        if waiting:
            dep_children.extend(t.id for _ in waiting)
            dep_parents.extend(waiting)
        elif status is TaskStatus.QUEUED:
            ready = True
        elif status is TaskStatus.PENDING and t.eta is not None:
            delayed.append(t.eta)
    if ready or delayed:
        payload = "" if ready else repr(min(delayed))
        await conn.execute(INSERT_TASKS_NOTIFY, *cols, channel, payload)
    else:
        await conn.execute(INSERT_TASKS, *cols)
    if dep_children:
        await conn.execute(INSERT_DEPS, dep_children, dep_parents)
    return ready


__all__ = ["PgURL", "PostgresBackend", "channel_for", "describe", "parse_url"]
