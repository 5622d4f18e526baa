"""What ``enqueue`` decides before it writes (pure: no I/O): each task's status and the
dependencies it still waits for (``plan_enqueue``), and who holds an idempotency key
(``holds_key``, the key markers of backends that write them apart, ``plan_keys``)."""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping, Sequence

import msgspec

from ..errors import ConfigError
from ..lifecycle import UNSUCCESSFUL
from ..models import Task, TaskStatus


def plan_enqueue(
    tasks: Sequence[Task], known: Mapping[str, TaskStatus]
) -> list[tuple[TaskStatus, list[str]]]:
    """Status each new task is stored with, and the dependencies it still waits for.

    ``known`` maps the already stored dependencies to their status. A dependency may also be an
    earlier or later task of the same batch. A task with an unsuccessful dependency is CANCELLED
    at once; one waiting for dependencies is PENDING; a PENDING task with neither ``eta`` nor
    dependencies to wait for is QUEUED. Unknown dependencies and cycles raise ``ConfigError``.
    """
    if not any(t.depends_on for t in tasks):  # the usual batch: nothing to order or look up
        queued, pending = TaskStatus.QUEUED, TaskStatus.PENDING
        return [(queued if t.status is pending and t.eta is None else t.status, []) for t in tasks]
    index = {t.id: i for i, t in enumerate(tasks)}
    children: dict[int, list[int]] = {}
    blocking = [0] * len(tasks)
    for i, t in enumerate(tasks):
        for d in dict.fromkeys(t.depends_on):
            if d in index:
                children.setdefault(index[d], []).append(i)
                blocking[i] += 1
            elif d not in known:
                raise ConfigError(f"tasks[{i}] ({t.id}) depends on unknown task {d!r}")
    ready = [i for i, n in enumerate(blocking) if n == 0]
    plans: list[tuple[TaskStatus, list[str]] | None] = [None] * len(tasks)
    while ready:
        i = ready.pop()
        t = tasks[i]
        waiting: list[str] = []
        status = t.status
        for d in dict.fromkeys(t.depends_on):
            dep_status = plans[index[d]][0] if d in index else known[d]  # type: ignore[index]
            if dep_status in UNSUCCESSFUL:
                status, waiting = TaskStatus.CANCELLED, []
                break
            if dep_status is not TaskStatus.SUCCEEDED:
                waiting.append(d)
        else:
            if waiting:
                status = TaskStatus.PENDING
            elif status is TaskStatus.PENDING and t.eta is None:
                status = TaskStatus.QUEUED
        plans[i] = (status, waiting)
        for c in children.get(i, ()):
            blocking[c] -= 1
            if blocking[c] == 0:
                ready.append(c)
    if any(p is None for p in plans):
        cycle = [tasks[i].id for i, p in enumerate(plans) if p is None]
        raise ConfigError(f"tasks have circular dependencies: {', '.join(cycle)}")
    return plans  # type: ignore[return-value]


#: Statuses in which a task holds its idempotency key (see ``TaskQueue.enqueue``).
KEY_HOLDING = frozenset(
    {TaskStatus.PENDING, TaskStatus.QUEUED, TaskStatus.RUNNING, TaskStatus.SUCCEEDED}
)
class KeyMark(msgspec.Struct, array_like=True):
    """An idempotency key's marker, for backends that write it *before* the task record
    (file://, NATS): the key's latest task ("" once that task was purged unsuccessful), when the
    marker was written, and whether that task's record was purged after it succeeded (it then
    holds the key while its result is stored). Stored as msgpack ``[task, at, purged]``."""

    task: str
    at: float
    purged: bool = False


#: Seconds a key marker whose task record is not there yet counts as a write in progress
#: (backends that write the marker before the record: NATS, file://). Past it, the writer is
#: taken to have died between the two and the key is free again.
KEY_WRITE_GRACE = 30.0


def holds_key(
    status: TaskStatus | None, succeeded_result: bool = False, results_here: bool = False
) -> bool:
    """Whether a key's latest task holds it: its status (None: no record any more), whether a
    SUCCEEDED result of it is stored in the same backend, and whether this backend is the
    result store (``TaskQueue.results_here``: a success then holds only while its result is
    stored, since a caller handed its id would wait for a result that is gone)."""
    if status is None or (status is TaskStatus.SUCCEEDED and results_here):
        return succeeded_result
    return status in KEY_HOLDING


class KeyVerdict(str, enum.Enum):
    """What a keyed enqueue does with the key's current marker (``key_marker_verdict``)."""

    OURS = "ours"  # the marker names the task being stored (an earlier attempt of this call)
    HELD = "held"  # another task holds the key: the new one is its duplicate
    HELD_GONE = "held-gone"  # held by a purged task whose success is still stored
    WAIT = "wait"  # a write may be in progress (marker written, record not yet): look again
    TAKE = "take"  # the key is free: write a marker naming the new task (compare-and-set)


