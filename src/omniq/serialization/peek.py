"""Short, safe reprs of stored payloads, for people and dashboards: nothing is unpickled.

Loading a pickle runs code, and a task's payload may come from anyone who can write to the
storage. So the arguments of a call (and a result's value) are shown by *reading* the payload:
msgpack parts are decoded (decoding msgpack runs no code), and pickle streams are walked
opcode by opcode with :mod:`pickletools`, rebuilding only plain values (numbers, strings,
bytes, None, lists, tuples, dicts, sets). Anything built by calling a class or a function
(``REDUCE``, ``NEWOBJ``, ``INST``, ...) becomes a placeholder such as ``<object numpy.ndarray>``;
nothing is imported and no ``__reduce__`` / ``__setstate__`` runs. Large values stored apart
as blobs show as ``<blob 1a2b3c4d>``.

Examples:
    >>> from omniq.serialization import dumps_call
    >>> from omniq.serialization.peek import call_reprs
    >>> call_reprs(dumps_call(max, (3, "x"), {"key": None}))
    ('(3, \\'x\\')', "{'key': None}")
"""

from __future__ import annotations

import itertools
import pickletools
import reprlib
from typing import Any

import msgspec

from ._signing import MAC_SIZE

#: reprs are cut to this many characters (the full value stays in storage)
LIMIT = 500
#: what a walk keeps and does at most, so a payload built to be costly to read is not: items
#: kept per container (a repr shows 12, the 13th makes its "..."), characters kept per string
#: (its head and tail, which is what a repr shows), opcodes walked before giving up
KEEP_ITEMS = 13
KEEP_CHARS = 120
MAX_OPS = 50_000

_decode = msgspec.msgpack.Decoder().decode
_repr = reprlib.Repr()
_repr.maxstring = 120
_repr.maxother = 120
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = _repr.maxfrozenset = 12
_repr.maxlevel = 4


