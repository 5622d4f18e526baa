"""SQLite's schema and its queries, named after the operation (the driver only executes them)."""

from __future__ import annotations

import functools

# --- schema --------------------------------------------------------------------------------------

SCHEMA_VERSION = 7  # 2: blobs, 3: idempotency keys, 4-5: oq.tasks() indexes, 6: large payloads
# apart, 7: one oq.tasks() index (older files get what is new on connect)

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
-- oq.tasks(status=..., queue=...): a page, newest first (by seq). On the expression
-- status || '' (what page_sql writes), so that no other query, which says status = '...', is
-- planned on them instead of the partial indexes above (a claim sorted every queued task)
-- (one index only, as each costs every insert, claim and finish: a page by status alone reads
-- one range per queue, the queues found by hopping along this index)
CREATE INDEX IF NOT EXISTS omniq_tasks_by_queue_seq ON omniq_tasks (queue, status || '', seq);
DROP INDEX IF EXISTS omniq_tasks_by_status_seq;
DROP INDEX IF EXISTS omniq_tasks_by_status;
DROP INDEX IF EXISTS omniq_tasks_by_queue;
CREATE TABLE IF NOT EXISTS omniq_payloads (  -- a large payload, apart from its task's row, so that
    seq     INTEGER PRIMARY KEY,              -- a claim or finish rewrites a small row (omniq_tasks.seq)
    payload BLOB NOT NULL
);
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

# statements with a ";" of their own, run after SCHEMA
SCHEMA_TRIGGERS = (
    """CREATE TRIGGER IF NOT EXISTS omniq_payloads_gone AFTER DELETE ON omniq_tasks
    BEGIN DELETE FROM omniq_payloads WHERE seq = old.seq; END""",
)
#: payloads of this many bytes or more are kept in omniq_payloads (the task's record then holds
#: an empty one): a 250 KB row cost a claim 1.7 ms and a finish 1.4 ms, a small one 0.13 ms
PAYLOAD_APART = 16 * 1024

# --- queries, named after the operation ----------------------------------------------------------
# Literal statuses (not parameters) let SQLite match the partial indexes above.

# the layout ``task_from_row`` reads, then what an unreadable ``task`` blob is rebuilt from
PAGE_COLUMNS = (  # oq.tasks(): what a summary needs, not a payload kept apart
    "seq, task, status, worker, lease_until, deliveries, attempts, eta, cancel_requested, "
    "id, queue, priority, max_deliveries, created_at"
)
TASK_COLUMNS = (
    f"{PAGE_COLUMNS}, (SELECT payload FROM omniq_payloads WHERE omniq_payloads.seq = omniq_tasks.seq)"
)
IDS = "(SELECT value FROM json_each(?))"  # a JSON array of ids: one parameter, one cached plan

