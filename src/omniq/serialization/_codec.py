"""Tagged payloads: the first byte says how the rest was written.

=====  ==========================================================================
 tag   body
=====  ==========================================================================
``M``  msgpack of plain data that round-trips exactly (readable from any language)
``T``  msgpack ``[ "module:QualName", struct ]`` for an importable msgspec Struct
``P``  a pickle written by the stdlib pickler (built-in / stdlib types only)
``D``  a pickle written by dill (``recurse=True``): functions, closures, __main__ classes.
       A call is ``(fn, args, kwargs)``, plus a fourth element with the source lines of
       notebook-defined functions when there are any (see ``_sources``)
``C``  msgpack ``[fn_pickle, args, kwargs]``: a call to an importable function with plain
       arguments; ``fn_pickle`` is a by-reference pickle, cached per function object
``Q``  as ``P``, with large values stored apart as blobs (persistent ids: see ``_blobs``)
``R``  as ``D``, with large values stored apart as blobs
``F``  msgpack ``[fn_pickle, args, kwargs]`` of a by-value function pickled once for a batch
       (dill, its large globals as blobs)
``V``  msgpack ``[shell, values, call, args, kwargs]``: a by-value function's cached shell
       (see ``_functions``); ``values``: None or a ``P``/``Q`` payload of its mutable globals;
       ``call``: None (plain ``args``/``kwargs`` inline) or a ``P``/``Q`` payload of them
``S``  signed: ``S + HMAC-SHA256(inner) + inner``, where ``inner`` is one of the above
=====  ==========================================================================

``P`` and ``D`` are the same pickle stream format; they differ in who reads them back, because
``dill.loads`` costs ten times ``pickle.loads`` on a small value.
"""

from __future__ import annotations

import importlib
import pickle
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import dill
import msgspec

from ..errors import SerializationError, SignatureError
from . import _signing, _sources
from ._blobs import (
    THRESHOLD,
    BlobSink,
    Fetch,
    fetching,
    pickle_refs,
    unpickle_refs,
    use_value_codec,
)
from ._classify import DILL, EXACT, EXACT_SCALARS, INT_MAX, INT_MIN, PICKLE, classify, classify_call
from ._diagnose import describe_failure, probe
from ._functions import Shell, load_shell, shell_for

TAG_MSGPACK = b"M"
TAG_STRUCT = b"T"
TAG_PICKLE = b"P"
TAG_DILL = b"D"
TAG_CALL = b"C"
TAG_SIGNED = b"S"
TAG_SHARED = b"F"  # a call whose by-value function is pickled once for a whole batch
TAG_PICKLE_REFS = b"Q"
TAG_DILL_REFS = b"R"
TAG_SHELL = b"V"
_M, _T, _P, _D, _C, _S, _F, _Q, _R, _V = (
    t[0] for t in (TAG_MSGPACK, TAG_STRUCT, TAG_PICKLE, TAG_DILL, TAG_CALL, TAG_SIGNED, TAG_SHARED,
                   TAG_PICKLE_REFS, TAG_DILL_REFS, TAG_SHELL)
)
_FORMAT_NAMES = {
    _M: "msgpack", _T: "struct", _P: "pickle", _D: "dill", _C: "call", _S: "signed", _F: "shared call",
    _Q: "pickle with blobs", _R: "dill with blobs", _V: "function shell call",
}

PROTOCOL = 5
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()
_struct_head = msgspec.msgpack.Decoder(tuple[str, msgspec.Raw])
_NONE = TAG_MSGPACK + _encoder.encode(None)

Call = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]


# --------------------------------------------------------------------------------- dumping


