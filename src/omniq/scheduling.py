"""Cron, interval and one-shot schedules: the slot arithmetic, and the loop that fires them.

The arithmetic is pure (no I/O, no clock): ``validate_spec`` turns user arguments into a
normalized ``ScheduleSpec`` or raises ``ConfigError``; ``next_run`` / ``initial_run`` /
``due_slot`` / ``after_fire`` compute slots from a stored ``Schedule``; ``schedule_row`` renders
one for ``oq.schedules()``. ``Scheduler`` is the only part that touches storage and time.

Decisions (the public contract leaves them open):

* **Cron** takes 5 fields (``minute hour day-of-month month day-of-week``), 6 fields with
  *seconds first* (the Quartz / Spring / node-cron convention: ``*/10 * * * * *`` is every
  10 s), or ``@hourly`` / ``@daily`` / ``@midnight`` / ``@weekly`` / ``@monthly`` /
  ``@yearly`` / ``@annually``. croniter's extras (``L``, ``W``, ``#``, names) work; hashed
  (``H``) and random (``R``) fields are refused, since instances must agree on every slot.
  An expression that never fires (``0 0 30 2 *``) is refused too.
* **Time zone.** A cron schedule runs in ``timezone`` (an IANA name). Left out, it is this
  machine's zone *by name* (``TZ``, else ``/etc/localtime``, else ``UTC``), recorded in the
  schedule so every instance on the storage agrees. A naive ``at`` is local time, or time in
  ``timezone`` when given; an aware ``at`` is honoured. ``interval`` takes no time zone.
* **DST.** Cron slots are wall-clock times in the zone. A slot in the spring-forward gap runs
  at the transition. In the fall-back hour, a job with a fixed hour field (``30 2 * * *``)
  runs once (the first pass), while a job whose hour field starts with ``*`` (``*/15 * * * *``,
  ``0 * * * *``) keeps its real-time cadence through both passes (as Vixie cron does).
* **Interval** slots are ``created_at + k * interval`` for k >= 1, so they never drift with
  firing latency; the first run is one interval after creation.
* **One-shot** ``at`` fires once; an ``at`` already past when added fires at once.
* **Missed slots** (nothing ran, or the schedule was late) fire *once*: after a firing, the
  next slot is the first one after *now*, not after the slot that fired.
* **Names** are unique per storage: adding a schedule whose name exists replaces that one's
  definition in place (same id). If the timing (cron / interval / at / timezone) is unchanged
  its ``next_run`` / ``last_run`` / ``paused`` carry over, so re-running a notebook cell neither
  duplicates the schedule, nor shifts its slots, nor fires a one-shot again. Two processes
  adding the same new name at the same instant can still race; the next ``add`` of that name
  removes the extra.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import os
import re
import time
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import anyio
import anyio.abc
import msgspec
from croniter import CroniterBadDateError, croniter

from . import ids
from .errors import ConfigError, StorageError
from .logs import Outage, get_logger
from .models import Schedule, Task
from .redact import masked
from .serialization._seals import seal_schedule
from .storage.base import TaskQueue

__all__ = [
    "ScheduleSpec",
    "Scheduler",
    "after_fire",
    "default_schedule_name",
    "describe_spec",
    "due_slot",
    "initial_run",
    "local_timezone_name",
    "next_run",
    "schedule_row",
    "validate_spec",
]

log = get_logger(__name__)

_CRON_HELP = (
    "use 5 fields 'minute hour day-of-month month day-of-week' (e.g. '*/5 * * * *'), "
    "6 fields with seconds first (e.g. '*/10 * * * * *'), "
    "or @hourly, @daily, @midnight, @weekly, @monthly, @yearly"
)
_ALIASES = {
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
_HASHED = re.compile(r"^[hr](\(|/|$)", re.IGNORECASE)


class ScheduleSpec(msgspec.Struct, frozen=True, kw_only=True):
    """When a schedule fires, normalized: exactly one of ``cron`` / ``interval`` / ``at``.

    ``cron`` has its fields separated by single spaces (aliases expanded); ``interval`` is
    seconds; ``at`` is epoch seconds; ``timezone`` an IANA name (always set for cron).
    """

    cron: str | None = None
    interval: float | None = None
    at: float | None = None
    timezone: str | None = None


# --- validation -------------------------------------------------------------------------------


def local_timezone_name() -> str:
    """This machine's IANA zone name: ``TZ``, else the ``/etc/localtime`` link, else ``UTC``.

    A name (not an offset) is what gets stored, so that other instances, on other hosts, compute
    the same slots and DST changes land where the user expects.
    """
    candidates: list[str] = []
    env = os.environ.get("TZ", "").lstrip(":")
    if env:
        candidates.append(env)
    try:
        link = os.path.realpath("/etc/localtime")
    except OSError:  # pragma: no cover - unusual filesystems
        link = ""
    if "zoneinfo/" in link:
        candidates.append(link.split("zoneinfo/", 1)[1])
    for name in candidates:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            continue
        return name
    return "UTC"


def _zone(timezone: object) -> str:
    """Validate an IANA name (or a ZoneInfo) and return the name."""
    if isinstance(timezone, ZoneInfo):
        return timezone.key
    if not isinstance(timezone, str) or not timezone:
        raise ConfigError(
            f"timezone={timezone!r} is not a time zone; give an IANA name such as "
            "'Europe/Berlin', 'America/New_York' or 'UTC'"
        )
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(
            f"timezone={timezone!r} is not a known IANA time zone; use a name such as "
            "'Europe/Berlin', 'America/New_York' or 'UTC'"
        ) from exc
    return timezone


def _fields(cron: str) -> list[str]:
    """Fields of a cron expression, aliases expanded, in croniter's order (seconds first)."""
    text = " ".join(cron.split())
    return _ALIASES.get(text.lower(), text).split(" ")


