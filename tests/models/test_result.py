"""TaskResult as people see it."""

from __future__ import annotations

from omniq.models import ErrorInfo, TaskResult, TaskStatus
from omniq.serialization import dumps


def test_repr_shows_a_plain_value_not_its_bytes():
    r = TaskResult(task_id="t1", status=TaskStatus.SUCCEEDED, payload=dumps({"score": 0.93}), attempts=1,
                   started_at=10.0, finished_at=10.5)
    text = repr(r)
    assert "value={'score': 0.93}" in text and "payload" not in text and "b'" not in text
    assert "duration=0.500s" in text


def test_repr_does_not_unpickle_a_value_nobody_asked_for():
    class Box:
        def __repr__(self) -> str:
            return "Box()"

    r = TaskResult(task_id="t2", status=TaskStatus.SUCCEEDED, payload=dumps(Box()))
    assert "not loaded yet" in repr(r) and "read .value" in repr(r)
    assert repr(r.value) == "Box()" and "value=Box()" in repr(r)


def test_repr_of_a_failure_names_the_error():
    r = TaskResult(task_id="t3", status=TaskStatus.FAILED, error=ErrorInfo("ValueError", "bad"), attempts=2)
    assert "status='failed'" in repr(r) and "error=ValueError: bad" in repr(r) and "attempts=2" in repr(r)
