"""The shard machinery of the bucket task queue: connect (probe, layout), read shards and change
them by compare-and-set, task bodies and archived rows. ``BucketQueueBackend`` builds the queue
operations on it."""

from __future__ import annotations

import contextlib
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from typing import Any, ClassVar, NamedTuple, TypeVar
from urllib.parse import parse_qsl, urlsplit

import anyio
import msgspec

from ...errors import ConfigError, StorageError
from ...ids import new_ids
from ...logs import get_logger
from ...models import Task, TaskStatus
from .._codec import decoder, encode
from ..base import masked
from ..blobs import LIVE_TASK_STATUSES
from ..enqueue import plan_enqueue
from ..fsspec.files import bounded
from ..fsspec.layout import encode_name
from ..fsspec.store import FsspecBackend
from ..rows import stand_in_task
from . import shards as sh
from .cas import CasStore, Conflict, cas_for
from .keys import BucketKeys

log = get_logger("omniq.storage.bucket")
R = TypeVar("R")

#: Seconds between an idle worker's looks at the queue, at most (it starts at IDLE_MIN after
#: work and doubles): with the heartbeat every lease / 3, an idle worker makes < 1 request/s.
IDLE_MIN = 0.05
IDLE_MAX = 2.0
#: How old a shard read may be for the janitor's reap / expire, the scheduler's schedule list
#: and a worker's cancel-request check to use it without reading again (their own writes keep
#: it current; other processes' changes show within this time).
SETTLE = 2.0
CANCEL_SETTLE = 1.0
#: Final rows leave their shard for ``done/`` objects this long after they finished, or when a
#: shard holds more than ARCHIVE_KEEP of them.
ARCHIVE_AGE = 10.0
ARCHIVE_KEEP = 200
#: Tries of one compare-and-set before giving up (each loser reads again and decides again).
MAX_TRIES = 200
BODY_CACHE = 4096

_shard_dec = decoder(sh.Shard)
_row_dec = decoder(sh.Row)
_task_dec = decoder(Task)


class _View(NamedTuple):
    """A shard as last read or written here: bytes, version tag, when (monotonic), decoded."""

    data: bytes
    tag: str | None
    at: float
    shard: sh.Shard


def split_shards(url: str) -> tuple[str, int | None]:
    """``url`` without its ``?shards=N`` option, and N (None when not given)."""
    parts = urlsplit(url)
    if not parts.query:
        return url, None
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = set(params) - {"shards"}
    if unknown:
        raise ConfigError(
            f"tasks URL {masked(url)!r}: unknown option {sorted(unknown)[0]!r}; a bucket task "
            "queue takes ?shards=N (1-64, fixed when the queue is first opened)"
        )
    raw = params["shards"]
    if not raw.isdigit() or not 1 <= int(raw) <= 64:
        raise ConfigError(f"tasks URL {masked(url)!r}: shards must be an int from 1 to 64, got {raw!r}")
    return url.split("?", 1)[0], int(raw)


