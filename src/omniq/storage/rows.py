"""Rows of the SQL backends (SQLite, PostgreSQL) read back as tasks and events, the events
query both write, and the stand-in of a record that does not decode."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..errors import SerializationError
from ..models import Task, TaskEvent, TaskStatus
from ._codec import decoder

_decode_task = decoder(Task).decode
_STATUS = {s.value: s for s in TaskStatus}


def task_from_row(row: Sequence[Any]) -> Task:
    """A Task from an SQL row ``(seq, blob, status, worker, lease_until, deliveries, attempts,
    eta, cancel_requested, ...)``: the immutable blob overlaid with the mutable columns (the
    layout the SQLite and PostgreSQL backends share), and a payload kept apart (column 14)."""
    t = _decode_task(row[1])
    t.status = _STATUS[row[2]]
    t.worker = row[3]
    t.lease_until = row[4]
    t.deliveries = row[5]
    t.attempts = row[6]
    t.eta = row[7]
    t.cancel_requested = bool(row[8])
    if len(row) > 14 and row[14] is not None:  # SQLite keeps a large payload apart
        t.payload = row[14]
    return t


def read_task_row(row: Sequence[Any]) -> Task:
    """``task_from_row``, except that a ``task`` blob that does not decode (damaged on disk, or
    written over) becomes a stand-in that fails when run, saying so: that task fails alone, and
    the claim or reap that read it goes on for the rest (SQLite and PostgreSQL)."""
    try:
        return task_from_row(row)
    except Exception as exc:  # any: deeply nested metadata raises RecursionError, not DecodeError
        return stand_in_task(
            str(row[9]), exc,
            queue=row[10], priority=row[11], max_deliveries=row[12], created_at=row[13],
            status=_STATUS[row[2]], worker=row[3], lease_until=row[4], deliveries=row[5],
            attempts=row[6], eta=row[7], cancel_requested=bool(row[8]),
        )  # fmt: skip


def events_sql(
    select: str, task_id: str | None, since: float | None, types: list[str] | None, limit: int | None,
    *, mark: Callable[[int], str], type_in: str, type_list: Callable[[list[str]], Any],
) -> tuple[str, list[Any]]:
    """``query_events`` in SQL (SQLite, PostgreSQL): ``select`` filtered, in time then append
    (``seq``) order. ``mark(n)`` is the n-th parameter's placeholder; ``type_in`` the types
    condition with ``{}`` for its one parameter, ``type_list(types)``."""
    where: list[str] = []
    params: list[Any] = []
    conds: list[tuple[str, Any]] = [("task_id = {}", task_id), ("timestamp >= {}", since)]
    conds.append((type_in, None if types is None else type_list(types)))
    for cond, value in conds:
        if value is not None:
            params.append(value)
            where.append(cond.format(mark(len(params))))
    sql = select + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY timestamp, seq"
    if limit is not None:
        params.append(limit)
        sql += f" LIMIT {mark(len(params))}"
    return sql, params


def event_from_row(r: Sequence[Any]) -> TaskEvent:
    """A TaskEvent from an SQL row ``(task_id, type, timestamp, worker, queue, detail)``."""
    return TaskEvent(task_id=r[0], type=r[1], timestamp=r[2], worker=r[3], queue=r[4], detail=r[5])


def unreadable_task(message: str) -> None:
    """What the stand-in of an unreadable task record runs: a clear failure."""
    raise SerializationError(message)


def stand_in_task(task_id: str, exc: BaseException, **fields: Any) -> Task:
    """The stand-in of a stored task record that does not decode (damaged, written over, or
    nested too deep: any exception): it fails when run, saying why, so that task ends with a
    TaskResult and the claim or reap that read it goes on for the rest of its batch."""
    from ..serialization import dumps_call

    why = str(exc)
    why = why if len(why) <= 300 else why[:300] + "..."
    message = (
        f"task {task_id}: its stored record is corrupted and cannot be read "
        f"({type(exc).__name__}: {why}); it was not run"
    )
    from ..serialization._seals import seal_tasks

    task = Task(
        id=task_id,
        payload=dumps_call(unreadable_task, (message,), {}),
        name="<unreadable task record>",
        **fields,
    )
    seal_tasks([task])  # made here, by a key holder: it runs (and fails saying why)
    return task


__all__ = [
    "event_from_row",
    "events_sql",
    "read_task_row",
    "stand_in_task",
    "task_from_row",
    "unreadable_task",
]
