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

Modules: ``queries`` (the schema and every statement, named), ``connection`` (URL options,
errors, the pool and its reconnects, LISTEN/NOTIFY: ``PgConnection``), ``backend``
(``PostgresBackend``). This package only re-exports.
"""

from __future__ import annotations

from .backend import PostgresBackend
from .connection import PgURL, channel_for, describe, parse_url

__all__ = ["PgURL", "PostgresBackend", "channel_for", "describe", "parse_url"]
