"""A task queue in an object-store bucket: ``s3://``, ``gs://`` and ``abfs://`` / ``az://`` hold
the queue itself, so workers anywhere with the bucket's credentials need no broker.

Every change two processes could race on is a conditional write (``cas``): S3 ``If-Match`` /
``If-None-Match: *``, GCS ``ifGenerationMatch``, Azure ETag conditions. A writer that loses
reads again and decides again (never both: the store accepts exactly one write per version).
A store that does not honour them is refused when the queue is opened, after one probe.

Layout under ``<prefix>/queue/`` (results, events and blobs beside it, as ``omniq.storage.fsspec``
lays them out, on the same connection)::

    omniq-bucket.json             {"shards": N}: fixed when the queue is first opened
    shard-<i>.msgpack             one compact row per unfinished (or just finished) task whose id
                                  hashes to shard i: status, priority, enqueue order, lease,
                                  deliveries, eta, ttl, dependencies; shard 0 also holds the
                                  schedules. Replaced whole by compare-and-set.
    tasks/<task id>.msgpack       the task as enqueued (payload, options); written once,
                                  create-only (so an id is never stored twice)
    done/<task id>.msgpack        the final row of a task moved out of its shard (10 s after it
                                  ended, or beyond 200 final rows): written before the shard
                                  drops it, so a crash in between loses nothing
    keys/<key>                    idempotency key markers, replaced by compare-and-set
    workers/<worker id>.msgpack   heartbeats

A claim reads the shard objects (one by default), never a listing: listing is the slow and
costly operation on object stores. The shard holds the active tasks only, about 70 bytes each.
A worker's claim, finish, retry and lease extension are one conditional write each (plus a
read when another process wrote since). An idle worker reads its shard at most every
``IDLE_MAX`` (2 s) seconds and writes its heartbeat every lease / 3 (10 s): under 1 request
per second in all (``tests/storage/test_bucket_processes.py`` counts them). ``?shards=N``
(fixed when the queue is made) spreads tasks over N shard objects by a hash of their id.

This is for reach, not speed: every state change is a round trip to the store, and writers of
one shard take turns. SQLite, PostgreSQL and Redis remain the fast path.

Modules: ``cas`` (conditional writes per store, the probe), ``shards`` (rows and the pure
changes to them), ``state`` (connect, shard reads and compare-and-set, task bodies, archived
rows), ``keys`` (idempotency key markers), ``admin`` (``oq.tasks`` / ``retry`` / ``purge``: the
only listings), ``backend`` (``BucketQueueBackend``: the queue operations).
"""

from __future__ import annotations

from .backend import BucketQueueBackend, split_shards
from .cas import CasStore, Conflict, cas_for

__all__ = ["BucketQueueBackend", "CasStore", "Conflict", "cas_for", "split_shards"]
