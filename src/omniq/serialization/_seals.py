"""Seals: MACs that bind a signed payload to its record (task, result, schedule).

A payload's own signature says only that a key holder wrote those bytes. Storage is shared,
so whoever can write to it could move signed bytes: re-enqueue a task's payload under a new
id, put one task's result under another's id or sweep key, give a schedule another task's
call, or raise a task's timeout. A seal is an HMAC over the record's role, its id and every
field that changes what runs or who gets the value, with digests of the payloads; a record
whose seal does not match is refused (``SignatureError``) before anything in it is opened.

Tasks and schedules are sealed with the signing key (only key holders make them), results
with the result-role key (``_signing.derive``). Without keys nothing is sealed or checked.
Rotation works as for payloads: the first key seals, every accepted key verifies.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import TYPE_CHECKING

import msgspec

from ..errors import SignatureError
from . import _signing

if TYPE_CHECKING:
    from ..models import Schedule, Task, TaskResult

_encode = msgspec.msgpack.Encoder().encode
_NO_SEAL = "not signed: its record carries no seal while signing is on (written without the key, or altered)"


def _digest(data: bytes | None) -> bytes:
    return b"" if data is None else hashlib.sha256(data).digest()


def _f(x: float | None) -> float | None:
    # storage may give back 3.0 for 3: seal the float, as decoding makes it
    return None if x is None else float(x)


def _task_fields(t: Task) -> bytes:
    return _encode((
        "task", t.id, _digest(t.payload), t.key, _f(t.timeout), t.retries, _f(t.retry_delay),
        t.max_deliveries, _digest(t.on_success), _digest(t.on_failure), t.memory_limit,
        list(t.blobs), list(t.depends_on), _f(t.result_ttl),
    ))


def _result_fields(r: TaskResult) -> bytes:
    return _encode(("result", r.task_id, r.status.value, _digest(r.payload), r.key, list(r.blobs)))


def _schedule_fields(s: Schedule) -> bytes:
    opts = {k: s.options[k] for k in sorted(s.options)}
    return _encode(("schedule", s.id, _digest(s.payload), opts))


def _mac(key: bytes, message: bytes) -> bytes:
    return hmac.digest(key, message, hashlib.sha256)


def _check(seal: bytes | None, message: bytes, accepted: Iterable[bytes], what: str) -> None:
    if seal is None:
        raise SignatureError(f"{what}: {_NO_SEAL}; it was not loaded")
    for key in accepted:
        if hmac.compare_digest(seal, _mac(key, message)):
            return
    raise SignatureError(
        f"{what}: its seal does not match (its payload was moved from another record, or a "
        f"field changed since it was written); it was not loaded"
    )


# --- tasks ------------------------------------------------------------------------------------
def seal_tasks(tasks: Iterable[Task]) -> None:
    """Seal each task in place (no-op without a signing key)."""
    key = _signing.get_secret_keys()[0]
    if key is None:
        return
    for t in tasks:
        t.seal = _mac(key, _task_fields(t))


def check_task(t: Task) -> None:
    """SignatureError unless ``t`` carries its own seal (no-op without keys)."""
    accepted = _signing.get_secret_keys()[1]
    if accepted:
        _check(t.seal, _task_fields(t), accepted, f"task {t.id}")


# --- results ----------------------------------------------------------------------------------
def seal_results(results: Iterable[TaskResult]) -> None:
    """Seal each result that carries a value, in place (no-op without a key)."""
    key = _signing.value_keys()[0]
    if key is None:
        return
    for r in results:
        if r.payload is not None:
            r.seal = _mac(key, _result_fields(r))


def check_result(r: TaskResult) -> None:
    """SignatureError unless the value of ``r`` is sealed for its task id, status and key (a
    record without a value needs no seal: nothing in it is unpickled)."""
    if r.payload is None:
        return
    accepted = _signing.value_keys()[1]
    if accepted:
        _check(r.seal, _result_fields(r), accepted, f"result of task {r.task_id}")


# --- schedules --------------------------------------------------------------------------------
def seal_schedule(s: Schedule) -> None:
    key = _signing.get_secret_keys()[0]
    if key is not None:
        s.seal = _mac(key, _schedule_fields(s))


def check_schedule(s: Schedule) -> None:
    accepted = _signing.get_secret_keys()[1]
    if accepted:
        _check(s.seal, _schedule_fields(s), accepted, f"schedule {s.name!r} ({s.id})")