def dumps(obj: Any, *, blobs: BlobSink | None = None) -> bytes:
    """Serialize a value (a task result, say): msgpack when exact, else pickle or dill. With a
    ``blobs`` sink, large values inside go there and the payload refers to them by digest.
    Signed with the result-role key (see ``_signing``): a value never verifies as a call.

    Args:
        obj: The value.
        blobs: Where large values (numpy arrays, DataFrames, long bytes; over
            ``BLOB_THRESHOLD`` bytes) go instead of the payload; None keeps them inline.

    Returns:
        The payload: a one-byte format tag (``TAG_MSGPACK`` ``b"M"``, ``TAG_PICKLE``,
        ``TAG_DILL`` ``b"D"``, ...; ``TAG_SIGNED`` ``b"S"`` around it when signing is on), then
        the bytes.

    Raises:
        SerializationError: The value cannot be pickled (an open file, a lock, a generator,
            ...); the message names what inside it could not be.

    Examples:
        >>> from omniq.serialization import dumps, loads
        >>> p = dumps({"loss": [0.5, 0.25]})
        >>> p[:1], loads(p)
        (b'M', {'loss': [0.5, 0.25]})
        >>> p = dumps(lambda x: x + 1)            # code travels by value, with dill
        >>> p[:1], loads(p)(1)
        (b'D', 2)
    """
    key = _signing.value_keys()[0]
    if obj is None:
        payload = _NONE
    elif _exact_scalar(obj) and (blobs is None or not _large_scalar(obj)):
        try:
            payload = TAG_MSGPACK + _encoder.encode(obj)
        except Exception:  # a str with lone surrogates is not valid UTF-8
            payload = _dump_value(obj)
    elif blobs is not None:
        payload = _dump_value_refs(obj, blobs)
    else:
        payload = _dump_value(obj)
    return payload if key is None else _signing.sign(payload, key, TAG_SIGNED)


def _large_scalar(obj: Any) -> bool:
    return type(obj) in (str, bytes) and len(obj) >= THRESHOLD


def _dump_value_refs(obj: Any, sink: BlobSink) -> bytes:
    """A value with its large parts in ``sink``; the plain format when it has none."""
    before = len(sink.data)
    level = classify(obj) if not isinstance(obj, msgspec.Struct) else DILL
    if level == EXACT:
        try:
            data = TAG_MSGPACK + _encoder.encode(obj)
            if len(data) < THRESHOLD:
                return data
        except Exception:
            pass
        level = PICKLE
    if level == PICKLE:
        try:
            body = pickle_refs(obj, sink, use_dill=False)
            return (TAG_PICKLE if len(sink.data) == before else TAG_PICKLE_REFS) + body
        except Exception:
            pass
    try:
        body = pickle_refs(obj, sink, use_dill=True)
    except Exception as exc:
        raise SerializationError(describe_failure(obj, "value", exc)) from exc
    return (TAG_DILL if len(sink.data) == before else TAG_DILL_REFS) + body


def dump_value(obj: Any) -> bytes:
    """An unsigned tagged payload of ``obj`` (a big container kept apart as a blob)."""
    return _dump_value(obj)


def _dump_value(obj: Any) -> bytes:
    if isinstance(obj, msgspec.Struct):
        payload = _dump_struct(obj)
        if payload is not None:
            return payload
    level = classify(obj)
    if level == EXACT:
        try:
            return TAG_MSGPACK + _encoder.encode(obj)
        except Exception:  # a str with lone surrogates is not valid UTF-8; pickle keeps it
            level = PICKLE
    if level == PICKLE:
        try:
            return TAG_PICKLE + pickle.dumps(obj, protocol=PROTOCOL)
        except Exception:  # e.g. RecursionError on a very deep value: let dill try
            pass
    return TAG_DILL + _dill_dumps(obj, "value")


def _dill_dumps(obj: Any, where: str) -> bytes:
    try:
        return dill.dumps(obj, protocol=PROTOCOL, recurse=True)
    except Exception as exc:
        raise SerializationError(describe_failure(obj, where, exc)) from exc


