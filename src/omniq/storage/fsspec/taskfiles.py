"""The file:// task queue's files: a task file's name (``Slot``) and content (``TaskRecord``),
where one was found (``TaskLoc``), the small file operations every part of the queue uses, and
``TaskFiles``: the folders, reading a task, the rename that moves it, scans and lookups."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, NamedTuple

import msgspec

from ...logs import get_logger
from ...models import Task, TaskStatus
from .._codec import decoder, encode
from .files import (
    read_file,
    write_atomic,
)
from .layout import (
    decode_name,
    encode_name,
)

log = get_logger("omniq.storage.fsspec")


class Slot(NamedTuple):
    """The fields of a task file's *name*: everything about a task that changes while it lives.

    The file's content (``TaskRecord``) is written once at enqueue; a status change is one
    ``os.rename`` to a new directory and name, so exactly one of several racing processes wins
    it and nobody ever rewrites a file someone else may be moving. ``x`` stands for None.
    """

    priority: int
    seq: str  # enqueue order (a time-ordered id), for FIFO among equal priorities
    deliveries: int
    attempts: int
    created_at: float
    expires_at: float | None
    eta: float | None
    lease_until: float | None
    ndeps: int  # dependencies it may still wait for
    task_id: str

    def render(self) -> str:
        def f(x: float | None) -> str:
            return "x" if x is None else repr(float(x))

        return (
            f"{self.priority}_{self.seq}_{self.deliveries}_{self.attempts}_{f(self.created_at)}_"
            f"{f(self.expires_at)}_{f(self.eta)}_{f(self.lease_until)}_{self.ndeps}_"
            f"{encode_name(self.task_id)}.msgpack"
        )

    @classmethod
    def parse(cls, name: str) -> Slot | None:
        if name.startswith(".") or not name.endswith(".msgpack"):
            return None
        parts = name[: -len(".msgpack")].split("_", 9)
        if len(parts) != 10:
            return None

        def f(x: str) -> float | None:
            return None if x == "x" else float(x)

        try:
            return cls(
                int(parts[0]),
                parts[1],
                int(parts[2]),
                int(parts[3]),
                float(parts[4]),
                f(parts[5]),
                f(parts[6]),
                f(parts[7]),
                int(parts[8]),
                decode_name(parts[9]),
            )
        except (ValueError, UnicodeDecodeError):
            return None


class TaskRecord(msgspec.Struct):
    """A task file's content: the task as enqueued (final fields once it is done)."""

    seq: str
    task: Task


class TaskLoc(NamedTuple):
    status: TaskStatus
    path: str
    slot: Slot | None  # None once final
    worker: str | None = None


#: fsync each task file. Off: like SQLite's ``synchronous = NORMAL``, a process crash loses
#: nothing (writes are atomic renames); only an OS crash may lose the newest tasks.
FSYNC_TASKS = False


def listdir(path: str) -> list[str]:
    try:
        return [n for n in os.listdir(path) if not n.startswith(".")]
    except (FileNotFoundError, NotADirectoryError):
        return []


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def touch(path: str) -> None:
    for _ in range(3):
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | _NOFOLLOW, 0o600))
            return
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), exist_ok=True)


