"""Parameter sweeps: a grid of keyword arguments -> one task per point -> a table of results.

``oq.sweep(fn, grid, name="exp1")`` runs ``fn(**point)`` for every point of ``grid`` and returns
a :class:`Sweep` at once (an :class:`AsyncSweep` from ``AsyncOmniQ``). Usable without Jupyter;
in a notebook the sweep displays as a live progress widget.

Grids
    * a dict of iterables: the cartesian product in key order, the last key varying fastest:
      ``{"lr": [0.1, 0.01], "seed": range(3)}`` -> 6 points. A value that is a ``str``,
      ``bytes``, a mapping or not iterable is one fixed value (``{"model": "resnet"}``).
    * :func:`zipped` axes advance together instead of multiplying:
      ``zipped(lr=[0.1, 0.01], momentum=[0.9, 0.99])`` -> 2 points. Use one as the whole grid,
      or as a value in a dict grid (its key is only a label):
      ``{"opt": zipped(lr=[...], momentum=[...]), "seed": range(3)}``.
    * a list of dicts: the points as given.
    * :func:`parse_sweep_spec` turns the cell magic's ``"lr=[1e-3, 1e-2]; seed=range(3)"``
      into a dict grid, safely (no ``eval``).

Keys and resuming
    Each point is stored under ``key = f"{name}/{identity[:16]}/{params[:16]}"`` (hex
    digests; see :func:`point_key`), so ``find_results(key_prefix=f"{name}/")`` lists a
    sweep's points. The identity (:func:`function_identity`) digests the function's code
    (with nested functions), defaults and closure values, and, for a function defined in
    ``__main__`` (a notebook), the ``__main__`` functions it calls. Other global *data* is not
    part of it: pass it as a parameter or closure value, or change the sweep name, when it
    changes. Starting a sweep looks up stored results with one ``find_results`` call, keeps
    points whose latest result succeeded, and submits the rest (missing, failed, cancelled,
    expired) as one batch. Points still in flight from an earlier start *in this process* are
    followed, not submitted twice.

    The key is also each point's task key (``TaskQueue.enqueue``): a point whose key a task
    still holds — pending, queued or running, say from an earlier process that died or from
    another process running the same sweep right now — is not stored again; the sweep adopts
    that task and counts it as it finishes. Only a point that was running when its worker died
    can run twice (delivered again once its lease lapses). ``submitted`` counts the tasks this
    object handed to the queue, ``adopted`` those of them that followed a task already there.

Records
    ``results()`` and ``failed()`` return one dict per point, in grid order: the parameters
    plus ``value``, ``status``, ``error`` (``"Type: message"`` or None) and ``duration``
    (seconds or None); ``failed()`` adds the remote ``traceback``. A parameter named like one
    of those four appears as ``param_<name>``.

Sync and async
    ``retry_failed()`` resubmits failed, cancelled and expired points *in place* and returns
    the same sweep, so ``sw.retry_failed().wait()`` reads well and a displayed widget keeps
    tracking. On an :class:`AsyncSweep`, ``start``, ``wait``, ``retry_failed`` and ``cancel``
    are coroutines; the reading methods (``results``, ``failed``, ``values``, ``counts``,
    ``done``, ``to_pandas``) are plain methods on both, since they do no I/O (as
    ``AsyncTaskHandle.done()``). All logic lives in ``SweepBase``; the two classes differ only
    in how they wait and call the queue.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import hashlib
import inspect
import itertools
import operator
import threading
import types
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import msgspec

from ._futures import bulk
from .errors import ConfigError, TaskError
from .models import TaskResult, TaskStatus
from .progress import QUEUED, Tracker, seed_running
from .serialization import dumps

if TYPE_CHECKING:
    import concurrent.futures as cf

    from .core import AsyncOmniQ, OmniQ

__all__ = [
    "AsyncSweep",
    "Sweep",
    "Zipped",
    "expand_grid",
    "function_identity",
    "identity_digest",
    "latest_results",
    "params_digest",
    "parse_sweep_spec",
    "point_key",
    "zipped",
]

RESULT_FIELDS = ("value", "status", "error", "duration")
_MAX_AXIS = 1_000_000  # values one spec axis may expand to (guards `range(10**12)`)
_RAISE: Any = object()
_INLINE_FOLLOW = 256  # larger batches get their future callbacks added on a helper thread
S = TypeVar("S", bound="SweepBase")


# ============================================================================================
# grids: pure functions
# ============================================================================================
class Zipped:
    """Axes that advance together: ``zipped(a=[1, 2], b=[3, 4])`` is the points
    ``{a: 1, b: 3}`` and ``{a: 2, b: 4}`` (not their product)."""

    __slots__ = ("names", "rows")

    def __init__(self, names: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> None:
        self.names = tuple(names)
        self.rows = list(rows)

    def points(self) -> list[dict[str, Any]]:
        return [dict(zip(self.names, row)) for row in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Zipped) and (self.names, self.rows) == (other.names, other.rows)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        cols = ", ".join(f"{n}={[r[i] for r in self.rows]!r}" for i, n in enumerate(self.names))
        return f"zipped({cols})"


def zipped(**axes: Iterable[Any]) -> Zipped:
    """Axes of equal length that advance together (see :class:`Zipped`)."""
    if not axes:
        raise ConfigError("zipped() needs at least one axis, e.g. zipped(lr=[0.1, 0.01], momentum=[0.9, 0.99])")
    cols = {}
    for name, values in axes.items():
        if isinstance(values, (str, bytes, bytearray, Mapping)) or not isinstance(values, Iterable):
            raise ConfigError(f"zipped axis {name}={values!r} is not valid: expected a list of values")
        cols[name] = _ordered(values)
    lengths = {n: len(v) for n, v in cols.items()}
    if len(set(lengths.values())) != 1:
        raise ConfigError(f"zipped axes have different lengths {lengths}: zipped axes must be equally long")
    if not next(iter(lengths.values())):
        raise ConfigError(f"zipped axes {', '.join(cols)} are empty: every axis needs at least one value")
    return Zipped(list(cols), list(zip(*cols.values())))


def _ordered(values: Iterable[Any]) -> list[Any]:
    if isinstance(values, (set, frozenset)):  # iteration order of a set varies between processes
        try:
            return sorted(values)
        except TypeError:
            return sorted(values, key=repr)
    return list(values)


def _axis(name: Any, values: Any) -> list[Any]:
    if not isinstance(name, str):
        raise ConfigError(f"grid key {name!r} is not valid: parameter names must be strings")
    if isinstance(values, (str, bytes, bytearray, Mapping)) or not isinstance(values, Iterable):
        return [values]
    out = _ordered(values)
    if not out:
        raise ConfigError(f"grid[{name!r}] is empty: every axis needs at least one value")
    return out


def expand_grid(grid: Any) -> list[dict[str, Any]]:
    """The points of a grid (dict of axes, :class:`Zipped`, or list of dicts), in grid order."""
    if isinstance(grid, Zipped):
        return grid.points()
    if isinstance(grid, Mapping):
        if not grid:
            raise ConfigError("grid={} is empty: expected a dict of axes such as {'lr': [0.1, 0.01]}")
        names: list[str] = []
        columns: list[list[tuple[Any, ...]]] = []
        simple = True
        for key, spec in grid.items():
            if isinstance(spec, Zipped):
                names.extend(spec.names)
                columns.append(spec.rows)
                simple = False
            else:
                names.append(key)
                columns.append(_axis(key, spec))
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"grid names parameter(s) {', '.join(dup)} more than once: each may appear once")
        if simple:
            return [dict(zip(names, combo)) for combo in itertools.product(*columns)]
        rows = [c if isinstance(spec, Zipped) else [(v,) for v in c] for c, spec in zip(columns, grid.values())]
        chain = itertools.chain.from_iterable
        return [dict(zip(names, chain(combo))) for combo in itertools.product(*rows)]
    if isinstance(grid, (str, bytes)) or not isinstance(grid, Iterable):
        raise ConfigError(
            f"grid={grid!r} is not valid: expected a dict of axes, a list of dicts, or zipped(...)"
            + ("; for a spec string use parse_sweep_spec()" if isinstance(grid, str) else "")
        )
    points = []
    for i, p in enumerate(grid):
        if not isinstance(p, Mapping):
            raise ConfigError(f"grid[{i}]={p!r} is not valid: a list grid holds dicts of parameters")
        bad = [k for k in p if not isinstance(k, str)]
        if bad:
            raise ConfigError(f"grid[{i}] key {bad[0]!r} is not valid: parameter names must be strings")
        points.append(dict(p))
    if not points:
        raise ConfigError("grid is empty: a sweep needs at least one point")
    return points


# ============================================================================================
# parse_sweep_spec: the cell magic's --sweep "lr=[1e-3, 1e-2]; seed=range(3)"
# ============================================================================================
_SPEC_HELP = (
    "expected 'name=values' parts such as \"lr=[1e-3, 1e-2]; seed=range(3)\" using literals, "
    "range(...), zip(...), + - * / // % ** and names from the namespace when one is given"
)
_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_MAX_INT_BITS = 100_000
_MAX_SPEC = 20_000


class _SpecError(Exception):
    """Internal: what is wrong with one node; turned into a ConfigError naming the part."""


def _strip_quotes(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1].strip()
    return text


def parse_sweep_spec(spec: str, namespace: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Parse ``"lr=[1e-3, 1e-2]; seed=range(3)"`` into a grid dict, without ``eval``.

    Parts are separated by ``;`` (or newlines, or commas). Right-hand sides may use literals,
    ``range``, ``zip`` and arithmetic; other names only from ``namespace``, when given. One
    level of surrounding quotes is stripped (IPython's ``magic_arguments`` keeps them). A
    single value is a fixed parameter (``lr=0.1`` -> ``[0.1]``); ``a, b = zip(xs, ys)`` gives a
    :class:`Zipped` entry under the key ``"a,b"``. Bad specs raise ``ConfigError`` naming the
    part that is wrong.
    """
    if not isinstance(spec, str):
        raise ConfigError(f"sweep spec {spec!r} is not valid: expected a string, {_SPEC_HELP}")
    text = _strip_quotes(spec)
    if not text:
        raise ConfigError(f"sweep spec {spec!r} is empty: {_SPEC_HELP}")
    if len(text) > _MAX_SPEC:
        raise ConfigError(f"sweep spec is {len(text)} characters long: at most {_MAX_SPEC} are allowed")
    pairs = _spec_assignments(text)
    out: dict[str, Any] = {}
    seen: set[str] = set()
    evaluator = _SafeEval(namespace)
    for targets, node, part in pairs:
        for t in targets:
            if t in seen:
                raise ConfigError(f"sweep spec part {part!r} is not valid: {t} is given more than once")
            seen.add(t)
        try:
            value = evaluator.eval(node)
            out[",".join(targets)] = _spec_axis(targets, value)
        except _SpecError as exc:
            raise ConfigError(f"sweep spec part {part!r} is not valid: {exc}; {_SPEC_HELP}") from None
        except (TypeError, ValueError, ArithmeticError, RecursionError, MemoryError) as exc:
            raise ConfigError(
                f"sweep spec part {part!r} is not valid: {type(exc).__name__}: {exc}"
            ) from None
    return out


