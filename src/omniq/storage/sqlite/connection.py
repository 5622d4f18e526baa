"""The SQLite connection: record encoding, the URL, errors in plain words, and the one thread
that owns the ``sqlite3`` connection (every call is one hop to it)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from queue import SimpleQueue
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import msgspec

from ...errors import ConfigError, StorageError, StorageUnwritable
from ...models import Schedule, Task, TaskResult, TaskStatus
from .._codec import decoder
from ..base import WorkerInfo, masked
from ..rows import read_task_row
from .queries import (
    SCHEMA,
    SCHEMA_TRIGGERS,
    SCHEMA_VERSION,
)

# --- encoding ------------------------------------------------------------------------------------

decode_result = decoder(TaskResult).decode
decode_schedule = decoder(Schedule).decode
decode_worker = decoder(WorkerInfo).decode
_json = msgspec.json.Encoder()
STATUS = {s.value: s for s in TaskStatus}


def json_ids(ids: Sequence[str]) -> str:
    return _json.encode(list(ids)).decode()


def tasks_in_order(rows: list[Any]) -> list[Task]:
    """Tasks in enqueue order (RETURNING gives rows in no defined order)."""
    rows.sort(key=_seq)
    return [read_task_row(r) for r in rows]


def _seq(row: Sequence[Any]) -> int:
    return int(row[0])


def prefix_end(prefix: str) -> str | None:
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


class SqliteConnection:
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


class ThreadConnection:
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


def in_transaction(conn: sqlite3.Connection, fn: Callable[..., T], *args: Any) -> T:
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


def setup_connection(conn: sqlite3.Connection, wal: bool) -> None:
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
        for statement in (*SCHEMA.split(";"), *SCHEMA_TRIGGERS):  # no ";" inside SCHEMA's comments
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


def returning(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[Any]:
    """Rows of an ``UPDATE``/``DELETE ... RETURNING`` on the tasks table, on any SQLite."""
    if HAS_RETURNING:
        return conn.execute(sql, params).fetchall()
    if not conn.in_transaction:
        return in_transaction(conn, returning, sql, params)
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
