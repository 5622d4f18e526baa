"""By-value functions pickled once: the code, and what it uses that cannot change in place.

``dill.dumps(fn, recurse=True)`` costs 100-300 µs for a small notebook function, most of it
walking and pickling the same code again. Here a function's *shell* -- its code, defaults, and
the functions, classes, modules and immutable constants it reaches through its globals -- is
pickled once per function object. Globals that can change in place (a list, a dict, an array,
an object) are left out of the shell as references by name; each call pickles only their
current values, so a task still sees them as they were at submit time, and large ones become
blobs like any other value.

The shell is reused while it still describes the function: same code and defaults, and every
global baked into it still bound to the same object (an immutable value rebound is a new
object, so a notebook that sets ``SCALE = 20`` gets a new shell). Closures, and functions with
mutable defaults, are not cached: their state lives where no name can be checked.
"""

from __future__ import annotations

import io
import types
import weakref
from typing import Any

import dill

from . import _sources

PROTOCOL = 5
_IMMUTABLE_SCALARS = frozenset({int, float, complex, str, bytes, bool, type(None), range, type(Ellipsis)})
_CODE_TYPES = (types.FunctionType, types.BuiltinFunctionType, types.ModuleType, type)
_MISSING = object()


def _fixed(v: Any, depth: int = 0) -> bool:
    """True for values that cannot change without being rebound: baked into a shell. A class
    or a function travelling by value (defined in ``__main__``) is not: its attributes,
    defaults or closure can change in place, so a function reaching one is not cached."""
    t = type(v)
    if t in _IMMUTABLE_SCALARS:
        return True
    if isinstance(v, _CODE_TYPES):
        if getattr(v, "__module__", None) != "__main__":
            return True
        if not isinstance(v, types.FunctionType):
            return False
        return (v.__closure__ is None and all(_fixed(d, depth + 1) for d in (v.__defaults__ or ()))
                and not v.__kwdefaults__ and not v.__dict__)
    if (t is tuple or t is frozenset) and depth < 3 and len(v) <= 64:
        return all(_fixed(x, depth + 1) for x in v)
    return False


class Shell:
    """A function pickled without its mutable globals (``mutable`` names them)."""

    __slots__ = ("code", "data", "defaults", "fixed", "kwdefaults", "mutable")

    def __init__(self, fn: types.FunctionType, fixed: tuple[tuple[str, Any], ...], mutable: tuple[str, ...],
                 data: bytes) -> None:
        self.code = fn.__code__
        self.defaults = fn.__defaults__
        self.kwdefaults = fn.__kwdefaults__
        self.fixed = fixed
        self.mutable = mutable
        self.data = data

    def holds(self, fn: types.FunctionType) -> bool:
        if fn.__code__ is not self.code or fn.__defaults__ is not self.defaults:
            return False
        if fn.__kwdefaults__ is not self.kwdefaults:
            return False
        g = fn.__globals__
        return all(g.get(n, _MISSING) is o for n, o in self.fixed) and all(n in g for n in self.mutable)

    def values(self, fn: types.FunctionType) -> dict[str, Any]:
        g = fn.__globals__
        return {n: g[n] for n in self.mutable}


class _ShellPickler(dill.Pickler):
    def __init__(self, file: Any, refs: dict[int, str]) -> None:
        super().__init__(file, protocol=PROTOCOL, recurse=True)
        self._refs = refs

    def persistent_id(self, obj: Any) -> Any:
        name = self._refs.get(id(obj))
        return None if name is None else ("g", name)


class _ShellUnpickler(dill.Unpickler):
    def __init__(self, file: Any, values: dict[str, Any]) -> None:
        super().__init__(file)
        self._values = values

    def persistent_load(self, pid: Any) -> Any:
        if type(pid) is tuple and len(pid) == 2 and pid[0] == "g":
            return self._values[pid[1]]
        raise dill.UnpicklingError(f"corrupted function payload: unknown reference {pid!r}")


_shells: weakref.WeakKeyDictionary[types.FunctionType, Shell] = weakref.WeakKeyDictionary()


def shell_for(fn: Any) -> Shell | None:
    """The cached shell of a by-value function, made now if missing or stale; None for what
    this does not cover (closures, mutable defaults, anything not a plain function)."""
    if type(fn) is not types.FunctionType or fn.__closure__ is not None:
        return None
    shell = _shells.get(fn)
    if shell is not None and shell.holds(fn):
        return shell
    if not all(_fixed(d) for d in (fn.__defaults__ or ())):
        return None
    if fn.__kwdefaults__ and not all(_fixed(d) for d in fn.__kwdefaults__.values()):
        return None
    try:
        names = dill.detect.globalvars(fn, recurse=True, builtin=False)
    except Exception:
        return None
    g = fn.__globals__
    fixed, mutable, refs = [], [], {}
    for n, v in names.items():
        if g.get(n, _MISSING) is not v:
            return None  # a global of another module (a nested function's): not checkable here
        if _fixed(v):
            fixed.append((n, v))
        else:
            mutable.append(n)
            refs[id(v)] = n
    sources = _sources.collect(fn)
    buf = io.BytesIO()
    try:
        _ShellPickler(buf, refs).dump((fn, sources) if sources else (fn,))
    except Exception:
        return None
    shell = Shell(fn, tuple(fixed), tuple(mutable), buf.getvalue())
    _shells[fn] = shell
    return shell


def load_shell(data: bytes, values: dict[str, Any]) -> Any:
    """The function a shell holds, its mutable globals bound to ``values``."""
    loaded = _ShellUnpickler(io.BytesIO(data), values).load()
    if len(loaded) == 2:
        _sources.register(loaded[1])
    return loaded[0]