class ShardStore(FsspecBackend):
    """Results, events and blobs (``FsspecBackend``) plus the task queue's shards, bodies and
    archived rows under ``<prefix>/queue/``."""
    """Tasks, results, events and blobs under one ``s3://``, ``gs://`` or ``abfs://`` prefix."""

    can_hold_tasks: ClassVar[bool] = True
    _layout: ClassVar[dict[str, str]] = {
        **FsspecBackend._layout,
        "queue": "queue/...: the task queue, see omniq.storage.bucket",
    }

    def __init__(self, url: str, *, storage_options: dict[str, Any] | None = None) -> None:
        base, shards = split_shards(url)
        super().__init__(base, storage_options=storage_options)
        self.shards = shards or 1
        self._asked_shards = shards
        self._cas: CasStore | None = None
        self._views: dict[int, _View] = {}
        self._locks: dict[int, anyio.Lock] = {}
        self._bodies: OrderedDict[str, Task] = OrderedDict()
        self._idle = False
        self._gap = IDLE_MIN
        self._watched: set[str] | None = set()
        self._fired_ok: OrderedDict[str, None] = OrderedDict()  # schedule tasks seen stored
        q = self._path("queue")
        self._q = q
        self.keys = BucketKeys(_NoCas(), f"{q}/keys", self._lookup_statuses, self._succeeded)

    # --- lifecycle ------------------------------------------------------------------------------
    async def _open(self) -> None:
        self._views.clear()
        self._bodies.clear()
        await super()._open()
        try:
            fs = getattr(self.files, "fs", None)
            cas = cas_for(fs, self.location.protocol, self.url)
            await self._io("probe conditional writes in", cas.probe(f"{self._q}/probe", self.url))
            self._cas = cas
            self.keys.cas = cas
            await self._io("read the queue layout of", self._read_layout())
        except BaseException:
            self._cas = None
            await super()._close()
            raise

    async def _read_layout(self) -> None:
        path = f"{self._q}/omniq-bucket.json"
        want = self._asked_shards or 1
        for _ in range(3):
            got = await self.cas.get(path)
            if got is None:
                with contextlib.suppress(Conflict):
                    await self.cas.put(path, msgspec.json.encode({"shards": want}), tag=None)
                continue
            stored = int(msgspec.json.decode(got.data).get("shards", 1))
            if self._asked_shards is not None and stored != self._asked_shards:
                log.warning("%s: the queue has %d shards (fixed when it was made), not %d",
                            masked(self.url), stored, self._asked_shards)  # fmt: skip
            self.shards = stored
            return
        raise StorageError(f"cannot read the queue layout of {masked(self.url)}")

    async def _close(self) -> None:
        self._cas = None
        await super()._close()

    @property
    def cas(self) -> CasStore:
        if self._cas is None:
            raise StorageError(f"{masked(self.url)} is not connected: call connect() first")
        return self._cas

    async def _io(self, action: str, aw: Awaitable[R]) -> R:
        try:
            return await aw
        except Conflict:
            raise
        except (StorageError, ConfigError):
            raise
        except Exception as exc:
            raise self._error(action, exc) from exc

    # --- paths ----------------------------------------------------------------------------------
    def _shard_path(self, i: int) -> str:
        return f"{self._q}/shard-{i}.msgpack"

    def _body_path(self, task_id: str) -> str:
        return f"{self._q}/tasks/{encode_name(task_id)}.msgpack"

    def _done_path(self, task_id: str) -> str:
        return f"{self._q}/done/{encode_name(task_id)}.msgpack"

    def _worker_path(self, worker_id: str) -> str:
        return f"{self._q}/workers/{encode_name(worker_id)}.msgpack"

    def _shard(self, task_id: str) -> int:
        return sh.shard_of(task_id, self.shards)

    # --- shards: read, and change by compare-and-set ----------------------------------------------
    async def _read(self, i: int) -> _View:
        got = await self._io("read the queue in", self.cas.get(self._shard_path(i)))
        if got is None:
            view = _View(b"", None, time.monotonic(), sh.Shard())
        else:
            try:
                shard = _shard_dec.decode(got.data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise StorageError(
                    f"{masked(self.url)}: the queue's shard object {self._shard_path(i)} is "
                    f"unreadable ({len(got.data)} bytes: {exc}); it was written over by something "
                    "other than OmniQ"
                ) from exc
            view = _View(got.data, got.tag, time.monotonic(), shard)
        self._views[i] = view
        return view

    async def _view(self, i: int, settle: float = 0.0) -> _View:
        """Shard ``i``, read again unless the last read or write here is younger than
        ``settle`` seconds."""
        view = self._views.get(i)
        if view is None or time.monotonic() - view.at >= settle:
            view = await self._read(i)
        return view

    def _quiet(self, i: int, settle: float, busy: Callable[[sh.Shard], bool]) -> bool:
        """Whether shard ``i`` as read or written here less than ``settle`` seconds ago has
        nothing for ``busy``: the janitor's and an idle worker's frequent looks then cost
        neither a request nor decoding a copy of the shard."""
        view = self._views.get(i)
        return view is not None and time.monotonic() - view.at < settle and not busy(view.shard)

    async def _all(self, settle: float = 0.0, which: Iterable[int] | None = None) -> dict[int, sh.Shard]:
        idx = sorted(set(which)) if which is not None else list(range(self.shards))
        views = await bounded(lambda i: self._view(i, settle), idx, 16)
        return {i: v.shard for i, v in zip(idx, views, strict=True)}

    async def _update(
        self, i: int, fn: Callable[[sh.Shard], tuple[R, bool]], *, settle: float = 0.0
    ) -> R:
        """Apply ``fn`` to shard ``i`` and write it back if ``fn`` says it changed, conditional
        on the version it read; a refusal means someone else wrote first: read again and apply
        ``fn`` again (it decides again). A ``fn`` that changes nothing on a view older than
        ``settle`` is tried once more on a fresh read (the view may have missed others' work)."""
        lock = self._locks.get(i)
        if lock is None:
            lock = self._locks[i] = anyio.Lock()
        async with lock:
            view = self._views.get(i)
            fresh = view is None
            if view is None:
                view = await self._read(i)
            for attempt in range(MAX_TRIES):
                shard = _shard_dec.decode(view.data) if view.data else sh.Shard()
                result, changed = fn(shard)
                if not changed:
                    if fresh or time.monotonic() - view.at < settle:
                        return result
                    view = await self._read(i)
                    fresh = True
                    continue
                shard.version += 1
                data = encode(shard)
                try:
                    tag = await self._io("write the queue in", self.cas.put(
                        self._shard_path(i), data, tag=view.tag))  # fmt: skip
                except Conflict:
                    view = await self._read(i)
                    if view.data == data:  # our write landed; its reply was lost and the
                        return result  # client's resend refused (every version's bytes differ)
                    fresh = True
                    if attempt >= 2:  # a crowd on one shard: spread the next tries out
                        await anyio.sleep(random.uniform(0, min(0.002 * attempt, 0.05)))
                    continue
                self._views[i] = _View(data, tag, time.monotonic(), shard)
                return result
        raise StorageError(f"{masked(self.url)}: shard {i} changed under {MAX_TRIES} tries in a row")

    def _group(self, ids: Iterable[str]) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for tid in dict.fromkeys(ids):
            out.setdefault(self._shard(tid), []).append(tid)
        return out

    # --- task bodies and archived (done) rows -----------------------------------------------------
    def _keep_body(self, task: Task) -> None:
        self._bodies[task.id] = task
        self._bodies.move_to_end(task.id)
        while len(self._bodies) > BODY_CACHE:
            self._bodies.popitem(last=False)

    async def _get_bodies(self, rows: Sequence[sh.Row]) -> dict[str, Task]:
        out = {r.id: b for r in rows if (b := self._bodies.get(r.id)) is not None}
        missing = {self._body_path(r.id): r for r in rows if r.id not in out}
        if missing:
            got = await self._io("read tasks from", self.files.get_many(list(missing)))
            for path, r in missing.items():
                data = got.get(path)
                if data is None:
                    continue
                try:
                    body = _task_dec.decode(data)
                except Exception as exc:  # damaged: a stand-in that fails saying why
                    log.error("unreadable task body %s (%d bytes)", path, len(data))
                    body = stand_in_task(r.id, exc, queue=r.queue, priority=r.priority,
                                         created_at=r.created_at)  # fmt: skip
                self._keep_body(body)
                out[r.id] = body
        return out

    async def _tasks(self, rows: Sequence[sh.Row]) -> list[Task]:
        bodies = await self._get_bodies(rows)
        return [sh.as_task(bodies[r.id], r) for r in rows if r.id in bodies]

    async def _put_bodies(self, tasks: Sequence[Task]) -> None:
        """Each task's body, create-only: an id stored before is refused, and the batch with it."""
        cas = self.cas
        made: list[str] = []
        taken: list[str] = []

        async def put(t: Task) -> None:
            path = self._body_path(t.id)
            try:
                await cas.put(path, encode(t), tag=None)
                made.append(path)
            except Conflict:
                taken.append(t.id)

        await self._io("store tasks in", bounded(put, tasks, 32))
        if taken:
            await self._io("store tasks in", bounded(cas.delete, made, 32))
            raise ConfigError(f"task id {taken[0]!r} already exists")
        for t in tasks:
            self._keep_body(msgspec.structs.replace(t))  # a copy: the caller may change theirs

    async def _unstore(self, groups: dict[int, list[Task]], seqs: dict[str, str]) -> None:
        """An enqueue failed part way: remove the bodies of tasks whose rows are not stored
        (looked up again: a write whose reply was lost may have landed), so that the client's
        retry of the same tasks is not refused as "already exists". Best effort."""
        with contextlib.suppress(Exception):
            gone: list[str] = []
            for i, group in groups.items():
                rows = (await self._read(i)).shard.rows
                gone += [t.id for t in group if (r := rows.get(t.id)) is None or r.seq != seqs[t.id]]
            await bounded(self.cas.delete, [self._body_path(t) for t in gone], 32)
            for t in gone:
                self._bodies.pop(t, None)

    def _insert(
        self, shard: sh.Shard, group: Sequence[Task], batch: Sequence[Task],
        known: dict[str, TaskStatus], seqs: dict[str, str], now: float,
    ) -> tuple[bool, bool]:  # fmt: skip
        """Rows for ``group`` (part of ``batch``), planned on what this shard says now about
        the dependencies it holds (the rest as looked up before)."""
        mine = [t for t in group if (r := shard.rows.get(t.id)) is not None and r.seq == seqs[t.id]]
        if mine:  # this write landed, its reply was lost and the retry was refused: done
            return True, False
        if any(t.id in shard.rows for t in group):
            raise ConfigError(f"task id {next(t.id for t in group if t.id in shard.rows)!r} already exists")
        here = dict(known)
        for t in batch:
            for d in t.depends_on:
                r = shard.rows.get(d)
                if r is not None:
                    here[d] = r.status
        plans = dict(zip((t.id for t in batch), plan_enqueue(batch, here), strict=True))
        ready = False
        for t in group:
            status, waiting = plans[t.id]
            shard.rows[t.id] = sh.row_of(t, seqs[t.id], status, waiting, now)
        for t in group:  # (a batch's tasks may come before the tasks they depend on)
            status, waiting = plans[t.id]
            for d in waiting:
                dep = shard.rows.get(d)
                if dep is not None and t.id not in dep.dependents:
                    dep.dependents.append(t.id)
            ready = ready or status is TaskStatus.QUEUED or (status is TaskStatus.PENDING and not waiting)
        return ready, True

    async def _recover_fired(self) -> None:
        """With shards > 1, a schedule's slot (shard 0) and its task (its own shard) are two
        writes: a firer that died between them left a slot whose task was never stored. Its
        body was written before the slot, so the janitor stores the task from it, once the
        slot is a minute old (the firer may still be on its way before that)."""
        view = self._views.get(0)
        if self.shards == 1 or view is None:
            return
        for s in view.shard.schedules.values():
            tid = s.last_task_id
            if tid is None or tid in self._fired_ok or self._shard(tid) == 0:
                continue
            if s.last_run is None or time.time() - s.last_run < 60:
                continue
            if not await self._rows([tid]):
                data = await self._io("read tasks from", self.files.get(self._body_path(tid)))
                if data is not None:
                    task = msgspec.structs.replace(_task_dec.decode(data), depends_on=())
                    log.warning("storing task %s of schedule %s: its firer stopped between "
                                "the slot and the task", tid, s.id)  # fmt: skip
                    seqs = dict(zip([tid], new_ids(1), strict=True))

                    def insert(shard: sh.Shard, t: Task = task, q: dict[str, str] = seqs) -> tuple[bool, bool]:
                        return self._insert(shard, [t], [t], {}, q, time.time())

                    with contextlib.suppress(ConfigError):  # stored meanwhile after all
                        await self._update(self._shard(tid), insert)
            self._fired_ok[tid] = None
            while len(self._fired_ok) > 1000:
                self._fired_ok.popitem(last=False)

    async def _done_rows(self, ids: Collection[str]) -> dict[str, sh.Row]:
        if not ids:
            return {}
        paths = {self._done_path(t): t for t in ids}
        got = await self._io("read tasks from", self.files.get_many(list(paths)))
        out: dict[str, sh.Row] = {}
        for path, data in got.items():
            with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                out[paths[path]] = _row_dec.decode(data)
        return out

    async def _rows(self, ids: Collection[str]) -> dict[str, sh.Row]:
        """The current row of each known task: in its shard (fresh), else archived."""
        ids = list(dict.fromkeys(ids))
        if not ids:
            return {}
        groups = self._group(ids)
        shards = await self._all(which=groups)
        out = {t: r for i, g in groups.items() for t in g if (r := shards[i].rows.get(t)) is not None}
        out.update(await self._done_rows([t for t in ids if t not in out]))
        return out

    async def _lookup_statuses(self, ids: Collection[str]) -> dict[str, TaskStatus]:
        return {t: r.status for t, r in (await self._rows(ids)).items()}

    async def _succeeded(self, task_id: str) -> bool:
        r = await self.get_result(task_id)
        return r is not None and r.status is TaskStatus.SUCCEEDED

    async def _live_tasks(self, task_ids: list[str]) -> set[str]:
        found = await self._lookup_statuses(task_ids)
        return {t for t, s in found.items() if s.value in LIVE_TASK_STATUSES}

class _NoCas(CasStore):
    """Before ``connect``: every use is a clear error."""

    async def get(self, path: str) -> Any:
        raise StorageError("the bucket task queue is not connected: call connect() first")

    async def put(self, path: str, data: bytes, *, tag: str | None) -> str:
        raise StorageError("the bucket task queue is not connected: call connect() first")

    async def delete(self, path: str) -> None:
        raise StorageError("the bucket task queue is not connected: call connect() first")


__all__ = ["ShardStore", "split_shards"]
