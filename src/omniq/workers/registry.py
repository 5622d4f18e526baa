"""The runner registry: worker kind (``"async"``, ``"thread"``, ``"process"``, ``"gevent"``) ->
the ``Runner`` class that runs its tasks.

Kept apart from ``workers/base.py``: the runners import the ``Runner`` interface from there, so
the interface must not import them back. None of the runner modules imports gevent itself (the
gevent runner only spawns a child that does), so all four are imported here at once.
"""

from __future__ import annotations

from ..config import settings
from ..errors import ConfigError
from .aio import AsyncRunner
from .base import Runner
from .gevent import GeventRunner
from .process import ProcessRunner
from .thread import ThreadRunner

#: worker kind -> its runner class (the kinds of ``settings.WORKER_KINDS``)
RUNNERS: dict[str, type[Runner]] = {
    "process": ProcessRunner,
    "thread": ThreadRunner,
    "async": AsyncRunner,
    "gevent": GeventRunner,
}


def make_runner(kind: str, slots: int) -> Runner:
    """Build the runner for a worker kind with ``slots`` task slots.

    Args:
        kind: ``"async"``, ``"thread"``, ``"process"`` or ``"gevent"``.
        slots: Tasks it runs at once.

    Returns:
        The runner, not started.

    Raises:
        ConfigError: Another kind (the message names the valid ones), or ``"gevent"`` without
            the gevent package.

    Examples:
        >>> from omniq.workers.registry import make_runner
        >>> make_runner("thread", 4).kind
        'thread'
        >>> make_runner("fork", 1)
        Traceback (most recent call last):
        ...
        omniq.errors.ConfigError: worker='fork' is not valid: expected one of ...
    """
    cls = RUNNERS.get(kind)
    if cls is None:
        raise ConfigError(f"worker={kind!r} is not valid: expected one of {', '.join(settings.WORKER_KINDS)}")
    return cls(slots)
