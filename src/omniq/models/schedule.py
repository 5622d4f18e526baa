"""A recurring or one-shot schedule, persisted in the task storage."""

from __future__ import annotations

import msgspec


class Schedule(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A stored schedule: a call that becomes a task at each of its slots.

    Exactly one of ``cron``, ``interval`` or ``at`` is set. ``next_run`` is the slot that
    fires next; firing is a compare-and-set on it, so two instances sharing storage fire each
    slot once. Made by ``oq.schedule(...)``; ``oq.schedules()`` lists them as rows (dicts
    with the name, the spec in words, the next run as a datetime, ...).

    Attributes:
        id: The schedule's id (what ``schedule()`` returns).
        name: Its name (by default the function's).
        payload: The serialized ``(fn, args, kwargs)``, like a task's.
        func_name: The function's qualified name.
        queue: The queue its tasks go to.
        priority: Its tasks' priority.
        cron: A cron expression, for a cron schedule.
        timezone: The cron expression's time zone (None: UTC).
        interval: Seconds between slots, for an interval schedule.
        at: Epoch seconds of the one slot, for a one-shot schedule.
        next_run: The slot that fires next (None once a one-shot fired).
        paused: Paused schedules fire nothing.
        last_run: The slot that fired last.
        last_task_id: The task that slot made.
        created_at: When it was stored.
        options: Enqueue options for its tasks.
        seal: With a secret key, a MAC binding ``payload`` to this schedule.

    Examples:
        >>> from omniq import OmniQ
        >>> with OmniQ(tasks="memory://", concurrency=0) as oq:
        ...     sid = oq.schedule(print, interval=3600, name="hourly")
        ...     [(s["name"], s["spec"], s["paused"]) for s in oq.schedules()]
        [('hourly', 'every 1h', False)]
        >>> import msgspec
        >>> from omniq.models import Schedule
        >>> s = Schedule(id="s1", name="hourly", payload=b"...", interval=3600.0)
        >>> msgspec.msgpack.decode(msgspec.msgpack.encode(s), type=Schedule) == s
        True
    """

    id: str
    name: str
    payload: bytes  # serialized (fn, args, kwargs), like a task's
    func_name: str = ""
    queue: str = "default"
    priority: int = 0
    cron: str | None = None
    timezone: str | None = None
    interval: float | None = None
    at: float | None = None
    next_run: float | None = None
    paused: bool = False
    last_run: float | None = None
    last_task_id: str | None = None
    created_at: float = 0.0
    options: dict[str, object] = msgspec.field(default_factory=dict)  # enqueue options
    seal: bytes | None = None  # with a secret key: MAC binding ``payload`` to this schedule