def _spec_assignments(text: str) -> list[tuple[tuple[str, ...], ast.expr, str]]:
    """``(target names, value node, source of the part)`` per assignment."""
    try:
        stmts: list[ast.stmt] = list(_parse(text, "exec").body)  # type: ignore[attr-defined]
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        # "a=[1], b=2": comma-separated, parsed as the keywords of a call
        try:
            call = _parse(f"_({text}\n)", "eval").body  # type: ignore[attr-defined]
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            call = None
        if (
            isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "_"
            and not call.args and call.keywords and all(k.arg for k in call.keywords)
        ):
            return [((str(k.arg),), k.value, _segment(text, k, offset=-2)) for k in call.keywords]
        raise ConfigError(_syntax_message(text, exc)) from None
    out = []
    for st in stmts:
        part = _segment(text, st)
        if not isinstance(st, ast.Assign) or len(st.targets) != 1:
            raise ConfigError(f"sweep spec part {part!r} is not valid: not a single 'name=values' assignment; {_SPEC_HELP}")
        target = st.targets[0]
        if isinstance(target, ast.Name):
            names: tuple[str, ...] = (target.id,)
        elif isinstance(target, ast.Tuple) and target.elts and all(isinstance(e, ast.Name) for e in target.elts):
            names = tuple(e.id for e in target.elts)  # type: ignore[attr-defined]
        else:
            raise ConfigError(f"sweep spec part {part!r} is not valid: the left side must be a name or 'a, b'; {_SPEC_HELP}")
        out.append((names, st.value, part))
    if not out:
        raise ConfigError(f"sweep spec {text!r} has no assignments: {_SPEC_HELP}")
    return out