def _dump_struct(obj: msgspec.Struct) -> bytes | None:
    """``T`` payload if the Struct's class is importable and it decodes back equal, else None."""
    cls = type(obj)
    if _resolve(cls.__module__, cls.__qualname__) is not cls:
        return None
    try:
        body = _encoder.encode(obj)
        if _struct_decoder(cls).decode(body) != obj:  # e.g. a tuple in an Any field
            return None
    except Exception:
        return None
    return TAG_STRUCT + _encoder.encode((f"{cls.__module__}:{cls.__qualname__}", msgspec.Raw(body)))


_struct_decoders: dict[type, msgspec.msgpack.Decoder[Any]] = {}


def _struct_decoder(cls: type) -> msgspec.msgpack.Decoder[Any]:
    dec = _struct_decoders.get(cls)
    if dec is None:
        dec = _struct_decoders[cls] = msgspec.msgpack.Decoder(cls)
    return dec


def _resolve(module_name: str | None, qualname: str) -> Any:
    """``module.qualname`` if that module is already imported, else None (never imports)."""
    if not module_name or module_name == "__main__" or "<" in qualname:
        return None
    obj: Any = sys.modules.get(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    return obj


# Pickled bytes of functions that pickle by reference (importable, module-level), keyed by the
# function object. A notebook that redefines a function creates a new object, so identity is a
# safe key; on each hit we also check the name still points at this object (a module may have
# been reloaded). Closures and __main__ functions are never cached: what they capture can change.
_fn_refs: dict[Any, tuple[Any, str, bytes]] = {}
_FN_CACHE_MAX = 4096


def _function_ref(fn: Any) -> bytes | None:
    """A by-reference pickle of ``fn`` if a worker can import it by name, else None."""
    t = type(fn)
    if t is not types.FunctionType and t is not types.BuiltinFunctionType:
        return None
    entry = _fn_refs.get(fn)
    if entry is not None:
        module, name, data = entry
        if getattr(module, name, None) is fn:
            return data
    if t is types.BuiltinFunctionType and not isinstance(fn.__self__, types.ModuleType):
        return None  # a bound builtin method such as [].append
    module_name = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", "")
    if not module_name or "." in qualname or _resolve(module_name, qualname) is not fn:
        return None
    try:
        data = pickle.dumps(fn, protocol=PROTOCOL)
    except Exception:
        return None
    if len(_fn_refs) >= _FN_CACHE_MAX:
        _fn_refs.clear()
    _fn_refs[fn] = (sys.modules[module_name], qualname, data)
    return data


def dumps_call(
    fn: Callable[..., Any],
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    blobs: BlobSink | None = None,
) -> bytes:
    """Serialize a task: the function with its arguments, ready for another process.

    An importable function with plain arguments costs a msgpack encode (its pickle is cached).
    Anything else is pickled by dill in one piece, so a ``__main__`` class used by both the
    function and an argument stays one class after loading. With a ``blobs`` sink, large values
    (in arguments, or globals a by-value function reads) go there, referred to by digest.

    Args:
        fn: The function (or any callable).
        args: Its positional arguments; a tuple.
        kwargs: Its keyword arguments; a dict, or None for none.
        blobs: Where large values go instead of the payload; None keeps them inline.

    Returns:
        The payload, read back by :func:`loads_call`.

    Raises:
        SerializationError: ``fn`` is not callable, ``args`` / ``kwargs`` have the wrong type,
            or something in the call cannot be pickled; the message names it (an argument, a
            global the function reads, ...).

    Examples:
        >>> from omniq.serialization import dumps_call, loads_call
        >>> loads_call(dumps_call(pow, (2, 10)))
        (<built-in function pow>, (2, 10), {})
        >>> dumps_call(print, ((x for x in range(3)),))
        Traceback (most recent call last):
        ...
        omniq.errors.SerializationError: cannot serialize argument args[0]: generator object (cannot pickle 'generator' object)
    """
    if not callable(fn):
        raise SerializationError(
            f"cannot serialize call: {type(fn).__name__} object is not callable"
        )
    if type(args) is not tuple:
        if not isinstance(args, (tuple, list)):
            raise SerializationError(f"args must be a tuple, not {type(args).__name__}")
        args = tuple(args)
    if kwargs is None:
        kwargs = {}
    elif type(kwargs) is not dict:
        if not isinstance(kwargs, dict):
            raise SerializationError(f"kwargs must be a dict, not {type(kwargs).__name__}")
        kwargs = dict(kwargs)
    for name in kwargs:
        if type(name) is not str:
            raise SerializationError(
                f"kwargs keys must be str, not {type(name).__name__} ({name!r})"
            )
    key = _signing.get_secret_keys()[0]
    payload = _dump_call(fn, args, kwargs, blobs)
    return payload if key is None else _signing.sign(payload, key, TAG_SIGNED)


def _exact_scalar(obj: Any) -> bool:
    t = type(obj)
    return t in EXACT_SCALARS or (t is int and INT_MIN <= obj <= INT_MAX)


def dumps_calls(
    fn: Callable[..., Any],
    calls: Sequence[tuple[Sequence[Any], Mapping[str, Any]]],
    *,
    blobs: BlobSink | None = None,
) -> list[bytes]:
    """Payloads for many calls of one function (``map``, sweeps): a function that must travel by
    value (a closure, a notebook function) is pickled once, not once per call; each payload then
    costs a msgpack encode of its plain arguments. Calls with non-plain arguments fall back to
    :func:`dumps_call`, which keeps a ``__main__`` class shared by function and argument whole.

    Args:
        fn: The function every call runs.
        calls: ``(args, kwargs)`` per call.
        blobs: Where large values go; with a sink, ``blobs.per_call`` holds each payload's
            digests.

    Returns:
        One payload per call, in order, each read back by :func:`loads_call`.

    Raises:
        SerializationError: As :func:`dumps_call`, naming the call.

    Examples:
        >>> from omniq.serialization import dumps_calls, loads_call
        >>> payloads = dumps_calls(pow, [((2, 3), {}), ((2, 4), {})])
        >>> [loads_call(p)[1] for p in payloads]
        [(2, 3), (2, 4)]
    """
    if len(calls) < 2:
        out1 = [dumps_call(fn, tuple(a), dict(k), blobs=blobs) for a, k in calls]
        if blobs is not None:
            blobs.per_call.append(blobs.take())
        return out1
    if not callable(fn):
        raise SerializationError(f"cannot serialize call: {type(fn).__name__} object is not callable")
    fn_ref = _function_ref(fn)
    fn_shell = shell_for(fn) if fn_ref is None else None
    if fn_shell is not None:  # by value, pickled once per function object: values once per batch
        values = _dump_values(fn_shell, fn, blobs)
        if values is not False and values is not True:
            return _shell_calls(fn_shell, fn, values, calls, blobs)
    if fn_ref is not None:  # importable: each payload names it (TAG_CALL), as dumps_call would
        tag, fn_bytes = TAG_CALL, fn_ref
    else:
        sources = _sources.collect(fn)
        shell = (fn, sources) if sources else (fn,)
        try:
            if blobs is not None:
                fn_bytes = pickle_refs(shell, blobs, use_dill=True)
            else:
                fn_bytes = dill.dumps(shell, protocol=PROTOCOL, recurse=True)
        except Exception as exc:
            raise SerializationError(_describe_call(fn, (), {}, exc)) from exc
        tag = TAG_SHARED
    fn_digests = blobs.take() if blobs is not None else ()
    key = _signing.get_secret_keys()[0]
    encode = _encoder.encode
    out = []
    for a, k in calls:
        args = a if type(a) is tuple else tuple(a)
        kwargs = k if type(k) is dict else dict(k)
        payload = None
        if kwargs or len(args) != 1 or not _exact_scalar(args[0]):  # map's one plain item: no walk
            exact = classify_call(args, kwargs) == EXACT
        else:
            exact = True
        if exact:
            try:
                payload = tag + encode((fn_bytes, args, kwargs))
                if blobs is not None and len(payload) - len(fn_bytes) >= THRESHOLD:
                    payload = None  # a large argument: stored apart, by dumps_call
            except Exception:  # lone surrogates in a str: let pickle carry it
                payload = None
        if payload is None:
            out.append(dumps_call(fn, args, kwargs, blobs=blobs))
            if blobs is not None:
                blobs.per_call.append(blobs.take())
        else:
            out.append(payload if key is None else _signing.sign(payload, key, TAG_SIGNED))
            if blobs is not None:
                blobs.per_call.append(fn_digests)
    return out


def _shell_calls(
    shell: Shell, fn: Any, values: bytes | None, calls: Sequence[tuple[Sequence[Any], Mapping[str, Any]]],
    blobs: BlobSink | None,
) -> list[bytes]:
    """``V`` payloads for a batch of calls sharing one shell and one snapshot of its values."""
    shared = blobs.take() if blobs is not None else ()
    key = _signing.get_secret_keys()[0]
    out = []
    for a, k in calls:
        args = a if type(a) is tuple else tuple(a)
        kwargs = k if type(k) is dict else dict(k)
        payload = _dump_shell_call(shell, fn, args, kwargs, blobs, values)
        if payload is None:  # a __main__ object among the arguments: dill, in one piece
            payload = _dump_call(fn, args, kwargs, blobs)
        if blobs is not None:
            blobs.per_call.append(tuple(dict.fromkeys(shared + blobs.take())))
        out.append(payload if key is None else _signing.sign(payload, key, TAG_SIGNED))
    return out


# Functions loaded from shared-call payloads, by their pickled bytes: a batch of 10,000 calls
# loads its function once per worker process.
_shared_fns: dict[bytes, Any] = {}


def _load_shared(data: bytes) -> Call:
    try:
        fn_bytes, args, kwargs = _decoder.decode(data[1:])
        fn = _shared_fns.get(fn_bytes)
        if fn is None:
            loaded = unpickle_refs(fn_bytes, use_dill=True)
            if len(loaded) == 2:
                _sources.register(loaded[1])
            fn = loaded[0]
            if len(_shared_fns) >= 256:
                _shared_fns.clear()
            _shared_fns[fn_bytes] = fn
    except Exception as exc:
        raise _load_error(_F, data, exc) from exc
    if not (callable(fn) and type(args) is list and type(kwargs) is dict):
        raise SerializationError("corrupted call payload: it does not hold (function, args, kwargs)")
    return fn, tuple(args), kwargs


def _dump_call(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], blobs: BlobSink | None = None
) -> bytes:
    fn_ref = _function_ref(fn)
    if fn_ref is not None:
        level = classify_call(args, kwargs)
        if level == EXACT:
            try:
                data = TAG_CALL + _encoder.encode((fn_ref, args, kwargs))
                if blobs is None or len(data) < THRESHOLD:
                    return data
            except Exception:  # lone surrogates in a str: let pickle carry it
                pass
            level = PICKLE
        if level == PICKLE:
            try:
                if blobs is None:
                    return TAG_PICKLE + pickle.dumps((fn, args, kwargs), protocol=PROTOCOL)
                before = len(blobs.data)
                body = pickle_refs((fn, args, kwargs), blobs, use_dill=False)
                return (TAG_PICKLE if len(blobs.data) == before else TAG_PICKLE_REFS) + body
            except Exception:
                pass
    else:
        shell = shell_for(fn)
        if shell is not None:
            payload = _dump_shell_call(shell, fn, args, kwargs, blobs)
            if payload is not None:
                return payload
    # A fourth element carries the source lines of notebook-defined functions (see _sources).
    sources = _sources.collect(fn)
    call = (fn, args, kwargs, sources) if sources else (fn, args, kwargs)
    try:
        if blobs is None:
            return TAG_DILL + dill.dumps(call, protocol=PROTOCOL, recurse=True)
        before = len(blobs.data)
        body = pickle_refs(call, blobs, use_dill=True)
        return (TAG_DILL if len(blobs.data) == before else TAG_DILL_REFS) + body
    except Exception as exc:
        raise SerializationError(_describe_call(fn, args, kwargs, exc)) from exc


