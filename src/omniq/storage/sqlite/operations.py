"""Operations run in the connection thread, one call a hop: inserting and enqueueing tasks,
resolving dependents, and blobs (rows, or files beside the database when large)."""

from __future__ import annotations

import contextlib
import errno
import functools
import heapq
import math
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from operator import itemgetter
from typing import Any

import msgspec

from ...errors import ConfigError
from ...models import Task, TaskStatus
from .._codec import decoder, encode
from ..base import Finished
from ..blobs import Blob, nbytes
from ..enqueue import holds_key, keyed, plan_enqueue, plan_keys
from ..rows import read_task_row
from .connection import (
    STATUS,
    in_transaction,
    json_ids,
    returning,
)
from .queries import (
    ANY_DEPS,
    CANCEL_DEPENDENT,
    DEPENDENTS,
    DOOMED_BLOBS,
    INSERT_BLOB,
    INSERT_DEP,
    INSERT_PAYLOAD,
    INSERT_QUEUED,
    INSERT_TASK,
    KEY_HOLDERS,
    LEASE_MANY,
    PAGE_BELOW,
    PAGE_TOP,
    PAYLOAD_APART,
    PURGE_DEPS,
    PURGE_KEYS,
    PURGE_TASKS,
    PURGE_TASKS_IN,
    PUT_BLOB_OWNER,
    PUT_KEY,
    QUEUE_NAMES,
    READ_MANY,
    RELEASE_DEPENDENT,
    REQUEUE,
    REQUEUE_DEPS,
    REQUEUE_READ,
    STORED_BLOBS,
    SWEEP_BLOB_OWNERS,
    SWEEP_BLOBS,
    TASK_STATUSES,
    page_sql,
)

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


def insert_tasks(conn: sqlite3.Connection, tasks: Sequence[Task], now: float) -> bool:
    """Insert a validated batch; True when some task is ready to claim at once."""
    deps = {d for t in tasks for d in t.depends_on}
    known: dict[str, TaskStatus] = {}
    if deps:
        known = {i: STATUS[s] for i, s in conn.execute(TASK_STATUSES, (json_ids(list(deps)),))}
    plain = (TaskStatus.QUEUED, TaskStatus.PENDING)  # pending with no eta nor deps: queued
    dep_rows: list[tuple[str, str]] = []
    apart: list[tuple[str, bytes]] = []
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
            rows = [(t.id, record(t, apart)) for t in tasks]
        else:
            sql = INSERT_QUEUED
            rows = [
                (t.id, t.queue, t.priority, t.expires_at, t.max_deliveries, t.created_at, record(t, apart))
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
                now if status is TaskStatus.CANCELLED else None, record(t, apart),
            ))  # fmt: skip
            if waiting:
                dep_rows.extend((t.id, d) for d in waiting)
            elif status is TaskStatus.QUEUED:
                ready = True
    try:
        executemany(conn, sql, rows)
    except sqlite3.IntegrityError:
        taken = [i for i, _ in conn.execute(TASK_STATUSES, (json_ids([t.id for t in tasks]),))]
        if taken:
            raise ConfigError(f"task id {taken[0]!r} already exists") from None
        raise
    if apart:
        conn.executemany(INSERT_PAYLOAD, apart)
    if dep_rows:
        executemany(conn, INSERT_DEP, dep_rows)
    return ready


def record(t: Task, apart: list[tuple[str, bytes]]) -> bytes:
    """The ``task`` column of ``t``; a payload of ``PAYLOAD_APART`` bytes or more goes to
    ``apart`` (for omniq_payloads) and the record holds an empty one (``task_from_row`` puts
    it back from the row's last column)."""
    if len(t.payload) < PAYLOAD_APART:
        return encode(t)
    apart.append((t.id, t.payload))
    return encode(msgspec.structs.replace(t, payload=b""))


def enqueue_tasks(
    conn: sqlite3.Connection, tasks: Sequence[Task], now: float, results_here: bool = False
) -> tuple[bool, dict[str, str]]:
    """``insert_tasks`` with idempotency keys (in the caller's write transaction): tasks
    whose key is held are left out; returns (something ready, {duplicate id: holder id})."""
    keys = keyed(tasks)
    if not keys:
        return insert_tasks(conn, tasks, now), {}
    holders: dict[str, str] = {}
    gone: list[str] = []  # holders known only by their stored success
    for key, tid, st, rst in conn.execute(KEY_HOLDERS, (json_ids(keys),)):
        if holds_key(STATUS[st] if st is not None else None, rst == "succeeded", results_here):
            holders[key] = tid
            if st is None:
                gone.append(tid)
    store, dups = plan_keys(tasks, holders, gone)
    ready = insert_tasks(conn, store, now) if store else False
    executemany(conn, PUT_KEY, [(t.key, t.id) for t in store if t.key is not None])
    return ready, dups