def _parse(text: str, mode: str) -> ast.AST:
    """``ast.parse`` without its warnings (e.g. "invalid decimal literal" for ``1a``): a spec
    that is wrong gets a ConfigError, not a warning plus one."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return ast.parse(text, "<sweep spec>", mode)


def _segment(text: str, node: ast.AST, offset: int = 0) -> str:
    """Source of a node (single- or multi-line), for error messages."""
    lines = text.splitlines() or [text]
    try:
        if node.lineno == node.end_lineno:  # type: ignore[attr-defined]
            line = lines[node.lineno - 1]  # type: ignore[attr-defined]
            start = max(0, node.col_offset + (offset if node.lineno == 1 else 0))  # type: ignore[attr-defined]
            end = node.end_col_offset + (offset if node.lineno == 1 else 0)  # type: ignore[attr-defined]
            return line[start:end]
    except (AttributeError, IndexError, TypeError):
        pass
    return ast.get_source_segment(text, node) or text


def _syntax_message(text: str, exc: BaseException) -> str:
    if not isinstance(exc, SyntaxError) or exc.offset is None or exc.lineno is None:
        return f"sweep spec {text!r} is not valid: {exc}; {_SPEC_HELP}"
    # name the ';'-separated part holding the error
    lines = text.splitlines() or [text]
    line = lines[min(exc.lineno, len(lines)) - 1]
    col = exc.offset - 1
    start = line.rfind(";", 0, max(col, 0)) + 1
    end = line.find(";", max(col, 0))
    part = line[start: end if end >= 0 else len(line)].strip() or line.strip()
    return f"sweep spec part {part!r} is not valid: {exc.msg}; {_SPEC_HELP}"


def _spec_axis(names: tuple[str, ...], value: Any) -> Any:
    if len(names) == 1:  # like a dict grid's value: an iterable is the axis, anything else one value
        if isinstance(value, (str, bytes, bytearray, Mapping)) or not isinstance(value, Iterable):
            return [value]
        values = list(itertools.islice(value, _MAX_AXIS + 1)) if not isinstance(value, (set, frozenset)) else _ordered(value)
        if not values:
            raise _SpecError(f"{names[0]} has no values")
        if len(values) > _MAX_AXIS:
            raise _SpecError(f"{names[0]} has more than {_MAX_AXIS} values")
        return values
    if not isinstance(value, (list, tuple)) or not value:
        raise _SpecError(f"{', '.join(names)} needs a non-empty list of {len(names)}-tuples, e.g. zip(...)")
    rows = []
    for row in value:
        if not isinstance(row, (list, tuple)) or len(row) != len(names):
            raise _SpecError(f"{row!r} does not have {len(names)} values for {', '.join(names)}")
        rows.append(tuple(row))
    return Zipped(names, rows)


class _SafeEval:
    """Evaluates the few node types a spec needs; anything else is a ``_SpecError``."""

    def __init__(self, namespace: Mapping[str, Any] | None) -> None:
        self.namespace = namespace

    def eval(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            if node.value is Ellipsis:
                raise _SpecError("'...' is not a value")
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [self.eval(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.Dict):
            if any(k is None for k in node.keys):
                raise _SpecError("'**' unpacking is not allowed")
            return {self.eval(k): self.eval(v) for k, v in zip(node.keys, node.values)}  # type: ignore[arg-type]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = self.eval(node.operand)
            if not isinstance(v, (int, float, complex)) or isinstance(v, bool):
                raise _SpecError("unary + and - apply to numbers only")
            return -v if isinstance(node.op, ast.USub) else +v
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return self._binop(node)
        if isinstance(node, ast.Call):
            return self._call(node)
        if isinstance(node, ast.Name):
            if self.namespace is None:
                raise _SpecError(f"name {node.id!r} is not allowed here (no namespace was given)")
            if node.id not in self.namespace:
                raise _SpecError(f"name {node.id!r} is not defined")
            return self.namespace[node.id]
        raise _SpecError(f"{type(node).__name__} expressions are not allowed")

    def _binop(self, node: ast.BinOp) -> Any:
        left, right = self.eval(node.left), self.eval(node.right)
        op = type(node.op)
        if op is ast.Mod and isinstance(left, (str, bytes)):
            raise _SpecError("'%' formatting is not allowed")
        if (
            op is ast.Pow and isinstance(left, int) and isinstance(right, int)
            and right > 0 and max(left.bit_length(), 1) * right > _MAX_INT_BITS
        ):
            raise _SpecError("the power is too large")
        if op is ast.Mult:
            for seq, n in ((left, right), (right, left)):
                if (
                    isinstance(seq, (str, bytes, list, tuple)) and isinstance(n, int)
                    and len(seq) * max(n, 0) > _MAX_AXIS
                ):
                    raise _SpecError(f"the repetition would hold more than {_MAX_AXIS} items")
        value = _BINOPS[op](left, right)
        if isinstance(value, int) and value.bit_length() > _MAX_INT_BITS:
            raise _SpecError("the number is too large")
        return value

    def _call(self, node: ast.Call) -> Any:
        fn = node.func.id if isinstance(node.func, ast.Name) else None
        if fn not in ("range", "zip"):
            raise _SpecError("only range(...) and zip(...) may be called")
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise _SpecError(f"{fn}() takes plain positional arguments here")
        args = [self.eval(a) for a in node.args]
        if fn == "range":
            r = range(*args)
            if len(r) > _MAX_AXIS:
                raise _SpecError(f"range(...) has {len(r)} values: at most {_MAX_AXIS} are allowed")
            return list(r)
        if not all(isinstance(a, (list, tuple)) for a in args):
            raise _SpecError("zip() takes lists or tuples")
        return list(zip(*args))


# ============================================================================================
# keys: function identity and parameter digests (pure)
# ============================================================================================
def _callable_name(fn: Any) -> str:
    if isinstance(fn, partial):
        return _callable_name(fn.func)
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
    """
    h = hashlib.sha256()
    _Canon(h).value(fn)
    module = getattr(fn, "__module__", None)
    name = _callable_name(fn)
    prefix = f"{module}.{name}" if module and module not in ("__main__", "builtins") else name
    return f"{prefix}@{h.hexdigest()}"


