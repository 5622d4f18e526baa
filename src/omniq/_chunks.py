"""Chunked ``map``: many items per task, as joblib and ``ProcessPoolExecutor.map`` batch them.

A task costs a row, a claim, a result and three events whatever it does, so 2,000 no-ops as
2,000 tasks spend their time in storage. ``map(fn, items, chunksize=n)`` stores one task per
``n`` items instead; the worker runs ``fn`` over its items and returns every item's outcome in
one result. Each item still gets its own handle and id (``<chunk id>.<index>``) whose
``TaskResult`` is cut from the chunk's: an item that raises, or returns what cannot be
serialized, fails alone with its own error. A chunk is one task for everything else: its
events, lease, cancel (cancelling an item cancels its chunk) and a crash are shared by its
items; ``retries`` retry a raising item in place; ``timeout`` is per item (the chunk gets
``timeout`` times its length).
"""

from __future__ import annotations

import concurrent.futures as cf
import inspect
import math
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from ._futures import ResultFuture, resolve_many, settle
from .errors import ConfigError
from .models import ErrorInfo, TaskResult, TaskStatus
from .serialization import dumps, loads_call

# a chunk's value: [payloads, errors]; payloads[i] is item i's serialized value (None if it
# failed), errors: [[index, type, message, traceback], ...]
Outcomes = list[Any]

_ITEM_ID = re.compile(r"([0-9a-f]{24})\.([0-9]+)")  # a task id (see ids.py), a dot, an index


def item_id(chunk_id: str, index: int) -> str:
    return f"{chunk_id}.{index}"


def split_item_id(task_id: str) -> tuple[str, int] | None:
    """``(chunk id, index)`` for an item id; None for anything else."""
    m = _ITEM_ID.fullmatch(task_id)
    return None if m is None else (m[1], int(m[2]))


def chunk_length(chunksize: Any, n: int, slots: int) -> int:
    """Items per chunk: ``"auto"`` makes four chunks per worker slot (as ``joblib`` and the
    ``ProcessPoolExecutor`` recipe do), so every slot stays busy while the last chunks run."""
    if chunksize == "auto":
        return max(1, math.ceil(n / (4 * max(1, slots))))
    if type(chunksize) is not int or chunksize < 1:
        raise ConfigError(f"chunksize={chunksize!r} is not valid: expected a positive int or 'auto'")
    return chunksize


# --- in the worker --------------------------------------------------------------------------------
_fns: dict[bytes, Callable[..., Any]] = {}


def _load(fn_payload: bytes) -> Callable[..., Any]:
    fn = _fns.get(fn_payload)
    if fn is None:
        fn = loads_call(fn_payload)[0]
        if len(_fns) >= 64:
            _fns.clear()
        _fns[fn_payload] = fn
    return fn


def _error(index: int, exc: BaseException) -> list[Any]:
    from .workers.base import error_info

    e = error_info(exc)
    return [index, e.type, e.message, e.traceback]


def _keep(index: int, value: Any, payloads: list[bytes | None], errors: list[list[Any]]) -> None:
    """Serialize one item's value on its own: one that cannot be fails alone."""
    try:
        payloads.append(dumps(value))
    except Exception as exc:
        _fail(index, exc, payloads, errors)


def _fail(index: int, exc: BaseException, payloads: list[bytes | None], errors: list[list[Any]]) -> None:
    """Item ``index`` failed with ``exc``: no value, and its error."""
    payloads.append(None)
    errors.append(_error(index, exc))


def run_chunk(fn_payload: bytes, items: Sequence[Any], retries: int = 0, retry_delay: float = 0.0) -> Outcomes:
    """``fn(item)`` for each item; an item that raises is retried, then recorded, not raised.
    A callable that returns an awaitable (an ``async`` lambda) has it run to its end."""
    fn = _load(fn_payload)
    payloads: list[bytes | None] = []
    errors: list[list[Any]] = []
    for i, item in enumerate(items):
        for attempt in range(retries + 1):
            try:
                value = fn(item)
                if inspect.isawaitable(value):
                    from .workers._wire import run_coroutine

                    value = run_coroutine(value)
            except Exception as exc:
                if attempt < retries:
                    time.sleep(retry_delay)
                    continue
                _fail(i, exc, payloads, errors)
            else:
                _keep(i, value, payloads, errors)
            break
    return [payloads, errors]