def unlink(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def rmtree(path: str) -> None:
    """Remove a directory of plain files (best effort: someone may be adding one)."""
    try:
        names = os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return
    for name in names:
        unlink(os.path.join(path, name))
    with contextlib.suppress(OSError):
        os.rmdir(path)


_rec_dec = decoder(TaskRecord)
FINALS = (TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.EXPIRED)


class TaskFiles:
    """Where the task queue's files are and how one moves: paths, reading and writing a task's
    record, the one ``os.rename`` that is every status change, scans and lookups. ``TaskDir``
    runs the lifecycle on them."""

    def __init__(self, root: str) -> None:
        base = os.path.join(root, "tasks")
        self.base = base
        self.queued = os.path.join(base, "queued")
        self.pending = os.path.join(base, "pending")
        self.running = os.path.join(base, "running")
        self.done = os.path.join(base, "done")
        self.deps = os.path.join(base, "deps")
        self.cancels = os.path.join(base, "cancel")
        self.staged = os.path.join(base, "staged")
        self.scheds = os.path.join(base, "schedules")
        self.workers_dir = os.path.join(base, "workers")
        self.keys = os.path.join(base, "keys")
        self.results_here = False  # (TaskQueue.results_here, copied by the backend)
        #: whether a SUCCEEDED result of a task (whose record is gone) is stored here; set by
        #: the backend holding the results beside this queue
        self.succeeded_result: Callable[[str], bool] = lambda task_id: False
        self._queue_of: dict[str, str] = {}  # task id -> queue (never changes)
        self._deps_of: dict[str, tuple[str, ...]] = {}  # task id -> its dependencies

    def setup(self) -> None:
        for d in (
            self.queued,
            self.pending,
            self.running,
            self.deps,
            self.cancels,
            self.staged,
            self.scheds,
            self.workers_dir,
            self.keys,
        ):
            os.makedirs(d, exist_ok=True)
        for st in FINALS:
            os.makedirs(os.path.join(self.done, st.value), exist_ok=True)

    # --- paths, reads, moves -----------------------------------------------------------------------
    def _done_path(self, status: TaskStatus, task_id: str) -> str:
        return os.path.join(self.done, status.value, encode_name(task_id) + ".msgpack")

    def _slot_path(self, status: TaskStatus, queue: str, slot: Slot) -> str:
        area = self.queued if status is TaskStatus.QUEUED else self.pending
        return os.path.join(area, encode_name(queue), slot.render())

    def _cancel_path(self, task_id: str) -> str:
        return os.path.join(self.cancels, encode_name(task_id))

    def _read_rec(self, path: str, errors: list[Exception] | None = None) -> TaskRecord | None:
        """The record in ``path``; None when it is gone or does not decode (for any reason: a
        record nested too deep raises RecursionError), the exception then added to ``errors``."""
        data = read_file(path)
        if data is None:
            return None
        try:
            rec = _rec_dec.decode(data)
        except Exception as exc:
            log.error("unreadable task file %s (%d bytes): %s", path, len(data), type(exc).__name__)
            if errors is not None:
                errors.append(exc)
            return None
        self._queue_of[rec.task.id] = rec.task.queue
        return rec

    def _write_rec(self, path: str, rec: TaskRecord) -> None:
        write_atomic(path, encode(rec), fsync=FSYNC_TASKS)

    def _write_final(self, path: str, rec: TaskRecord, now: float, **fields: Any) -> Task:
        """Rewrite a file that just became final (nobody else moves a final file)."""
        task = msgspec.structs.replace(rec.task, lease_until=None, **fields)
        self._write_rec(path, TaskRecord(rec.seq, task))
        with contextlib.suppress(OSError):
            os.utime(path, (now, now))  # purge reads the finish time from the mtime
        return task

    def _end(
        self, loc: TaskLoc, rec: TaskRecord, status: TaskStatus, now: float, **fields: Any
    ) -> Task | None:
        """Move an active task to ``done/<status>``; None if someone else moved it first."""
        dst = self._done_path(status, rec.task.id)
        if not self._move(loc.path, dst):
            return None
        s = loc.slot
        if s is not None:
            fields = {"deliveries": s.deliveries, "attempts": s.attempts, "eta": s.eta, **fields}
        return self._write_final(dst, rec, now, status=status, **fields)

    def _move(self, src: str, dst: str) -> bool:
        """Rename ``src`` to ``dst``; False if someone else moved ``src`` first."""
        try:
            os.rename(src, dst)
            return True
        except FileNotFoundError:
            if not os.path.exists(src):
                return False
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        try:
            os.rename(src, dst)
            return True
        except FileNotFoundError:
            return False

    def _scan(self, status: TaskStatus, queues: Sequence[str] | None = None) -> dict[str, TaskLoc]:
        """Every task in one active status (optionally only some queues), by id."""
        out: dict[str, TaskLoc] = {}
        if status is TaskStatus.RUNNING:
            for w in listdir(self.running):
                wdir = os.path.join(self.running, w)
                worker = decode_name(w)
                for name in listdir(wdir):
                    slot = Slot.parse(name)
                    if slot is not None:
                        out[slot.task_id] = TaskLoc(status, os.path.join(wdir, name), slot, worker)
            return out
        area = self.queued if status is TaskStatus.QUEUED else self.pending
        names = [encode_name(q) for q in queues] if queues else listdir(area)
        for q in names:
            qdir = os.path.join(area, q)
            queue = decode_name(q)
            for name in listdir(qdir):
                slot = Slot.parse(name)
                if slot is not None:
                    out[slot.task_id] = TaskLoc(status, os.path.join(qdir, name), slot)
                    self._queue_of.setdefault(slot.task_id, queue)
        return out

    def _held(self, worker: str) -> dict[str, TaskLoc]:
        wdir = os.path.join(self.running, encode_name(worker))
        out = {}
        for name in listdir(wdir):
            slot = Slot.parse(name)
            if slot is not None:
                out[slot.task_id] = TaskLoc(TaskStatus.RUNNING, os.path.join(wdir, name), slot, worker)
        return out

    def _final_status(self, task_id: str) -> TaskStatus | None:
        for st in FINALS:
            if os.path.exists(self._done_path(st, task_id)):
                return st
        return None

    def locate(self, task_ids: Iterable[str]) -> dict[str, TaskLoc]:
        """Where each known task is. Active directories are read in the order tasks move through
        them and a miss is looked for once more, so a task moving meanwhile is still found."""
        want = list(dict.fromkeys(task_ids))
        out: dict[str, TaskLoc] = {}
        if not want:
            return out
        for _ in range(2):
            active: dict[str, TaskLoc] = {}
            for st in (TaskStatus.PENDING, TaskStatus.QUEUED, TaskStatus.RUNNING):
                active.update(self._scan(st))
            for tid in want:
                if tid in out:
                    continue
                if tid in active:
                    out[tid] = active[tid]
                    continue
                final = self._final_status(tid)
                if final is not None:
                    out[tid] = TaskLoc(final, self._done_path(final, tid), None)
            if len(out) == len(want):
                break
        return out

    def _existing(self, task_ids: set[str]) -> set[str]:
        """Which of these ids are stored (for the duplicate check: names are not parsed)."""
        by_name = {encode_name(t): t for t in task_ids}
        out = {t for t in task_ids if self._final_status(t) is not None}
        dirs = [os.path.join(a, q) for a in (self.pending, self.queued) for q in listdir(a)]
        dirs += [os.path.join(self.running, w) for w in listdir(self.running)]
        for d in dirs:
            for name in listdir(d):
                tid = by_name.get(name[name.rfind("_") + 1 : -len(".msgpack")])
                if tid is not None:
                    out.add(tid)
        return out

    def list_tasks(
        self, statuses: Collection[TaskStatus] | None, queue: str | None, name: str | None,
        limit: int, before: str | None,
    ) -> list[Task]:
        """A page, newest first: the status folders are listed (names only: an active task's
        name carries its id, a final one's is its id), the ids sorted, and records read only
        until the page is full."""
        found: list[tuple[str, TaskLoc]] = []
        for st in TaskStatus:
            if statuses is not None and st not in statuses:
                continue
            if st in FINALS:
                sdir = os.path.join(self.done, st.value)
                found.extend((tid, TaskLoc(st, os.path.join(sdir, n), None)) for n in listdir(sdir)
                             if n.endswith(".msgpack") and (tid := decode_name(n[: -len(".msgpack")])))
            else:
                queues = [queue] if queue is not None and st is not TaskStatus.RUNNING else None
                found.extend(self._scan(st, queues).items())
        if before is not None:
            found = [f for f in found if f[0] < before]
        found.sort(key=_first, reverse=True)
        page: list[Task] = []
        for tid, loc in found:
            if len(page) >= limit:
                break
            if queue is not None and self._queue_of.get(tid, queue) != queue:
                continue  # (a queue known without reading the record)
            rec = self._read_rec(loc.path)
            if rec is None:
                continue  # moved meanwhile, or unreadable
            t = self._task(loc, rec)
            if (queue is None or t.queue == queue) and (name is None or t.name == name):
                page.append(t)
        return page

    def _task(self, loc: TaskLoc, rec: TaskRecord) -> Task:
        """The stored task as it is now: its content overlaid with the fields of its name."""
        t = rec.task
        s = loc.slot
        if s is None:
            return msgspec.structs.replace(t, status=loc.status)
        running = loc.status is TaskStatus.RUNNING
        return msgspec.structs.replace(
            t,
            status=loc.status,
            deliveries=s.deliveries,
            attempts=s.attempts,
            eta=s.eta,
            worker=loc.worker if running else None,
            lease_until=s.lease_until if running else None,
            cancel_requested=running and os.path.exists(self._cancel_path(t.id)),
        )


def _first(item: tuple[str, Any]) -> str:
    return item[0]