class _Canon:
    """Feeds a canonical, type-tagged encoding of a value into a hash (cycle-safe)."""

    def __init__(self, h: Any) -> None:
        self.h = h
        self.seen: dict[int, int] = {}
        self.keep: list[Any] = []  # keeps ids in `seen` valid while we run

    def _w(self, tag: bytes, data: bytes = b"") -> None:
        self.h.update(tag + len(data).to_bytes(8, "big") + data)

    def value(self, v: Any) -> None:
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
        sub = _Canon(hashlib.sha256())
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
    anything else goes through the canonical encoder. Changing either changes every key."""
    items = sorted(params.items())
    for _, v in items:
        if type(v) not in _FAST_TYPES:
            break
    else:
        try:  # ints beyond 64 bits overflow msgpack: canonical path
            return hashlib.blake2b(b"m" + _msgpack.encode(items), digest_size=8).hexdigest()
        except OverflowError:
            pass
    c = _Canon(hashlib.sha256())
    c.value(dict(items))
    return hashlib.blake2b(b"c" + c.h.digest(), digest_size=8).hexdigest()


def identity_digest(identity: str) -> str:
    """16 hex digits of an identity string (``function_identity`` or a caller's, e.g. a cell's)."""
    return hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def point_key(name: str, identity: str, params: Mapping[str, Any]) -> str:
    """``"{name}/{identity digest}/{params digest}"``: the result key of one sweep point."""
    return f"{name}/{identity_digest(identity)}/{params_digest(params)}"


def _plain_params(point: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters as task metadata: stored records hold plain data only, so other values
    are kept as their repr."""
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