async def run_chunk_async(
    fn_payload: bytes, items: Sequence[Any], retries: int = 0, retry_delay: float = 0.0
) -> Outcomes:
    """``run_chunk`` for a coroutine function: its items are awaited one after another."""
    import asyncio

    fn = _load(fn_payload)
    payloads: list[bytes | None] = []
    errors: list[list[Any]] = []
    for i, item in enumerate(items):
        for attempt in range(retries + 1):
            try:
                value = await fn(item)
            except Exception as exc:
                if attempt < retries:
                    await asyncio.sleep(retry_delay)
                    continue
                _fail(i, exc, payloads, errors)
            else:
                _keep(i, value, payloads, errors)
            break
    return [payloads, errors]


# --- in the submitting process -----------------------------------------------------------------------
def item_result(chunk: TaskResult, index: int) -> TaskResult:
    """Item ``index``'s result cut from its chunk's; its value is decoded when read, as any
    result's."""
    return item_results(chunk, [index])[0]


def item_results(chunk: TaskResult, indexes: Sequence[int], n: int | None = None) -> list[TaskResult]:
    """The results of the items at ``indexes``, cut from their chunk's (``n``: how many items
    the chunk has, when known). The chunk is decoded and its errors indexed once."""
    replace = msgspec.structs.replace
    if chunk.status is not TaskStatus.SUCCEEDED:  # the chunk never ran to its end: nor did they
        return [replace(chunk, task_id=item_id(chunk.task_id, i)) for i in indexes]
    try:
        payloads, errors = chunk.value
        if n is not None and len(payloads) != n:
            raise ValueError(f"it holds {len(payloads)} outcomes for {n} items")
        failed = {e[0]: ErrorInfo(type=e[1], message=e[2], traceback=e[3]) for e in errors}
    except Exception as exc:  # not a chunk's result (a mistaken id, say): every item says so
        return [_not_a_chunk(chunk, i, exc) for i in indexes]
    out = []
    for i in indexes:
        tid = item_id(chunk.task_id, i)
        err = failed.get(i)
        if err is not None:
            out.append(replace(chunk, task_id=tid, status=TaskStatus.FAILED, payload=None, error=err))
        elif 0 <= i < len(payloads) and type(payloads[i]) is bytes:
            item = replace(chunk, task_id=tid, payload=payloads[i])
            item.__dict__["_checked"] = True  # it came in the chunk's sealed value
            out.append(item)
        else:
            out.append(_not_a_chunk(chunk, i, ValueError(f"item {i} holds no value")))
    return out


def resolve_items(
    items: Sequence[ResultFuture[TaskResult]], chunk: cf.Future[TaskResult], start: int = 0, n: int | None = None
) -> None:
    """A chunk's future is done: resolve its items' futures (``items[k]`` is item ``start + k``;
    ``n``: how many items the chunk has, when known). Futures already final are left alone."""
    exc = chunk.exception()
    if exc is not None:
        for f in items:
            settle(f, exc, failed=True)
        return
    r = chunk.result()
    resolve_many(zip(items, item_results(r, range(start, start + len(items)), n)))


def _not_a_chunk(chunk: TaskResult, index: int, exc: Exception) -> TaskResult:
    bad = ErrorInfo(type="ConfigError", message=f"task {chunk.task_id} is not a map chunk with item {index}: {exc}")
    return msgspec.structs.replace(chunk, task_id=item_id(chunk.task_id, index), status=TaskStatus.FAILED,
                                   payload=None, error=bad)