def _resolve(conn: sqlite3.Connection, ids: Sequence[str], now: float) -> Finished:
    """Release or cancel (transitively) the dependents of tasks that just became final."""
    out = Finished()
    frontier = list(ids)
    while frontier:
        rows = conn.execute(DEPENDENTS, (json_ids(frontier),)).fetchall()
        frontier = []
        check: dict[str, None] = {}
        for child, dep, dep_status in rows:
            if dep_status == "succeeded":
                check[child] = None
            elif dep_status in ("failed", "cancelled", "expired"):
                rows_ = returning(conn, CANCEL_DEPENDENT, (now, child))
                if rows_:
                    row = rows_[0]
                    out.cancelled.append((read_task_row(row), dep))
                    frontier.append(child)
        for child in check:
            rows_ = returning(conn, RELEASE_DEPENDENT, (now, child))
            if rows_:
                row = rows_[0]
                out.released.append(read_task_row(row))
    return out


def resolve_if_deps(conn: sqlite3.Connection, ids: Sequence[str], now: float) -> Finished:
    if not ids or not conn.execute(ANY_DEPS).fetchone()[0]:
        return Finished()
    return _resolve(conn, ids, now)


# --- operators: oq.tasks(), oq.retry(), oq.purge() ---------------------------------------------------


def list_page(
    conn: sqlite3.Connection, statuses: Sequence[TaskStatus] | None, queue: str | None,
    name: str | None, limit: int, before: str | None,
) -> list[Task]:
    """A page of tasks, newest first (the order stored), after ``before``'s place: index ranges
    read backwards (``page_sql``). A ``name`` is matched on the decoded records, reading on in
    batches until the page is full."""
    wanted = None if statuses is None else tuple(sorted(s.value for s in statuses))
    if queue is not None:
        queues: list[str | None] = [queue]
    elif wanted is None:
        queues = [None]  # the table itself, by seq
    else:  # one index range per queue and status, merged: the queues are few
        queues = [r[0] for r in conn.execute(QUEUE_NAMES)]
    sql = page_sql(wanted, queues != [None])
    below = PAGE_TOP if before is None else conn.execute(PAGE_BELOW, (before,)).fetchone()[0]
    want = limit if name is None else max(4 * limit, 256)
    page: list[Task] = []
    while len(page) < limit and queues:
        rows: list[Any] = []
        for q in queues:
            rows.extend(conn.execute(sql, (below, want) if q is None else (below, want, q)))
        if len(queues) > 1:
            rows = heapq.nlargest(want, rows, key=itemgetter(0))  # by seq
        for r in rows:
            t = read_task_row(r)
            if name is None or t.name == name:
                page.append(t)
        if len(rows) < want or not rows:
            break
        below = rows[-1][0]  # the batch's oldest seq (rows come newest first)
    return page[:limit]


_decode_task = decoder(Task).decode


def requeue_task(conn: sqlite3.Connection, task_id: str, attempts: int) -> str | None:
    """``TaskQueue.requeue`` in the caller's write transaction: the status before (None:
    unknown id); its record is rewritten without an expiry (the seal does not cover it)."""
    row = conn.execute(REQUEUE_READ, (task_id,)).fetchone()
    if row is None:
        return None
    status, blob = row
    if status not in ("failed", "cancelled", "expired"):
        return str(status)
    t = _decode_task(blob)
    t.expires_at = None
    conn.execute(REQUEUE, (task_id, attempts, encode(t)))
    conn.execute(REQUEUE_DEPS, (task_id,))
    return str(status)


def purge_task_rows(
    conn: sqlite3.Connection, before: float, statuses: Sequence[TaskStatus] | None
) -> list[str]:
    """Final tasks finished before ``before`` (in ``statuses`` when given), deleted with their
    dependency rows and the keys only they held; their ids."""
    if statuses is None:
        gone = [r[0] for r in returning(conn, PURGE_TASKS, (before,))]
    else:
        gone = [r[0] for r in returning(conn, PURGE_TASKS_IN, (before, json_ids([s.value for s in statuses])))]
    if gone:
        conn.execute(PURGE_DEPS, (json_ids(gone),))
        conn.execute(PURGE_KEYS)
    return gone


def create_private(path: str) -> None:
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


#: blobs at least this large are files beside the database rather than rows
EXTERNAL_BLOB = 1 << 16


def put_blob_rows(conn: sqlite3.Connection, blobs: dict[str, Blob], owner: str, now: float, files: set[str]) -> int:
    """Owners first, then the blobs not stored yet (in the caller's write transaction); those in
    ``files`` were written beside the database and get a row with no data."""
    executemany(conn, PUT_BLOB_OWNER, [(d, owner, now) for d in blobs])
    stored = {r[0] for r in conn.execute(STORED_BLOBS, (json_ids(list(blobs)),))}
    written = 0
    for d, data in blobs.items():
        if d not in stored:  # bytes, bytearray and memoryview bind as a BLOB, without a copy
            size = nbytes(data)
            conn.execute(INSERT_BLOB, (d, now, size, b"" if d in files and size else data))
            written += size
    return written


