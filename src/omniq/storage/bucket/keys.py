"""Idempotency keys of the bucket task queue: one marker object per key, replaced by
compare-and-set, so of several processes racing for a key exactly one names its task there.

``keys/<key>`` holds msgpack ``[task id, time, purged]`` (``enqueue.KeyMark``). It is written
*before* the task, so a marker whose task is not stored yet may be a write in progress; what a
marker means is ``enqueue.key_marker_verdict``'s to say, as for ``file://`` and NATS.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection, Sequence

import anyio
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
from ..fsspec.layout import key_marks_name
from .cas import CasStore, Conflict, Tagged

_key_dec = decoder(KeyMark)

Statuses = Callable[[Collection[str]], Awaitable[dict[str, TaskStatus]]]
Succeeded = Callable[[str], Awaitable[bool]]


class BucketKeys:
    """The key markers under ``root`` (a path without protocol)."""

    def __init__(self, cas: CasStore, root: str, statuses: Statuses, succeeded: Succeeded) -> None:
        self.cas = cas
        self.root = root
        self.statuses = statuses
        self.succeeded = succeeded
        self.results_here = False

    def path(self, key: str) -> str:
        return f"{self.root}/{key_marks_name(key)}"

    @staticmethod
    def _mark(found: Tagged | None) -> KeyMark | None:
        if found is None:
            return None
        try:
            return _key_dec.decode(found.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None  # an object is written whole: this one is damaged, not in progress

    async def claim(self, tasks: Sequence[Task], now: float) -> tuple[dict[str, str], list[str]]:
        """Point each key of the batch at its first task, unless another task holds it:
        ``(key -> holder, for keys held; holders known only by a stored success)``."""
        holders: dict[str, str] = {}
        gone: list[str] = []
        todo = dict(first_of_keys(tasks))
        delay = 0.005
        while todo:
            items = list(todo.items())
            found: list[Tagged | None] = [None] * len(items)

            async def get(i: int, path: str, found: list[Tagged | None] = found) -> None:
                found[i] = await self.cas.get(path)

            async with anyio.create_task_group() as tg:
                for i, (k, _) in enumerate(items):
                    tg.start_soon(get, i, self.path(k))
            marks = [self._mark(f) for f in found]
            mine = set(todo.values())
            others = {m.task for m in marks if m is not None} - mine - {""}
            known = await self.statuses(others) if others else {}
            waiting: dict[str, str] = {}
            for (k, tid), got, mark in zip(items, found, marks, strict=True):
                if got is not None:
                    status = known.get(mark.task) if mark is not None else None
                    stored = False
                    if mark is not None and key_marker_needs_result(mark, status, self.results_here):
                        stored = await self.succeeded(mark.task)
                    verdict = key_marker_verdict(
                        mark, 0.0, mine=tid, status=status, succeeded_result=stored,
                        results_here=self.results_here, now=time.time(),
                    )  # fmt: skip
                    if note_key_verdict(verdict, k, tid, mark, waiting, holders, gone):
                        continue
                try:
                    await self.cas.put(
                        self.path(k), encode(KeyMark(tid, now)), tag=got.tag if got else None
                    )
                except Conflict:
                    waiting[k] = tid  # someone else was first: look at what they wrote
            todo = waiting
            if todo:
                await anyio.sleep(delay)
                delay = min(delay * 2, 0.2)
        return holders, gone

    async def forget(self, key: str, task_id: str, status: TaskStatus, now: float) -> None:
        """``purge`` removed ``task_id``: if it is its key's latest task, say so in a new marker
        (free, or held while its stored success lasts); someone re-keying first wins."""
        path = self.path(key)
        got = await self.cas.get(path)
        mark = self._mark(got)
        if got is None or mark is None or mark.task != task_id:
            return
        new = KeyMark(task_id, now, True) if status is TaskStatus.SUCCEEDED else KeyMark("", now)
        try:
            await self.cas.put(path, encode(new), tag=got.tag)
        except Conflict:
            pass
