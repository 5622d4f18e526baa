"""Checks shared by every backend, before anything is read or written (pure: no I/O but
the storage folder's own): arguments of ``enqueue``, ``claim``, ``finish``, ``list_tasks`` and
the event and result writes; what ``query_events`` returns from events read in append order;
the storage folder's permissions."""

from __future__ import annotations

import os
import stat
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from ..errors import ConfigError
from ..lifecycle import UNSUCCESSFUL
from ..logs import get_logger
from ..models import Task, TaskEvent, TaskStatus
from ..redact import masked


def check_new_tasks(tasks: Sequence[Task]) -> None:
    """Refuse a batch ``enqueue`` cannot store, before anything is written (``ConfigError``)."""
    if isinstance(tasks, Task) or not isinstance(tasks, Sequence):
        raise ConfigError(f"tasks must be a list of Task, got {type(tasks).__name__}")
    ok = (TaskStatus.QUEUED, TaskStatus.PENDING)
    if all(  # the usual batch, checked in one pass (a third of the loop below); else find why
        type(t) is Task and type(t.id) is str and t.id and t.status in ok and type(t.payload) is bytes
        and type(t.queue) is str and t.queue and type(t.priority) is int and not t.depends_on
        and (t.key is None or (type(t.key) is str and t.key))
        for t in tasks
    ) and len({t.id for t in tasks}) == len(tasks):
        return
    seen: set[str] = set()
    for i, t in enumerate(tasks):
        if not isinstance(t, Task):
            raise ConfigError(f"tasks[{i}] must be a Task, got {type(t).__name__}")
        if not isinstance(t.id, str) or not t.id:
            raise ConfigError(f"tasks[{i}].id must be a non-empty str, got {t.id!r}")
        if t.id in seen:
            raise ConfigError(f"tasks[{i}].id {t.id!r} appears twice in one batch")
        seen.add(t.id)
        if t.status not in (TaskStatus.QUEUED, TaskStatus.PENDING):
            raise ConfigError(
                f"tasks[{i}].status must be QUEUED or PENDING to enqueue, got {t.status!r}"
            )
        if not isinstance(t.payload, bytes):
            raise ConfigError(f"tasks[{i}].payload must be bytes, got {type(t.payload).__name__}")
        if not isinstance(t.queue, str) or not t.queue:
            raise ConfigError(f"tasks[{i}].queue must be a non-empty str, got {t.queue!r}")
        if not isinstance(t.priority, int) or isinstance(t.priority, bool):
            raise ConfigError(f"tasks[{i}].priority must be an int, got {t.priority!r}")
        if t.id in t.depends_on:
            raise ConfigError(f"tasks[{i}] ({t.id}) depends on itself")
        if t.key is not None and (not isinstance(t.key, str) or not t.key):
            raise ConfigError(f"tasks[{i}].key must be a non-empty str or None, got {t.key!r}")


def watched_after(watched: set[str] | None, names: list[str] | None) -> set[str] | None:
    """The queues a backend's wake-ups watch once a claim named ``names`` (``check_claim``'s;
    None: every queue, from then on)."""
    if names is None:
        return None
    if watched is not None:
        watched.update(names)
    return watched


def check_claim(queues: Sequence[str] | None, limit: int, lease: float) -> list[str] | None:
    """Validated ``claim`` arguments: the queue names (deduplicated) or None for all."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ConfigError(f"limit must be an int >= 0, got {limit!r}")
    if not isinstance(lease, (int, float)) or lease <= 0:
        raise ConfigError(f"lease must be a positive number of seconds, got {lease!r}")
    if queues is None:
        return None
    if isinstance(queues, str):
        raise ConfigError(
            f"queues must be a list of queue names or None, got the str {queues!r} "
            f"(did you mean [{queues!r}]?)"
        )
    names = list(dict.fromkeys(queues))
    for q in names:
        if not isinstance(q, str) or not q:
            raise ConfigError(f"queues must hold non-empty str names, got {q!r}")
    return names


#: what ``list_tasks`` returns at most per call
MAX_PAGE = 10_000
_STATUS_BY_NAME = {s.value: s for s in TaskStatus}


def check_statuses(statuses: Any, arg: str = "status") -> frozenset[TaskStatus] | None:
    """``statuses`` as a set of ``TaskStatus``: None, one status or its name (``"failed"``), or
    an iterable of them; ``ConfigError`` naming ``arg`` and the valid names otherwise."""
    if statuses is None:
        return None
    items = [statuses] if isinstance(statuses, (str, TaskStatus)) else statuses
    try:
        items = list(items)
    except TypeError:
        items = [statuses]
    out: set[TaskStatus] = set()
    for s in items:
        if isinstance(s, TaskStatus):
            out.add(s)
            continue
        got = _STATUS_BY_NAME.get(s.strip().lower()) if isinstance(s, str) else None
        if got is None:
            valid = ", ".join(_STATUS_BY_NAME)
            raise ConfigError(f"{arg}={s!r} is not a task status; valid: {valid}")
        out.add(got)
    if not out:
        raise ConfigError(f"{arg} is empty: give None for every status, or some of them")
    return frozenset(out)


def check_page(limit: Any, before: Any, queue: Any = None, name: Any = None) -> None:
    """``list_tasks`` arguments a backend can use as they are (``ConfigError`` otherwise)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= MAX_PAGE:
        raise ConfigError(f"limit must be an int from 0 to {MAX_PAGE:,}, got {limit!r}")
    if before is not None and (not isinstance(before, str) or not before):
        raise ConfigError(f"before must be a task id (str) or None, got {before!r}")
    if queue is not None and (not isinstance(queue, str) or not queue):
        raise ConfigError(f"queue must be a queue name (non-empty str) or None, got {queue!r}")
    if name is not None and (not isinstance(name, str) or not name):
        raise ConfigError(f"name must be a function name (non-empty str) or None, got {name!r}")


