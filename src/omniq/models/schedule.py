"""A recurring or one-shot schedule, persisted in the task storage."""

from __future__ import annotations

import msgspec


class Schedule(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Exactly one of ``cron``, ``interval`` or ``at`` is set.

    ``next_run`` is the slot that fires next; firing is a compare-and-set on it, so two
    instances sharing storage fire each slot once.
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