def _dump_shell_call(
    shell: Shell, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], blobs: BlobSink | None,
    values: bytes | bool | None = False,
) -> bytes | None:
    """A ``V`` payload, or None when the call needs dill in one piece (a ``__main__`` object
    among the values or arguments must share its class with the function). ``values``: the
    mutable globals' payload when the caller made it once for a batch (False: make it here)."""
    if values is False:
        values = _dump_values(shell, fn, blobs)
    if values is False or values is True:
        return None
    if classify_call(args, kwargs) == EXACT:
        try:
            data = TAG_SHELL + _encoder.encode((shell.data, values, None, args, kwargs))
            if blobs is None or len(data) - len(shell.data) - len(values or b"") < THRESHOLD:
                return data
        except Exception:  # lone surrogates in a str: let pickle carry it
            pass
    call = _dump_plain((args, kwargs), blobs)
    if call is None:
        return None
    return TAG_SHELL + _encoder.encode((shell.data, values, call, (), {}))


def _dump_values(shell: Shell, fn: Any, blobs: BlobSink | None) -> bytes | bool | None:
    """The payload of a shell's mutable globals as they are now: None when it has none, False
    when they need dill (a ``__main__`` object: it must be pickled with the function)."""
    values = shell.values(fn)
    if not values:
        return None
    return _dump_plain(values, blobs) or False