def latest_results(found: Iterable[TaskResult]) -> dict[str, TaskResult]:
    """The latest stored result per key (by finish time, then time-ordered task id)."""
    latest: dict[str, TaskResult] = {}
    for r in found:
        if r.key is None:
            continue
        prev = latest.get(r.key)
        if prev is None or (r.finished_at or 0.0, r.task_id) > (prev.finished_at or 0.0, prev.task_id):
            latest[r.key] = r
    return latest


def _record_name(param: str) -> str:
    return f"param_{param}" if param in RESULT_FIELDS else param


def _error_text(r: TaskResult | None) -> str | None:
    if r is None or r.error is None:
        return None if r is None or r.status is TaskStatus.SUCCEEDED else f"{r.status.value}"
    return str(r.error)


# Points in flight per AsyncOmniQ in this process: key -> (task id, future). Starting the same
# sweep again (re-running a notebook cell) follows them instead of submitting them twice.
_INFLIGHT: weakref.WeakKeyDictionary[Any, dict[str, tuple[str, cf.Future[TaskResult]]]] = (
    weakref.WeakKeyDictionary()
)
_INFLIGHT_LOCK = threading.Lock()
_SEEDING: set[asyncio.Task[None]] = set()  # status look-ups of adopted points in flight


def _inflight(core: Any) -> dict[str, tuple[str, cf.Future[TaskResult]]]:
    with _INFLIGHT_LOCK:
        d = _INFLIGHT.get(core)
        if d is None:
            d = _INFLIGHT[core] = {}
        return d


def _remember(core: Any, entries: Iterable[tuple[str, str, cf.Future[TaskResult]]]) -> None:
    """Record points just submitted; finished ones are pruned here rather than by a callback
    per future (a 10,000-point start pays for every callback)."""
    table = _inflight(core)
    with _INFLIGHT_LOCK:
        if len(table) > 1000:
            for key in [k for k, (_, f) in table.items() if f.done()]:
                del table[key]
        for key, tid, fut in entries:
            table[key] = (tid, fut)


