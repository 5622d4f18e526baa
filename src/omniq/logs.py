"""Loggers whose records say which task, queue and worker they are about.

Every record from an ``omniq.*`` logger carries ``task_id``, ``queue`` and ``worker``
attributes ("-" when a record is not about one), so a format such as
``"%(worker)s %(task_id)s %(message)s"`` or a JSON handler can use them without guarding.
A worker binds its id once for its loops (``bind``); a call site about one task passes
``extra=about(task)``.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Mapping, MutableMapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

FIELDS = ("task_id", "queue", "worker")

if TYPE_CHECKING:
    _Adapter = logging.LoggerAdapter[logging.Logger]
else:  # subscriptable at run time only from Python 3.11
    _Adapter = logging.LoggerAdapter

_context: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "omniq_log_context", default=MappingProxyType({})
)


def bind(**fields: str | None) -> None:
    """Add fields to every omniq record logged from this context (an asyncio task and the
    tasks it starts, or a thread)."""
    merged = dict(_context.get())
    merged.update({k: v for k, v in fields.items() if v is not None})
    _context.set(merged)


def about(task: Any = None, *, worker: str | None = None) -> dict[str, str]:
    """``extra=`` for a record about ``task`` (anything with ``id`` and ``queue``)."""
    out: dict[str, str] = {}
    if task is not None:
        out["task_id"] = str(getattr(task, "id", task))
        queue = getattr(task, "queue", None)
        if queue:
            out["queue"] = str(queue)
    if worker:
        out["worker"] = worker
    return out


def fill(record: logging.LogRecord) -> logging.LogRecord:
    """Give ``record`` every context field: its own, else the bound context's, else "-"."""
    bound = _context.get()
    for name in FIELDS:
        if not hasattr(record, name):
            setattr(record, name, bound.get(name, "-"))
    return record


class ContextLogger(_Adapter):
    """A logger adapter that stamps the context fields on each record."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(_context.get())
        extra.update(kwargs.get("extra") or {})
        for name in FIELDS:
            extra.setdefault(name, "-")
        kwargs["extra"] = extra
        return msg, kwargs


def get_logger(name: str) -> ContextLogger:
    return ContextLogger(logging.getLogger(name), {})


class ContextFilter(logging.Filter):
    """On our handler: records from any omniq logger get the fields before formatting."""

    def filter(self, record: logging.LogRecord) -> bool:
        fill(record)
        return True


class ContextFormatter(logging.Formatter):
    """The default format plus ``[task=… queue=… worker=…]`` for the fields a record has."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(fill(record))
        tags = " ".join(f"{label}={value}" for label, name in (("task", "task_id"), ("queue", "queue"),
                                                              ("worker", "worker"))
                        if (value := getattr(record, name, "-")) not in ("-", None))
        if not tags:
            return text
        first, nl, rest = text.partition("\n")  # a traceback stays below the tagged line
        return f"{first} [{tags}]{nl}{rest}"


class Outage:
    """Reports a failing storage call once when it starts failing and once when it works
    again, instead of a traceback per retry (the traceback is there at DEBUG)."""

    def __init__(self, logger: logging.LoggerAdapter[logging.Logger] | logging.Logger, what: str, url: str) -> None:
        self._log = logger
        self._what = what
        self._url = url
        self._since: float | None = None
        self.failures = 0

    def failed(self, exc: BaseException) -> None:
        self.failures += 1
        if self._since is None:
            self._since = time.monotonic()
            self._log.warning("%s on %s failed (%s: %s); retrying until it works", self._what, self._url,
                              type(exc).__name__, exc, exc_info=self._log.isEnabledFor(logging.DEBUG))
        else:
            self._log.debug("%s on %s failed again", self._what, self._url, exc_info=True)

    def ok(self) -> None:
        if self._since is not None:
            self._log.warning("%s on %s works again after %.1f s (%d failed tries)", self._what, self._url,
                              time.monotonic() - self._since, self.failures)
            self._since = None
            self.failures = 0
