"""Schedules of the file:// task queue: one directory of versioned files per schedule.

``schedules/<id>/v<N>.msgpack``; a new version is ``os.link``ed into place, which fails when the
name exists, atomically, on every POSIX filesystem (compare-and-set, NFS included). The two
newest versions are kept: a reader whose file vanished looks again."""

from __future__ import annotations

import os
import re
import secrets

import msgspec

from ...errors import StorageError
from ...ids import new_id
from ...logs import get_logger
from ...models import Schedule
from .._codec import decoder, encode
from .files import (
    read_file,
    write_atomic,
)
from .layout import (
    encode_name,
)
from .taskfiles import FSYNC_TASKS, listdir, rmtree, touch, unlink

log = get_logger("omniq.storage.fsspec")
_sched_dec = decoder(Schedule)
_VERSION = re.compile(r"v(\d+)\.msgpack")


class ScheduleFiles:
    """The schedules under ``root``."""

    def __init__(self, root: str) -> None:
        self.root = root

    def dir(self, schedule_id: str) -> str:
        return os.path.join(self.root, encode_name(schedule_id))

    def current(self, sdir: str) -> tuple[int, Schedule] | None:
        for _ in range(5):
            versions = [int(m.group(1)) for n in listdir(sdir) if (m := _VERSION.fullmatch(n))]
            if not versions:
                return None
            v = max(versions)
            data = read_file(os.path.join(sdir, f"v{v}.msgpack"))
            if data is None:
                continue  # superseded and pruned meanwhile: look again
            try:
                return v, _sched_dec.decode(data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.error("unreadable schedule version %s/v%d: %s", sdir, v, exc)
                return None
        return None

    def cas(self, sdir: str, version: int, schedule: Schedule) -> bool:
        """Write version ``version + 1``; False if someone else wrote it first (``os.link``
        fails when the name exists, atomically, on every POSIX filesystem, NFS included)."""
        tmp = os.path.join(sdir, f".tmp-{secrets.token_hex(6)}")
        try:
            write_atomic(tmp, encode(schedule), fsync=FSYNC_TASKS)
        except FileNotFoundError:
            return False
        try:
            os.link(tmp, os.path.join(sdir, f"v{version + 1}.msgpack"))
        except (FileExistsError, FileNotFoundError):
            return False
        finally:
            unlink(tmp)
        for n in listdir(sdir):  # keep the newest two; a reader whose file vanished looks again
            m = _VERSION.fullmatch(n)
            if m and int(m.group(1)) < version:
                unlink(os.path.join(sdir, n))
        return True

    def add(self, schedule: Schedule) -> None:
        sdir = self.dir(schedule.id)
        for _ in range(100):
            cur = self.current(sdir)
            if cur is None:
                os.makedirs(sdir, exist_ok=True)
                if not any(n.startswith("added-") for n in listdir(sdir)):
                    touch(os.path.join(sdir, f"added-{new_id()}"))  # for insertion order
            if self.cas(sdir, cur[0] if cur else 0, schedule):
                return
        raise StorageError(f"schedule {schedule.id}: too many concurrent updates")

    def all(self) -> list[Schedule]:
        found = []
        for n in listdir(self.root):
            sdir = os.path.join(self.root, n)
            cur = self.current(sdir)
            if cur is not None:
                added = min((x for x in listdir(sdir) if x.startswith("added-")), default="~")
                found.append((added, cur[1]))
        found.sort(key=lambda pair: pair[0])
        return [s for _, s in found]

    def set_paused(self, schedule_id: str, paused: bool, next_run: float | None) -> bool:
        sdir = self.dir(schedule_id)
        for _ in range(100):
            cur = self.current(sdir)
            if cur is None:
                return False
            v, s = cur
            nxt = next_run if (not paused or next_run is not None) else s.next_run
            if self.cas(sdir, v, msgspec.structs.replace(s, paused=paused, next_run=nxt)):
                return True
        raise StorageError(f"schedule {schedule_id}: too many concurrent updates")

    def delete(self, schedule_id: str) -> bool:
        sdir = self.dir(schedule_id)
        gone = os.path.join(self.root, f".deleted-{secrets.token_hex(6)}")
        try:
            os.rename(sdir, gone)
        except FileNotFoundError:
            return False
        found = any(_VERSION.fullmatch(n) for n in listdir(gone))
        rmtree(gone)
        return found