def _check_cron(cron: object) -> str:
    if not isinstance(cron, str):
        raise ConfigError(f"cron={cron!r} is not a cron expression (a string); {_CRON_HELP}")
    fields = _fields(cron)
    if len(fields) not in (5, 6):
        raise ConfigError(
            f"cron={cron!r} has {len(fields)} field{'s' if len(fields) != 1 else ''}; {_CRON_HELP}"
        )
    if len(fields) == 6 and fields[0] == "*" and "/" in fields[5]:
        # every second, on every n-th weekday: what croniter's seconds-LAST form reads as here
        raise ConfigError(
            f"cron={cron!r} is ambiguous: 6 fields are read with seconds FIRST (second minute hour "
            f"day-of-month month day-of-week), so this fires every second on every {fields[5]} day of "
            f"the week. For seconds, put them first: {' '.join([fields[5], *fields[:5]])!r}"
        )
    if any(_HASHED.match(part) for field in fields for part in field.split(",")):
        raise ConfigError(
            f"cron={cron!r} uses a hashed (H) or random (R) field, which OmniQ does not "
            f"support (every instance must compute the same slots); {_CRON_HELP}"
        )
    expr = " ".join(fields)
    try:
        it = croniter(
            expr, dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc), second_at_beginning=True
        )
        it.get_next(float)  # refuses expressions that never fire (e.g. Feb 30)
    except Exception as exc:  # croniter's parser raises several types; any means "invalid"
        reason = str(exc) or type(exc).__name__
        if "failed to find next date" in reason:
            reason = "it never fires"
        raise ConfigError(
            f"cron={cron!r} is not a valid cron expression ({reason}); {_CRON_HELP}"
        ) from exc
    return expr


def _check_interval(interval: object) -> float:
    if isinstance(interval, dt.timedelta):
        seconds = interval.total_seconds()
    elif isinstance(interval, (int, float)) and not isinstance(interval, bool):
        seconds = float(interval)
    else:
        raise ConfigError(
            f"interval={interval!r} is not a duration; give seconds (int or float) or a "
            "datetime.timedelta"
        )
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"interval={interval!r} must be a positive, finite number of seconds")
    return seconds


def _check_at(at: object, timezone: str | None) -> float:
    if isinstance(at, dt.datetime):
        if at.tzinfo is None and timezone is not None:
            at = at.replace(tzinfo=ZoneInfo(timezone))
        return at.timestamp()  # naive without a timezone: local time
    if isinstance(at, (int, float)) and not isinstance(at, bool) and math.isfinite(at):
        return float(at)
    raise ConfigError(
        f"at={at!r} is not a point in time; give a datetime (naive = local time) or epoch seconds"
    )