def _dump_plain(obj: Any, blobs: BlobSink | None) -> bytes | None:
    """A ``P`` / ``Q`` payload of ``obj``, or None if it needs dill."""
    if classify(obj) > PICKLE:
        return None
    try:
        if blobs is None:
            return TAG_PICKLE + pickle.dumps(obj, protocol=PROTOCOL)
        before = len(blobs.data)
        body = pickle_refs(obj, blobs, use_dill=False)
        return (TAG_PICKLE if len(blobs.data) == before else TAG_PICKLE_REFS) + body
    except Exception:
        return None


# Functions loaded from shells with no mutable globals, by their bytes: nothing of theirs can
# change, so a worker loads each once (one with mutable globals is loaded per call, with its
# values as they were at submit).
_shell_fns: dict[bytes, Any] = {}


def _load_shell_call(data: bytes) -> Call:
    try:
        shell, values, call, args, kwargs = _decoder.decode(data[1:])
        if call is not None:
            args, kwargs = _load(call)
        if values is None:
            fn = _shell_fns.get(shell)
            if fn is None:
                fn = load_shell(shell, {})
                if len(_shell_fns) >= 256:
                    _shell_fns.clear()
                _shell_fns[shell] = fn
        else:
            fn = load_shell(shell, _load(values))
    except SerializationError:
        raise
    except Exception as exc:
        raise _load_error(_V, data, exc) from exc
    if not (callable(fn) and type(args) in (list, tuple) and type(kwargs) is dict):
        raise SerializationError("corrupted call payload: it does not hold (function, args, kwargs)")
    return fn, tuple(args), kwargs


