"""Idempotency keys of the file:// task queue: one directory of versioned markers per key.

``keys/<key>/v<N>`` holds msgpack ``[task id, time, purged]``; the newest names the key's latest
task. A new version is created with ``O_EXCL``, so of several processes racing for a key exactly
one writes it (compare-and-set, NFS included)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import msgspec

from ...models import Task, TaskStatus
from .._codec import decoder, encode
from ..enqueue import (
    KeyMark,
    first_of_keys,
    key_marker_needs_result,
    key_marker_verdict,
    note_key_verdict,
)
from .layout import (
    key_marks_name,
)
from .taskfiles import TaskLoc, listdir, unlink

# --------------------------------------------------------------------------------------------
# The file:// task queue
# --------------------------------------------------------------------------------------------


_key_dec = decoder(KeyMark)


class _Tasks(Protocol):
    """What key decisions read from the task queue beside them."""

    results_here: bool
    succeeded_result: Callable[[str], bool]

    def locate(self, task_ids: Iterable[str]) -> dict[str, TaskLoc]: ...


class KeyMarks:
    """The key markers under ``root``, deciding with ``tasks`` who holds a key."""

    def __init__(self, root: str, tasks: _Tasks) -> None:
        self.root = root
        self.tasks = tasks

    def dir(self, key: str) -> str:
        return os.path.join(self.root, key_marks_name(key))

    def current(self, kdir: str) -> tuple[int, KeyMark | None, float] | None:
        """The newest marker of a key: (version, marker, written at); the marker is None while
        it is being written (or left empty by a crash: ``written at`` is then its mtime)."""
        for _ in range(5):
            versions = [int(n[1:]) for n in listdir(kdir) if n[:1] == "v" and n[1:].isdigit()]
            if not versions:
                return None
            v = max(versions)
            path = os.path.join(kdir, f"v{v}")
            try:
                with open(path, "rb") as f:
                    data = f.read()
                    at = os.fstat(f.fileno()).st_mtime
            except FileNotFoundError:
                continue  # replaced and cleaned meanwhile: look again
            try:
                mark = _key_dec.decode(data)
                return v, mark, mark.at
            except (msgspec.DecodeError, msgspec.ValidationError):
                return v, None, at
        return None

    def cas(self, kdir: str, version: int, task_id: str, now: float, purged: bool = False) -> bool:
        """Write marker ``version + 1`` naming ``task_id``; False if someone wrote it first
        (``O_EXCL`` creation is atomic on every POSIX filesystem, NFS included)."""
        path = os.path.join(kdir, f"v{version + 1}")
        for _ in range(3):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                break
            except FileNotFoundError:
                os.makedirs(kdir, exist_ok=True)
            except FileExistsError:
                return False
        else:
            return False
        try:
            os.write(fd, encode(KeyMark(task_id, now, purged)))
        finally:
            os.close(fd)
        for n in listdir(kdir):  # keep the newest two; a reader whose file vanished looks again
            if n[:1] == "v" and n[1:].isdigit() and int(n[1:]) < version:
                unlink(os.path.join(kdir, n))
        return True

    def claim(self, tasks: Sequence[Task], now: float) -> tuple[dict[str, str], list[str]]:
        """Point each key of the batch at its first task, unless another task holds it:
        ``(key -> holder, for keys held; holders known only by a stored success)``.

        What a marker found means is ``enqueue.key_marker_verdict``'s to say (a marker is written
        before its task's record, so one without a record may be a write in progress)."""
        first = first_of_keys(tasks)
        holders: dict[str, str] = {}
        gone: list[str] = []
        todo = dict(first)
        delay = 0.005
        while todo:
            current = {k: self.current(self.dir(k)) for k in todo}
            mine = set(todo.values())
            others = {c[1].task for c in current.values() if c is not None and c[1] is not None}
            others -= mine | {""}
            found = self.tasks.locate(others) if others else {}
            waiting: dict[str, str] = {}
            here = self.tasks.results_here
            for k, tid in todo.items():
                cur = current[k]
                version = 0
                if cur is not None:
                    version, mark, at = cur
                    loc = found.get(mark.task) if mark is not None else None
                    status = loc.status if loc is not None else None
                    stored = False
                    if mark is not None and key_marker_needs_result(mark, status, here):
                        stored = self.tasks.succeeded_result(mark.task)
                    verdict = key_marker_verdict(
                        mark, at, mine=tid, status=status, succeeded_result=stored,
                        results_here=here, now=time.time(),
                    )
                    if note_key_verdict(verdict, k, tid, mark, waiting, holders, gone):
                        continue
                if not self.cas(self.dir(k), version, tid, now):
                    waiting[k] = tid  # someone else was first: look at what they wrote
            todo = waiting
            if todo:
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
        return holders, gone

    def forget(self, key: str, task_id: str, status: TaskStatus, now: float) -> None:
        """``purge`` removed ``task_id``: if it is its key's latest task, say so in a new marker
        (free, or held while its stored success lasts); someone re-keying first wins."""
        kdir = self.dir(key)
        cur = self.current(kdir)
        if cur is None or cur[1] is None or cur[1].task != task_id:
            return
        if status is TaskStatus.SUCCEEDED:
            self.cas(kdir, cur[0], task_id, now, purged=True)
        else:
            self.cas(kdir, cur[0], "", now)
