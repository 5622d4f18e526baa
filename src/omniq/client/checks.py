"""Argument checking for the client's calls: pure functions, no I/O. Each error names the
argument and says what would be valid (``ConfigError``, a ``ValueError``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any

from .. import _chunks
from ..errors import ConfigError
from .handles import HandleBase


def seconds(name: str, value: Any, *, allow_zero: bool = False) -> float | None:
    """``value`` (a number or a ``timedelta``) as seconds; None stays None."""
    if value is None:
        return None
    if isinstance(value, dt.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name}={value!r} is not valid: expected seconds (a number or timedelta) or None")
    if value < 0 or (value == 0 and not allow_zero) or value != value:
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name}={value!r} is not valid: expected a number of seconds {bound}")
    return float(value)


def epoch(name: str, value: Any) -> float | None:
    """``value`` (a ``datetime`` or epoch seconds) as epoch seconds; None stays None."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.timestamp()  # naive = local time, as datetime does
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise ConfigError(f"{name}={value!r} is not valid: expected a datetime or epoch seconds")


def integer(name: str, value: Any, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}={value!r} is not valid: expected an integer")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name}={value!r} is not valid: expected an integer >= {minimum}")
    return value


def queue_name(value: Any, name: str = "queue") -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{name}={value!r} is not valid: expected a non-empty string")
    return value


def task_ids(value: Any) -> tuple[str, ...]:
    """``depends_on``: task ids (str) or handles, as a tuple of ids."""
    if value is None:
        return ()
    if isinstance(value, (str, HandleBase)):
        value = [value]
    out = []
    for v in value:
        if isinstance(v, HandleBase):
            out.append(v.id)
        elif isinstance(v, str) and v:
            out.append(v)
        else:
            raise ConfigError(f"depends_on contains {v!r}: expected task ids (str) or task handles")
        if _chunks.split_item_id(out[-1]) is not None:  # its chunk succeeds even if the item raised
            raise ConfigError(
                f"depends_on contains {out[-1]!r}, an item of a chunked map: a task can depend on whole "
                "tasks only (map without chunksize to depend on single items)"
            )
    return tuple(out)


def map_keys(key: Any, items: Sequence[Any]) -> list[str | None]:
    """A ``map``'s ``key=``: one idempotency key per item, from a list or a function of the item."""
    if isinstance(key, str):
        raise ConfigError(f"key={key!r} is not valid for map: give one key per item (a list of str, "
                          "or a function of the item returning one)")
    if callable(key):
        keys = [key(item) for item in items]
    elif isinstance(key, Iterable):
        keys = list(key)
    else:
        raise ConfigError(f"key={key!r} is not valid for map: expected a list of str or a function of the item")
    if len(keys) != len(items):
        raise ConfigError(f"key has {len(keys)} entries for {len(items)} items: give one key per item")
    for k in keys:
        if k is not None and (not isinstance(k, str) or not k):
            raise ConfigError(f"key contains {k!r}: each item's key must be a non-empty str or None")
    return keys


def callable_name(fn: Any) -> str:
    """The name a task of ``fn`` shows: ``module.qualname`` (no module for ``__main__``)."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
    mod = getattr(fn, "__module__", None)
    return f"{mod}.{name}" if mod and mod not in ("__main__", "builtins") else str(name)