def _describe_call(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], exc: Exception) -> str:
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    for part, where in (
        (fn, f"function {name}"),
        (args, "argument args"),
        (kwargs, "argument kwargs"),
    ):
        part_exc = probe(part)
        if part_exc is not None:
            return describe_failure(part, where, part_exc)
    return f"cannot serialize call to {name}: {type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------------- loading


def loads(data: bytes, *, blobs: Fetch | None = None) -> Any:
    """Load a payload written by :func:`dumps` (read :func:`dumps_call` payloads with
    :func:`loads_call`). With a secret key configured the signature is checked first; nothing
    unsigned is opened.

    Args:
        data: The payload.
        blobs: Fetches the large values it refers to: ``digest -> bytes`` (or a buffer).
            Needed only when the payload refers to blobs.

    Returns:
        The value.

    Raises:
        SignatureError: Signing is on and the payload is unsigned or its signature matches no
            accepted key, or it is signed and no key is set here; it is not loaded.
        SerializationError: The payload is corrupted, or its value needs a module or class
            this process cannot import (the message names it).

    Examples:
        >>> from omniq.serialization import BlobSink, dumps, loads
        >>> sink = BlobSink()
        >>> p = dumps({"big": bytes(2 << 20)}, blobs=sink)
        >>> len(p) < 200, len(sink.digests())
        (True, 1)
        >>> loads(p, blobs=lambda digest: sink.data[digest])["big"] == bytes(2 << 20)
        True
    """
    if data == _NONE and not _signing.value_keys()[1]:
        return None
    with fetching(blobs):
        return _load(_unwrap(data, value=True))