def in_page(
    t: Task, statuses: Collection[TaskStatus] | None, queue: str | None, name: str | None,
    before: str | None,
) -> bool:
    """Whether ``t`` belongs to a ``list_tasks`` page with these filters (backends that filter
    in Python)."""
    return (
        (statuses is None or t.status in statuses)
        and (queue is None or t.queue == queue)
        and (name is None or t.name == name)
        and (before is None or t.id < before)
    )


#: final statuses ``requeue`` runs again
REQUEUABLE = UNSUCCESSFUL


def events_in_order(
    events: Iterable[TaskEvent], since: float | None, types: list[str] | None, limit: int | None
) -> list[TaskEvent]:
    """What ``query_events`` returns from events read in append order: those at or after
    ``since`` of ``types``, sorted by time (stable: ties keep append order), ``limit`` first."""
    wanted = None if types is None else set(types)
    out = sorted(
        (e for e in events if (since is None or e.timestamp >= since) and (wanted is None or e.type in wanted)),
        key=_timestamp,
    )
    return out if limit is None else out[:limit]


def _timestamp(e: TaskEvent) -> float:
    return e.timestamp


def check_items(items: Iterable[Any], kind: type, arg: str) -> None:
    """``ConfigError`` naming ``arg`` unless every item is a ``kind``."""
    for x in items:
        if not isinstance(x, kind):
            raise ConfigError(f"{arg} must hold {kind.__name__}, got {type(x).__name__}")


def check_outcomes(outcomes: Sequence[tuple[str, TaskStatus]]) -> None:
    """``finish`` takes final statuses only."""
    for i, (task_id, status) in enumerate(outcomes):
        if not isinstance(status, TaskStatus) or not status.is_final:
            raise ConfigError(
                f"outcomes[{i}] for task {task_id!r}: status must be a final TaskStatus "
                f"(SUCCEEDED, FAILED, CANCELLED, EXPIRED), got {status!r}"
            )


def make_private_dir(path: str) -> None:
    """``os.makedirs(path)``: a folder it creates is 0700 whatever the umask (one it finds is
    left as it is, see :func:`check_owner`)."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            return
    os.chmod(path, 0o700)


def check_owner(path: str, url: str) -> None:
    """One WARNING when storage ``path`` is owned by another user, or others may write to it:
    whoever can write there can plant task or result payloads (a ``SignatureError`` when
    ``OMNIQ_SECRET_KEY`` is set, code running as this user when it is not)."""
    if not hasattr(os, "getuid"):
        return
    try:
        st = os.stat(path)
    except OSError:
        return
    problem = ""
    if st.st_uid != os.getuid() and os.getuid() != 0:
        problem = f"is owned by another user (uid {st.st_uid})"
    elif stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        problem = "is writable by every user"
    if problem:
        get_logger("omniq.storage").warning(
            "storage %s: %s %s: whoever can write there can plant tasks and results (run code "
            "as this user unless OMNIQ_SECRET_KEY is set); use a folder only you own",
            masked(url), path, problem,
        )


__all__ = [
    "MAX_PAGE",
    "REQUEUABLE",
    "check_claim",
    "check_items",
    "check_new_tasks",
    "check_outcomes",
    "check_owner",
    "check_page",
    "check_statuses",
    "events_in_order",
    "in_page",
    "make_private_dir",
    "watched_after",
]
