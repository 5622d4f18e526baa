"""The key-marker rule of the backends that write a key's marker before the task record
(file://, NATS): ``storage.enqueue.key_marker_verdict`` and ``key_marker_needs_result``, without a
backend. The contract suite (TestIdempotencyKeys) checks the backends that apply it."""

from __future__ import annotations

import pytest

from omniq.models import TaskStatus
from omniq.storage.enqueue import (
    KEY_WRITE_GRACE,
    KeyMark,
    KeyVerdict,
    key_marker_needs_result,
    key_marker_verdict,
)

S = TaskStatus
V = KeyVerdict
NOW = 1_000.0
FRESH = NOW - KEY_WRITE_GRACE / 2
STALE = NOW - KEY_WRITE_GRACE * 2


@pytest.mark.parametrize(
    ("mark", "written_at", "status", "succeeded", "results_here", "verdict"),
    [
        (None, FRESH, None, False, False, V.WAIT),  # being written
        (None, STALE, None, False, False, V.TAKE),  # its writer died
        (KeyMark("mine", STALE), STALE, None, False, False, V.OURS),
        (KeyMark("", STALE), STALE, None, False, False, V.TAKE),  # purged after failing
        (KeyMark("t", FRESH), FRESH, None, False, False, V.WAIT),  # record not there yet
        (KeyMark("t", STALE), STALE, None, False, False, V.TAKE),
        (KeyMark("t", STALE), STALE, S.QUEUED, False, False, V.HELD),
        (KeyMark("t", STALE), STALE, S.RUNNING, False, True, V.HELD),
        (KeyMark("t", STALE), STALE, S.FAILED, False, False, V.TAKE),
        (KeyMark("t", STALE), STALE, S.SUCCEEDED, False, False, V.HELD),  # results elsewhere
        (KeyMark("t", STALE), STALE, S.SUCCEEDED, True, True, V.HELD),
        (KeyMark("t", STALE), STALE, S.SUCCEEDED, False, True, V.TAKE),  # its result is gone
        (KeyMark("t", STALE, purged=True), STALE, None, True, True, V.HELD_GONE),
        (KeyMark("t", FRESH, purged=True), FRESH, None, False, True, V.TAKE),  # never waited
    ],
)
def test_key_marker_verdict(
    mark: KeyMark | None, written_at: float, status: TaskStatus | None, succeeded: bool,
    results_here: bool, verdict: KeyVerdict,
) -> None:  # fmt: skip
    got = key_marker_verdict(
        mark, written_at, mine="mine", status=status, succeeded_result=succeeded,
        results_here=results_here, now=NOW,
    )  # fmt: skip
    assert got is verdict


def test_the_result_is_looked_up_only_when_it_decides() -> None:
    assert not key_marker_needs_result(None, None, True)
    assert not key_marker_needs_result(KeyMark("", NOW), None, True)
    assert not key_marker_needs_result(KeyMark("t", NOW), S.QUEUED, True)
    assert not key_marker_needs_result(KeyMark("t", NOW), S.SUCCEEDED, False)
    assert key_marker_needs_result(KeyMark("t", NOW), S.SUCCEEDED, True)
    assert key_marker_needs_result(KeyMark("t", NOW, purged=True), None, False)
    assert not key_marker_needs_result(KeyMark("t", NOW), None, True)
