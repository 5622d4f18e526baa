"""``omniq.serialization.peek``: reprs of stored payloads made without unpickling anything,
for every payload format ``dumps_call`` / ``dumps`` write (the dashboard and ``omniq show``
show these)."""

from __future__ import annotations

import datetime as dt
import pickle
from pathlib import Path

import msgspec
import pytest

from omniq.serialization import (
    BLOB_THRESHOLD,
    BlobSink,
    dumps,
    dumps_call,
    dumps_calls,
    set_secret_keys,
)
from omniq.serialization.peek import LIMIT, call_reprs, value_repr, walk_pickle

# How pickle names the builtin open: io.open up to 3.11, _io.open from 3.12.
OPEN = f"<object {open.__module__}.{open.__qualname__}>"


def top_level(x: int, *, scale: float = 1.0) -> float:
    return x * scale


class Point(msgspec.Struct):
    x: int
    y: int


class Trap:
    """Unpickling it creates ``path``: reading a payload must never do that."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.path, "w"))


def test_plain_arguments_of_an_importable_function() -> None:  # tag C: msgpack
    assert call_reprs(dumps_call(top_level, (3,), {"scale": 2.5})) == ("(3,)", "{'scale': 2.5}")


def test_pickled_calls_show_objects_by_name_only(tmp_path: Path) -> None:  # tags P and D
    trap = str(tmp_path / "trap")
    args, kwargs = call_reprs(dumps_call(top_level, (Trap(trap), dt.date(2024, 1, 2), {1, 2}), {"k": (1, None)}))
    assert args == f"({OPEN}, <object datetime.date>, {{1, 2}})" and kwargs == "{'k': (1, None)}"
    args, _ = call_reprs(dumps_call(lambda a: a, (Trap(trap), [b"raw", 1.5, True]), {}))  # dill
    assert args == f"({OPEN}, [b'raw', 1.5, True])"
    assert not Path(trap).exists()


def test_closures_batches_and_shells() -> None:  # tags V and F
    k = 3

    def scaled(x: int) -> int:
        return x * k

    payloads = dumps_calls(scaled, [((i,), {"tag": "t"}) for i in range(3)])
    assert [call_reprs(p) for p in payloads] == [(f"({i},)", "{'tag': 't'}") for i in range(3)]
    args, _ = call_reprs(dumps_call(scaled, (Point(1, 2),), {}))
    assert "Point" in args and args.startswith("(<object ")


def test_signed_payloads_read_the_same() -> None:  # tag S
    set_secret_keys("p" * 32)
    try:
        assert call_reprs(dumps_call(top_level, (1,), {})) == ("(1,)", "{}")
        assert value_repr(dumps({"a": [1, 2]})) == "{'a': [1, 2]}"
    finally:
        set_secret_keys(None)


def test_large_values_stored_apart_show_as_blobs() -> None:  # tags Q and R
    sink = BlobSink()
    big = b"x" * (BLOB_THRESHOLD + 10)
    args, _ = call_reprs(dumps_call(top_level, (big, 1), {}, blobs=sink))
    (digest,) = sink.take()
    assert args == f"(<blob {digest[:8]}>, 1)"


def test_values() -> None:
    assert value_repr(None) is None
    assert value_repr(dumps(None)) == "None"
    assert value_repr(dumps([1, "a", 2.5])) == "[1, 'a', 2.5]"
    assert value_repr(dumps(Point(1, 2))).startswith("<object ")  # tag T: a Struct, by name
    assert value_repr(dumps({"when": dt.datetime(2024, 1, 1)})) == "{'when': <object datetime.datetime>}"


def test_reprs_are_short() -> None:
    args, kwargs = call_reprs(dumps_call(top_level, (list(range(10_000)), "y" * 10_000), {"z": "w" * 10_000}))
    assert len(args) <= LIMIT and len(kwargs) <= LIMIT and "..." in args


def test_damaged_payloads_say_so() -> None:
    assert call_reprs(b"C\xff\x00") == ("<unreadable payload: DecodeError>",) * 2
    assert call_reprs(b"Z123")[0].startswith("<unreadable payload")
    assert call_reprs(b"")[0].startswith("<unreadable payload")
    assert value_repr(b"P\x80\x05garbage").startswith("<unreadable value")


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_every_pickle_protocol(protocol: int, tmp_path: Path) -> None:
    value = {"a": [1, 2, (3, 4)], "b": frozenset({5}), "c": b"\x00", "t": Trap(str(tmp_path / "t"))}
    got = walk_pickle(pickle.dumps(value, protocol=protocol))
    assert got["a"] == [1, 2, (3, 4)] and got["b"] == frozenset({5}) and got["c"] == b"\x00"
    assert repr(got["t"]) == OPEN
    assert not (tmp_path / "t").exists()


def test_a_pickle_cannot_make_the_reader_allocate() -> None:
    # protocol 0 by hand: builtins.bytes(10**12) (REDUCE): shown by name, never called
    data = b"c__builtin__\nbytes\n(I1000000000000\ntR."
    assert repr(walk_pickle(data)) == "<object bytes>"


def test_a_pickle_built_to_be_costly_to_read_is_not() -> None:
    """204 KB repeating ``list(s)`` over one memoized 200,000-character string 200 times made
    a walk hold 331 MB; containers now keep what a repr shows, strings their head and tail."""
    import struct
    import time
    import tracemalloc

    s = "x" * 200_000
    data = b"\x80\x02X" + struct.pack("<I", len(s)) + s.encode() + b"q\x000"
    data += b"c__builtin__\nlist\nh\x00\x85R0" * 200  # list(s), popped, 200 times
    data += b"c__builtin__\nlist\nh\x00\x85R."  # and the value: list(s)
    tracemalloc.start()
    try:
        started = time.perf_counter()
        value = walk_pickle(data)
        took = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10_000_000, peak
    assert took < 2.0
    assert value == ["x"] * 13
    assert value_repr(b"P" + data) == "['x', 'x', 'x', 'x', 'x', 'x', 'x', 'x', 'x', 'x', 'x', 'x', ...]"


def test_long_containers_and_strings_show_their_head_and_the_walk_is_bounded() -> None:
    from omniq.serialization.peek import MAX_OPS

    data = pickle.dumps(({"k": "a" * 10_000 + "END"}, list(range(100)), set(range(50))), protocol=4)
    shown = value_repr(b"P" + data)
    assert shown is not None and "END" in shown and "..." in shown and "99" not in shown
    many = pickle.dumps([{i} for i in range(MAX_OPS)], protocol=5)  # several opcodes each
    assert repr(walk_pickle(many)).startswith("<too large to show: a pickle of")