# ============================================================================================
# the sweep: all logic in the base; Sweep / AsyncSweep only differ in how they wait and call
# ============================================================================================
class SweepBase:
    """State and logic shared by :class:`Sweep` and :class:`AsyncSweep` (no I/O here)."""

    def __init__(
        self,
        oq: Any,
        core: AsyncOmniQ,
        fn: Callable[..., Any],
        grid: Any,
        *,
        name: str | None,
        identity: str | None,
        options: Mapping[str, Any],
    ) -> None:
        if not callable(fn):
            raise ConfigError(f"fn={fn!r} is not valid: expected a callable")
        if name is None:
            name = _callable_name(fn)
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"name={name!r} is not valid: expected a non-empty string")
        if identity is not None and not isinstance(identity, str):
            raise ConfigError(f"identity={identity!r} is not valid: expected a string or None")
        clash = sorted(set(options) & {"key", "keys", "metadata"})
        if clash:
            raise ConfigError(f"{clash[0]}= cannot be given to a sweep: it sets each point's key and metadata")
        self._oq = oq
        self._core = core
        self._fn = fn
        self._options = dict(options)
        self.name = name
        self.identity = identity if identity is not None else function_identity(fn)
        self.points: list[dict[str, Any]] = expand_grid(grid)
        ident = identity_digest(self.identity)
        self.key_prefix = f"{name}/{ident}/"
        self.keys = [f"{self.key_prefix}{params_digest(p)}" for p in self.points]
        self.submitted = 0  # tasks submitted by this object (starts and retries)
        self._tracker = Tracker(core, label=self._label)
        self._tracker.add_slots(len(self.points))
        self._progress: Any = None  # its progress display, made by the client's display hook
        self._futures: dict[int, cf.Future[TaskResult]] = {}  # slot -> its latest task's future
        self._adopt_hook: Callable[[Mapping[str, str]], None] | None = None
        self._n_adopted = 0
        self._adopt_lock = threading.Lock()

    # --- starting --------------------------------------------------------------------------
    def _launch(self: S, found: Sequence[TaskResult]) -> S:
        """Keep points whose latest stored result succeeded, follow ones in flight here,
        submit the rest as one batch."""
        latest = latest_results(found)
        table = _inflight(self._core)
        todo: list[int] = []
        follow: list[tuple[int, str, cf.Future[TaskResult]]] = []
        reused: list[int] = []
        reused_results: list[TaskResult] = []
        for i, key in enumerate(self.keys):
            r = latest.get(key)
            if r is not None and r.status is TaskStatus.SUCCEEDED:
                reused.append(i)
                reused_results.append(r)
                continue
            running = table.get(key)
            if running is None:
                todo.append(i)
                continue
            fut = running[1]
            if not fut.done():
                follow.append((i, running[0], fut))
            elif fut.exception() is None and fut.result().status is TaskStatus.SUCCEEDED:
                reused.append(i)  # finished here after find_results looked
                reused_results.append(fut.result())
            else:
                todo.append(i)
        self._tracker.finish(reused, reused_results)
        if follow:
            slots = [i for i, _, _ in follow]
            followed_ids = [t for _, t, _ in follow]
            self._tracker.begin(slots, followed_ids, [QUEUED] * len(follow))
            self._follow(slots, [f for _, _, f in follow])
            seed_running(self._tracker, self._oq, followed_ids)
        self._submit(todo)
        return self

    def _submit(self, slots: list[int]) -> None:
        if not slots:
            return
        points, keys = self.points, self.keys
        tasks = self._core.build_tasks(
            self._fn,
            [((), points[i]) for i in slots],
            keys=[keys[i] for i in slots],
            metadata=[{"sweep": self.name, "params": _plain_params(points[i])} for i in slots],
            **self._options,
        )
        self._tracker.begin(slots, [t.id for t in tasks], [t.status.value for t in tasks])
        self._watch_adoptions()
        with self._adopt_lock:  # the loop may store the batch (and adopt) before we get here
            futures = self._core.submit_tasks(tasks)
            self._futures.update(zip(slots, futures))
        self.submitted += len(tasks)
        self._follow(slots, futures, [t.id for t in tasks])

    def _watch_adoptions(self) -> None:
        """Follow points the queue did not store because a task already held their key (see
        ``AsyncOmniQ._adopt``): their slots take that task's id, so its ``started`` events count
        it as running, and those already running are shown so. Until every point is final."""
        if self._adopt_hook is not None:
            return
        ref = weakref.ref(self)
        core = self._core

        def hook(dups: Mapping[str, str]) -> None:
            sw = ref()
            if sw is None or sw._tracker.complete:
                with contextlib.suppress(ValueError):
                    core.waiters.adopt_listeners.remove(hook)
                if sw is not None:
                    sw._adopt_hook = None
                return
            sw._adopted(dups)

        self._adopt_hook = hook
        core.waiters.adopt_listeners.append(hook)

    def _adopted(self, dups: Mapping[str, str]) -> None:
        """On the loop, as a batch is stored: the slots of duplicates follow their holders."""
        with self._adopt_lock:
            self._follow_holders(dups)

    def _follow_holders(self, dups: Mapping[str, str]) -> None:
        t = self._tracker
        slot_of = {tid: i for i in range(len(self.points)) if (tid := t.task_id(i)) is not None}
        moved = [(slot_of[new], old) for new, old in dups.items() if new in slot_of]
        if not moved:
            return
        slots = [s for s, _ in moved]
        holders = [h for _, h in moved]
        t.begin(slots, holders, [QUEUED] * len(slots))
        t.attach(slots, [self._futures[s] for s in slots])  # callbacks under the holders' ids
        core = self._core

        async def seed() -> None:  # holders already running elsewhere show as running
            with contextlib.suppress(Exception):
                states = await core._queue.statuses(holders)
                t.mark_running([h for h, st in states.items() if st is TaskStatus.RUNNING])

        job = asyncio.get_running_loop().create_task(seed())
        _SEEDING.add(job)  # (the loop keeps only weak references to its tasks)
        job.add_done_callback(_SEEDING.discard)
        self._n_adopted += len(moved)

    def _follow(
        self, slots: list[int], futures: Sequence[cf.Future[TaskResult]], new_ids: Sequence[str] = ()
    ) -> None:
        """Attach the tracker to the futures (and remember newly submitted points as in
        flight). ``add_done_callback`` takes each future's lock, ~3 us: a large batch does it
        on a helper thread, so the kernel gets control back at once; waiting works meanwhile."""

        def follow() -> None:
            with bulk():
                self._tracker.attach(slots, futures)
                if new_ids:
                    keys = self.keys
                    _remember(self._core, [(keys[i], tid, f) for i, tid, f in zip(slots, new_ids, futures)])

        if len(slots) <= _INLINE_FOLLOW:
            follow()
        else:
            threading.Thread(target=follow, name="omniq-sweep-follow", daemon=True).start()

    def _retry(self) -> None:
        self._submit(self._tracker.slots_in(_is_unsuccessful_final))

    def _unfinished_ids(self) -> list[str]:
        t = self._tracker
        return [tid for i in t.slots_in(_is_waiting) if (tid := t.task_id(i)) is not None]

    # --- reading (no I/O) ------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.points)

    @property
    def adopted(self) -> int:
        """Points whose task was not stored because a task already held their key (queued or
        running from an earlier run, or another process's run of this sweep): this sweep waits
        for those tasks instead. Known once the points are stored (``flush()``)."""
        return self._n_adopted

    def done(self) -> bool:
        """True once every point has a final result."""
        return self._tracker.complete

    def counts(self) -> dict[str, int]:
        """status -> number of points (``succeeded``, ``failed``, ``queued``, ``running``, ...)."""
        return self._tracker.counts()

    def _record(self, i: int, *, traceback: bool = False) -> dict[str, Any]:
        state, r = self._tracker.entry(i)
        rec = {_record_name(k): v for k, v in self.points[i].items()}
        ok = r is not None and r.status is TaskStatus.SUCCEEDED
        rec["value"] = r.value if ok and r is not None else None
        rec["status"] = state
        rec["error"] = _error_text(r)
        rec["duration"] = r.duration if r is not None else None
        if traceback:
            rec["traceback"] = r.error.traceback if r is not None and r.error is not None else ""
        return rec

    def results(self) -> list[dict[str, Any]]:
        """One record per point in grid order; unfinished points have status ``queued``,
        ``running`` or ``pending`` and value None."""
        return [self._record(i) for i in range(len(self.points))]

    def failed(self) -> list[dict[str, Any]]:
        """Records of points that finished without a value (failed, cancelled, expired), in
        grid order, each with the remote ``traceback`` text as well."""
        return [self._record(i, traceback=True) for i in self._tracker.slots_in(_is_unsuccessful_final)]

    def values(self, default: Any = _RAISE) -> list[Any]:
        """Values in grid order. A point without a value raises ``TaskError`` (naming how many
        and the first error) unless ``default`` is given, which stands in for it."""
        out = []
        missing: list[int] = []
        for i in range(len(self.points)):
            r = self._tracker.result(i)
            if r is not None and r.status is TaskStatus.SUCCEEDED:
                out.append(r.value)
            else:
                missing.append(i)
                out.append(default)
        if missing and default is _RAISE:
            first = missing[0]
            r = self._tracker.result(first)
            what = f"{len(missing)} of {len(self.points)} points of sweep {self.name!r} have no value"
            if r is None:
                raise TaskError(f"{what} (not finished: wait() first); first: {self._label(first)}")
            err = TaskError.from_info(r.task_id, r.error)
            raise TaskError(
                f"{what} (see .failed()); first: {self._label(first)}: {err.type}: {err.message}",
                task_id=r.task_id, type=err.type, traceback=err.traceback,
            )
        return out

    def to_pandas(self) -> Any:
        """``results()`` as a pandas DataFrame (one row per point, grid order)."""
        try:
            import pandas as pd
        except ImportError as exc:
            raise ImportError("Sweep.to_pandas() needs pandas: pip install pandas") from exc
        cols = [_record_name(k) for k in dict.fromkeys(k for p in self.points for k in p)]
        return pd.DataFrame.from_records(self.results(), columns=[*cols, *RESULT_FIELDS])

    def _label(self, slot: int) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.points[slot].items())

    # --- display ---------------------------------------------------------------------------
    @property
    def tracker(self) -> Tracker:
        """The live per-point state (what the progress widget shows)."""
        return self._tracker

    @property
    def oq(self) -> Any:
        """The ``OmniQ`` or ``AsyncOmniQ`` this sweep runs on."""
        return self._oq

    def progress(self, **options: Any) -> Any:
        """This sweep's progress display (one per sweep; a widget in a kernel, a text line
        elsewhere), made by the client's display hook (``AsyncOmniQ.display``). ``options``
        are the display's options, used when it is first made."""
        if self._progress is None:
            self._progress = self._core.display.make(self._oq, self, title=f"sweep {self.name}", **options)
        return self._progress

    def _ipython_display_(self) -> None:
        if self._core.display.active():
            self.progress()._ipython_display_()
        else:
            print(repr(self))

    def __repr__(self) -> str:
        c = self.counts()
        parts = ", ".join(f"{n} {s}" for s, n in c.items())
        return f"<{type(self).__name__} {self.name!r} {len(self.points)} points: {parts}>"


