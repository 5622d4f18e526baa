"""NATS JetStream backend: task queue, result store and event store on one NATS connection.

URL: ``nats://[user:password@]host[:port][?namespace=NAME&timeout=SECONDS&max_events=N]``.
``namespace`` (default ``omniq``; letters, digits, ``_`` and ``-``) prefixes every stream, bucket
and subject, so several deployments (or test runs) share one server without seeing each other.
``timeout`` bounds the initial connect and each JetStream request (default 5 s).

Why not "a work-queue stream, ack-wait as the lease, nak with delay for retries"?
That design hands each message to one consumer, but cannot answer what the contract asks: the
status of any task by id, cancel a queued task, exact priority then FIFO order across queues,
dependencies, counts, and leases and etas judged by the caller's ``now`` (the contract suite runs
on a fake clock). So the authoritative state is a key-value record per task, and streams are
only indexes pointing at records:

* ``KV OMNIQ_<ns>_TASKS``: one entry per task (msgpack ``_Rec``: the ``Task`` with its status,
  lease and delivery count, plus dependency links). Every change is a compare-and-set on the
  entry's revision (``Nats-Expected-Last-Subject-Sequence``), so a claim, a lease extension, a
  schedule slot or a dependency release happens exactly once however many processes race.
* ``OMNIQ_<ns>_INDEX`` stream (limits retention, messages deleted as they are used), subjects
  under ``omniq.<ns>.ix.``:

  - ``q.r.<priority>.<queue>``: the ready line. A claim lists the live subjects (stream info),
    walks priority levels from the highest and reads each level's messages in stream order
    (direct get, ``next_by_subj``), which is FIFO across queues of equal priority.
  - ``q.d.<eta in 0.1 s>``: delayed tasks; a claim promotes those due by ``now``.
  - ``x.<second>``: tasks with a ttl, for ``expire``.
  - ``l.<task>.<claim number>``: one subject per live lease, for ``reap``.
  - ``k.<hex of result key>.<task>`` and ``e.<second>``: results by key and by expiry.

  An index message stands for a record only while the record's ``index_seq`` names it; every
  writer publishes the index message *before* the compare-and-set that points the record at it,
  so a crash between the two leaves an orphan message (skipped, cleaned later), never a task
  that nothing points to. Stale messages are deleted by whoever reads them.
* ``KV OMNIQ_<ns>_RESULTS``: one entry per result (msgpack ``TaskResult``). NATS 2.9 has no
  per-key TTL, so ``expires_at`` is kept in the entry and ``purge_results`` deletes what is due
  through the ``e.`` index (a bucket-wide ``max_age`` would also drop results without a ttl).
* ``OMNIQ_<ns>_EVENTS`` stream, subject ``omniq.<ns>.ev.<task>``: per-task queries use a
  filtered consumer; capped by ``max_events`` (oldest dropped).
* ``KV OMNIQ_<ns>_META``: schedules (``s.<id>``, fired by compare-and-set) and worker
  heartbeats (``w.<id>``).
* Object store ``OMNIQ_<ns>_BLOBS`` (stream ``OBJ_OMNIQ_<ns>_BLOBS``): one object per blob, named
  by its digest, in the layout of nats-py's ``ObjectStore`` (chunks on ``$O.<bucket>.C.<nuid>``,
  then one meta message on ``$O.<bucket>.M.<base64 name>``), so a blob larger than
  ``max_payload`` is many messages. The meta message is written last, by a compare-and-set that
  expects no meta yet: a reader finds an object only once all of it is stored, a crash mid-put
  leaves chunks no meta names (never a blob), and of two processes storing one digest at once
  the loser purges its own chunks. ``meta.mtime`` is the caller's ``now`` at creation.
* ``KV OMNIQ_<ns>_BLOB_OWNERS``: key ``<digest>.<owner token>`` -> ``repr(recorded_at)``. A put
  writes its owner keys before it looks which blobs are stored; ``sweep_blobs`` drops dead owner
  keys, then takes each blob left without one in two steps: its meta moves to the name
  ``trash/<digest>``, the blob's owner keys are listed again, and the meta moves back when a put
  marked an owner meanwhile (that put may have found the blob stored), else the chunks go. A
  reader that misses a blob looks for its ``trash/`` meta before calling it missing.
* Wake-ups: core NATS ``omniq.<ns>.wake`` (not stored), published on enqueue, retry, release and
  requeue; every connected backend wakes its waiting workers from it.

Reconnects: the client reconnects by itself after a drop (a server restart, a network cut),
every 0.5 s for as long as it takes, and re-subscribes (wake-ups, replies); one WARNING names the
(masked) URL when the connection is lost and one when it is back. Replies awaited when it drops
are failed at once, and a call that failed because of the drop is run again once the client is
back (for up to 30 s, ``RECONNECT_TIMEOUT``). A retry takes over what its first attempt did
before the reply was lost: ``enqueue`` accepts records already stored as the very same tasks,
``claim`` takes the tasks leased to this worker at this ``now`` from index messages still there,
``finish`` resolves the dependents of tasks it had already ended, and events carry a
content-derived ``Nats-Msg-Id`` so JetStream stores a re-sent event once. Every other write is
a compare-and-set that a second run leaves alone. (A claim whose lease write went through
unanswered after other tasks were leased in the same call returns those; the unanswered one
waits for its lease to lapse, then runs: at-least-once.)

Deletes use a subject purge, which leaves no tombstones behind, so scans do not slow down with
history. Trade-offs: a claim costs about five round trips (~1 ms on loopback) against one SQL
statement elsewhere; ``counts``, ``oldest_queued`` and ``purge`` scan every task record (fine for
``health()`` now and then, not for a tight loop); a record or result is one NATS message, so a
payload above the server's ``max_payload`` (1 MB by default) is refused with ``StorageError``.
An enqueue batch is all-or-nothing for duplicate ids and unknown dependencies (checked before
anything is visible), but NATS 2.9 has no multi-message transactions: a crash half-way through a
batch can leave part of it stored.

Modules: ``records`` (the URL, subject tokens, the stored record and the pure rules a reader
applies to index messages), ``guard`` (errors in plain words, retries across a reconnect),
``connection`` (``JetStream``: the connection and its primitives), ``tasks`` (task records,
enqueue, keys, the dependency cascade, reads), ``leases`` (claim to reap), ``schedules``
(schedules and worker heartbeats), ``results``, ``events``, ``blobs``; ``backend`` puts them
together on one connection (``NatsBackend``). This package only re-exports.
"""

from __future__ import annotations

from .backend import NatsBackend
from .records import decode_rec, parse_url, token, untoken

_decode_rec = decode_rec  # the name older code imports

__all__ = ["NatsBackend", "decode_rec", "parse_url", "token", "untoken"]
