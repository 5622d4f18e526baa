"""The stand-in of a stored task record that does not decode (``storage/rows.py``)."""

from __future__ import annotations

import pytest

from omniq.errors import SerializationError
from omniq.models import TaskStatus
from omniq.serialization import _codec, dumps_call, loads_call
from omniq.storage import rows


def test_a_stand_in_fails_when_run_saying_its_record_is_corrupted() -> None:
    t = rows.stand_in_task("t-1", ValueError("bad msgpack"), queue="q", status=TaskStatus.RUNNING)
    assert (t.id, t.queue, t.status, t.name) == ("t-1", "q", TaskStatus.RUNNING, "<unreadable task record>")
    fn, args, kwargs = loads_call(t.payload)
    with pytest.raises(SerializationError, match=r"task t-1: its stored record is corrupted .*ValueError: bad msgpack"):
        fn(*args, **kwargs)


@pytest.mark.parametrize("old_home", ["omniq.storage.base", "omniq.storage.sqlite"])
def test_a_stand_in_stored_by_an_older_version_still_loads(old_home: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """NATS and file:// write stand-ins back; their payload names the function by module, and
    older versions kept it in these modules."""
    monkeypatch.setattr(_codec, "_fn_refs", {})  # (its cache holds the reference made today)
    monkeypatch.setattr(rows.unreadable_task, "__module__", old_home)
    payload = dumps_call(rows.unreadable_task, ("gone",), {})
    monkeypatch.undo()
    assert old_home.encode() in payload  # by reference, as stored then
    fn, args, _ = loads_call(payload)
    assert fn is rows.unreadable_task
    with pytest.raises(SerializationError, match="gone"):
        fn(*args)
