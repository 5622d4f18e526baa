"""Point identity: what makes two sweeps "the same function" (``function_identity``), and
the digests that name a point's parameters and its result key (``point_key``). Pure functions."""

from __future__ import annotations

import hashlib
import inspect
import operator
import types
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import msgspec

from ..serialization import dumps


# ============================================================================================
# keys: function identity and parameter digests (pure)
# ============================================================================================
def short_name(fn: Any) -> str:
    """A callable's qualified name, looking through ``functools.partial``.

    Args:
        fn: A function, a partial, or any callable object.

    Returns:
        Its ``__qualname__`` (or ``__name__``, or its type's qualified name).

    Examples:
        >>> from functools import partial
        >>> from omniq.sweep.identity import short_name
        >>> short_name(partial(short_name, 1)), short_name(len)
        ('short_name', 'len')
    """
    if isinstance(fn, partial):
        return short_name(fn.func)
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__qualname__
    return str(name)


def function_identity(fn: Callable[..., Any]) -> str:
    """``"module.qualname@<sha256 hex>"``: what makes two sweeps "the same function".

    The digest covers the code object (bytecode, constants, names, nested functions' code;
    not line numbers or file names, so moving a function or re-running its notebook cell
    keeps it), defaults, keyword defaults and closure cell values; values are digested by
    canonical bytes (dicts and sets order-free) or, for other objects, their serialized
    bytes. For a function defined in ``__main__`` the ``__main__`` functions it refers to by
    global name are included too. Bytecode differs between Python versions, so an upgrade
    reruns a sweep.

    Args:
        fn: The sweep's function (a ``functools.partial`` counts its arguments too).

    Returns:
        ``"module.qualname@<64 hex digits>"`` (just ``qualname@...`` for ``__main__``).

    Examples:
        >>> from omniq.sweep import function_identity
        >>> def train(lr, seed=0):
        ...     return lr * seed
        >>> ident = function_identity(train)
        >>> name, _, digest = ident.partition("@")
        >>> name.endswith("train"), len(digest)
        (True, 64)
        >>> def train(lr, seed=1):            # another default: another function
        ...     return lr * seed
        >>> function_identity(train) == ident
        False
    """
    h = hashlib.sha256()
    Canon(h).value(fn)
    module = getattr(fn, "__module__", None)
    name = short_name(fn)
    prefix = f"{module}.{name}" if module and module not in ("__main__", "builtins") else name
    return f"{prefix}@{h.hexdigest()}"