def load_value(data: bytes) -> Any:
    """Load an unsigned tagged payload written by :func:`dump_value`."""
    return _load(data)


def loads_call(data: bytes, *, blobs: Fetch | None = None) -> Call:
    """Load a payload written by :func:`dumps_call` (or :func:`dumps_calls`).

    Args:
        data: The payload.
        blobs: Fetches the large values it refers to: ``digest -> bytes``.

    Returns:
        ``(fn, args, kwargs)``.

    Raises:
        SignatureError: As :func:`loads`; the call is not loaded.
        SerializationError: The payload is corrupted or does not hold a call, or its function
            lives in a module this process cannot import.

    Examples:
        >>> from omniq.serialization import dumps_call, loads_call
        >>> fn, args, kwargs = loads_call(dumps_call(divmod, (7, 2)))
        >>> fn(*args, **kwargs)
        (3, 1)
    """
    with fetching(blobs):
        return _loads_call(data)


def _loads_call(data: bytes) -> Call:
    inner = _unwrap(data)
    if inner[0] == _C:
        return _load_call(inner)
    if inner[0] == _F:
        return _load_shared(inner)
    if inner[0] == _V:
        return _load_shell_call(inner)
    value = _load(inner)
    if (
        type(value) is tuple
        and len(value) in (3, 4)
        and callable(value[0])
        and type(value[1]) is tuple
        and type(value[2]) is dict
    ):
        if len(value) == 4:
            _sources.register(value[3])
        return value[0], value[1], value[2]
    raise SerializationError(
        f"payload is not a call: it holds a {type(value).__name__}, not (function, args, kwargs)"
    )


def _unwrap(data: bytes, value: bool = False) -> bytes:
    """Check type, emptiness and signature; return the inner (unsigned) payload. ``value``:
    the result-role keys are accepted too (``loads``); a call (``loads_call``) needs the key."""
    if type(data) is not bytes:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise SerializationError(f"payload must be bytes, not {type(data).__name__}")
        data = bytes(data)
    accepted = _signing.get_secret_keys()[1]
    if accepted and value:
        accepted = _signing.value_keys()[1]
    elif not accepted and data and _signing.child_result_key() is not None:
        return _unwrap_in_child(data)
    if not data:
        error = SignatureError if accepted else SerializationError
        raise error("empty payload: nothing to load")
    tag = data[0]
    if accepted:
        if tag != _S:
            raise SignatureError(
                f"payload is not signed but {_signing.SIGNING_ENV} is set; it was not loaded"
            )
        data = _signing.verify(data, accepted)
    elif tag == _S:
        raise SignatureError(
            f"payload is signed but no {_signing.SIGNING_ENV} is set here to verify it; "
            "it was not loaded"
        )
    if data[0] == _S:
        raise SerializationError("corrupted payload: a signed payload nested in another")
    return data