def _is_waiting(state: str) -> bool:
    return state in ("pending", "queued", "running")


def _is_unsuccessful_final(state: str) -> bool:
    return not _is_waiting(state) and state != "succeeded"


class Sweep(SweepBase):
    """A running sweep, from synchronous code. Made by ``OmniQ.sweep``; returns at once."""

    @classmethod
    def start(cls, oq: OmniQ, fn: Callable[..., Any], grid: Any, *, name: str | None = None,
              identity: str | None = None, **options: Any) -> Sweep:
        """Expand ``grid``, reuse finished points of an earlier run (one ``find_results``
        call), submit the others as one batch. ``identity`` overrides ``function_identity(fn)``
        (the cell magic passes a digest of the cell source); ``options`` are enqueue options."""
        with bulk():
            sw = cls(oq, oq.core, fn, grid, name=name, identity=identity, options=options)
            found = oq.find_results(sw.key_prefix)
            return sw._launch(found)

    def wait(self, timeout: float | None = None) -> Sweep:
        """Block until every point is final; ``TimeoutError`` past ``timeout``. Returns self."""
        if not self._tracker.wait(timeout):
            raise TimeoutError(f"sweep {self.name!r} did not finish within {timeout} s: {self.counts()}")
        return self

    def retry_failed(self) -> Sweep:
        """Submit failed, cancelled and expired points again, in place; returns self (so a
        displayed widget keeps tracking, and ``sw.retry_failed().wait()`` reads well)."""
        self._retry()
        return self

    def cancel(self) -> int:
        """Cancel every unfinished point; the number of tasks cancelled."""
        ids = self._unfinished_ids()
        return self._oq.cancel_many(ids) if ids else 0