def validate_spec(
    cron: str | None = None,
    interval: float | dt.timedelta | None = None,
    at: dt.datetime | float | None = None,
    timezone: str | ZoneInfo | None = None,
) -> ScheduleSpec:
    """Check the user's timing arguments at the call site and normalize them.

    Raises ``ConfigError`` naming the faulty argument and what would be valid, so a typo shows
    up when the schedule is created rather than as a silent schedule that never fires.
    """
    given = [
        name
        for name, value in (("cron", cron), ("interval", interval), ("at", at))
        if value is not None
    ]
    if len(given) != 1:
        which = " and ".join(given) if given else "none"
        raise ConfigError(
            f"give exactly one of cron=, interval= or at= (got {which}); e.g. cron='*/5 * * * *', "
            "interval=30 or at=datetime(...)"
        )
    zone = _zone(timezone) if timezone is not None else None
    if cron is not None:
        return ScheduleSpec(cron=_check_cron(cron), timezone=zone or local_timezone_name())
    if interval is not None:
        if zone is not None:
            raise ConfigError(
                f"timezone={zone!r} does not apply to interval= schedules (intervals are "
                "real seconds); leave it out, or use cron= for wall-clock times"
            )
        return ScheduleSpec(interval=_check_interval(interval))
    return ScheduleSpec(at=_check_at(at, zone), timezone=zone)


# --- slot arithmetic --------------------------------------------------------------------------


def _second_pass(when: dt.datetime) -> bool:
    """True for a wall-clock time in the repeated hour of a fall-back, on its second pass."""
    return when.fold == 1 and when.replace(fold=0).utcoffset() != when.utcoffset()


def _cron_next(expr: str, zone: str, after: float) -> float | None:
    tz = ZoneInfo(zone)
    fields = expr.split(" ")
    hour = fields[2] if len(fields) == 6 else fields[1]
    fixed_hour = not hour.startswith("*")
    it = croniter(expr, dt.datetime.fromtimestamp(after, tz), second_at_beginning=True)
    for _ in range(1000):  # a handful of iterations at most; bounded against surprises
        try:
            when = it.get_next(dt.datetime)
        except CroniterBadDateError:  # no slot within croniter's 50-year horizon
            return None
        ts = float(when.timestamp())
        if ts <= after or (fixed_hour and _second_pass(when)):
            continue
        return ts
    return None  # pragma: no cover


def _interval_next(anchor: float, interval: float, after: float) -> float:
    """Smallest ``anchor + k * interval`` (k >= 1) strictly after ``after``."""
    k = max(1, math.floor((after - anchor) / interval) + 1)
    while k > 1 and anchor + (k - 1) * interval > after:  # float rounding, either way
        k -= 1
    while anchor + k * interval <= after:
        k += 1
    return anchor + k * interval


def next_run(schedule: Schedule, after: float) -> float | None:
    """The first slot of ``schedule`` strictly after ``after`` (epoch s); None if no more."""
    if schedule.cron is not None:
        return _cron_next(schedule.cron, schedule.timezone or "UTC", after)
    if schedule.interval is not None:
        return _interval_next(schedule.created_at, schedule.interval, after)
    if schedule.at is not None and schedule.last_run is None and schedule.at > after:
        return schedule.at
    return None


def initial_run(schedule: Schedule, now: float) -> float | None:
    """``next_run`` for a schedule (re)started at ``now``: on add and on resume.

    A one-shot that has not fired keeps its time even when it has passed (it then fires at
    once): a one-shot is never dropped silently. Recurring schedules take the next slot after
    ``now``, so resuming does not replay slots missed while paused.
    """
    if schedule.at is not None and schedule.cron is None and schedule.interval is None:
        return schedule.at if schedule.last_run is None else None
    return next_run(schedule, now)


def due_slot(schedule: Schedule, now: float) -> float | None:
    """The slot to fire at ``now`` (its stored ``next_run``), or None if nothing is due."""
    if schedule.paused or schedule.next_run is None or schedule.next_run > now:
        return None
    return schedule.next_run