class Canon:
    """Feeds a canonical, type-tagged encoding of a value into a hash (cycle-safe).

    Dicts and sets are encoded independently of their order; functions by their code,
    defaults and closure values; other objects by their serialized bytes.

    Args:
        h: A ``hashlib`` hash object; :meth:`value` updates it.

    Examples:
        >>> import hashlib
        >>> from omniq.sweep import Canon
        >>> def digest(v):
        ...     c = Canon(hashlib.sha256())
        ...     c.value(v)
        ...     return c.h.hexdigest()
        >>> digest({"a": 1, "b": 2}) == digest({"b": 2, "a": 1})
        True
        >>> digest([1, 2]) == digest((1, 2))
        False
    """

    def __init__(self, h: Any) -> None:
        self.h = h
        self.seen: dict[int, int] = {}
        self.keep: list[Any] = []  # keeps ids in `seen` valid while we run

    def _w(self, tag: bytes, data: bytes = b"") -> None:
        self.h.update(tag + len(data).to_bytes(8, "big") + data)

    def value(self, v: Any) -> None:
        """Feed one value (recursively) into the hash.

        Args:
            v: Any value; a value already being fed (a cycle) is fed as a back-reference.
        """
        t = type(v)
        if v is None or t is bool:
            self._w(b"N" if v is None else (b"T" if v else b"F"))
        elif t is int:
            self._w(b"i", v.to_bytes((v.bit_length() + 8) // 8, "big", signed=True))
        elif t is float or t is complex:
            self._w(b"f", repr(v).encode())
        elif t is str:
            self._w(b"s", v.encode("utf-8", "surrogatepass"))
        elif t is bytes or t is bytearray:
            self._w(b"b", bytes(v))
        elif self._cycle(v):
            return
        elif t is tuple or t is list:
            self._w(b"l" if t is list else b"t", len(v).to_bytes(8, "big"))
            for x in v:
                self.value(x)
        elif t is dict:
            self._w(b"d", len(v).to_bytes(8, "big"))
            for kb, x in sorted(((self._sub(k), x) for k, x in v.items()), key=operator.itemgetter(0)):
                self.h.update(kb)
                self.value(x)
        elif t is set or t is frozenset:
            self._w(b"e", b"".join(sorted(self._sub(x) for x in v)))
        elif t is types.FunctionType:
            self._function(v)
        elif t is types.CodeType:
            self._code(v)
        elif t is types.MethodType:
            self._w(b"M")
            self.value(v.__func__)
            self.value(v.__self__)
        elif t is partial:
            self._w(b"P")
            self.value(v.func)
            self.value(v.args)
            self.value(v.keywords)
        elif t is types.ModuleType:
            self._w(b"m", v.__name__.encode())
        elif isinstance(v, type) or t is types.BuiltinFunctionType:
            self._w(b"c", f"{getattr(v, '__module__', '')}.{getattr(v, '__qualname__', '')}".encode())
        else:
            self._object(v)

    def _cycle(self, v: Any) -> bool:
        i = self.seen.get(id(v))
        if i is not None:
            self._w(b"R", i.to_bytes(8, "big"))
            return True
        self.seen[id(v)] = len(self.seen)
        self.keep.append(v)
        return False

    def _sub(self, v: Any) -> bytes:
        """Canonical bytes of a dict key / set member (sorted to make order irrelevant)."""
        sub = Canon(hashlib.sha256())
        sub.value(v)
        return sub.h.digest()

    def _object(self, v: Any) -> None:
        t = type(v)
        self._w(b"o", f"{t.__module__}.{t.__qualname__}".encode())
        call = inspect.getattr_static(t, "__call__", None)
        if isinstance(call, types.FunctionType):  # a callable object: its code matters too
            self._function(call)
        try:
            self._w(b"p", dumps(v))
        except Exception:  # unserializable: it cannot travel to a worker either (submit says so)
            self._w(b"?")

    def _function(self, fn: types.FunctionType) -> None:
        self._w(b"F", fn.__qualname__.encode())
        self._code(fn.__code__)
        self.value(fn.__defaults__)
        self.value(fn.__kwdefaults__)
        for cell in fn.__closure__ or ():
            try:
                contents = cell.cell_contents
            except ValueError:  # an empty cell (a name assigned later)
                self._w(b"E")
            else:
                self.value(contents)
        if fn.__module__ == "__main__":
            g = fn.__globals__
            for name in sorted(_global_names(fn.__code__)):
                dep = g.get(name)
                if type(dep) is types.FunctionType and dep.__module__ == "__main__":
                    self._w(b"G", name.encode())
                    self.value(dep)

    def _code(self, co: types.CodeType) -> None:
        self._w(b"C", co.co_code)
        self.value((co.co_argcount, co.co_posonlyargcount, co.co_kwonlyargcount, co.co_flags))
        self.value((co.co_names, co.co_varnames, co.co_freevars, co.co_cellvars))
        self._w(b"x", getattr(co, "co_exceptiontable", b""))
        self.value(co.co_consts)


def _global_names(co: types.CodeType) -> set[str]:
    names = set(co.co_names)
    for c in co.co_consts:
        if isinstance(c, types.CodeType):
            names |= _global_names(c)
    return names


_FAST_TYPES = frozenset({str, float, bool, int, type(None)})
_msgpack = msgspec.msgpack.Encoder()


def params_digest(params: Mapping[str, Any]) -> str:
    """16 hex digits naming a point's parameters, stable across processes and dict order.

    Plain scalars take a msgpack fast path (a 10,000-point sweep must start in milliseconds);
    anything else goes through the canonical encoder. Changing either changes every key.

    Args:
        params: One point's keyword arguments.

    Returns:
        16 lowercase hex digits.

    Examples:
        >>> from omniq.sweep import params_digest
        >>> d = params_digest({"lr": 0.1, "seed": 0})
        >>> len(d), d == params_digest({"seed": 0, "lr": 0.1})
        (16, True)
    """
    items = sorted(params.items())
    for _, v in items:
        if type(v) not in _FAST_TYPES:
            break
    else:
        try:  # ints beyond 64 bits overflow msgpack: canonical path
            return hashlib.blake2b(b"m" + _msgpack.encode(items), digest_size=8).hexdigest()
        except OverflowError:
            pass
    c = Canon(hashlib.sha256())
    c.value(dict(items))
    return hashlib.blake2b(b"c" + c.h.digest(), digest_size=8).hexdigest()


def identity_digest(identity: str) -> str:
    """16 hex digits of an identity string (``function_identity`` or a caller's, e.g. a cell's).

    Args:
        identity: The identity string.

    Returns:
        The first 16 hex digits of its SHA-256.

    Examples:
        >>> from omniq.sweep import identity_digest
        >>> identity_digest("train@abc")
        '87aa30fab1c1334b'
    """
    return hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def point_key(name: str, identity: str, params: Mapping[str, Any]) -> str:
    """``"{name}/{identity digest}/{params digest}"``: the result key of one sweep point.

    It is also the point's task key, so a point whose task is still pending, queued or running
    is not stored twice; ``find_results(key_prefix=f"{name}/")`` lists a sweep's points.

    Args:
        name: The sweep's name.
        identity: Its function's identity (:func:`function_identity`).
        params: The point's keyword arguments.

    Returns:
        The key.

    Examples:
        >>> from omniq.sweep import identity_digest, params_digest, point_key
        >>> key = point_key("exp1", "train@abc", {"lr": 0.1})
        >>> key == f"exp1/{identity_digest('train@abc')}/{params_digest({'lr': 0.1})}"
        True
    """
    return f"{name}/{identity_digest(identity)}/{params_digest(params)}"


def plain_params(point: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters as task metadata: stored records hold plain data only, so other values
    are kept as their repr.

    Args:
        point: One point's keyword arguments.

    Returns:
        A copy in which every value msgpack cannot encode is replaced by its ``repr``.

    Examples:
        >>> from omniq.sweep.identity import plain_params
        >>> plain_params({"lr": 0.1, "kind": object})
        {'lr': 0.1, 'kind': "<class 'object'>"}
    """
    try:
        _msgpack.encode(point)
        return dict(point)
    except (TypeError, ValueError, OverflowError):
        out = {}
        for k, v in point.items():
            try:
                _msgpack.encode(v)
                out[k] = v
            except (TypeError, ValueError, OverflowError):
                out[k] = repr(v)
        return out


