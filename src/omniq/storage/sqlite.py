"""SQLite backend: task queue, result store and event store in one file (or ``:memory:``).

URLs: ``sqlite:///relative.db`` (three slashes: relative to the working directory),
``sqlite:////abs/path.db`` (four: absolute), ``sqlite://:memory:`` (private, in-process).

Several processes may share one file. WAL lets readers run beside the single writer,
``busy_timeout`` (30 s) makes a writer wait for the lock instead of failing with "database is
locked", and every write transaction starts with ``BEGIN IMMEDIATE``, so it takes the write lock
up front and can never fail half-way when upgrading a read lock. Polling paths (claim, reap,
expire) first look with a plain read and take the write lock only when there is work, so idle
workers do not queue up behind busy ones.

Threading: one daemon thread per backend owns a stdlib ``sqlite3`` connection and runs each
operation as ONE Python function (the whole transaction), so every call costs one hop between
the event loop and that thread. This is what aiosqlite does internally (``Connection._execute``)
at the same cost per call; we keep our own thread because aiosqlite's is not a daemon (an
unclosed backend, e.g. in a notebook, then holds up interpreter exit or prints "Event loop is
closed" tracebacks from its thread) and because ``_execute`` is private API. The hand-off uses
asyncio futures, so this backend needs an asyncio loop (as aiosqlite does).

Cross-process wake-ups: ``wait_for_tasks`` polls ``PRAGMA data_version`` (it changes when another
connection commits) with back-off from 2 ms to 50 ms, and looks for claimable work only when it
changed; an in-process ``notify`` wakes it at once.

Schema: the tasks table keeps the lease state as columns and the rest of the ``Task`` as a
msgpack blob; claim paths use partial indexes over QUEUED rows only, so finished tasks never
slow them down. FIFO within a priority follows the autoincrement ``seq``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import math
import os
import re
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from queue import SimpleQueue
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import msgspec

from ..errors import ConfigError, StorageError, StorageUnwritable
from ..models import Schedule, Task, TaskEvent, TaskResult, TaskStatus
from ._codec import decoder, encode
from .base import (
    EventStore,
    Finished,
    Overrun,
    Reaped,
    ResultStore,
    TaskQueue,
    WorkerInfo,
    check_claim,
    check_new_tasks,
    check_outcomes,
    check_owner,
    holds_key,
    keyed,
    masked,
    plan_enqueue,
    plan_keys,
    read_task_row,
)
from .base import unreadable_task as unreadable_task  # (stand-ins pickled before it moved)
from .blobs import Blob, check_blobs, check_digests, check_owners, nbytes

# --- schema --------------------------------------------------------------------------------------

SCHEMA_VERSION = 3  # 2: blobs, 3: idempotency keys (older files get the new tables on connect)

SCHEMA = """
CREATE TABLE IF NOT EXISTS omniq_tasks (
    seq              INTEGER PRIMARY KEY,  -- FIFO order (no AUTOINCREMENT: a page less per insert)
    id               TEXT NOT NULL UNIQUE,
    queue            TEXT NOT NULL,
    priority         INTEGER NOT NULL,
    status           TEXT NOT NULL,
    blocked          INTEGER NOT NULL DEFAULT 0,  -- 1 while a dependency has not succeeded
    eta              REAL,
    expires_at       REAL,
    worker           TEXT,
    lease_until      REAL,
    deliveries       INTEGER NOT NULL DEFAULT 0,
    max_deliveries   INTEGER NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created_at       REAL NOT NULL,
    finished_at      REAL,
    task             BLOB NOT NULL                -- msgpack Task, overridden by the columns above
);
CREATE INDEX IF NOT EXISTS omniq_tasks_ready
    ON omniq_tasks (priority DESC, seq) WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS omniq_tasks_ready_by_queue
    ON omniq_tasks (queue, priority DESC, seq) WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS omniq_tasks_due
    ON omniq_tasks (eta) WHERE status = 'pending' AND blocked = 0;
CREATE INDEX IF NOT EXISTS omniq_tasks_leases
    ON omniq_tasks (lease_until) WHERE status = 'running';