class AsyncSweep(SweepBase):
    """A running sweep, from async code. Made by ``AsyncOmniQ.sweep``. Waiting and
    cancelling are coroutines; reading results is not (it does no I/O), as with
    ``AsyncTaskHandle.done()``."""

    @classmethod
    async def start(cls, oq: AsyncOmniQ, fn: Callable[..., Any], grid: Any, *,
                    name: str | None = None, identity: str | None = None, **options: Any) -> AsyncSweep:
        """See :meth:`Sweep.start`."""
        with bulk():
            sw = cls(oq, oq, fn, grid, name=name, identity=identity, options=options)
        found = await oq.find_results(sw.key_prefix)
        with bulk():
            return sw._launch(found)

    async def wait(self, timeout: float | None = None) -> AsyncSweep:
        """Wait until every point is final; ``TimeoutError`` past ``timeout``. Returns self."""
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()

        def wake() -> None:
            loop.call_soon_threadsafe(changed.set)

        remove = self._tracker.add_listener(wake)
        try:
            with anyio.move_on_after(timeout):
                while not self._tracker.complete:
                    await changed.wait()
                    changed.clear()
        finally:
            remove()
        if not self._tracker.complete:
            raise TimeoutError(f"sweep {self.name!r} did not finish within {timeout} s: {self.counts()}")
        return self

    async def retry_failed(self) -> AsyncSweep:
        """See :meth:`Sweep.retry_failed`."""
        self._retry()
        return self

    async def cancel(self) -> int:
        """See :meth:`Sweep.cancel`."""
        return await self._core.cancel_many(self._unfinished_ids())
