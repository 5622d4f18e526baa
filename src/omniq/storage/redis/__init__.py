"""Redis backend: task queue, result store and event store on one Redis server (``redis.asyncio``).

URL: ``redis://[[user]:password@]host[:port][/db][?prefix=omniq&max_events=1000000]``
(``rediss://`` for TLS). Every key starts with ``<prefix>:`` (default ``omniq``), so several
independent queues can share one server and ``SCAN MATCH <prefix>:*`` finds all of one.
``max_events`` caps the event stream (approximately, ``XADD MAXLEN ~``);
``reconnect_timeout`` (seconds, default 30) is how long an operation keeps retrying a lost
connection before it raises ``StorageError``. Other query parameters go to redis-py
(``socket_timeout``, ``max_connections``, ...).

Every change of task state is ONE Lua script (one round trip, atomic), named in ``scripts.py``
(scripts share the helpers of their part); ``backend.py`` runs them (``RedisBackend``). Keys (``P`` = prefix):

==========================  ===============================================================
``P:t:<id>``                hash: ``b`` msgpack Task as enqueued, plus the mutable state:
                            ``s`` status, ``w`` worker, ``l`` lease_until, ``d`` deliveries,
                            ``a`` attempts, ``e`` eta, ``c`` cancel requested, ``k`` number of
                            dependencies not yet succeeded, ``q`` queue, ``o`` -priority,
                            ``m`` ready-set member, ``x`` expires_at, ``ca`` created_at,
                            ``f`` finished_at, ``md`` max_deliveries, ``y`` idempotency key
``P:ready:<queue>``         zset of QUEUED tasks: score ``-priority``, member ``<seq:016d><id>``;
                            equal scores sort by member bytes, i.e. by ``seq`` (FIFO). Scores
                            stay exact (no ``priority * 2**40 + seq`` packing to overflow).
``P:queues``                set of queues whose ready zset is not empty
``P:due``                   zset of PENDING tasks waiting only for their eta (score eta)
``P:leases``                zset of RUNNING tasks (score lease_until)
``P:expiry``                zset of not-yet-final tasks with a TTL (score expires_at)
``P:done``                  zset of final tasks (score finished_at), for ``purge``
``P:deps:<id>``             list of tasks waiting for ``<id>``
``P:counts``                hash ``<queue>\\x1f<status>`` -> count, kept by the scripts
``P:keys``                  hash idempotency key -> the latest task stored with it; the
                            enqueue script decides duplicates and stores in one step
``P:once:<token>``          a write script's reply, kept 60 s (see "Reconnects")
``P:s:<id>``, ``P:sched``   schedules (hash: blob + mutable fields) and their order
``P:workers``, ``P:hb``     worker records and their last heartbeats
``P:r:<id>``                msgpack TaskResult (``PX`` TTL when it expires in the future)
``P:rkeys``, ``P:rkeyof``   result keys for ``find_results`` (lexicographic zset) and back
``P:rexp``                  zset of results with ``expires_at``, for ``purge_results``
``P:ev``                    events stream (``MAXLEN ~ max_events``)
``P:ev:t:<task id>``        list of the task's stream ids (``query_events(task_id=...)``)
``P:ev:tasks``, ``P:ev:*``  per-task lists by latest stream id (to drop trimmed ones); state
``P:b:<digest>``            a blob: its bytes as one string (``SET NX``: whole or absent)
``P:bc``                    zset of blobs (score created_at), for ``sweep_blobs``
``P:bo:<digest>``           hash owner -> recorded_at: who refers to the blob
``P:bot``                   zset of ``<digest><owner>`` (score recorded_at), for the sweep
==========================  ===============================================================

Times: every float travels as ``repr`` text and is stored as given, never formatted by Lua
(whose ``tostring`` keeps 14 digits). Lease and eta decisions use the caller's ``now``.

Events: stream ids are ``max(timestamp in ms, last id)`` so they never run backwards; an
event's id is therefore at or after its timestamp, and ``since`` reads the stream from
``since`` onwards only. How far ids ever ran ahead of timestamps (``P:ev:skew``) bounds the
extra range ``purge_events`` must look at, so purging stays exact.

Wake-ups: scripts that make work ready ``PUBLISH`` on ``P:wake`` (payload: the eta of newly
delayed work, or empty). One listener task per backend (started by the first
``wait_for_tasks``) wakes local waiters; ``notify`` still wakes them at once in-process.

Reconnects: a lost connection (server restart, ``CLIENT KILL``, network) is retried with
back-off for ``reconnect_timeout`` seconds, logging once when it is lost and once when it is
back. A write whose reply was lost may have run: write scripts carry a token, and a retried
call with the same token returns the first run's reply (kept 60 s in ``P:once:<token>``)
instead of running twice, so a retried enqueue is not "already exists", a retried claim does
not lease twice and a retried event append does not duplicate events.
"""

from __future__ import annotations

from .backend import RedisBackend, RedisOptions, parse_url
from .scripts import SCRIPTS

__all__ = ["SCRIPTS", "RedisBackend", "RedisOptions", "parse_url"]