def _unwrap_in_child(data: bytes) -> bytes:
    """In a process worker's child (no key; its parent checks each task's signature and sends
    the inner payload marked ``TAG_VERIFIED``, see ``_signing.for_child``): while that task
    runs (``_signing.trusting``), its payloads open, signed ones nested in it (a chunk's
    function) without a check the child has no key for; anything else is refused."""
    tag = data[:1]
    if tag == _signing.TAG_REFUSED:
        raise SignatureError(data[1:].decode(errors="replace"))
    if not _signing.trusted():
        if tag == TAG_SIGNED:
            raise SignatureError("a signed payload reached a worker's child unchecked; not loaded")
        raise SignatureError(
            f"payload is not signed but {_signing.SIGNING_ENV} is set; it was not loaded"
        )
    if tag == TAG_SIGNED:
        if len(data) < 1 + _signing.MAC_SIZE + 1:
            raise SignatureError("signed payload is truncated (shorter than its signature)")
        data = data[1 + _signing.MAC_SIZE :]
        if data[:1] == TAG_SIGNED:
            raise SerializationError("corrupted payload: a signed payload nested in another")
    return data


def _load(data: bytes) -> Any:
    tag = data[0]
    try:
        if tag == _M:
            return _decoder.decode(_body(data))
        if tag == _P:
            return pickle.loads(_body(data))
        if tag == _D:
            return dill.loads(data[1:])
        if tag == _Q:
            return unpickle_refs(_body(data), use_dill=False)
        if tag == _R:
            return unpickle_refs(_body(data), use_dill=True)
        if tag == _T:
            return _load_struct(data)
        if tag == _C:
            return _load_call(data)
    except SerializationError:
        raise
    except Exception as exc:
        raise _load_error(tag, data, exc) from exc
    raise SerializationError(
        f"unknown payload format tag {data[:1]!r}: not an OmniQ payload, or corrupted "
        f"(known tags: {', '.join(repr(bytes([t])) for t in _FORMAT_NAMES)})"
    )


def _body(data: bytes) -> bytes | memoryview:
    """The bytes after the tag; a view for large payloads (no copy), a slice for small ones."""
    return data[1:] if len(data) < 4096 else memoryview(data)[1:]


def _load_struct(data: bytes) -> Any:
    name, raw = _struct_head.decode(data[1:])
    module_name, _, qualname = name.partition(":")
    try:
        cls: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            cls = getattr(cls, part)
    except Exception as exc:
        raise SerializationError(
            f"cannot load struct payload: cannot import {name!r} ({exc})"
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, msgspec.Struct)):
        raise SerializationError(f"corrupted struct payload: {name!r} is not a msgspec Struct")
    return _struct_decoder(cls).decode(raw)


def _load_call(data: bytes) -> Call:
    try:
        fn_ref, args, kwargs = _decoder.decode(data[1:])
        fn = pickle.loads(fn_ref)
    except Exception as exc:
        raise _load_error(_C, data, exc) from exc
    if not (callable(fn) and type(args) is list and type(kwargs) is dict):
        raise SerializationError(
            "corrupted call payload: it does not hold (function, args, kwargs)"
        )
    return fn, tuple(args), kwargs


def _load_error(tag: int, data: bytes, exc: Exception) -> SerializationError:
    fmt = _FORMAT_NAMES.get(tag, "unknown")
    if isinstance(exc, (ImportError, AttributeError)):
        hint = "it refers to a module or name this process cannot import"
    else:
        hint = "it is corrupted, truncated, or written by an incompatible version"
    return SerializationError(
        f"cannot load {fmt} payload ({len(data)} bytes): {hint} ({type(exc).__name__}: {exc})"
    )


use_value_codec(dump_value, load_value)