def after_fire(schedule: Schedule, fired_slot: float, now: float) -> float | None:
    """``next_run`` to store when ``fired_slot`` fires at ``now``.

    Counting from ``now`` (not from the fired slot) is what makes missed slots fire once: a
    kernel that slept through ten slots gets one run, not a burst of ten.
    """
    if schedule.cron is None and schedule.interval is None:
        return None  # one-shot
    return next_run(schedule, max(fired_slot, now))


# --- display ----------------------------------------------------------------------------------


def _human_seconds(seconds: float) -> str:
    if seconds < 60 or seconds != int(seconds):
        return f"{seconds:g}s"
    parts = []
    rest = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts)


def _display_zone(schedule: Schedule) -> dt.tzinfo | None:
    return ZoneInfo(schedule.timezone) if schedule.timezone else None


def _as_datetime(ts: float | None, zone: dt.tzinfo | None) -> dt.datetime | None:
    """Aware datetime in ``zone`` (local time when None)."""
    if ts is None:
        return None
    return (
        dt.datetime.fromtimestamp(ts, zone) if zone else dt.datetime.fromtimestamp(ts).astimezone()
    )


def describe_spec(schedule: Schedule) -> str:
    """Human text for the timing: ``cron */5 * * * * (UTC)``, ``every 30s``, ``at 2026-11-28 12:00``."""
    if schedule.cron is not None:
        return f"cron {schedule.cron} ({schedule.timezone or 'UTC'})"
    if schedule.interval is not None:
        return f"every {_human_seconds(schedule.interval)}"
    if schedule.at is not None:
        when = _as_datetime(schedule.at, _display_zone(schedule))
        assert when is not None
        text = when.strftime("%Y-%m-%d %H:%M" + (":%S" if when.second or when.microsecond else ""))
        return f"at {text}" + (f" ({schedule.timezone})" if schedule.timezone else "")
    return "never"


def schedule_row(schedule: Schedule) -> dict[str, Any]:
    """One row for ``oq.schedules()`` / ``%omniq schedules``; times as aware datetimes.

    ``next_run`` is None while paused (it will not run), though storage keeps the slot.
    """
    zone = _display_zone(schedule) if schedule.cron is not None else None
    return {
        "id": schedule.id,
        "name": schedule.name,
        "func": schedule.func_name,
        "spec": describe_spec(schedule),
        "next_run": None if schedule.paused else _as_datetime(schedule.next_run, zone),
        "last_run": _as_datetime(schedule.last_run, zone),
        "last_task_id": schedule.last_task_id,
        "paused": schedule.paused,
        "queue": schedule.queue,
    }


def default_schedule_name(fn: Callable[..., Any]) -> str:
    """A schedule name for ``fn`` when the user gives none: its qualified name.

    Lambdas all share ``<lambda>``, so theirs gets a digest of the code: the same lambda
    re-run in a cell replaces its schedule, a different one does not.
    """
    name = (
        getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__qualname__
    )
    code = getattr(fn, "__code__", None)
    if "<lambda>" in name and code is not None:
        digest = hashlib.blake2b(
            code.co_code + repr((code.co_consts, code.co_names)).encode(), digest_size=4
        ).hexdigest()
        name = f"{name}#{digest}"
    return str(name)


# --- runtime ----------------------------------------------------------------------------------

MakeTask = Callable[[Schedule, float], Task]