def sweep_blob_rows(conn: sqlite3.Connection, older_than: float) -> tuple[int, list[str]]:
    conn.execute(SWEEP_BLOB_OWNERS, (older_than,))
    files = [r[0] for r in conn.execute(DOOMED_BLOBS, (older_than,))]
    return conn.execute(SWEEP_BLOBS, (older_than,)).rowcount, files


def write_blob_files(root: str, blobs: Mapping[str, Blob]) -> None:
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


def read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def sweep_blob_files(root: str, doomed: list[str], older_than: float,
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


def execute(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> int:
    """One statement in autocommit mode (atomic on its own); returns the rows it changed."""
    return conn.execute(sql, params).rowcount


def claim_many(conn: sqlite3.Connection, pick: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    """The rows ``claim_sql``'s ``UPDATE ... RETURNING`` would return, in one transaction of
    three statements answering one row each (``pick``: ``pick_many_sql``; the same params)."""

    def lease(conn: sqlite3.Connection) -> str | None:
        seqs = conn.execute(pick, params).fetchone()[0]
        if seqs == "[]":
            return None
        conn.execute(LEASE_MANY, (params[0], params[1], seqs))
        return str(conn.execute(READ_MANY, (seqs,)).fetchone()[0])

    text = in_transaction(conn, lease)
    if text is None:
        return []
    out = []
    for r in msgspec.json.decode(text):
        lease_until, eta, created, payload = r[4], r[7], r[13], r[14]
        out.append((
            r[0], bytes.fromhex(r[1]), r[2], r[3], None if lease_until is None else float(lease_until),
            r[5], r[6], None if eta is None else float(eta), r[8], r[9], r[10], r[11], r[12],
            None if created is None else float(created), None if payload is None else bytes.fromhex(payload),
        ))  # fmt: skip
    return out


# An INSERT's one row group: ``VALUES (...)``, quoted strings in it skipped.
_ROW_GROUP = re.compile(r"\bVALUES\s*(\((?:[^()']|'(?:[^']|'')*')*\))", re.IGNORECASE)
_QUOTED = re.compile(r"'(?:[^']|'')*'")
ROWS_PER_STATEMENT = 256


@functools.lru_cache(maxsize=256)
def _row_group(sql: str) -> tuple[str, str, str, int] | None:
    """``(head, "(?, ?, ...)", tail, values per row)`` of an INSERT with one ``VALUES`` row of
    plain ``?`` placeholders; None for any other statement."""
    m = _ROW_GROUP.search(sql)
    if m is None or not sql.lstrip().upper().startswith(("INSERT", "REPLACE")):
        return None
    unquoted = _QUOTED.sub("", sql)
    if re.search(r"[?:@$][0-9A-Za-z_]", unquoted):  # numbered or named parameters
        return None
    n = _QUOTED.sub("", m.group(1)).count("?")
    if n == 0 or n != unquoted.count("?"):
        return None
    return sql[: m.start(1)], m.group(1), sql[m.end(1) :], n


@functools.lru_cache(maxsize=256)
def _rows_sql(sql: str, k: int) -> str:
    shape = _row_group(sql)
    assert shape is not None  # (executemany asked _row_group first)
    head, group, tail, _ = shape
    return head + ",".join([group] * k) + tail


def _variable_limit(conn: sqlite3.Connection) -> int:
    getlimit = getattr(conn, "getlimit", None)  # Python 3.11+
    if getlimit is not None:
        return int(getlimit(getattr(sqlite3, "SQLITE_LIMIT_VARIABLE_NUMBER", 9)))
    return 32766 if sqlite3.sqlite_version_info >= (3, 32) else 999


def executemany(conn: sqlite3.Connection, sql: str, rows: Sequence[Sequence[Any]]) -> None:
    """``conn.executemany``, but an INSERT's rows go in multi-row ``VALUES`` statements of up to
    ``ROWS_PER_STATEMENT`` rows. sqlite3 releases the GIL around every step, once per row for
    ``executemany``; each time it must win the GIL back, and a thread busy in Python (a
    notebook's own loop, this process's submitting thread) holds it up to the switch interval.
    2,000 event rows took seconds that way while another thread computed; this way, milliseconds.
    Row sizes are powers of two (below the full size), so few statements are ever prepared."""
    shape = _row_group(sql) if len(rows) > 1 else None
    if shape is None:
        conn.executemany(sql, rows)
        return
    per = max(1, min(ROWS_PER_STATEMENT, _variable_limit(conn) // shape[3]))
    i, n = 0, len(rows)
    while i < n:
        k = min(per, 1 << ((n - i).bit_length() - 1))
        chunk = rows[i : i + k]
        conn.execute(_rows_sql(sql, k), [v for row in chunk for v in row])
        i += k


def fetchone(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> Any:
    return conn.execute(sql, params).fetchone()


def fetchall(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[Any]:
    return conn.execute(sql, params).fetchall()


def data_version(conn: sqlite3.Connection) -> int:
    """Changes when another connection commits to the file (a read of shared memory, no I/O)."""
    return int(conn.execute("PRAGMA data_version").fetchone()[0])
