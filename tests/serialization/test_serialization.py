"""Payload serialization: formats, exactness, __main__ functions across processes, errors, signing."""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import decimal
import enum
import fractions
import hmac
import importlib
import json
import math
import os
import socket
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omniq.errors import ConfigError, SerializationError, SignatureError
from omniq.models import Task, TaskEvent, TaskResult, TaskStatus
from omniq.serialization import (
    dumps,
    dumps_call,
    get_secret_keys,
    loads,
    loads_call,
    set_secret_keys,
)
from omniq.storage._codec import decode, encode  # the record codec (storage's, not payloads')
from tests.helpers import examples


@pytest.fixture(autouse=True)
def _no_keys(monkeypatch: pytest.MonkeyPatch):
    """Every test starts unsigned and leaves no override behind."""
    monkeypatch.delenv("OMNIQ_SECRET_KEY", raising=False)
    monkeypatch.delenv("OMNIQ_SECRET_KEYS", raising=False)
    set_secret_keys(None)
    yield
    set_secret_keys(None)


# ------------------------------------------------------------------------------ helpers


def same(a: Any, b: Any) -> bool:
    """Equal *and* of the same types all the way down (NaN equals NaN, -0.0 is not 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if type(a).__eq__ is object.__eq__:  # identity equality (locks, functions): type is all
        return True
    return bool(a == b)


class Color(enum.Enum):
    RED = 1
    GREEN = 2


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Loose(msgspec.Struct):
    items: Any = None


def module_level(x: int, y: int = 0) -> int:
    return x * 10 + y


def roundtrip(value: Any) -> Any:
    return loads(dumps(value))


# ------------------------------------------------------------------------------ formats


@pytest.mark.parametrize(
    ("value", "tag"),
    [
        (None, b"M"),
        (True, b"M"),
        (-(2**63), b"M"),
        (2**64 - 1, b"M"),
        (2**64, b"P"),
        (1.5, b"M"),
        ("text", b"M"),
        (b"\x00bytes", b"M"),
        ([1, "a", None, [2.5]], b"M"),
        ({"a": {"b": [1, 2]}}, b"M"),
        ((1, 2), b"P"),
        ([1, (2,)], b"P"),
        ({1: "int key"}, b"P"),
        ({"s": {1, 2}}, b"P"),
        (frozenset({"a"}), b"P"),
        (complex(1, 2), b"P"),
        (bytearray(b"x"), b"P"),
        (dt.datetime(2024, 1, 2, 3, 4, 5), b"P"),
        (decimal.Decimal("1.10"), b"P"),
        (uuid.UUID(int=5), b"P"),
        (TaskStatus.QUEUED, b"P"),
        (Color.RED, b"P"),
        (collections.OrderedDict(a=1), b"D"),
        (Point(1, 2), b"D"),
        (TaskEvent(task_id="t", type="started", timestamp=1.0), b"T"),
        (TaskResult(task_id="t", status=TaskStatus.SUCCEEDED, payload=b"M\xc0"), b"T"),
        (Loose(items=[1, 2]), b"T"),
        (Loose(items=(1, 2)), b"D"),  # an Any field would bring the tuple back as a list
    ],
    ids=repr,
)
def test_format_and_exact_round_trip(value: Any, tag: bytes) -> None:
    data = dumps(value)
    assert data[:1] == tag
    assert same(loads(data), value)


def test_str_with_lone_surrogates_round_trips() -> None:
    for value in ["\ud800", ["x", "\udc00"], {"\ud800": 1}]:
        assert same(roundtrip(value), value)
    args = loads_call(dumps_call(module_level, ("\ud800",)))[1]
    assert args == ("\ud800",)


def test_none_is_two_bytes() -> None:
    assert dumps(None) == b"M\xc0"


def test_shared_and_cyclic_containers_keep_identity() -> None:
    inner = [1, 2]
    shared = [inner, inner]
    back = roundtrip(shared)
    assert back == shared and back[0] is back[1]
    cyclic: list[Any] = [1]
    cyclic.append(cyclic)
    back = roundtrip(cyclic)
    assert back[1] is back


def test_large_plain_list_uses_msgpack() -> None:
    big = [float(i) for i in range(10_000)] + [1, "x", None]
    assert dumps(big)[:1] == b"M"
    assert roundtrip(big) == big
    assert dumps([*range(100), 2**70])[:1] == b"P"


surrogates = st.sampled_from(["\ud800", "a\udfffb"])  # valid str, invalid UTF-8
scalars = (
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary() | surrogates
)
hashables = st.none() | st.booleans() | st.integers() | st.text() | st.binary()
plain = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=5), inner, max_size=5)
        | st.dictionaries(hashables, inner, max_size=3)
        | st.sets(hashables, max_size=3)
        | st.frozensets(hashables, max_size=3)
    ),
    max_leaves=25,
)


@given(plain)
@settings(max_examples=examples(300), deadline=None)
def test_plain_data_round_trips_exactly(value: Any) -> None:
    assert same(roundtrip(value), value)


def _generator() -> Any:
    yield 1


def _make_closure(n: int) -> Any:
    return lambda x: x + n


odd_objects = st.sampled_from(
    [
        lambda: complex(0, -1),
        lambda: decimal.Decimal("-1.10"),
        lambda: fractions.Fraction(1, 3),
        lambda: dt.timedelta(seconds=3),
        lambda: dt.datetime.now(dt.timezone.utc),
        lambda: range(3),
        lambda: collections.defaultdict(list, a=[1]),
        lambda: collections.Counter("abc"),
        lambda: Color.GREEN,
        lambda: Point(3, 4),
        lambda: Loose(items={"a": (1,)}),
        lambda: TaskEvent(task_id="x", type="enqueued", timestamp=2.0, worker="w"),
        lambda: threading.Lock(),
        lambda: _generator(),
        lambda: _socket(),
        lambda: _make_closure(2),
        lambda: module_level,
        lambda: ValueError("boom"),
        lambda: [1, _generator()],
        lambda: {"conn": _socket()},
    ]
).map(lambda factory: factory())


def _socket() -> socket.socket:
    """A socket for ``odd_objects``, closed by the test (Hypothesis also draws values it never
    runs the test with: those are closed by the next run)."""
    s = socket.socket()
    _SOCKETS.append(s)
    return s


_SOCKETS: list[socket.socket] = []


@given(st.lists(odd_objects | plain, max_size=4).map(tuple))
@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_odd_objects_round_trip_or_raise_serialization_error(value: tuple[Any, ...]) -> None:
    try:
        data = dumps(value)
    except SerializationError:
        return
    finally:
        while _SOCKETS:
            _SOCKETS.pop().close()
    back = loads(data)
    assert type(back) is tuple and len(back) == len(value)
    for a, b in zip(value, back, strict=True):
        if isinstance(a, BaseException):
            assert type(b) is type(a) and b.args == a.args
        elif callable(a) and not isinstance(a, type):
            assert callable(b)
        else:
            assert same(b, a)


# ------------------------------------------------------------------------------ calls


def test_module_function_call_is_msgpack_with_cached_reference() -> None:
    data = dumps_call(module_level, (1,), {"y": 2})
    assert data[:1] == b"C"
    fn, args, kwargs = loads_call(data)
    assert fn is module_level and args == (1,) and kwargs == {"y": 2}
    assert type(args) is tuple
    assert dumps_call(module_level, (1,), {"y": 2}) == data  # cached pickle, same bytes
    assert loads(data) == (module_level, (1,), {"y": 2})


def test_call_with_builtin_args_uses_pickle_and_keeps_tuples() -> None:
    data = dumps_call(module_level, ((1, 2),), {})
    assert data[:1] == b"P"
    assert loads_call(data) == (module_level, ((1, 2),), {})


@pytest.mark.parametrize("fn", [math.hypot, len, json.dumps])
def test_importable_builtins_and_library_functions(fn: Any) -> None:
    data = dumps_call(fn, ([3, 4],) if fn is not math.hypot else (3, 4), {})
    assert data[:1] == b"C"
    loaded, args, kwargs = loads_call(data)
    assert loaded is fn
    assert loaded(*args, **kwargs) == fn(*args, **kwargs)


def test_closures_are_never_cached() -> None:
    box = {"n": 1}

    def read() -> int:
        return box["n"]

    first = dumps_call(read)
    box["n"] = 2
    second = dumps_call(read)
    assert first[:1] == b"D"
    assert loads_call(first)[0]() == 1
    assert loads_call(second)[0]() == 2


def test_reloaded_module_function_is_not_served_from_cache(tmp_path: Path, monkeypatch) -> None:
    mod = tmp_path / "omniq_reload_probe.py"
    mod.write_text("def f():\n    return 'old'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("omniq_reload_probe")
    try:
        old = module.f
        assert dumps_call(old)[:1] == b"C"
        mod.write_text("def f():\n    return 'new'\n")
        importlib.invalidate_caches()
        os.utime(mod, (0, 0))  # force a fresh bytecode check
        importlib.reload(module)
        assert module.f is not old
        # The name now points elsewhere: the old function must travel by value, not by name.
        fn, _, _ = loads_call(dumps_call(old))
        assert fn() == "old"
        assert loads_call(dumps_call(module.f))[0]() == "new"
    finally:
        sys.modules.pop("omniq_reload_probe", None)


def test_list_args_and_mapping_kwargs_are_accepted() -> None:
    _, args, kwargs = loads_call(dumps_call(module_level, [1], collections.OrderedDict(y=3)))
    assert args == (1,) and kwargs == {"y": 3} and type(kwargs) is dict


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ((42, (), {}), "not callable"),
        ((module_level, "ab", {}), "args must be a tuple"),
        ((module_level, (), [("y", 1)]), "kwargs must be a dict"),
        ((module_level, (), {1: 2}), "kwargs keys must be str"),
    ],
)
def test_bad_call_arguments(call: tuple[Any, Any, Any], message: str) -> None:
    with pytest.raises(SerializationError, match=message):
        dumps_call(*call)


def test_loads_call_rejects_a_value_payload() -> None:
    with pytest.raises(SerializationError, match="not a call"):
        loads_call(dumps({"a": 1}))
    with pytest.raises(SerializationError, match="not a call"):
        loads_call(dumps((1, 2, 3)))


# ------------------------------------------------------------------------------ errors


def test_unserializable_argument_names_its_path() -> None:
    with socket.socket() as conn, pytest.raises(SerializationError) as info:
        dumps_call(module_level, (1, {"conn": conn}), {})
    assert str(info.value).startswith(
        "cannot serialize argument args[1]['conn']: socket.socket object"
    )


def test_unserializable_kwarg_and_value() -> None:
    with pytest.raises(SerializationError, match=r"argument kwargs\['gen'\]: generator object"):
        dumps_call(module_level, (), {"gen": _generator()})
    with pytest.raises(SerializationError, match=r"cannot serialize value\[0\]\.x: generator"):
        dumps([Point(_generator(), 1)])  # type: ignore[arg-type]


def test_unserializable_closure_cell_names_the_variable() -> None:
    with socket.socket() as conn:

        def uses() -> int:
            return conn.fileno()

        with pytest.raises(SerializationError) as info:
            dumps_call(uses)
    assert "captures 'conn' (socket.socket) which cannot be serialized" in str(info.value)


@pytest.mark.parametrize(
    "data",
    [b"", b"Z", b"M", b"M\xc1", b"Mxx", b"D\x80\x05", b"P\x80", b"Cjunk", b"T\x92\xa1x\xc0", "str"],
    ids=repr,
)
def test_corrupt_payloads_raise_serialization_error(data: Any) -> None:
    with pytest.raises(SerializationError) as info:
        loads(data)
    assert not isinstance(info.value, SignatureError)


def test_struct_payload_naming_a_non_struct_is_rejected() -> None:
    data = b"T" + msgspec.msgpack.encode(("os:system", msgspec.Raw(msgspec.msgpack.encode("x"))))
    with pytest.raises(SerializationError, match="not a msgspec Struct"):
        loads(data)


def test_unknown_tag_says_so() -> None:
    with pytest.raises(SerializationError, match="unknown payload format tag b'Z'"):
        loads(b"Z\x00")


corruptible = st.one_of(
    plain.map(dumps),
    st.just(dumps_call(module_level, (1,), {"y": 2})),
    st.just(dumps_call(module_level, ((1, 2),), {})),
    st.just(dumps_call(_make_closure(3), (1,))),
    st.just(dumps(Point(1, 2))),
    st.just(dumps(TaskEvent(task_id="t", type="x", timestamp=1.0))),
)


def _corrupt(data: bytes, draw: Any) -> bytes:
    how = draw(st.sampled_from(["flip", "truncate", "insert"]))
    if how == "truncate":
        return data[: draw(st.integers(0, max(0, len(data) - 1)))]
    pos = draw(st.integers(0, len(data) - 1)) if data else 0
    if how == "flip":
        byte = draw(st.integers(1, 255))
        return data[:pos] + bytes([data[pos] ^ byte]) + data[pos + 1 :]
    return data[:pos] + draw(st.binary(min_size=1, max_size=4)) + data[pos:]


@given(corruptible, st.data())
@settings(max_examples=examples(400), deadline=None)
def test_corruption_gives_serialization_error_or_a_value(data: bytes, draw: st.DataObject) -> None:
    bad = _corrupt(data, draw.draw)
    try:
        loads(bad)
    except SerializationError:
        pass
    try:
        loads_call(bad)
    except SerializationError:
        pass


@given(corruptible, st.data())
@settings(max_examples=examples(200), deadline=None)
def test_signed_corruption_is_always_caught(data: bytes, draw: st.DataObject) -> None:
    set_secret_keys("k" + "-0123456789abcdef0123456789abcdef")
    try:
        signed = b"S" + hmac.digest(b"k-0123456789abcdef0123456789abcdef", data, "sha256") + data
        loads(signed)  # intact: verifies and loads
        bad = _corrupt(signed, draw.draw)
        with pytest.raises(SignatureError):
            loads(bad)
        with pytest.raises(SignatureError):
            loads_call(bad)
    finally:
        set_secret_keys(None)


# ------------------------------------------------------------------------------ signing


def test_signed_when_key_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNIQ_SECRET_KEY", "s3cret-0123456789abcdef0123456789abcdef")
    data = dumps({"a": 1})
    assert data[:1] == b"S" and len(data) > 33
    assert loads(data) == {"a": 1}
    call = dumps_call(module_level, (1,))
    assert call[:1] == b"S"
    assert loads_call(call) == (module_level, (1,), {})
    assert loads(dumps(None)) is None


def test_unsigned_payload_rejected_when_key_set(monkeypatch: pytest.MonkeyPatch) -> None:
    plain_payload = dumps([1, 2])
    monkeypatch.setenv("OMNIQ_SECRET_KEY", "s3cret-0123456789abcdef0123456789abcdef")
    with pytest.raises(SignatureError, match="payload is not signed but OMNIQ_SECRET_KEY is set"):
        loads(plain_payload)
    with pytest.raises(SignatureError, match="not signed"):
        loads(b"M\xc0")  # the None fast path must not skip the check
    with pytest.raises(SignatureError, match="not signed"):
        loads_call(b"Cjunk")  # rejected before anything is parsed


def test_wrong_key_rejected_and_nothing_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNIQ_SECRET_KEY", "one-0123456789abcdef0123456789abcdef")
    data = dumps_call(module_level, (1,))
    monkeypatch.setenv("OMNIQ_SECRET_KEY", "two-0123456789abcdef0123456789abcdef")
    with pytest.raises(SignatureError, match="signature does not match any accepted key"):
        loads_call(data)


def test_tampered_body_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNIQ_SECRET_KEY", "one-0123456789abcdef0123456789abcdef")
    data = bytearray(dumps({"amount": 1}))
    data[-1] ^= 1
    with pytest.raises(SignatureError, match="does not match"):
        loads(bytes(data))


def test_signed_payload_without_key_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNIQ_SECRET_KEY", "one-0123456789abcdef0123456789abcdef")
    data = dumps(1)
    monkeypatch.delenv("OMNIQ_SECRET_KEY")
    with pytest.raises(SignatureError, match="no OMNIQ_SECRET_KEY is set"):
        loads(data)


def test_key_rotation_through_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNIQ_SECRET_KEY", "old-0123456789abcdef0123456789abcdef")
    old_payload = dumps("in flight")
    monkeypatch.setenv("OMNIQ_SECRET_KEY", "new-0123456789abcdef0123456789abcdef")
    monkeypatch.setenv(
        "OMNIQ_SECRET_KEYS",
        "older-0123456789abcdef0123456789abcdef, old-0123456789abcdef0123456789abcdef",
    )
    assert loads(old_payload) == "in flight"
    new_payload = dumps("fresh")
    monkeypatch.setenv("OMNIQ_SECRET_KEYS", "")
    assert loads(new_payload) == "fresh"
    with pytest.raises(SignatureError, match="does not match"):
        loads(old_payload)


def test_accepted_keys_without_signing_key_is_a_config_error(monkeypatch) -> None:
    monkeypatch.setenv("OMNIQ_SECRET_KEYS", "old-0123456789abcdef0123456789abcdef")
    with pytest.raises(ConfigError, match="OMNIQ_SECRET_KEYS is set but OMNIQ_SECRET_KEY is not"):
        dumps(1)


def test_set_secret_keys_overrides_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNIQ_SECRET_KEY", "env-0123456789abcdef0123456789abcdef")
    set_secret_keys(
        ["new-0123456789abcdef0123456789abcdef", b"old-0123456789abcdef0123456789abcdef"]
    )
    assert get_secret_keys() == (
        b"new-0123456789abcdef0123456789abcdef",
        (b"new-0123456789abcdef0123456789abcdef", b"old-0123456789abcdef0123456789abcdef"),
    )
    data = dumps(5)
    set_secret_keys("old-0123456789abcdef0123456789abcdef")
    with pytest.raises(SignatureError):
        loads(data)
    set_secret_keys(
        ["other-0123456789abcdef0123456789abcdef", "new-0123456789abcdef0123456789abcdef"]
    )
    assert loads(data) == 5
    set_secret_keys([])  # explicitly off, whatever the environment says
    assert dumps(5)[:1] == b"M"
    set_secret_keys(None)  # back to the environment
    assert dumps(5)[:1] == b"S"
    with pytest.raises(ConfigError):
        set_secret_keys([""])
    with pytest.raises(ConfigError):
        set_secret_keys([1])  # type: ignore[list-item]


# ------------------------------------------------------------------------------ storage helpers


def test_encode_decode_structs() -> None:
    task = Task(id="1", payload=b"C", depends_on=("a",), metadata={"k": [1]})
    assert decode(encode(task), type=Task) == task
    events = [TaskEvent(task_id="1", type="started", timestamp=1.0)]
    assert decode(encode(events), type=list[TaskEvent]) == events
    assert decode(encode({"a": 1})) == {"a": 1}
    assert encode(TaskStatus.RUNNING) == encode("running")


def test_decode_errors_name_the_type() -> None:
    with pytest.raises(SerializationError, match="cannot decode stored Task"):
        decode(b"\xc1", type=Task)
    with pytest.raises(SerializationError, match="cannot decode stored Task"):
        decode(encode({"id": 1}), type=Task)
    with pytest.raises(SerializationError, match="cannot encode"):
        encode(object())


# ------------------------------------------------------------------------------ across processes

NOTEBOOK = textwrap.dedent(
    """
    import functools, json, math, sys
    from omniq.serialization import dumps_call

    SCALE = 3
    data = [1, 2, 3]

    def helper(x):
        return x * SCALE

    def uses_globals(x):
        return helper(x) + sum(data) + math.floor(2.5)

    def make_adder(n):
        def add(x):
            return x + n
        return add

    class Point:
        def __init__(self, x, y):
            self.x, self.y = x, y
        def norm2(self):
            return self.x ** 2 + self.y ** 2

    def check_point(p):
        return isinstance(p, Point) and p.norm2()

    def fact(n):
        return 1 if n <= 1 else n * fact(n - 1)

    calls = {
        "lambda": (lambda x, y=1: x + y, (2,), {"y": 5}),
        "closure": (make_adder(10), (5,), {}),
        "globals": (uses_globals, (2,), {}),
        "class_arg": (check_point, (Point(3, 4),), {}),
        "method": (Point(1, 2).norm2, (), {}),
        "partial": (functools.partial(uses_globals, 1), (), {}),
        "recursive": (fact, (5,), {}),
        "returns_main_class": (lambda: type(Point(0, 0)).__name__, (), {}),
        "module_fn": (math.hypot, (3, 4), {}),
    }
    out = {name: dumps_call(*call).hex() for name, call in calls.items()}
    SCALE = 1000  # changed after dumping: the payload keeps the value it was sent with
    with open(sys.argv[1], "w") as f:
        json.dump(out, f)
    """
)

WORKER = textwrap.dedent(
    """
    import json, sys
    from omniq.serialization import loads_call
    with open(sys.argv[1]) as f:
        payloads = json.load(f)
    results = {}
    for name, hexdata in payloads.items():
        fn, args, kwargs = loads_call(bytes.fromhex(hexdata))
        results[name] = fn(*args, **kwargs)
    print(json.dumps(results))
    """
)

EXPECTED = {
    "lambda": 7,
    "closure": 15,
    "globals": 14,
    "class_arg": 25,
    "method": 5,
    "partial": 11,
    "recursive": 120,
    "returns_main_class": "Point",
    "module_fn": 5.0,
}


def _python(args: list[str], env: dict[str, str], cwd: Path) -> str:
    proc = subprocess.run(
        [sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("key", [None, "cross-process-key-0123456789abcdef0123456789abcdef"])
def test_main_functions_run_in_a_fresh_process(tmp_path: Path, key: str | None) -> None:
    """Dump in one process's __main__ (a script), load and call in another (python -c)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIQ_SECRET")}
    if key:
        env["OMNIQ_SECRET_KEY"] = key
    script = tmp_path / "notebook.py"
    script.write_text(NOTEBOOK)
    payloads = tmp_path / "payloads.json"
    _python([str(script), str(payloads)], env, tmp_path)
    if key:
        assert all(bytes.fromhex(h)[:1] == b"S" for h in json.loads(payloads.read_text()).values())
    results = json.loads(_python(["-c", WORKER, str(payloads)], env, tmp_path))
    assert results == EXPECTED


