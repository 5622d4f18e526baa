"""Find *where* an unserializable object sits, once a whole dump has failed.

dill's own error says "cannot pickle '_thread.lock' object" without saying which argument,
which key or which notebook global held it. We walk containers, object attributes, closure
cells and the globals a function uses, probing each part alone, and report the deepest part
that still fails: ``cannot serialize argument args[1]['conn']: socket.socket object``.
This costs a dump per visited part, but only runs on the failure path.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Iterator
from typing import Any

import dill

_MAX_DEPTH = 30
_MAX_CHILDREN = 1000  # per container; a culprit further in is reported at the container


def probe(obj: Any) -> Exception | None:
    """The error dill raises for ``obj`` alone, or None if it pickles."""
    try:
        dill.dumps(obj, protocol=5, recurse=True)
    except Exception as exc:
        return exc
    return None


def type_name(obj: Any) -> str:
    t = type(obj)
    if t.__module__ == "builtins":
        return t.__qualname__
    return f"{t.__module__}.{t.__qualname__}"


def describe_failure(obj: Any, where: str, exc: Exception) -> str:
    """A message naming the innermost part of ``obj`` that cannot be serialized.

    ``where`` names ``obj`` itself ("argument args", "function f", "value"); ``exc`` is the
    error the whole dump raised.
    """
    try:
        where, leaf, leaf_exc = _walk(obj, where, exc, 0, set())
    except Exception:  # the diagnosis must never hide the original error
        leaf, leaf_exc = obj, exc
    reason = str(leaf_exc) or type(leaf_exc).__name__
    if " uses global " in where or " captures " in where:
        return f"{where} ({type_name(leaf)}) which cannot be serialized ({reason})"
    return f"cannot serialize {where}: {type_name(leaf)} object ({reason})"


def _walk(
    obj: Any, where: str, exc: Exception, depth: int, seen: set[int]
) -> tuple[str, Any, Exception]:
    if depth >= _MAX_DEPTH or id(obj) in seen:
        return where, obj, exc
    seen.add(id(obj))
    for label, child in _children(obj, where):
        child_exc = probe(child)
        if child_exc is not None:
            return _walk(child, label, child_exc, depth + 1, seen)
    return where, obj, exc


def _children(obj: Any, where: str) -> Iterator[tuple[str, Any]]:
    """(description, part) pairs for the parts of ``obj`` a pickler would visit."""
    if isinstance(obj, (list, tuple)):
        for i, x in enumerate(obj[:_MAX_CHILDREN]):
            yield f"{where}[{i}]", x
    elif isinstance(obj, dict):
        for n, (k, v) in enumerate(obj.items()):
            if n >= _MAX_CHILDREN:
                break
            yield f"{where} key {k!r}", k
            yield f"{where}[{k!r}]", v
    elif isinstance(obj, (set, frozenset)):
        for n, x in enumerate(obj):
            if n >= _MAX_CHILDREN:
                break
            yield f"{where} element {x!r:.60}", x
    elif isinstance(obj, types.FunctionType):
        yield from _function_parts(obj, where)
    elif isinstance(obj, types.MethodType):
        yield f"{where}.__self__", obj.__self__
        yield f"{where}.__func__", obj.__func__
    elif isinstance(obj, functools.partial):
        yield f"{where}.func", obj.func
        yield f"{where}.args", obj.args
        yield f"{where}.keywords", obj.keywords
    elif isinstance(obj, type):
        for k, v in list(vars(obj).items())[:_MAX_CHILDREN]:
            if not (k.startswith("__") and k.endswith("__")):
                yield f"{where} (class {obj.__qualname__}) attribute {k!r}", v
    else:
        state = getattr(obj, "__dict__", None)
        if isinstance(state, dict):
            for k, v in list(state.items())[:_MAX_CHILDREN]:
                yield f"{where}.{k}", v
        for k in _slot_names(type(obj)):
            if hasattr(obj, k):
                yield f"{where}.{k}", getattr(obj, k)
        if type(obj).__module__ == "__main__":
            yield f"{where} (its class {type(obj).__qualname__})", type(obj)


def _function_parts(fn: types.FunctionType, where: str) -> Iterator[tuple[str, Any]]:
    own = f"function {fn.__qualname__}"
    subject = where if where.endswith(own) else f"{where} ({own})"
    code = fn.__code__
    for name, cell in zip(code.co_freevars, fn.__closure__ or (), strict=False):
        try:
            value = cell.cell_contents
        except ValueError:  # empty cell
            continue
        yield f"{subject} captures {name!r}", value
    g = fn.__globals__
    for name in global_names(code):
        if name in g:
            yield f"{subject} uses global {name!r}", g[name]
    params = code.co_varnames[: code.co_argcount]
    for name, value in zip(
        params[len(params) - len(fn.__defaults__ or ()) :], fn.__defaults__ or (), strict=False
    ):
        yield f"{subject} default of {name!r}", value
    for name, value in (fn.__kwdefaults__ or {}).items():
        yield f"{subject} default of {name!r}", value


def global_names(code: types.CodeType) -> list[str]:
    """Names a code object (and the code nested in it) may read as globals."""
    names = dict.fromkeys(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names.update(dict.fromkeys(global_names(const)))
    return list(names)


def _slot_names(cls: type) -> list[str]:
    names: list[str] = []
    for klass in cls.__mro__:
        slots = vars(klass).get("__slots__", ())
        if isinstance(slots, str):
            slots = (slots,)
        names.extend(s for s in slots if s not in ("__dict__", "__weakref__"))
    return names