class Opaque:
    """A placeholder for something a pickle would build by running code."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


class _Global(Opaque):
    """A class or function a pickle names (``GLOBAL``): shown by name, never imported."""

    __slots__ = ("module", "name")

    def __init__(self, module: str, name: str) -> None:
        module = "builtins" if module == "__builtin__" else module  # (protocols 0-2)
        super().__init__(f"<{_global_name(module, name)}>")
        self.module, self.name = module, name


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    if encoding not in ("latin1", "latin-1"):
        raise ValueError(encoding)
    return text.encode("latin1")


#: constructors of plain values that protocols 0-2 pickle as a call: rebuilt (they run no
#: user code), so a set or bytes from an old pickle shows as itself
_PLAIN_CALLS: dict[tuple[str, str], Any] = {
    ("builtins", "set"): set, ("builtins", "frozenset"): frozenset, ("builtins", "list"): list,
    ("builtins", "tuple"): tuple, ("builtins", "dict"): dict, ("builtins", "bytearray"): bytearray,
    ("builtins", "bytes"): bytes, ("builtins", "complex"): complex, ("_codecs", "encode"): _latin1,
}


class _Mark:
    __slots__ = ()


_MARK = _Mark()


def _short(text: str) -> str:
    return text if len(text) <= LIMIT else text[: LIMIT - 3] + "..."


def safe_repr(value: Any) -> str:
    """A short repr of a value rebuilt by this module (plain data and placeholders)."""
    try:
        return _short(_repr.repr(value))
    except Exception as exc:  # a placeholder inside a set or dict key cannot fail, but be safe
        return f"<unprintable: {type(exc).__name__}>"


def _global_name(module: str, name: str) -> str:
    return f"{module}.{name}" if module and module != "builtins" else name


def walk_pickle(data: bytes) -> Any:
    """The value a pickle stream describes, rebuilt from its opcodes without loading it:
    plain values as themselves, everything else as an ``Opaque`` placeholder."""
    stack: list[Any] = []
    memo: dict[int, Any] = {}
    for count, (op, raw, _pos) in enumerate(pickletools.genops(data)):
        if count >= MAX_OPS:
            return Opaque(f"<too large to show: a pickle of {len(data):,} bytes>")
        name = op.name
        arg: Any = _clip(raw)
        if name in ("PROTO", "FRAME"):
            continue
        if name == "STOP":
            break
        if name == "MARK":
            stack.append(_MARK)
        elif name in ("NONE",):
            stack.append(None)
        elif name in ("NEWTRUE", "NEWFALSE"):
            stack.append(name == "NEWTRUE")
        elif name in ("INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4",
                      "FLOAT", "BINFLOAT", "STRING", "BINSTRING", "SHORT_BINSTRING",
                      "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"):
            stack.append(arg)
        elif name in ("BINBYTES", "SHORT_BINBYTES", "BINBYTES8"):
            stack.append(bytes(arg))
        elif name == "BYTEARRAY8":
            stack.append(bytearray(arg))
        elif name in ("EMPTY_LIST",):
            stack.append([])
        elif name == "EMPTY_TUPLE":
            stack.append(())
        elif name == "EMPTY_DICT":
            stack.append({})
        elif name == "EMPTY_SET":
            stack.append(set())
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            items = stack[-n:]
            del stack[-n:]
            stack.append(tuple(items))
        elif name in ("TUPLE", "LIST", "FROZENSET", "DICT"):
            items = _pop_mark(stack)
            if name == "TUPLE":
                stack.append(tuple(items[:KEEP_ITEMS]))
            elif name == "LIST":
                stack.append(items[:KEEP_ITEMS])
            elif name == "FROZENSET":
                stack.append(frozenset(_hashable(i) for i in items[:KEEP_ITEMS]))
            else:
                d: dict[Any, Any] = {}
                _setitems(d, items)
                stack.append(d)
        elif name == "APPEND":
            v = stack.pop()
            _append(stack[-1], [v])
        elif name == "APPENDS":
            items = _pop_mark(stack)
            _append(stack[-1], items)
        elif name == "SETITEM":
            v = stack.pop()
            k = stack.pop()
            _setitems(stack[-1], [k, v])
        elif name == "SETITEMS":
            items = _pop_mark(stack)
            _setitems(stack[-1], items)
        elif name == "ADDITEMS":
            items = _pop_mark(stack)
            target = stack[-1]
            if isinstance(target, set):
                target.update(_hashable(i) for i in items[: max(0, KEEP_ITEMS - len(target))])
        elif name == "POP":
            stack.pop()
        elif name == "POP_MARK":
            _pop_mark(stack)
        elif name == "DUP":
            stack.append(stack[-1])
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[int(arg)] = stack[-1]
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo.get(int(arg), Opaque("<?>")))
        elif name == "GLOBAL":
            module, _, qual = str(arg).partition(" ")
            stack.append(_Global(module, qual))
        elif name == "STACK_GLOBAL":
            qual = stack.pop()
            module = stack.pop()
            stack.append(_Global(str(module), str(qual)))
        elif name == "REDUCE":
            args = stack.pop()
            stack.append(_call(stack.pop(), args))
        elif name == "NEWOBJ":
            stack.pop()  # the arguments
            stack.append(_made_by(stack.pop()))
        elif name == "NEWOBJ_EX":
            del stack[-2:]  # args, kwargs
            stack.append(_made_by(stack.pop()))
        elif name == "BUILD":
            stack.pop()  # the state: never applied
        elif name == "INST":
            _pop_mark(stack)
            module, _, qual = str(arg).partition(" ")
            stack.append(Opaque(f"<object {_global_name(module, qual)}>"))
        elif name == "OBJ":
            items = _pop_mark(stack)
            stack.append(_made_by(items[0] if items else Opaque("<?>")))
        elif name == "BINPERSID":
            stack.append(_blob(stack.pop()))
        elif name == "PERSID":
            stack.append(_blob(arg))
        elif name in ("EXT1", "EXT2", "EXT4"):
            stack.append(Opaque("<extension object>"))
        elif name in ("NEXT_BUFFER", "READONLY_BUFFER"):
            if name == "NEXT_BUFFER":
                stack.append(Opaque("<out-of-band buffer>"))
        else:  # an opcode this walker does not know: say so rather than guess
            return Opaque(f"<unreadable pickle: opcode {name}>")
    return stack[-1] if stack else None


def _pop_mark(stack: list[Any]) -> list[Any]:
    for i in range(len(stack) - 1, -1, -1):
        if stack[i] is _MARK:
            items = stack[i + 1 :]
            del stack[i:]
            return items
    raise ValueError("pickle MARK missing")


def _hashable(v: Any) -> Any:
    try:
        hash(v)
    except TypeError:
        return Opaque(safe_repr(v))
    return v


def _clip(arg: Any) -> Any:
    """A long string or bytes argument cut to its head and tail (all a repr shows of it)."""
    if isinstance(arg, str) and len(arg) > 2 * KEEP_CHARS + 1:
        return arg[:KEEP_CHARS] + arg[-KEEP_CHARS:]
    if isinstance(arg, (bytes, bytearray)) and len(arg) > 2 * KEEP_CHARS + 1:
        return bytes(arg[:KEEP_CHARS]) + bytes(arg[-KEEP_CHARS:])
    return arg


def _append(target: Any, items: list[Any]) -> None:
    if isinstance(target, list):
        target.extend(items[: max(0, KEEP_ITEMS - len(target))])


def _setitems(target: Any, items: list[Any]) -> None:
    if isinstance(target, dict):
        for i in range(0, len(items) - 1, 2):
            if len(target) >= KEEP_ITEMS:
                return
            target[_hashable(items[i])] = items[i + 1]


def _call(fn: Any, args: Any) -> Any:
    """``REDUCE``: a plain value's constructor (``_PLAIN_CALLS``) with plain arguments is
    rebuilt; anything else is a placeholder naming what would have been called."""
    make = _PLAIN_CALLS.get((fn.module, fn.name)) if isinstance(fn, _Global) else None
    if make in (bytes, bytearray) and not (args and isinstance(args, tuple) and isinstance(args[0], (str, bytes))):
        make = None  # bytes(10**12) would allocate what a pickle asks: only copies are rebuilt
    if make is not None and isinstance(args, tuple) and not any(isinstance(a, Opaque) for a in args):
        if make in (list, tuple, set, frozenset, dict) and args:
            args = (_head(args[0]), *args[1:])  # list(s) of a long s: only what a repr shows
        try:
            return make(*args)
        except Exception:
            pass
    return _made_by(fn)


def _head(iterable: Any) -> Any:
    """The first ``KEEP_ITEMS`` items of ``iterable`` (a dict's first pairs)."""
    if isinstance(iterable, dict):
        return dict(itertools.islice(iterable.items(), KEEP_ITEMS))
    try:
        return list(itertools.islice(iter(iterable), KEEP_ITEMS))
    except TypeError:
        return iterable


def _made_by(fn: Any) -> Opaque:
    text = fn.text if isinstance(fn, Opaque) else repr(fn)
    inner = text[1:-1] if text.startswith("<") and text.endswith(">") else text
    return Opaque(f"<object {inner}>")


def _blob(pid: Any) -> Opaque:
    digest = pid[1] if isinstance(pid, tuple) and len(pid) > 1 else pid
    return Opaque(f"<blob {str(digest)[:8]}>") if isinstance(digest, str) else Opaque("<blob>")


def _value_of(data: bytes) -> Any:
    """A tagged value payload (``M``/``T``/``P``/``D``/``Q``/``R``) rebuilt safely."""
    tag = data[:1]
    if tag == b"M":
        return _decode(data[1:])
    if tag == b"T":
        cls, _body = msgspec.msgpack.decode(data[1:], type=tuple[str, msgspec.Raw])
        return Opaque(f"<object {cls.replace(':', '.')}>")
    if tag in (b"P", b"D", b"Q", b"R"):
        return walk_pickle(data[1:])
    if tag == b"S":
        return _value_of(data[1 + MAC_SIZE :])
    return Opaque(f"<payload of format {tag!r}>")


def value_repr(payload: bytes | None) -> str | None:
    """A short repr of a result's value, without unpickling it (None when it has none)."""
    if payload is None:
        return None
    try:
        return safe_repr(_value_of(bytes(payload)))
    except Exception as exc:
        return f"<unreadable value: {type(exc).__name__}>"


def _call_parts(data: bytes) -> tuple[Any, Any]:
    tag = data[:1]
    if tag == b"S":
        return _call_parts(data[1 + MAC_SIZE :])
    if tag in (b"C", b"F"):
        _fn, args, kwargs = _decode(data[1:])
        return tuple(args), kwargs
    if tag == b"V":
        _shell, _values, call, args, kwargs = _decode(data[1:])
        if call is not None:
            both = _value_of(call)
            if isinstance(both, tuple) and len(both) == 2:
                return both[0], both[1]
            return both, {}
        return tuple(args), kwargs
    if tag in (b"P", b"D", b"Q", b"R"):
        call = walk_pickle(data[1:])
        if isinstance(call, tuple) and len(call) in (3, 4):
            return call[1], call[2]
        return call, {}
    raise ValueError(f"not a call payload (format tag {tag!r})")


def call_reprs(payload: bytes) -> tuple[str, str]:
    """Short reprs of a task payload's ``args`` and ``kwargs``, without unpickling anything."""
    try:
        args, kwargs = _call_parts(bytes(payload))
    except Exception as exc:
        why = f"<unreadable payload: {type(exc).__name__}>"
        return why, why
    return safe_repr(args), safe_repr(kwargs)


__all__ = ["LIMIT", "Opaque", "call_reprs", "safe_repr", "value_repr", "walk_pickle"]
