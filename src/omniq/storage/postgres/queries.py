"""PostgreSQL's schema and its queries, named after the operation (the driver in
``connection.py`` and ``backend.py`` only executes them)."""

from __future__ import annotations

# --- schema --------------------------------------------------------------------------------------

SCHEMA_VERSION = 5  # 2: blobs, 3: idempotency keys, 4-5: oq.tasks() indexes (older schemas get them on connect)

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
-- oq.tasks(status=..., queue=...): a page, newest first (by seq). On the expression
-- status || '' (what page_sql writes), so that no other query, which says status = '...', is
-- planned on them instead of the partial indexes above
CREATE INDEX IF NOT EXISTS omniq_tasks_by_status_seq ON omniq_tasks ((status || ''), seq);
CREATE INDEX IF NOT EXISTS omniq_tasks_by_queue_seq ON omniq_tasks (queue, (status || ''), seq);
DROP INDEX IF EXISTS omniq_tasks_by_status;
DROP INDEX IF EXISTS omniq_tasks_by_queue;
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
# $2: the statuses to purge (NULL: every final one)
PURGE_TASKS = """WITH gone AS (DELETE FROM omniq_tasks
        WHERE finished_at IS NOT NULL AND finished_at < $1
        AND ($2::text[] IS NULL OR status = ANY($2::text[])) RETURNING id),
    deps AS (DELETE FROM omniq_deps WHERE task_id IN (SELECT id FROM gone))
    SELECT id FROM gone"""

# oq.tasks(): a page newest first (the order stored), each part one index range read backwards;
# several statuses are one range each, merged (``page_sql``)
#: ``before`` as a bound: its seq, or (an id no longer stored) that of the newest id below it
PAGE_BELOW = """SELECT coalesce((SELECT seq FROM omniq_tasks WHERE id = $1),
    (SELECT seq + 1 FROM omniq_tasks WHERE id < $1 ORDER BY id DESC LIMIT 1), 0)"""
ALL_STATUSES = ("cancelled", "expired", "failed", "pending", "queued", "running", "succeeded")

# oq.retry(): a final unsuccessful task back to QUEUED (its record rewritten without expiry)
REQUEUE_READ = "SELECT status, task FROM omniq_tasks WHERE id = $1 FOR UPDATE"
REQUEUE = """UPDATE omniq_tasks SET status = 'queued', blocked = false, eta = NULL,
    expires_at = NULL, worker = NULL, lease_until = NULL, claim_token = NULL, deliveries = 0,
    attempts = $2, cancel_requested = false, finished_at = NULL, task = $3
    WHERE id = $1 AND status IN ('failed', 'cancelled', 'expired')"""
REQUEUE_DEPS = "DELETE FROM omniq_deps WHERE task_id = $1"

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
PURGE_TASK_EVENTS = "DELETE FROM omniq_events WHERE timestamp < $1 AND task_id = ANY($2::text[])"

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


def page_sql(statuses: tuple[str, ...] | None, by_queue: bool) -> str:
    """The ``oq.tasks()`` statement for these statuses (literal, so the indexes
    ``omniq_tasks_by_status_seq`` / ``omniq_tasks_by_queue_seq`` match; None: any) and an
    optional queue. Parameters: the seq to stay below, the limit, the queue (when ``by_queue``)."""
    head = f"SELECT {TASK_COLUMNS} FROM omniq_tasks"
    if statuses is None and not by_queue:
        return f"{head} WHERE seq < $1 ORDER BY seq DESC LIMIT $2"
    queue = "queue = $3 AND " if by_queue else ""
    parts = [f"({head} WHERE {queue}(status || '') = '{s}' AND seq < $1 ORDER BY seq DESC LIMIT $2)"
             for s in statuses or ALL_STATUSES]
    if len(parts) == 1:
        return parts[0][1:-1]
    return " UNION ALL ".join(parts) + " ORDER BY seq DESC LIMIT $2"
