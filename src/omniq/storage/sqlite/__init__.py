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

Modules: ``queries`` (the schema and every statement, named), ``connection`` (encoding, URL,
errors, the connection thread), ``operations`` (what runs in that thread, one call a hop),
``backend`` (``SQLiteBackend``). This package only re-exports.
"""

from __future__ import annotations

from ..rows import unreadable_task as unreadable_task  # (stand-ins pickled before it moved)
from .backend import SQLiteBackend
from .connection import parse_url, storage_error, why_unwritable

__all__ = ["SQLiteBackend", "parse_url", "storage_error", "why_unwritable"]