CREATE INDEX IF NOT EXISTS omniq_tasks_expiry
    ON omniq_tasks (expires_at) WHERE status IN ('queued', 'pending') AND expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS omniq_tasks_finished
    ON omniq_tasks (finished_at) WHERE finished_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS omniq_deps (  -- dependencies not yet succeeded when enqueued
    task_id TEXT NOT NULL,
    dep_id  TEXT NOT NULL,
    PRIMARY KEY (task_id, dep_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS omniq_deps_dep ON omniq_deps (dep_id);
CREATE TABLE IF NOT EXISTS omniq_keys (  -- idempotency keys: the latest task stored with each
    key     TEXT PRIMARY KEY,
    task_id TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS omniq_results (
    task_id     TEXT PRIMARY KEY,
    status      TEXT NOT NULL,
    key         TEXT,
    expires_at  REAL,
    finished_at REAL,
    result      BLOB NOT NULL                    -- msgpack TaskResult, payload bytes as-is
);
CREATE INDEX IF NOT EXISTS omniq_results_key ON omniq_results (key) WHERE key IS NOT NULL;
CREATE INDEX IF NOT EXISTS omniq_results_expiry
    ON omniq_results (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS omniq_events (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id   TEXT NOT NULL,
    type      TEXT NOT NULL,
    timestamp REAL NOT NULL,
    worker    TEXT,
    queue     TEXT,
    detail    TEXT
);
CREATE INDEX IF NOT EXISTS omniq_events_task ON omniq_events (task_id);
CREATE INDEX IF NOT EXISTS omniq_events_time ON omniq_events (timestamp);
CREATE TABLE IF NOT EXISTS omniq_schedules (
    id       TEXT PRIMARY KEY,
    next_run REAL,
    paused   INTEGER NOT NULL,
    schedule BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS omniq_workers (
    id             TEXT PRIMARY KEY,
    last_heartbeat REAL NOT NULL,
    info           BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS omniq_blobs (         -- large values, once each, by SHA-256
    digest     TEXT PRIMARY KEY,                 -- lowercase hex of the data's SHA-256
    created_at REAL NOT NULL,
    size       INTEGER NOT NULL,
    data       BLOB NOT NULL                     -- last: read only when asked for. Empty (with
);                                               -- size > 0) when the bytes are a file beside
                                                 -- the database (see SQLiteBackend.blob_path)
CREATE TABLE IF NOT EXISTS omniq_blob_owners (   -- who refers to each blob ('t:'/'r:' + task id)
    digest      TEXT NOT NULL,
    owner       TEXT NOT NULL,
    recorded_at REAL NOT NULL,
    PRIMARY KEY (digest, owner)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS omniq_blob_owners_time ON omniq_blob_owners (recorded_at)
"""

# --- queries, named after the operation ----------------------------------------------------------
# Literal statuses (not parameters) let SQLite match the partial indexes above.

# the layout ``task_from_row`` reads, then what an unreadable ``task`` blob is rebuilt from
TASK_COLUMNS = (
    "seq, task, status, worker, lease_until, deliveries, attempts, eta, cancel_requested, "
    "id, queue, priority, max_deliveries, created_at"
)
IDS = "(SELECT value FROM json_each(?))"  # a JSON array of ids: one parameter, one cached plan

INSERT_TASK = """INSERT INTO omniq_tasks (id, queue, priority, status, blocked, eta, expires_at,
    max_deliveries, deliveries, attempts, created_at, finished_at, task)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""
INSERT_QUEUED = """INSERT INTO omniq_tasks (id, queue, priority, status, expires_at, max_deliveries,
    created_at, task) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?)"""
INSERT_DEP = "INSERT OR IGNORE INTO omniq_deps (task_id, dep_id) VALUES (?, ?)"
TASK_STATUSES = f"SELECT id, status FROM omniq_tasks WHERE id IN {IDS}"
# each key's latest task, its status, and (when it has none, or succeeded) its result's status
KEY_HOLDERS = f"""SELECT k.key, k.task_id, t.status,
        CASE WHEN t.status IS NULL OR t.status = 'succeeded' THEN
        (SELECT r.status FROM omniq_results r WHERE r.task_id = k.task_id) END
    FROM omniq_keys k LEFT JOIN omniq_tasks t ON t.id = k.task_id WHERE k.key IN {IDS}"""
PUT_KEY = "INSERT OR REPLACE INTO omniq_keys (key, task_id) VALUES (?, ?)"
# keys whose task was purged, unless a stored success of it still holds them
PURGE_KEYS = """DELETE FROM omniq_keys WHERE NOT EXISTS (
        SELECT 1 FROM omniq_tasks t WHERE t.id = omniq_keys.task_id)
    AND NOT EXISTS (SELECT 1 FROM omniq_results r
        WHERE r.task_id = omniq_keys.task_id AND r.status = 'succeeded')"""
GET_TASK = f"SELECT {TASK_COLUMNS} FROM omniq_tasks WHERE id = ?"

# claim: a read first (no write lock when idle), then one UPDATE ... RETURNING takes the lease.
# ?1 worker, ?2 lease_until, ?3 now, ?4 limit, ?5.. queue names
CLAIMABLE = """SELECT EXISTS (SELECT 1 FROM omniq_tasks WHERE status = 'queued'
    AND (expires_at IS NULL OR expires_at > ?1)),
    (SELECT min(eta) FROM omniq_tasks WHERE status = 'pending' AND blocked = 0)"""
CLAIMABLE_IN = """SELECT EXISTS (SELECT 1 FROM omniq_tasks WHERE status = 'queued'
    AND queue IN (SELECT value FROM json_each(?2)) AND (expires_at IS NULL OR expires_at > ?1)),
    (SELECT min(eta) FROM omniq_tasks WHERE status = 'pending' AND blocked = 0)"""
NEXT_DUE = "SELECT min(eta) FROM omniq_tasks WHERE status = 'pending' AND blocked = 0"
PROMOTE_DUE = (
    "UPDATE omniq_tasks SET status = 'queued' WHERE status = 'pending' AND blocked = 0 AND eta <= ?"
)
_LEASE = (
    """UPDATE omniq_tasks
    SET status = 'running', worker = ?1, lease_until = ?2, deliveries = deliveries + 1
    WHERE seq IN ({pick})
    RETURNING """
    + TASK_COLUMNS
)
_PICK_ANY = """SELECT seq FROM omniq_tasks WHERE status = 'queued'
    AND (expires_at IS NULL OR expires_at > ?3) ORDER BY priority DESC, seq LIMIT ?4"""
_PICK_QUEUE = """SELECT seq, priority FROM omniq_tasks WHERE status = 'queued' AND queue = ?{n}
    AND (expires_at IS NULL OR expires_at > ?3) ORDER BY priority DESC, seq LIMIT ?4"""
CLAIM = _LEASE.format(pick=_PICK_ANY)

FINISH = """UPDATE omniq_tasks SET status = ?1, finished_at = ?2, lease_until = NULL
    WHERE id = ?3 AND status = 'running' AND worker = ?4"""
ANY_DEPS = "SELECT EXISTS (SELECT 1 FROM omniq_deps)"
DEPENDENTS = f"""SELECT d.task_id, d.dep_id, t.status FROM omniq_deps d
    JOIN omniq_tasks t ON t.id = d.dep_id WHERE d.dep_id IN {IDS}"""
RELEASE_DEPENDENT = f"""UPDATE omniq_tasks SET blocked = 0,
    status = CASE WHEN eta IS NULL OR eta <= ?1 THEN 'queued' ELSE 'pending' END
    WHERE id = ?2 AND status = 'pending' AND blocked = 1 AND NOT EXISTS (
        SELECT 1 FROM omniq_deps d JOIN omniq_tasks t ON t.id = d.dep_id
        WHERE d.task_id = ?2 AND t.status != 'succeeded')
    RETURNING {TASK_COLUMNS}"""
CANCEL_DEPENDENT = f"""UPDATE omniq_tasks SET status = 'cancelled', finished_at = ?1, blocked = 0
    WHERE id = ?2 AND status = 'pending' RETURNING {TASK_COLUMNS}"""
RETRY = """UPDATE omniq_tasks
    SET status = CASE WHEN ?1 <= ?5 THEN 'queued' ELSE 'pending' END, blocked = 0, eta = ?1,
    attempts = ?2, worker = NULL, lease_until = NULL
    WHERE id = ?3 AND status = 'running' AND worker = ?4"""
RELEASE = """UPDATE omniq_tasks SET status = 'queued', worker = NULL, lease_until = NULL,
    deliveries = max(deliveries - 1, 0)
    WHERE id IN (SELECT value FROM json_each(?1)) AND status = 'running' AND worker = ?2"""
EXTEND = """UPDATE omniq_tasks SET lease_until = ?1
    WHERE id IN (SELECT value FROM json_each(?2)) AND status = 'running' AND worker = ?3"""

LAPSED_LEASES = (
    "SELECT EXISTS (SELECT 1 FROM omniq_tasks WHERE status = 'running' AND lease_until < ?)"
)
OVERRUN = """SELECT id, queue, worker, lease_until FROM omniq_tasks
    WHERE status = 'running' AND lease_until < ? ORDER BY lease_until LIMIT ?"""
CANCEL_LAPSED = f"""UPDATE omniq_tasks SET status = 'cancelled', finished_at = ?1, lease_until = NULL
    WHERE status = 'running' AND lease_until < ?1 AND cancel_requested = 1 RETURNING {TASK_COLUMNS}"""
FAIL_LAPSED = f"""UPDATE omniq_tasks SET status = 'failed', finished_at = ?1, lease_until = NULL
    WHERE status = 'running' AND lease_until < ?1 AND deliveries >= max_deliveries
    RETURNING {TASK_COLUMNS}"""
REQUEUE_LAPSED = f"""UPDATE omniq_tasks SET status = 'queued', worker = NULL, lease_until = NULL
    WHERE status = 'running' AND lease_until < ?1 AND deliveries < max_deliveries
    RETURNING {TASK_COLUMNS}"""

EXPIRING = """SELECT EXISTS (SELECT 1 FROM omniq_tasks WHERE expires_at IS NOT NULL
    AND expires_at <= ?1 AND status IN ('queued', 'pending'))"""
EXPIRE = f"""UPDATE omniq_tasks SET status = 'expired', finished_at = ?1, blocked = 0
    WHERE expires_at IS NOT NULL AND expires_at <= ?1 AND status IN ('queued', 'pending')
    RETURNING {TASK_COLUMNS}"""

CANCEL_WAITING = """UPDATE omniq_tasks SET status = 'cancelled', finished_at = ?1, blocked = 0
    WHERE id IN (SELECT value FROM json_each(?2)) AND status IN ('queued', 'pending') RETURNING id"""
REQUEST_CANCEL = (
    f"UPDATE omniq_tasks SET cancel_requested = 1 WHERE id IN {IDS} AND status = 'running'"
)
CANCEL_REQUESTS = f"""SELECT id FROM omniq_tasks
    WHERE id IN {IDS} AND status = 'running' AND cancel_requested = 1"""
COUNTS = "SELECT queue, status, count(*) FROM omniq_tasks GROUP BY queue, status"
OLDEST_QUEUED = (
    "SELECT queue, min(created_at) FROM omniq_tasks WHERE status = 'queued' GROUP BY queue"
)
PURGE_TASKS = (
    "DELETE FROM omniq_tasks WHERE finished_at IS NOT NULL AND finished_at < ? RETURNING id"
)
PURGE_DEPS = f"DELETE FROM omniq_deps WHERE task_id IN {IDS}"

UPSERT_SCHEDULE = """INSERT INTO omniq_schedules (id, next_run, paused, schedule) VALUES (?, ?, ?, ?)
    ON CONFLICT (id) DO UPDATE SET next_run = excluded.next_run, paused = excluded.paused,
    schedule = excluded.schedule"""
GET_SCHEDULE = "SELECT schedule FROM omniq_schedules WHERE id = ?"
GET_SCHEDULES = "SELECT schedule FROM omniq_schedules ORDER BY rowid"
DELETE_SCHEDULE = "DELETE FROM omniq_schedules WHERE id = ?"

UPSERT_WORKER = "INSERT OR REPLACE INTO omniq_workers (id, last_heartbeat, info) VALUES (?, ?, ?)"
DELETE_WORKER = "DELETE FROM omniq_workers WHERE id = ?"
GET_WORKERS = "SELECT info FROM omniq_workers ORDER BY id"

PUT_BLOB_OWNER = """INSERT INTO omniq_blob_owners (digest, owner, recorded_at) VALUES (?, ?, ?)
    ON CONFLICT (digest, owner) DO UPDATE SET recorded_at = max(recorded_at, excluded.recorded_at)"""
STORED_BLOBS = f"SELECT digest FROM omniq_blobs WHERE digest IN {IDS}"  # the key index alone
INSERT_BLOB = """INSERT INTO omniq_blobs (digest, created_at, size, data) VALUES (?, ?, ?, ?)
    ON CONFLICT (digest) DO NOTHING"""
GET_BLOBS = f"SELECT digest, data, size FROM omniq_blobs WHERE digest IN {IDS}"
DOOMED_BLOBS = """SELECT digest FROM omniq_blobs WHERE created_at < ?1 AND length(data) < size AND NOT EXISTS (
    SELECT 1 FROM omniq_blob_owners o WHERE o.digest = omniq_blobs.digest)"""
# owners recorded before ?1 that are neither an unfinished task nor a stored result
SWEEP_BLOB_OWNERS = """DELETE FROM omniq_blob_owners WHERE recorded_at < ?1
    AND NOT (substr(owner, 1, 2) = 't:' AND EXISTS (SELECT 1 FROM omniq_tasks t
        WHERE t.id = substr(omniq_blob_owners.owner, 3)
        AND t.status IN ('pending', 'queued', 'running')))
    AND NOT (substr(owner, 1, 2) = 'r:' AND EXISTS (SELECT 1 FROM omniq_results r
        WHERE r.task_id = substr(omniq_blob_owners.owner, 3)))"""
SWEEP_BLOBS = """DELETE FROM omniq_blobs WHERE created_at < ?1 AND NOT EXISTS (
    SELECT 1 FROM omniq_blob_owners o WHERE o.digest = omniq_blobs.digest)"""

PUT_RESULT = """INSERT OR REPLACE INTO omniq_results
    (task_id, status, key, expires_at, finished_at, result) VALUES (?, ?, ?, ?, ?, ?)"""
GET_RESULT = "SELECT result FROM omniq_results WHERE task_id = ?"
GET_RESULTS = f"SELECT result FROM omniq_results WHERE task_id IN {IDS}"
FIND_RESULTS = "SELECT result FROM omniq_results WHERE key >= ?1 AND key < ?2 ORDER BY key"
FIND_RESULTS_FROM = "SELECT result FROM omniq_results WHERE key >= ?1 ORDER BY key"
DELETE_RESULTS = f"DELETE FROM omniq_results WHERE task_id IN {IDS}"
PURGE_RESULTS = "DELETE FROM omniq_results WHERE expires_at IS NOT NULL AND expires_at <= ?"

APPEND_EVENT = """INSERT INTO omniq_events (task_id, type, timestamp, worker, queue, detail)
    VALUES (?, ?, ?, ?, ?, ?)"""
QUERY_EVENTS = "SELECT task_id, type, timestamp, worker, queue, detail FROM omniq_events"
PURGE_EVENTS = "DELETE FROM omniq_events WHERE timestamp < ?"


@functools.lru_cache(maxsize=32)
def claim_sql(n_queues: int) -> str:
    """The claim statement for ``n_queues`` named queues: the best ``limit`` rows of each queue
    (an index range each), merged and cut to ``limit``, leased by one UPDATE."""
    if n_queues == 1:
        return _LEASE.format(pick=_PICK_QUEUE.format(n=5).replace("seq, priority", "seq", 1))
    parts = " UNION ALL ".join(
        f"SELECT * FROM ({_PICK_QUEUE.format(n=5 + i)})" for i in range(n_queues)
    )
    return _LEASE.format(pick=f"SELECT seq FROM ({parts}) ORDER BY priority DESC, seq LIMIT ?4")


# --- encoding ------------------------------------------------------------------------------------

_decode_result = decoder(TaskResult).decode
_decode_schedule = decoder(Schedule).decode
_decode_worker = decoder(WorkerInfo).decode
_json = msgspec.json.Encoder()
_STATUS = {s.value: s for s in TaskStatus}


def _ids(ids: Sequence[str]) -> str:
    return _json.encode(list(ids)).decode()


def _tasks(rows: list[Any]) -> list[Task]:
    """Tasks in enqueue order (RETURNING gives rows in no defined order)."""
    rows.sort(key=_seq)
    return [read_task_row(r) for r in rows]


def _seq(row: Sequence[Any]) -> int:
    return int(row[0])


def _prefix_end(prefix: str) -> str | None:
    """The smallest string above every string starting with ``prefix`` (None: no bound)."""
    while prefix:
        last = ord(prefix[-1])
        if last < 0x10FFFF:
            nxt = last + 1 if last + 1 != 0xD800 else 0xE000  # skip surrogates (not UTF-8)
            return prefix[:-1] + chr(nxt)
        prefix = prefix[:-1]
    return None


def parse_url(url: str) -> str:
    """The database path of a ``sqlite://`` URL, or ``":memory:"``."""
    if not isinstance(url, str) or not url.lower().startswith("sqlite://"):
        raise ConfigError(f"not a sqlite:// URL: {url!r}")
    rest = url[len("sqlite://") :]
    if rest in ("", ":memory:", "/:memory:"):
        return ":memory:"
    if "?" in rest:
        raise ConfigError(f"sqlite URL {masked(url)!r} takes no query parameters")
    if not rest.startswith("/"):
        raise ConfigError(
            f"sqlite URL {masked(url)!r} has no path: use sqlite:///relative.db (three slashes), "
            "sqlite:////absolute/path.db (four) or sqlite://:memory:"
        )
    path = rest[1:]
    if not path or path.endswith("/"):
        raise ConfigError(f"sqlite URL {masked(url)!r} names a directory, not a database file")
    return path


# --- errors in plain words -----------------------------------------------------------------------

# primary result codes (``sqlite3.Error.sqlite_errorcode & 0xFF``)
SQLITE_READONLY, SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN = 8, 10, 13, 14
# Python 3.10's sqlite3 errors carry no code: SQLite's own text for each (sqlite3_errstr)
_CODE_OF_MESSAGE = {
    "attempt to write a readonly database": SQLITE_READONLY,
    "disk I/O error": SQLITE_IOERR,
    "database or disk is full": SQLITE_FULL,
    "unable to open database file": SQLITE_CANTOPEN,
}
NEARLY_FULL = 256 * 1024  # bytes free under which an I/O error is blamed on a full disk


def why_unwritable(path: str) -> str | None:
    """Why the database file at ``path`` cannot be written, if its file system says so: a
    read-only mount, a read-only file or directory, or a (nearly) full disk. ``None``: no
    reason visible from here. ``os.access`` honours read-only mounts even for root."""
    if path == ":memory:":
        return None
    parent = os.path.dirname(os.path.abspath(path))
    try:
        st = os.statvfs(parent)
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        return "the database is read-only: its file system is mounted read-only"
    if os.path.exists(path) and not os.access(path, os.W_OK):
        return "the database file is read-only"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"the database is read-only: its directory {parent} is not writable"
    free = st.f_bavail * st.f_frsize
    if free < NEARLY_FULL:
        return f"the disk is full ({free} bytes free)"
    return None


def storage_error(url: str, path: str, e: sqlite3.Error) -> StorageError:
    """An SQLite error as a sentence naming the URL; a write refused by the file system (full
    disk, read-only file or mount) says so instead of SQLite's terse words, as
    ``StorageUnwritable``."""
    code = getattr(e, "sqlite_errorcode", None)  # from Python 3.11
    if code is None:
        code = _CODE_OF_MESSAGE.get(str(e), 0)
    code &= 0xFF
    why = None
    if code == SQLITE_FULL:
        why = why_unwritable(path) or "the disk is full"
    elif code in (SQLITE_READONLY, SQLITE_CANTOPEN, SQLITE_IOERR):
        why = why_unwritable(path)
        if why is None and code == SQLITE_READONLY:
            why = "the database is read-only"
    if why is None:
        return StorageError(f"SQLite {masked(url)}: {e}")
    return StorageUnwritable(f"cannot write to SQLite {masked(url)}: {why} (SQLite said: {e})")


# --- the connection thread -----------------------------------------------------------------------

T = TypeVar("T")


def _deliver(fut: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if fut.done():  # the caller was cancelled; the work was done anyway
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


class _Connection:
    """A daemon thread that owns one sqlite3 connection and runs functions on it in order."""

    def __init__(self, path: str, name: str) -> None:
        self._path = path
        self._jobs: SimpleQueue[
            tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]] | None
        ]
        self._jobs = SimpleQueue()
        self._conn: sqlite3.Connection | None = None
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                break
            fn, args, fut = job
            result: Any = None
            error: BaseException | None = None
            try:
                if self._conn is None:
                    self._conn = sqlite3.connect(
                        self._path, timeout=30.0, isolation_level=None, cached_statements=256
                    )
                result = fn(self._conn, *args)
            except BaseException as e:
                error = e
            try:
                fut.get_loop().call_soon_threadsafe(_deliver, fut, result, error)
            except RuntimeError:
                pass  # the loop is closed: nobody is waiting any more
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._jobs.put((fn, args, fut))
        return await fut

    async def close(self) -> None:
        self._jobs.put(None)
        await anyio.to_thread.run_sync(self._thread.join, 10.0)


class _ThreadConnection:
    """A producer thread's own connection. It lives in that thread's ``threading.local``: when
    the thread ends, this goes and closes it (the backend keeps only a weak reference)."""

    __slots__ = ("__weakref__", "conn")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()

    def __del__(self) -> None:
        self.close()


def _transaction(conn: sqlite3.Connection, fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(conn, *args)`` inside ``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back on error)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn, *args)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


def _setup(conn: sqlite3.Connection, wal: bool) -> None:
    conn.execute("PRAGMA busy_timeout = 30000")
    if wal:
        deadline = time.monotonic() + 30.0
        while True:  # switching to WAL needs a moment alone with a brand-new file
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        if str(mode).lower() != "wal":
            raise StorageError(f"SQLite refused WAL journal mode (got {mode!r})")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA temp_store = MEMORY")
    if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"database schema version {version} is newer than this OmniQ supports "
                f"({SCHEMA_VERSION}); upgrade omniq"
            )
        for statement in SCHEMA.split(";"):  # no ";" inside the schema's comments
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


# RETURNING needs SQLite >= 3.35 (2021). Older libraries (e.g. Debian 11, Ubuntu 20.04) get the
# same statements emulated inside one write transaction: select the rows, change them by seq,
# read them back. The contract tests run both paths.
HAS_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)
_UPDATE_RE = re.compile(
    r"UPDATE omniq_tasks\s+SET\s+(?P<set>.*?)\s+WHERE\s+(?P<where>.*)\s+RETURNING\s+(?P<cols>.*)",
    re.S,
)
_DELETE_RE = re.compile(
    r"DELETE FROM omniq_tasks\s+WHERE\s+(?P<where>.*)\s+RETURNING\s+(?P<cols>.*)", re.S
)


def _returning(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[Any]:
    """Rows of an ``UPDATE``/``DELETE ... RETURNING`` on the tasks table, on any SQLite."""
    if HAS_RETURNING:
        return conn.execute(sql, params).fetchall()
    if not conn.in_transaction:
        return _transaction(conn, _returning, sql, params)
    m = _UPDATE_RE.match(sql.strip()) or _DELETE_RE.match(sql.strip())
    if m is None:  # pragma: no cover - every statement above matches one of the two forms
        raise StorageError(f"cannot emulate RETURNING for: {sql}")
    seqs = [r[0] for r in conn.execute(f"SELECT seq FROM omniq_tasks WHERE {m['where']}", params)]
    if not seqs:
        return []
    chosen = _json.encode(seqs).decode()
    read = f"SELECT {m['cols']} FROM omniq_tasks WHERE seq IN (SELECT value FROM json_each(?))"
    if "set" not in m.groupdict():
        rows = conn.execute(read, (chosen,)).fetchall()
        conn.execute(
            "DELETE FROM omniq_tasks WHERE seq IN (SELECT value FROM json_each(?))", (chosen,)
        )
        return rows
    k = len(params) + 1
    conn.execute(
        f"UPDATE omniq_tasks SET {m['set']} WHERE seq IN (SELECT value FROM json_each(?{k}))",
        (*params, chosen),
    )
    return conn.execute(read, (chosen,)).fetchall()


# --- operations run in the connection thread (one call = one hop) --------------------------------


def _writable(t: Task) -> bool:
    """Whether ``_insert_alike`` can write ``t``'s shared values into SQL text."""
    return "\x00" not in t.queue and all(
        v is None or math.isfinite(v) for v in (t.expires_at, t.created_at)
    )


def _insert_alike(t: Task) -> str:
    """``INSERT_QUEUED`` with every value but id and task written in: numbers as literals, the
    queue name as a quoted string (binding a value costs as much as a third of a row's insert)."""
    queue = "'" + t.queue.replace("'", "''") + "'"
    expires = "NULL" if t.expires_at is None else repr(float(t.expires_at))
    return (
        "INSERT INTO omniq_tasks (id, queue, priority, status, expires_at, max_deliveries, created_at, task) "
        f"VALUES (?, {queue}, {int(t.priority)}, 'queued', {expires}, {int(t.max_deliveries)}, "
        f"{float(t.created_at)!r}, ?)"
    )


def _insert_tasks(conn: sqlite3.Connection, tasks: Sequence[Task], now: float) -> bool:
    """Insert a validated batch; True when some task is ready to claim at once."""
    deps = {d for t in tasks for d in t.depends_on}
    known: dict[str, TaskStatus] = {}
    if deps:
        known = {i: _STATUS[s] for i, s in conn.execute(TASK_STATUSES, (_ids(list(deps)),))}
    plain = (TaskStatus.QUEUED, TaskStatus.PENDING)  # pending with no eta nor deps: queued
    dep_rows: list[tuple[str, str]] = []
    rows: list[tuple[Any, ...]]
    if not deps and all(
        t.status in plain and t.eta is None and not t.deliveries and not t.attempts for t in tasks
    ):  # the usual batch (submit, map, sweep), all queued at once: 7 values a row to bind, not 13
        first = tasks[0]
        q, p, e, m, c = first.queue, first.priority, first.expires_at, first.max_deliveries, first.created_at
        if len(tasks) > 100 and _writable(first) and all(  # (the very objects: copies of one template)
            t.created_at is c and t.queue is q and t.priority is p and t.expires_at is e and t.max_deliveries is m
            for t in tasks
        ):  # one map or sweep: what its tasks share is written once into the statement
            sql = _insert_alike(first)
            rows = [(t.id, encode(t)) for t in tasks]
        else:
            sql = INSERT_QUEUED
            rows = [
                (t.id, t.queue, t.priority, t.expires_at, t.max_deliveries, t.created_at, encode(t))
                for t in tasks
            ]
        ready = True
    else:
        sql = INSERT_TASK
        rows = []
        ready = False
        for t, (status, waiting) in zip(tasks, plan_enqueue(tasks, known), strict=True):
            rows.append((
                t.id, t.queue, t.priority, status.value, 1 if waiting else 0, t.eta, t.expires_at,
                t.max_deliveries, t.deliveries, t.attempts, t.created_at,
                now if status is TaskStatus.CANCELLED else None, encode(t),
            ))  # fmt: skip
            if waiting:
                dep_rows.extend((t.id, d) for d in waiting)
            elif status is TaskStatus.QUEUED:
                ready = True
    try:
        conn.executemany(sql, rows)
    except sqlite3.IntegrityError:
        taken = [i for i, _ in conn.execute(TASK_STATUSES, (_ids([t.id for t in tasks]),))]
        if taken:
            raise ConfigError(f"task id {taken[0]!r} already exists") from None
        raise
    if dep_rows:
        conn.executemany(INSERT_DEP, dep_rows)
    return ready


def _enqueue(
    conn: sqlite3.Connection, tasks: Sequence[Task], now: float, results_here: bool = False
) -> tuple[bool, dict[str, str]]:
    """``_insert_tasks`` with idempotency keys (in the caller's write transaction): tasks
    whose key is held are left out; returns (something ready, {duplicate id: holder id})."""
    keys = keyed(tasks)
    if not keys:
        return _insert_tasks(conn, tasks, now), {}
    holders: dict[str, str] = {}
    gone: list[str] = []  # holders known only by their stored success
    for key, tid, st, rst in conn.execute(KEY_HOLDERS, (_ids(keys),)):
        if holds_key(_STATUS[st] if st is not None else None, rst == "succeeded", results_here):
            holders[key] = tid
            if st is None:
                gone.append(tid)
    store, dups = plan_keys(tasks, holders, gone)
    ready = _insert_tasks(conn, store, now) if store else False
    conn.executemany(PUT_KEY, [(t.key, t.id) for t in store if t.key is not None])
    return ready, dups


def _resolve(conn: sqlite3.Connection, ids: Sequence[str], now: float) -> Finished:
    """Release or cancel (transitively) the dependents of tasks that just became final."""
    out = Finished()
    frontier = list(ids)
    while frontier:
        rows = conn.execute(DEPENDENTS, (_ids(frontier),)).fetchall()
        frontier = []
        check: dict[str, None] = {}
        for child, dep, dep_status in rows:
            if dep_status == "succeeded":
                check[child] = None
            elif dep_status in ("failed", "cancelled", "expired"):
                rows_ = _returning(conn, CANCEL_DEPENDENT, (now, child))
                if rows_:
                    row = rows_[0]
                    out.cancelled.append((read_task_row(row), dep))
                    frontier.append(child)
        for child in check:
            rows_ = _returning(conn, RELEASE_DEPENDENT, (now, child))
            if rows_:
                row = rows_[0]
                out.released.append(read_task_row(row))
    return out


def _resolve_if_deps(conn: sqlite3.Connection, ids: Sequence[str], now: float) -> Finished:
    if not ids or not conn.execute(ANY_DEPS).fetchone()[0]:
        return Finished()
    return _resolve(conn, ids, now)


def _create_private(path: str) -> None:
    """Create the database file 0600 (umask-independent) unless it exists; SQLite gives its
    ``-wal`` and ``-shm`` the database file's mode. ``O_EXCL`` never follows a symlink; a
    dangling symlink in its place is refused rather than followed."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except FileExistsError:
        if os.path.islink(path) and not os.path.exists(path):
            msg = f"{path} is a symlink to nothing: not creating a database through it"
            raise OSError(msg) from None
        return
    except OSError as e:
        if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT):
            return  # SQLite's own error (StorageUnwritable) says it better
        raise
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


class SQLiteBackend(TaskQueue, ResultStore, EventStore):
    """Task queue, result store and event store sharing one SQLite connection and schema."""

    def __init__(self, url: str = "sqlite://:memory:") -> None:
        super().__init__()
        self.url = url
        self.path = parse_url(url)
        self.in_memory = self.path == ":memory:"
        self.cross_process_wakeups = not self.in_memory
        self._conn: _Connection | None = None
        self._seen_version: int | None = None  # PRAGMA data_version at the last look
        self._next_due: float | None = None  # earliest eta of a delayed task, last we looked
        self._watched: set[str] | None = set()  # queues claimed from (None: all)
        self.blocking_enqueue = not self.in_memory  # ":memory:" is one database per connection
        # enqueue_blocking: a connection per calling thread (closed when the thread ends or at
        # close()), and a gate so close() never closes one in use
        self._local = threading.local()
        self._holders: weakref.WeakSet[_ThreadConnection] = weakref.WeakSet()
        self._blocking = threading.Condition()
        self._blocking_open = False
        self._blocking_busy = 0
        # large blobs live as files beside the database: written once, outside the write lock,
        # no WAL copy, and local readers map them in place
        self.blob_dir = None if self.in_memory else os.path.abspath(self.path) + "-blobs"

    # --- lifecycle ----------------------------------------------------------------------------------
    async def _open(self) -> None:
        if not self.in_memory:
            parent = os.path.dirname(os.path.abspath(self.path))
            try:
                os.makedirs(parent, exist_ok=True)
                _create_private(self.path)
            except OSError as e:
                raise StorageError(f"cannot create {parent!r} for {masked(self.url)}: {e}") from e
            check_owner(self.path, self.url)
        self._conn = _Connection(self.path, name=f"omniq-sqlite:{os.path.basename(self.path)}")
        try:
            await self._call(_setup, not self.in_memory)
        except BaseException:
            conn, self._conn = self._conn, None
            await conn.close()
            raise
        with self._blocking:
            self._blocking_open = True

    async def _close(self) -> None:
        with self._blocking:  # no new enqueue_blocking; wait for those in progress
            self._blocking_open = False
            busy = self._blocking_busy
        if busy:
            await anyio.to_thread.run_sync(self._blocking_idle)
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()
        holders, self._holders = list(self._holders), weakref.WeakSet()
        self._local = threading.local()
        for h in holders:
            h.close()

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(sqlite3_connection, *args)`` in the connection thread; errors become ours."""
        conn = self._conn
        if conn is None:
            raise StorageError(f"{masked(self.url)} is not connected: call connect() first")
        try:
            return await conn.call(fn, *args)
        except sqlite3.Error as e:
            raise storage_error(self.url, self.path, e) from e

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` as one ``BEGIN IMMEDIATE`` transaction in the connection thread."""
        return await self._call(_transaction, fn, *args)

    # --- tasks ----------------------------------------------------------------------------------------
    async def enqueue(self, tasks: Sequence[Task]) -> dict[str, str]:
        check_new_tasks(tasks)
        if not tasks:
            return {}
        ready, dups = await self._write(_enqueue, tasks, time.time(), self.results_here)
        if ready:
            self.notify()
        for t in tasks:
            if t.eta is not None and t.id not in dups:
                self._due_at(t.eta)
        return dups

    def enqueue_blocking(self, tasks: Sequence[Task]) -> bool | None:
        """One transaction on a connection of the calling thread's own (WAL lets it write
        beside the connection thread's): a durable single enqueue costs a commit, not two
        thread hops. None once ``close`` has begun (``close`` waits for calls in progress)."""
        check_new_tasks(tasks)
        if any(t.key is not None for t in tasks):
            return None  # duplicates need an answer this call does not give: use enqueue()
        with self._blocking:
            if not self._blocking_open:
                return None
            self._blocking_busy += 1
        try:
            holder = getattr(self._local, "holder", None)
            if holder is None:
                holder = _ThreadConnection(
                    sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
                )
                self._local.holder = holder
                self._holders.add(holder)
                holder.conn.execute("PRAGMA busy_timeout = 30000")
                holder.conn.execute("PRAGMA synchronous = NORMAL")
            return _transaction(holder.conn, _insert_tasks, tasks, time.time())
        except sqlite3.Error as e:
            raise storage_error(self.url, self.path, e) from e
        finally:
            with self._blocking:
                self._blocking_busy -= 1
                self._blocking.notify_all()

    def _blocking_idle(self, timeout: float = 60.0) -> None:
        with self._blocking:
            self._blocking.wait_for(lambda: self._blocking_busy == 0, timeout)

    def after_blocking_enqueue(self, tasks: Sequence[Task], ready: bool) -> None:
        if ready:
            self.notify()
        for t in tasks:
            if t.eta is not None:
                self._due_at(t.eta)

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
        if names is None:
            self._watched = None
        elif self._watched is not None:
            self._watched.update(names)
        if limit == 0 or names == []:
            return []
        check_params: tuple[Any, ...]
        if names is None:
            params: tuple[Any, ...] = (worker, now + lease, now, limit)
            sql, check, check_params = CLAIM, CLAIMABLE, (now,)
        else:
            params = (worker, now + lease, now, limit, *names)
            sql, check, check_params = claim_sql(len(names)), CLAIMABLE_IN, (now, _ids(names))
        rows = await self._call(self._claim, sql, params, check, check_params, now)
        claimed = [(read_task_row(r), r[0]) for r in rows]
        claimed.sort(key=lambda ts: (-ts[0].priority, ts[1]))  # RETURNING has no order
        return [t for t, _ in claimed]

    def _claim(
        self,
        conn: sqlite3.Connection,
        sql: str,
        params: tuple[Any, ...],
        check: str,
        check_params: tuple[Any, ...],
        now: float,
    ) -> list[Any]:
        self._seen_version = conn.execute("PRAGMA data_version").fetchone()[0]
        ready, next_due = conn.execute(check, check_params).fetchone()
        if next_due is not None and next_due <= now:
            conn.execute(PROMOTE_DUE, (now,))  # one statement: atomic without BEGIN
            next_due = conn.execute(NEXT_DUE).fetchone()[0]
            ready = True
        self._next_due = next_due
        if not ready:
            return []
        return _returning(conn, sql, params)

    async def finish(
        self, worker: str, outcomes: Sequence[tuple[str, TaskStatus]], *, now: float
    ) -> Finished:
        check_outcomes(outcomes)
        if not outcomes:
            return Finished()
        out = await self._write(self._finish, worker, outcomes, now)
        if out.released:
            self.notify()
        return out

    @staticmethod
    def _finish(
        conn: sqlite3.Connection,
        worker: str,
        outcomes: Sequence[tuple[str, TaskStatus]],
        now: float,
    ) -> Finished:
        conn.executemany(FINISH, [(s.value, now, i, worker) for i, s in outcomes])
        return _resolve_if_deps(conn, [i for i, _ in outcomes], now)

    async def retry(self, worker: str, task_id: str, *, eta: float, attempts: int) -> None:
        now = time.time()  # retry has no ``now``: the wall clock decides QUEUED or PENDING
        if await self._call(_execute, RETRY, (eta, attempts, task_id, worker, now)):
            if eta <= now:
                self.notify()
            else:
                self._due_at(eta)

    async def release(self, worker: str, task_ids: Sequence[str]) -> None:
        if not task_ids:
            return
        changed: int = await self._call(_execute, RELEASE, (_ids(task_ids), worker))
        if changed:
            self.notify()

    async def extend(self, worker: str, task_ids: Sequence[str], *, lease_until: float) -> None:
        if task_ids:
            await self._call(_execute, EXTEND, (lease_until, _ids(task_ids), worker))

    async def overrun(self, *, now: float, limit: int = 100) -> list[Overrun]:
        rows = await self._call(_fetchall, OVERRUN, (now, limit))
        return [Overrun(task_id=r[0], queue=r[1], worker=r[2], lease_until=r[3]) for r in rows]

    async def reap(self, *, now: float) -> Reaped:
        out = await self._call(self._reap, now)
        if out.requeued:
            self.notify()
        return out

    @staticmethod
    def _reap(conn: sqlite3.Connection, now: float) -> Reaped:
        if not conn.execute(LAPSED_LEASES, (now,)).fetchone()[0]:
            return Reaped(requeued=[], dead=[])

        def tx(conn: sqlite3.Connection) -> Reaped:
            cancelled = _tasks(_returning(conn, CANCEL_LAPSED, (now,)))
            dead = _tasks(_returning(conn, FAIL_LAPSED, (now,)))
            requeued = _tasks(_returning(conn, REQUEUE_LAPSED, (now,)))
            out = Reaped(requeued=requeued, dead=dead, cancelled=[(t, t.id) for t in cancelled])
            ended = [t.id for t in cancelled] + [t.id for t in dead]
            out.cancelled.extend(_resolve_if_deps(conn, ended, now).cancelled)
            return out

        return _transaction(conn, tx)

    async def expire(self, *, now: float) -> list[Task]:
        return await self._call(self._expire, now)

    @staticmethod
    def _expire(conn: sqlite3.Connection, now: float) -> list[Task]:
        if not conn.execute(EXPIRING, (now,)).fetchone()[0]:
            return []

        def tx(conn: sqlite3.Connection) -> list[Task]:
            expired = _tasks(_returning(conn, EXPIRE, (now,)))
            cascade = _resolve_if_deps(conn, [t.id for t in expired], now)
            return expired + [t for t, _ in cascade.cancelled]

        return _transaction(conn, tx)

    async def cancel(self, task_ids: Sequence[str], *, now: float) -> dict[str, TaskStatus]:
        if not task_ids:
            return {}
        return await self._write(self._cancel, list(dict.fromkeys(task_ids)), now)

    @staticmethod
    def _cancel(conn: sqlite3.Connection, task_ids: list[str], now: float) -> dict[str, TaskStatus]:
        ids = _ids(task_ids)
        found = dict(conn.execute(TASK_STATUSES, (ids,)).fetchall())
        before = {i: _STATUS[found[i]] for i in task_ids if i in found}
        ended = [r[0] for r in _returning(conn, CANCEL_WAITING, (now, ids))]
        conn.execute(REQUEST_CANCEL, (ids,))
        for t, _ in _resolve_if_deps(conn, ended, now).cancelled:
            before[t.id] = TaskStatus.PENDING
        return before

    async def get_task(self, task_id: str) -> Task | None:
        row = await self._call(_fetchone, GET_TASK, (task_id,))
        return None if row is None else read_task_row(row)

    async def statuses(self, task_ids: Sequence[str]) -> dict[str, TaskStatus]:
        if not task_ids:
            return {}
        rows = await self._call(_fetchall, TASK_STATUSES, (_ids(task_ids),))
        return {i: _STATUS[s] for i, s in rows}

    async def cancel_requests(self, task_ids: Sequence[str]) -> list[str]:
        if not task_ids:
            return []
        rows = await self._call(_fetchall, CANCEL_REQUESTS, (_ids(task_ids),))
        return [r[0] for r in rows]

    async def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for queue, status, n in await self._call(_fetchall, COUNTS, ()):
            out.setdefault(queue, {})[status] = n
        return out

    async def oldest_queued(self) -> dict[str, float]:
        return dict(await self._call(_fetchall, OLDEST_QUEUED, ()))

    async def purge(self, *, before: float) -> int:
        return await self._write(self._purge, before)

    @staticmethod
    def _purge(conn: sqlite3.Connection, before: float) -> int:
        gone = [r[0] for r in _returning(conn, PURGE_TASKS, (before,))]
        if gone:
            conn.execute(PURGE_DEPS, (_ids(gone),))
            conn.execute(PURGE_KEYS)
        return len(gone)

    # --- schedules ----------------------------------------------------------------------------------
    async def add_schedule(self, schedule: Schedule) -> None:
        row = (schedule.id, schedule.next_run, int(schedule.paused), encode(schedule))
        await self._call(_execute, UPSERT_SCHEDULE, row)

    async def get_schedules(self) -> list[Schedule]:
        return [_decode_schedule(r[0]) for r in await self._call(_fetchall, GET_SCHEDULES, ())]

    async def set_schedule_paused(
        self, schedule_id: str, paused: bool, next_run: float | None
    ) -> bool:
        def tx(conn: sqlite3.Connection) -> bool:
            row = conn.execute(GET_SCHEDULE, (schedule_id,)).fetchone()
            if row is None:
                return False
            s = _decode_schedule(row[0])
            s.paused = paused
            if not paused or next_run is not None:
                s.next_run = next_run
            conn.execute(UPSERT_SCHEDULE, (s.id, s.next_run, int(s.paused), encode(s)))
            return True

        return await self._write(tx)

    async def delete_schedule(self, schedule_id: str) -> bool:
        return bool(await self._call(_execute, DELETE_SCHEDULE, (schedule_id,)))

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

        def tx(conn: sqlite3.Connection) -> tuple[bool, bool]:
            row = conn.execute(GET_SCHEDULE, (schedule_id,)).fetchone()
            if row is None:
                return False, False
            s = _decode_schedule(row[0])
            if s.paused or s.next_run != expected_next_run:
                return False, False
            ready = _insert_tasks(conn, [task], now)
            s.next_run, s.last_run, s.last_task_id = next_run, now, task.id
            conn.execute(UPSERT_SCHEDULE, (s.id, s.next_run, int(s.paused), encode(s)))
            return True, ready

        fired, ready = await self._write(tx)
        if ready:
            self.notify()
        return fired

    # --- workers ------------------------------------------------------------------------------------
    async def heartbeat(self, info: WorkerInfo) -> None:
        await self._call(_execute, UPSERT_WORKER, (info.id, info.last_heartbeat, encode(info)))

    async def remove_worker(self, worker_id: str) -> None:
        await self._call(_execute, DELETE_WORKER, (worker_id,))

    async def workers(self) -> list[WorkerInfo]:
        return [_decode_worker(r[0]) for r in await self._call(_fetchall, GET_WORKERS, ())]

    # --- wake-ups -----------------------------------------------------------------------------------
    async def wait_for_tasks(self, timeout: float) -> None:
        """Return on ``notify``, when a delayed task falls due, or when another process committed
        and something looks claimable; poll ``PRAGMA data_version`` every 2 ms backing off to 50 ms."""
        deadline = anyio.current_time() + timeout
        delay = 0.002
        while not self._wakeup.is_set():
            left = deadline - anyio.current_time()
            if self._next_due is not None:
                left = min(left, self._next_due - time.time())
            if left <= 0:
                break
            with anyio.move_on_after(min(delay, left) if self.cross_process_wakeups else left):
                await self._wakeup.wait()
            if self._wakeup.is_set() or self._conn is None:
                break
            if self.cross_process_wakeups and await self._call(self._poll):
                break
            delay = min(delay * 2, 0.05)
        self._wakeup = anyio.Event()

    def _poll(self, conn: sqlite3.Connection) -> bool:
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        if version == self._seen_version:
            return False
        self._seen_version = version
        now = time.time()
        if self._watched is None:
            ready, next_due = conn.execute(CLAIMABLE, (now,)).fetchone()
        elif self._watched:
            ready, next_due = conn.execute(
                CLAIMABLE_IN, (now, _ids(sorted(self._watched)))
            ).fetchone()
        else:
            return True  # nobody claimed yet: we do not know which queues matter
        self._next_due = next_due
        return bool(ready) or (next_due is not None and next_due <= now)

    # --- results ------------------------------------------------------------------------------------
    async def put_results(self, results: Sequence[TaskResult]) -> None:
        rows = []
        for r in results:
            if not isinstance(r, TaskResult):
                raise ConfigError(f"results must hold TaskResult, got {type(r).__name__}")
            rows.append((r.task_id, r.status.value, r.key, r.expires_at, r.finished_at, encode(r)))
        if rows:
            await self._write(_executemany, PUT_RESULT, rows)

    async def get_result(self, task_id: str) -> TaskResult | None:
        row = await self._call(_fetchone, GET_RESULT, (task_id,))
        return None if row is None else _decode_result(row[0])

    async def get_results(self, task_ids: Sequence[str]) -> dict[str, TaskResult]:
        if not task_ids:
            return {}
        rows = await self._call(_fetchall, GET_RESULTS, (_ids(task_ids),))
        found = {r.task_id: r for r in (_decode_result(row[0]) for row in rows)}
        return {i: found[i] for i in task_ids if i in found}

    async def find_results(self, *, key_prefix: str) -> list[TaskResult]:
        if not isinstance(key_prefix, str):
            raise ConfigError(f"key_prefix must be a str, got {type(key_prefix).__name__}")
        end = _prefix_end(key_prefix)
        if end is None:
            rows = await self._call(_fetchall, FIND_RESULTS_FROM, (key_prefix,))
        else:
            rows = await self._call(_fetchall, FIND_RESULTS, (key_prefix, end))
        out = [_decode_result(r[0]) for r in rows]
        return [r for r in out if r.key is not None and r.key.startswith(key_prefix)]

    async def delete_results(self, task_ids: Sequence[str]) -> int:
        if not task_ids:
            return 0
        return await self._call(_execute, DELETE_RESULTS, (_ids(task_ids),))

    async def purge_results(self, *, now: float) -> int:
        return await self._call(_execute, PURGE_RESULTS, (now,))

    # --- events -------------------------------------------------------------------------------------
    async def append_events(self, events: Sequence[TaskEvent]) -> None:
        rows = []
        for e in events:
            if not isinstance(e, TaskEvent):
                raise ConfigError(f"events must hold TaskEvent, got {type(e).__name__}")
            rows.append((e.task_id, str(e.type), e.timestamp, e.worker, e.queue, e.detail))
        if rows:
            await self._write(_executemany, APPEND_EVENT, rows)

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
            where.append("task_id = ?")
            params.append(task_id)
        if since is not None:
            where.append("timestamp >= ?")
            params.append(since)
        if types is not None:
            where.append(f"type IN {IDS}")
            params.append(_ids([str(t) for t in ([types] if isinstance(types, str) else types)]))
        sql = QUERY_EVENTS
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY timestamp, seq"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        rows = await self._call(_fetchall, sql, tuple(params))
        return [
            TaskEvent(task_id=r[0], type=r[1], timestamp=r[2], worker=r[3], queue=r[4], detail=r[5])
            for r in rows
        ]

    async def purge_events(self, *, before: float) -> int:
        return await self._call(_execute, PURGE_EVENTS, (before,))

    # --- blobs --------------------------------------------------------------------------------------
    async def put_blobs(self, blobs: Mapping[str, Blob], owner: str, *, now: float) -> int:
        given = check_blobs(blobs, owner)
        if not given:
            return 0
        files: set[str] = set()
        if self.blob_dir is not None:
            big = [d for d, b in given.items() if nbytes(b) >= EXTERNAL_BLOB]
            if big:
                missing = await self.missing_blobs(big)
                files = {d for d in big if d in missing or self.blob_path(d) is None}
                if files:  # whole files before their rows; a file without a row is swept later
                    await anyio.to_thread.run_sync(_write_blob_files, self.blob_dir, {d: given[d] for d in files})
        return await self._write(_put_blobs, given, owner, now, files)

    async def add_blob_owners(self, owners: Mapping[str, Sequence[str]], *, now: float) -> None:
        rows = [(d, o, now) for o, ds in check_owners(owners).items() for d in ds]
        if rows:
            await self._write(_executemany, PUT_BLOB_OWNER, rows)

    async def get_blobs(self, digests: Sequence[str]) -> dict[str, bytes]:
        ds = check_digests(digests)
        if not ds:
            return {}
        out: dict[str, bytes] = {}
        for d, data, size in await self._call(_fetchall, GET_BLOBS, (_ids(ds),)):
            if len(data) == size:
                out[d] = data
            else:  # a file beside the database
                path = self.blob_path(d)
                if path is not None:
                    out[d] = await anyio.to_thread.run_sync(_read_file, path)
        return out

    def blob_path(self, digest: str) -> str | None:
        if self.blob_dir is None:
            return None
        path = os.path.join(self.blob_dir, digest[:2], digest)
        return path if os.path.exists(path) else None

    async def missing_blobs(self, digests: Sequence[str]) -> set[str]:
        ds = check_digests(digests)
        if not ds:
            return set()
        rows = await self._call(_fetchall, STORED_BLOBS, (_ids(ds),))
        return set(ds).difference(r[0] for r in rows)

    async def sweep_blobs(self, *, older_than: float) -> int:
        removed, files = await self._write(_sweep_blobs, older_than)
        if self.blob_dir is not None:
            await anyio.to_thread.run_sync(_sweep_blob_files, self.blob_dir, files, older_than,
                                           functools.partial(self._has_rows))
        return int(removed)

    def _has_rows(self, digests: list[str]) -> set[str]:
        """Which of these digests have a row (for the sweep of files left by a crash)."""
        with contextlib.closing(sqlite3.connect(self.path, timeout=30.0)) as c:
            return {r[0] for r in c.execute(STORED_BLOBS, (_ids(digests),))}


#: blobs at least this large are files beside the database rather than rows
EXTERNAL_BLOB = 1 << 16


def _put_blobs(conn: sqlite3.Connection, blobs: dict[str, Blob], owner: str, now: float, files: set[str]) -> int:
    """Owners first, then the blobs not stored yet (in the caller's write transaction); those in
    ``files`` were written beside the database and get a row with no data."""
    conn.executemany(PUT_BLOB_OWNER, [(d, owner, now) for d in blobs])
    stored = {r[0] for r in conn.execute(STORED_BLOBS, (_ids(list(blobs)),))}
    written = 0
    for d, data in blobs.items():
        if d not in stored:  # bytes, bytearray and memoryview bind as a BLOB, without a copy
            size = nbytes(data)
            conn.execute(INSERT_BLOB, (d, now, size, b"" if d in files and size else data))
            written += size
    return written


def _sweep_blobs(conn: sqlite3.Connection, older_than: float) -> tuple[int, list[str]]:
    conn.execute(SWEEP_BLOB_OWNERS, (older_than,))
    files = [r[0] for r in conn.execute(DOOMED_BLOBS, (older_than,))]
    return conn.execute(SWEEP_BLOBS, (older_than,)).rowcount, files


def _write_blob_files(root: str, blobs: Mapping[str, Blob]) -> None:
    """Each blob whole under ``root/<2 hex>/<digest>``: a temporary name, flushed, then renamed
    (so a file there is always a whole blob); owner-only permissions."""
    os.makedirs(root, mode=0o700, exist_ok=True)
    for d, data in blobs.items():
        folder = os.path.join(root, d[:2])
        os.makedirs(folder, mode=0o700, exist_ok=True)
        path = os.path.join(folder, d)
        if os.path.exists(path):
            continue
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _sweep_blob_files(root: str, doomed: list[str], older_than: float,
                      has_rows: Callable[[list[str]], set[str]]) -> None:
    """Remove the files of blobs whose rows the sweep deleted, and files older than the grace
    time that no row refers to (a crash between writing a file and its row)."""
    for d in doomed:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(root, d[:2], d))
    try:
        folders = os.listdir(root)
    except OSError:
        return
    old: list[tuple[str, str]] = []  # (file name, path) of files older than the grace time
    for sub_ in folders:
        with contextlib.suppress(OSError):
            for name in os.listdir(os.path.join(root, sub_)):
                path = os.path.join(root, sub_, name)
                if os.stat(path).st_mtime < older_than:
                    old.append((name, path))
    if old:
        kept = has_rows([name for name, _ in old if len(name) == 64])
        for name, path in old:
            if name not in kept:  # a temporary file, or a blob no row names
                with contextlib.suppress(OSError):
                    os.unlink(path)


def _execute(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> int:
    """One statement in autocommit mode (atomic on its own); returns the rows it changed."""
    return conn.execute(sql, params).rowcount


def _executemany(conn: sqlite3.Connection, sql: str, rows: Sequence[Sequence[Any]]) -> None:
    conn.executemany(sql, rows)


def _fetchone(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> Any:
    return conn.execute(sql, params).fetchone()


def _fetchall(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[Any]:
    return conn.execute(sql, params).fetchall()


__all__ = ["SQLiteBackend", "parse_url", "storage_error", "why_unwritable"]