INSERT_TASK = """INSERT INTO omniq_tasks (id, queue, priority, status, blocked, eta, expires_at,
    max_deliveries, deliveries, attempts, created_at, finished_at, task)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""
INSERT_QUEUED = """INSERT INTO omniq_tasks (id, queue, priority, status, expires_at, max_deliveries,
    created_at, task) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?)"""
INSERT_PAYLOAD = "INSERT INTO omniq_payloads (seq, payload) SELECT seq, ?2 FROM omniq_tasks WHERE id = ?1"
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

# one statement for every task ending with one status (see operations.executemany: no step per row)
FINISH = """UPDATE omniq_tasks SET status = ?1, finished_at = ?2, lease_until = NULL
    WHERE id IN (SELECT value FROM json_each(?3)) AND status = 'running' AND worker = ?4"""
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
# grouped on status || '' as omniq_tasks_by_queue_seq is: one pass over that index, already in
# order (grouping on status sorted every row: 1.0 s against 0.1 s at 1,000,000 tasks)
COUNTS = "SELECT queue, status || '', count(*) FROM omniq_tasks GROUP BY queue, status || ''"
OLDEST_QUEUED = (
    "SELECT queue, min(created_at) FROM omniq_tasks WHERE status = 'queued' GROUP BY queue"
)
PURGE_TASKS = (
    "DELETE FROM omniq_tasks WHERE finished_at IS NOT NULL AND finished_at < ? RETURNING id"
)
PURGE_DEPS = f"DELETE FROM omniq_deps WHERE task_id IN {IDS}"
PURGE_TASKS_IN = """DELETE FROM omniq_tasks WHERE finished_at IS NOT NULL AND finished_at < ?1
    AND status IN (SELECT value FROM json_each(?2)) RETURNING id"""

# oq.tasks(): a page newest first (the order tasks were stored), each part one index range read
# backwards (?1 below this seq, ?2 limit, ?3 queue); several statuses are one range each, merged
# (as claim_sql merges queues). No status: the table itself, by its integer key.
PAGE_ANY = f"SELECT {PAGE_COLUMNS} FROM omniq_tasks WHERE seq < ?1 ORDER BY seq DESC LIMIT ?2"
#: the bound when no ``before`` is given: above every seq
PAGE_TOP = 2**63 - 1
#: the queues that hold tasks, each found by one step along omniq_tasks_by_queue_seq
QUEUE_NAMES = """WITH RECURSIVE q(name) AS (
        SELECT min(queue) FROM omniq_tasks
        UNION ALL SELECT (SELECT min(queue) FROM omniq_tasks WHERE queue > q.name) FROM q
        WHERE q.name IS NOT NULL)
    SELECT name FROM q WHERE name IS NOT NULL"""
#: ``before`` as a bound: its seq, or (an id no longer stored) that of the newest id below it
PAGE_BELOW = """SELECT coalesce((SELECT seq FROM omniq_tasks WHERE id = ?1),
    (SELECT seq + 1 FROM omniq_tasks WHERE id < ?1 ORDER BY id DESC LIMIT 1), 0)"""

# oq.retry(): a final unsuccessful task back to QUEUED (its record rewritten without expiry)
REQUEUE_READ = "SELECT status, task FROM omniq_tasks WHERE id = ?"
REQUEUE = """UPDATE omniq_tasks SET status = 'queued', blocked = 0, eta = NULL, expires_at = NULL,
    worker = NULL, lease_until = NULL, deliveries = 0, attempts = ?2, cancel_requested = 0,
    finished_at = NULL, task = ?3
    WHERE id = ?1 AND status IN ('failed', 'cancelled', 'expired')"""
REQUEUE_DEPS = "DELETE FROM omniq_deps WHERE task_id = ?"

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
PURGE_TASK_EVENTS = f"DELETE FROM omniq_events WHERE timestamp < ? AND task_id IN {IDS}"


def _pick(n_queues: int) -> str:
    """The seqs a claim takes: the best ``limit`` rows of each of ``n_queues`` named queues (an
    index range each), merged and cut to ``limit``; of any queue for 0."""
    if n_queues == 0:
        return _PICK_ANY
    if n_queues == 1:
        return _PICK_QUEUE.format(n=5).replace("seq, priority", "seq", 1)
    parts = " UNION ALL ".join(
        f"SELECT * FROM ({_PICK_QUEUE.format(n=5 + i)})" for i in range(n_queues)
    )
    return f"SELECT seq FROM ({parts}) ORDER BY priority DESC, seq LIMIT ?4"


@functools.lru_cache(maxsize=32)
def claim_sql(n_queues: int) -> str:
    """The claim statement for ``n_queues`` named queues (0: any), leased by one UPDATE ...
    RETURNING."""
    return _LEASE.format(pick=_pick(n_queues))


CLAIM = claim_sql(0)


# A claim of many rows (see operations.claim_many): sqlite3 steps once per row returned, giving
# the GIL up each time, so pick, lease and read back answer one row each: a JSON array, floats
# as 17-digit text (exact), blobs as hex; the columns of TASK_COLUMNS in its order.
CLAIM_MANY_FROM = 8  # a limit from which a claim goes this way
_FLOAT = "CASE WHEN {c} IS NULL THEN NULL ELSE printf('%!.17g', {c}) END"
LEASE_MANY = """UPDATE omniq_tasks
    SET status = 'running', worker = ?1, lease_until = ?2, deliveries = deliveries + 1
    WHERE seq IN (SELECT value FROM json_each(?3))"""
READ_MANY = f"""SELECT json_group_array(json_array(seq, hex(task), status, worker,
    {_FLOAT.format(c="lease_until")}, deliveries, attempts, {_FLOAT.format(c="eta")}, cancel_requested,
    id, queue, priority, max_deliveries, {_FLOAT.format(c="created_at")},
    (SELECT hex(payload) FROM omniq_payloads WHERE omniq_payloads.seq = omniq_tasks.seq)))
    FROM omniq_tasks WHERE seq IN (SELECT value FROM json_each(?1))"""


@functools.lru_cache(maxsize=32)
def pick_many_sql(n_queues: int) -> str:
    """The seqs ``claim_sql`` would lease, as one JSON array (same parameters)."""
    return f"SELECT json_group_array(seq) FROM ({_pick(n_queues)})"


@functools.lru_cache(maxsize=64)
def page_sql(statuses: tuple[str, ...] | None, by_queue: bool) -> str:
    """The ``oq.tasks()`` statement for these statuses (None: any; literal, sorted, so the index
    ``omniq_tasks_by_queue_seq`` matches) in one queue (``by_queue``; without it only ``statuses
    is None`` is valid: the table by seq): a backward range per status, merged and cut to the
    limit."""
    if statuses is None and not by_queue:
        return PAGE_ANY
    if not by_queue:
        raise ValueError("a page by status reads one queue at a time (see list_page)")
    if statuses is None:
        statuses = ("cancelled", "expired", "failed", "pending", "queued", "running", "succeeded")
    queue = "queue = ?3 AND " if by_queue else ""
    parts = [
        f"SELECT * FROM (SELECT {PAGE_COLUMNS} FROM omniq_tasks WHERE {queue}status || '' = '{s}' "
        "AND seq < ?1 ORDER BY seq DESC LIMIT ?2)"
        for s in statuses
    ]
    if len(parts) == 1:
        return parts[0][len("SELECT * FROM (") : -1]
    return " UNION ALL ".join(parts) + " ORDER BY seq DESC LIMIT ?2"
