"""The file:// task queue's files: a task file's name (``Slot``) and content (``TaskRecord``),
where one was found (``TaskLoc``), and the small file operations every part of the queue uses."""

from __future__ import annotations

import contextlib
import os
from typing import NamedTuple

import msgspec

from ...models import Task, TaskStatus
from .layout import (
    decode_name,
    encode_name,
)


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