def key_marker_verdict(
    mark: KeyMark | None, written_at: float, *, mine: str, status: TaskStatus | None,
    succeeded_result: bool, results_here: bool, now: float,
) -> KeyVerdict:
    """The rule for backends that write a key's marker before the task record (file://, NATS).

    ``mark``: the key's newest marker (None: unreadable, being written or left empty by a
    crash; ``written_at`` is then the file's time). ``status``: that marker's task's status
    (None: no record). ``succeeded_result``: whether a SUCCEEDED result of it is stored here
    (looked up only when ``key_marker_needs_result`` says so). A marker whose task has no record
    is a write in progress for ``KEY_WRITE_GRACE`` seconds, then its writer is taken to have
    died in between; ``purge`` marks the keys of the tasks it removes (``purged``), so a purged
    task is never taken for one being written."""
    if mark is None:
        return KeyVerdict.WAIT if now - written_at < KEY_WRITE_GRACE else KeyVerdict.TAKE
    if mark.task == mine:
        return KeyVerdict.OURS
    if not mark.task:  # its task was purged after failing: the key is free
        return KeyVerdict.TAKE
    if status is not None:
        ok = status is TaskStatus.SUCCEEDED and results_here and succeeded_result
        return KeyVerdict.HELD if holds_key(status, ok, results_here) else KeyVerdict.TAKE
    if mark.purged:
        return KeyVerdict.HELD_GONE if succeeded_result else KeyVerdict.TAKE
    return KeyVerdict.WAIT if now - mark.at < KEY_WRITE_GRACE else KeyVerdict.TAKE


def note_key_verdict(
    verdict: KeyVerdict, key: str, task_id: str, mark: KeyMark | None,
    waiting: dict[str, str], holders: dict[str, str], gone: list[str],
) -> bool:
    """Record what a keyed enqueue's pass makes of a verdict other than ``TAKE``: ``WAIT`` looks
    at ``key`` again next pass, ``HELD`` / ``HELD_GONE`` name its holder. False for ``TAKE``:
    the caller writes the key's marker (file://, bucket queues)."""
    if verdict is KeyVerdict.TAKE:
        return False
    if verdict is KeyVerdict.WAIT:
        waiting[key] = task_id  # its task may be being stored: look again shortly
    elif verdict is not KeyVerdict.OURS:
        assert mark is not None
        holders[key] = mark.task
        if verdict is KeyVerdict.HELD_GONE:
            gone.append(mark.task)
    return True


def key_marker_needs_result(mark: KeyMark | None, status: TaskStatus | None, results_here: bool) -> bool:
    """Whether ``key_marker_verdict`` needs ``succeeded_result`` for this marker (a lookup the
    caller makes only then)."""
    if mark is None or not mark.task:
        return False
    if status is not None:
        return status is TaskStatus.SUCCEEDED and results_here
    return mark.purged


def first_of_keys(tasks: Sequence[Task]) -> dict[str, str]:
    """Each key of a batch -> the id of the batch's first task with it (the one that may store
    it; later ones are its duplicates)."""
    first: dict[str, str] = {}
    for t in tasks:
        if t.key is not None:
            first.setdefault(t.key, t.id)
    return first


def keyed(tasks: Sequence[Task]) -> list[str]:
    """The keys of a batch, once each, in order (empty for the usual unkeyed batch)."""
    return list(dict.fromkeys(t.key for t in tasks if t.key is not None))


def plan_keys(
    tasks: Sequence[Task], holders: Mapping[str, str], gone: Collection[str] = ()
) -> tuple[list[Task], dict[str, str]]:
    """Split a batch into the tasks to store and the duplicates of held keys.

    ``holders`` maps each key held now to its holder's id (keys not held are left out). A task
    whose key is held by *another* task is a duplicate (``{its id: holder id}``); the first task
    of the batch with a free key stores it, and later tasks of the batch with that key are its
    duplicates. A task held by its own id (a retry whose first attempt stored it) is kept, for
    the backend's usual take-over of a lost reply. Tasks depending on a duplicate get the holder
    in its place (a copy of the task: the caller's objects are never changed), or lose that
    dependency when the holder is in ``gone`` (its record purged, its success stored: nothing
    to wait for). Pure: the backend reads ``holders`` and writes the result under one lock or
    transaction."""
    if not holders and all(t.key is None for t in tasks):
        return list(tasks), {}
    held = dict(holders)
    dups: dict[str, str] = {}
    store: list[Task] = []
    for t in tasks:
        k = t.key
        if k is not None:
            h = held.get(k)
            if h is not None and h != t.id:
                dups[t.id] = h
                continue
            held[k] = t.id
        store.append(t)
    if dups and any(d in dups for t in store for d in t.depends_on):
        replace = msgspec.structs.replace
        store = [
            replace(t, depends_on=tuple(dict.fromkeys(
                h for d in t.depends_on if (h := dups.get(d, d)) not in gone or h == d)))
            if any(d in dups for d in t.depends_on) else t
            for t in store
        ]
    return store, dups


__all__ = [
    "KEY_HOLDING",
    "KEY_WRITE_GRACE",
    "KeyMark",
    "KeyVerdict",
    "first_of_keys",
    "holds_key",
    "key_marker_needs_result",
    "key_marker_verdict",
    "keyed",
    "note_key_verdict",
    "plan_enqueue",
    "plan_keys",
]