def test_worker_with_another_key_refuses_the_payload(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIQ_SECRET")}
    script = tmp_path / "notebook.py"
    script.write_text(NOTEBOOK)
    payloads = tmp_path / "payloads.json"
    _python(
        [str(script), str(payloads)],
        {**env, "OMNIQ_SECRET_KEY": "a-0123456789abcdef0123456789abcdef"},
        tmp_path,
    )
    proc = subprocess.run(
        [sys.executable, "-c", WORKER, str(payloads)],
        env={**env, "OMNIQ_SECRET_KEY": "b-0123456789abcdef0123456789abcdef"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "SignatureError: signature does not match any accepted key" in proc.stderr


ERRORS = textwrap.dedent(
    """
    import socket
    from omniq.errors import SerializationError
    from omniq.serialization import dumps_call

    conn = socket.socket()

    def f():
        return conn.fileno()

    def g(x):
        return f() + x

    for fn, args in [(f, ()), (g, (1,)), (print, (1, {"conn": conn})), (lambda: 1, ((x for x in ()),))]:
        try:
            dumps_call(fn, args)
            print("OK")
        except SerializationError as exc:
            print(exc)
    """
)


def test_error_messages_name_main_globals(tmp_path: Path) -> None:
    script = tmp_path / "errors.py"
    script.write_text(ERRORS)
    lines = _python([str(script)], dict(os.environ), tmp_path).splitlines()
    assert lines[0].startswith(
        "function f uses global 'conn' (socket.socket) which cannot be serialized"
    )
    assert lines[1].startswith(
        "function g uses global 'f' (function f) uses global 'conn' (socket.socket)"
    )
    assert lines[2].startswith("cannot serialize argument args[1]['conn']: socket.socket object")
    assert lines[3].startswith("cannot serialize argument args[0]: generator object")


IPYTHON_SESSION = textwrap.dedent(
    """
    import json, sys
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    cells = [
        "import math\\nfrom omniq.serialization import dumps_call",
        "data = [1, 2, 3]\\ndef helper(x):\\n    return x * 2",
        "def work(x):\\n    return helper(x) + sum(data) + math.floor(1.5)",
        "k = 10\\nclo = (lambda: (lambda y: y + k))()",
        "class P:\\n    def __init__(self, v):\\n        self.v = v\\ndef usep(p):\\n    return p.v * 2",
        "def check(x):\\n    if x > 2:\\n        raise ValueError(f'x={x} is too big')\\n    return x",
        "def risky(x):\\n    return check(x) * 2",
        "payloads = {'work': dumps_call(work, (1,)).hex(), 'closure': dumps_call(clo, (1,)).hex(),"
        " 'cls': dumps_call(usep, (P(4),)).hex(), 'risky': dumps_call(risky, (3,)).hex()}",
    ]
    for cell in cells:
        shell.run_cell(cell, store_history=True).raise_error()
    with open(sys.argv[1], "w") as f:
        json.dump(shell.user_ns["payloads"], f)
    """
)


def test_functions_from_an_ipython_session_run_in_a_fresh_process(tmp_path: Path) -> None:
    """Cells run by a real IPython shell (as in a notebook kernel), loaded in a plain python."""
    pytest.importorskip("IPython")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIQ_SECRET")}
    env["IPYTHONDIR"] = str(tmp_path / "ipython")
    script = tmp_path / "session.py"
    script.write_text(IPYTHON_SESSION)
    payloads = tmp_path / "payloads.json"
    _python([str(script), str(payloads)], env, tmp_path)
    worker = WORKER.replace(
        "results[name] = fn(*args, **kwargs)",
        "try:\n        results[name] = fn(*args, **kwargs)\n"
        "    except ValueError:\n"
        "        import traceback\n"
        "        results[name] = traceback.format_exc()",
    )
    results = json.loads(_python(["-c", worker, str(payloads)], env, tmp_path))
    trace = results.pop("risky")
    assert results == {"work": 9, "closure": 11, "cls": 8}
    # The cells exist only in the kernel's linecache: their lines travel with the payload.
    assert "return check(x) * 2" in trace
    assert "raise ValueError(f'x={x} is too big')" in trace


def test_dumps_calls_pickles_a_by_value_function_once_per_batch() -> None:
    from omniq.serialization import TAG_SHARED, dumps_calls

    scale = 7
    fn = lambda x, y=0: x * scale + y  # noqa: E731  (a closure: must travel by value)
    payloads = dumps_calls(fn, [((i,), {"y": 1}) for i in range(50)])
    assert all(p[:1] == TAG_SHARED for p in payloads)
    results = []
    for p in payloads:
        f, args, kwargs = loads_call(p)
        results.append(f(*args, **kwargs))
    assert results == [i * 7 + 1 for i in range(50)]
    # the function is loaded once and reused for the whole batch
    assert loads_call(payloads[0])[0] is loads_call(payloads[1])[0]
    # non-plain arguments fall back to one dill pickle per call
    odd = dumps_calls(fn, [((1,), {}), ((complex(1, 2),), {})])
    assert odd[0][:1] == TAG_SHARED and odd[1][:1] != TAG_SHARED


def test_dumps_calls_are_signed_when_a_key_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    from omniq.serialization import TAG_SIGNED, dumps_calls

    monkeypatch.setenv("OMNIQ_SECRET_KEY", "k1-0123456789abcdef0123456789abcdef")
    fn = lambda x: x + 1  # noqa: E731
    payloads = dumps_calls(fn, [((1,), {}), ((2,), {})])
    assert all(p[:1] == TAG_SIGNED for p in payloads)
    assert [loads_call(p)[0](*loads_call(p)[1]) for p in payloads] == [2, 3]
    monkeypatch.setenv("OMNIQ_SECRET_KEY", "other-0123456789abcdef0123456789abcdef")
    with pytest.raises(SignatureError):
        loads_call(payloads[0])


# ------------------------------------------------------------------------------ deep and huge


_NESTERS = {
    "list": (lambda x: [x], "[0]"),
    "tuple": (lambda x: (x,), "[0]"),
    "dict": (lambda x: {"k": x}, "['k']"),
    "set-in-list": (lambda x: [x, {1, 2}], "[0]"),
}


def _nest(depth: int, kind: str, leaf: Any) -> Any:
    wrap = _NESTERS[kind][0]
    x = leaf
    for _ in range(depth):
        x = wrap(x)
    return x


@given(
    depth=st.sampled_from([1, 10, 100, 500, 5_000, 50_000]),
    kind=st.sampled_from(sorted(_NESTERS)),
    leaf=st.sampled_from(["plain", "generator", "lock"]),
)
@settings(max_examples=examples(30), deadline=None)  # (each deep example takes ~0.25 s)
def test_deep_nesting_works_or_names_the_path(depth: int, kind: str, leaf: str) -> None:
    value = _nest(
        depth, kind, {"plain": 1, "generator": _generator(), "lock": threading.Lock()}[leaf]
    )
    for dump, root in (
        (dumps, "value"),
        (lambda v: dumps_call(module_level, (v,), {}), "argument args[0]"),
    ):
        try:
            data = dump(value)
        except SerializationError as exc:
            msg = str(exc)
            assert msg.startswith(f"cannot serialize {root}"), msg
            assert len(msg) < 2_000, "the path is shortened, not a megabyte of [0][0]..."
        else:
            assert leaf != "generator", "a generator cannot be serialized (dill pickles a lock)"
            loads(data) if dump is dumps else loads_call(data)


@pytest.mark.parametrize(
    "data",
    [
        b"M" + b"\x91" * 100_000 + b"\x01",
        b"M" + b"\x81\xa1k" * 100_000 + b"\x01",
        b"C" + b"\x91" * 100_000 + b"\x01",
    ],
    ids=["deep-array", "deep-map", "deep-call"],
)
def test_deeply_nested_payload_bytes_are_a_serialization_error(data: bytes) -> None:
    for load in (loads, loads_call):
        with pytest.raises(SerializationError):
            load(data)


def test_huge_payloads_round_trip() -> None:
    blob = os.urandom(1 << 20) * 64  # 64 MB
    assert loads(dumps(blob)) == blob
    rows = [{"i": i, "s": "x" * 50} for i in range(500_000)]
    data = dumps(rows)
    assert data[:1] == b"M" and loads(data) == rows
    fn, args, kwargs = loads_call(dumps_call(module_level, (blob,), {"rows": rows}))
    assert fn is module_level and args[0] == blob and kwargs["rows"] == rows


def test_dumps_calls_of_an_importable_function_match_dumps_call_byte_for_byte() -> None:
    from omniq.serialization import dumps_calls

    from .. import helpers

    calls = [((i,), {}) for i in range(5)] + [
        ((2**70,), {}),
        (("\ud800",), {}),
        (([1, (2, 3)],), {}),
        ((1,), {"k": {1, 2}}),
    ]
    assert dumps_calls(helpers.square, calls) == [
        dumps_call(helpers.square, a, k) for a, k in calls
    ]
    f, args, kwargs = loads_call(dumps_calls(helpers.square, calls)[5])
    assert kwargs == {}
    assert f(*args) == 2**140
