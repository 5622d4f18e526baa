"""Which format a value needs: msgpack (exact), the stdlib pickler, or dill.

msgpack is only chosen when decoding gives back *the same* value: same types all the way down
(a tuple would come back as a list, a ``str`` enum as a plain ``str``, an ``OrderedDict`` as a
``dict``), no shared or cyclic containers (msgpack would copy them apart), ints within 64 bits.
Values made only of built-in and stdlib types the worker can always import (tuples, sets,
complex, big ints, datetimes, ...) go through the stdlib pickler, which writes what dill would
write at a thirtieth of the cost. Everything else needs dill.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import fractions
import sys
import uuid
from typing import Any

EXACT = 0  # msgpack round-trips it exactly
PICKLE = 1  # built-in / stdlib types only: the stdlib pickler is enough
DILL = 2  # anything else (user classes, functions, __main__ objects)

INT_MIN = -(2**63)
INT_MAX = 2**64 - 1

EXACT_SCALARS: frozenset[type] = frozenset({type(None), bool, float, str, bytes})
_PICKLE_SCALARS: frozenset[type] = frozenset(
    {
        complex,
        bytearray,
        range,
        slice,
        type(Ellipsis),
        datetime.date,
        datetime.datetime,
        datetime.time,
        datetime.timedelta,
        datetime.timezone,
        decimal.Decimal,
        fractions.Fraction,
        uuid.UUID,
    }
)
_PICKLE_CONTAINERS: frozenset[type] = frozenset({tuple, set, frozenset})
_DATA_MODULES = frozenset({"numpy", "pandas"})
_MAX_DEPTH = 200  # deeper than this: let dill (or its RecursionError) decide
_FAST_LEN = 16  # lists longer than this are first checked by their set of element types


def classify(obj: Any) -> int:
    """EXACT, PICKLE or DILL for ``obj`` (see the module docstring)."""
    t = type(obj)
    if t in EXACT_SCALARS:
        return EXACT
    if t is int:
        return EXACT if INT_MIN <= obj <= INT_MAX else PICKLE
    return _classify(obj, 0, set())


def classify_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """The format ``(args, kwargs)`` needs; the outer tuple and dict are rebuilt on load."""
    seen: set[int] = set()
    level = _items(args, 0, seen, EXACT)
    if level == DILL:
        return DILL
    return _items(kwargs.values(), 0, seen, level) if kwargs else level


def _classify(obj: Any, depth: int, seen: set[int]) -> int:
    t = type(obj)
    if t in EXACT_SCALARS:
        return EXACT
    if t is int:
        return EXACT if INT_MIN <= obj <= INT_MAX else PICKLE
    if t in _PICKLE_SCALARS:
        return PICKLE
    if t is list or t is dict or t in _PICKLE_CONTAINERS:
        if depth > _MAX_DEPTH:
            return DILL
        ident = id(obj)
        if ident in seen:
            # Shared or cyclic: pickle keeps identity, msgpack would copy. Its contents were
            # (or are being) classified at its first visit.
            return PICKLE
        seen.add(ident)
        if t is list:
            return _items(obj, depth, seen, EXACT)
        if t is dict:
            return _dict(obj, depth, seen)
        return _items(obj, depth, seen, PICKLE)
    if isinstance(obj, enum.Enum) and _importable(t):
        return PICKLE  # pickled by reference to its importable class
    if t.__module__.partition(".")[0] in _DATA_MODULES and _importable(t) and not holds_objects(obj):
        return PICKLE  # numpy / pandas data: the stdlib pickler writes it as dill would
    return DILL


def _importable(cls: type) -> bool:
    module = sys.modules.get(cls.__module__)
    if module is None or cls.__module__ == "__main__" or "<" in cls.__qualname__:
        return False
    obj: Any = module
    for part in cls.__qualname__.split("."):
        obj = getattr(obj, part, None)
    return obj is cls


def _items(items: Any, depth: int, seen: set[int], level: int) -> int:
    if len(items) > _FAST_LEN:
        types = set(map(type, items))
        if types <= EXACT_SCALARS:
            return level
        if types == {int}:
            return level if min(items) >= INT_MIN and max(items) <= INT_MAX else max(level, PICKLE)
    depth += 1
    for x in items:
        t = type(x)
        if t in EXACT_SCALARS:
            continue
        k = _classify(x, depth, seen)
        if k > level:
            if k == DILL:
                return DILL
            level = k
    return level


def _dict(d: dict[Any, Any], depth: int, seen: set[int]) -> int:
    level = EXACT
    for k in d:
        if type(k) is not str:
            level = max(level, PICKLE, _classify(k, depth + 1, seen))
            if level == DILL:
                return DILL
    return _items(d.values(), depth, seen, level)


def holds_objects(obj: Any) -> bool:
    """True unless ``obj`` is numpy / pandas data of plain dtypes (no Python objects inside)."""
    dtype = getattr(obj, "dtype", None)
    if dtype is not None:
        return bool(getattr(dtype, "hasobject", True))
    dtypes = getattr(obj, "dtypes", None)  # a DataFrame
    if dtypes is not None:
        try:
            return any(getattr(d, "hasobject", True) for d in dtypes)
        except Exception:
            return True
    return True