class Scheduler:
    """Fires due schedules into a ``TaskQueue``; any number may share one storage.

    Each slot is claimed with ``fire_schedule``'s compare-and-set on ``next_run``, which also
    enqueues the task, so a slot becomes exactly one task however many instances (threads,
    processes, hosts) run a ``Scheduler`` on the same storage. The loop sleeps until the
    earliest slot, wakes at once on ``wake()`` (changes made through this object), and re-reads
    storage at least every ``poll_interval`` seconds to see other processes' changes.
    """

    RETRY_BROKEN = 30.0  # seconds before a slot whose firing raised is tried again

    def __init__(
        self,
        queue: TaskQueue,
        make_task: MakeTask,
        *,
        poll_interval: float = 1.0,
        clock: Callable[[], float] = time.time,
        on_fired: Callable[[Task], None] | None = None,
    ) -> None:
        if not poll_interval > 0:
            raise ConfigError(
                f"poll_interval={poll_interval!r} must be a positive number of seconds"
            )
        self.queue = queue
        self.make_task = make_task
        self.on_fired = on_fired  # told of each task this instance enqueued (lifecycle events)
        self.poll_interval = poll_interval
        self.clock = clock
        self.fired = 0  # slots this instance won
        self.last_lag: float | None = None  # seconds between the last won slot and its firing
        self._wake = anyio.Event()
        # (schedule id, slot) -> time before which not to try it again: slots lost to another
        # instance (stale until storage is re-read) and slots whose make_task raised.
        self._skip: dict[tuple[str, float], float] = {}

    # --- loop ---------------------------------------------------------------------------------
    def wake(self) -> None:
        """Re-read storage now (a schedule was added, paused, resumed or deleted)."""
        self._wake.set()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Fire schedules until cancelled. Storage errors are logged and retried with back-off,
        so a flaky backend pauses scheduling instead of taking the whole OmniQ down."""
        task_status.started()
        backoff = self.poll_interval
        outage = Outage(log, "scheduling", masked(self.queue.url))
        while True:
            try:
                delay = await self.tick()
                backoff = self.poll_interval
                outage.ok()
            except Exception as exc:
                outage.failed(exc)
                delay = backoff
                backoff = min(backoff * 2, 30.0)
            await self._sleep(delay)

    async def _sleep(self, delay: float) -> None:
        if not self._wake.is_set() and delay > 0:
            with anyio.move_on_after(delay):
                await self._wake.wait()
        self._wake = anyio.Event()

    async def tick(self) -> float:
        """One pass: load schedules, fire those due, return seconds until the next pass."""
        schedules = await self.queue.get_schedules()
        now = self.clock()
        live = {(s.id, s.next_run) for s in schedules}
        self._skip = {k: v for k, v in self._skip.items() if k in live and v > now}
        wait = self.poll_interval
        for s in schedules:
            slot = due_slot(s, now)
            if slot is not None and (s.id, slot) not in self._skip:
                upcoming = await self._fire(s, slot)
            else:
                upcoming = None if s.paused or (s.id, s.next_run) in self._skip else s.next_run
            if upcoming is not None:
                wait = min(wait, upcoming - self.clock())
        return max(wait, 0.0)

    async def _fire(self, schedule: Schedule, slot: float) -> float | None:
        """Try to win ``slot``; returns when to look at this schedule again.

        A schedule whose task cannot be built or stored (``make_task`` raised, the backend
        refused the task) is logged and retried in ``RETRY_BROKEN`` s without holding up the
        others; a ``StorageError`` (storage unreachable) aborts the pass for ``run``'s back-off.
        """
        try:
            task = self.make_task(schedule, slot)
            now = self.clock()
            upcoming = after_fire(schedule, slot, now)
            won = await self.queue.fire_schedule(
                schedule.id, expected_next_run=slot, next_run=upcoming, now=now, task=task
            )
        except StorageError:
            raise
        except Exception:
            log.exception(
                "scheduler: cannot fire schedule %r (slot %s); retrying in %g s",
                schedule.name,
                slot,
                self.RETRY_BROKEN,
            )
            self._skip[(schedule.id, slot)] = self.clock() + self.RETRY_BROKEN
            return None
        if not won:  # another instance took it (or it changed): re-read storage at once
            self._skip[(schedule.id, slot)] = math.inf
            return self.clock()
        self.fired += 1
        self.last_lag = now - slot
        self.queue.notify()
        if self.on_fired is not None:
            self.on_fired(task)
        log.debug(
            "scheduler: fired %r slot %.3f (lag %.1f ms)", schedule.name, slot, 1e3 * (now - slot)
        )
        return upcoming

    # --- management (called by the orchestrator) ---------------------------------------------
    async def schedules(self) -> list[Schedule]:
        """All schedules, soonest first (paused and finished ones last), then by name."""
        schedules = await self.queue.get_schedules()
        return sorted(
            schedules,
            key=lambda s: (s.paused or s.next_run is None, s.next_run or 0.0, s.name),
        )

    async def get(self, id_or_name: str) -> Schedule | None:
        """The schedule with this id, else with this name; None if neither exists."""
        schedules = await self.queue.get_schedules()
        for s in schedules:
            if s.id == id_or_name:
                return s
        return next((s for s in schedules if s.name == id_or_name), None)

    async def _require(self, id_or_name: str) -> Schedule:
        found = await self.get(id_or_name)
        if found is None:
            names = sorted(s.name for s in await self.queue.get_schedules())
            raise ConfigError(
                f"no schedule with id or name {id_or_name!r}; known names: "
                + (", ".join(repr(n) for n in names) or "none")
            )
        return found

    async def add(
        self,
        *,
        payload: bytes,
        func_name: str,
        name: str | None = None,
        cron: str | None = None,
        interval: float | dt.timedelta | None = None,
        at: dt.datetime | float | None = None,
        timezone: str | ZoneInfo | None = None,
        queue: str = "default",
        priority: int = 0,
        options: dict[str, object] | None = None,
    ) -> str:
        """Create a schedule, or replace the one with the same name (see the module notes);
        returns its id.

        ``name`` defaults to ``func_name``; pass ``default_schedule_name(fn)`` for lambdas.
        """
        spec = validate_spec(cron=cron, interval=interval, at=at, timezone=timezone)
        name = func_name if name is None else name
        if not isinstance(name, str) or not name:
            raise ConfigError(f"name={name!r} must be a non-empty string")
        if not isinstance(queue, str) or not queue:
            raise ConfigError(f"queue={queue!r} must be a non-empty string")
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise ConfigError(f"priority={priority!r} must be an int (higher runs first)")
        now = self.clock()
        same_name = [s for s in await self.queue.get_schedules() if s.name == name]
        old = same_name[0] if same_name else None
        schedule = Schedule(
            id=old.id if old else ids.new_id(),
            name=name,
            payload=payload,
            func_name=func_name,
            queue=queue,
            priority=priority,
            cron=spec.cron,
            timezone=spec.timezone,
            interval=spec.interval,
            at=spec.at,
            created_at=now,
            options=dict(options or {}),
        )
        if old is None:
            schedule.next_run = initial_run(schedule, now)
        else:
            schedule.paused = old.paused
            schedule.last_task_id = old.last_task_id
            if (old.cron, old.timezone, old.interval, old.at) == (
                spec.cron,
                spec.timezone,
                spec.interval,
                spec.at,
            ):  # same timing: keep the slots (and a fired one-shot stays fired)
                schedule.created_at = old.created_at
                schedule.next_run = old.next_run
                schedule.last_run = old.last_run
            else:  # new timing: slots start over; a new one-shot time fires again
                schedule.last_run = None if spec.at is not None else old.last_run
                schedule.next_run = initial_run(schedule, now)
        seal_schedule(schedule)
        await self.queue.add_schedule(schedule)
        for extra in same_name[1:]:
            await self.queue.delete_schedule(extra.id)
        self.wake()
        return schedule.id

    async def pause(self, id_or_name: str) -> bool:
        """Stop firing; slots passing while paused are not replayed on resume.

        Returns False if it was already paused; an unknown id or name is a ``ConfigError``.
        """
        s = await self._require(id_or_name)
        if s.paused:
            return False
        await self.queue.set_schedule_paused(s.id, True, s.next_run)
        self.wake()
        return True

    async def resume(self, id_or_name: str) -> bool:
        """Fire again from the next slot after now (a one-shot not yet fired: at once if due).

        Returns False if it was not paused (a due slot is then left alone, not skipped).
        """
        s = await self._require(id_or_name)
        if not s.paused:
            return False
        await self.queue.set_schedule_paused(s.id, False, initial_run(s, self.clock()))
        self.wake()
        return True

    async def delete(self, id_or_name: str) -> bool:
        """Remove a schedule; False if there was none (so deleting twice is harmless)."""
        s = await self.get(id_or_name)
        if s is None:
            return False
        deleted = await self.queue.delete_schedule(s.id)
        self.wake()
        return deleted

    async def list(self) -> list[dict[str, Any]]:
        """Rows for ``oq.schedules()`` (see ``schedule_row``), soonest first.

        Defined last in the class: the method's name would shadow ``list`` in annotations below.
        """
        return [schedule_row(s) for s in await self.schedules()]
