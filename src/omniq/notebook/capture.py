"""The kernel side of ``%%omniq submit``: which notebook globals a cell reads, and shipping them.

The cell is analysed with :mod:`ast` / :mod:`symtable` for the names it reads before (or
without) assigning them; each one found in the notebook namespace is shipped (modules by name, to
be imported on the worker; everything else by dill, in one piece so a notebook class and its
instances stay one class). A value that cannot be shipped is reported by variable name *before*
anything is submitted. What comes back (the runner's envelope) is unwrapped here too, its
``__main__`` classes made the kernel's own again. Pure functions: no kernel needed.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import hashlib
import io
import socket
import symtable
import sys
import threading
import types
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import dill
from IPython.core.error import UsageError

from ..serialization._diagnose import describe_failure, probe
from .cells import STDERR_MARK, STDOUT_MARK


class _ModuleLoads(ast.NodeVisitor):
    """Names a cell reads at top level before assigning them, visited in execution order
    (``x = x + 1`` reads ``x`` first). Function, class and comprehension bodies are left to
    :mod:`symtable`; only what runs at definition time (defaults, decorators, bases, the first
    iterable of a comprehension) is visited here."""

    def __init__(self) -> None:
        self.needed: dict[str, None] = {}
        self.bound: set[str] = set()

    def _load(self, name: str) -> None:
        if name not in self.bound:
            self.needed.setdefault(name, None)

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self._load(node.id)
        elif isinstance(node.ctx, ast.Store):
            self.bound.add(node.id)

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        for t in node.targets:
            self.visit(t)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        if isinstance(node.target, ast.Name):
            self._load(node.target.id)
        self.visit(node.value)
        self.visit(node.target)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)
        self.visit(node.annotation)
        self.visit(node.target)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        self.visit(node.target)

    def _for(self, node: ast.For | ast.AsyncFor) -> None:
        self.visit(node.iter)
        self.visit(node.target)
        for stmt in (*node.body, *node.orelse):
            self.visit(stmt)

    visit_For = visit_AsyncFor = _for

    def _definition_time(self, args: ast.arguments | None, extra: Iterable[ast.AST]) -> None:
        for n in extra:
            self.visit(n)
        if args is not None:
            for d in (*args.defaults, *(k for k in args.kw_defaults if k is not None)):
                self.visit(d)
            for a in (*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg):
                if a is not None and a.annotation is not None:
                    self.visit(a.annotation)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        extra = [*node.decorator_list, *([node.returns] if node.returns else [])]
        self._definition_time(node.args, extra)
        self.bound.add(node.name)

    visit_FunctionDef = visit_AsyncFunctionDef = _function

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._definition_time(node.args, ())

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._definition_time(None, [*node.decorator_list, *node.bases, *(k.value for k in node.keywords)])
        self.bound.add(node.name)

    def _comprehension(self, node: ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp) -> None:
        self.visit(node.generators[0].iter)

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _comprehension

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            self.bound.add(a.asname or a.name.split(".")[0])

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for a in node.names:
            if a.name != "*":
                self.bound.add(a.asname or a.name)

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.type is not None:
            self.visit(node.type)
        if node.name:
            self.bound.add(node.name)
        for stmt in node.body:
            self.visit(stmt)

    def visit_MatchAs(self, node: ast.MatchAs) -> None:
        if node.pattern is not None:
            self.visit(node.pattern)
        if node.name:
            self.bound.add(node.name)

    def visit_MatchStar(self, node: ast.MatchStar) -> None:
        if node.name:
            self.bound.add(node.name)

    def visit_MatchMapping(self, node: ast.MatchMapping) -> None:
        self.generic_visit(node)
        if node.rest:
            self.bound.add(node.rest)


def _late_globals(table: symtable.SymbolTable, out: dict[str, None], assigned: set[str]) -> None:
    """Globals read inside function / class / comprehension bodies (when they run, the cell's
    top level has usually finished), and globals those bodies assign (``global x``)."""
    for child in table.get_children():
        for sym in child.get_symbols():
            if sym.is_global() and sym.is_referenced():
                out.setdefault(sym.get_name(), None)
            if sym.is_declared_global() and sym.is_assigned():
                assigned.add(sym.get_name())
        _late_globals(child, out, assigned)


def cell_globals(source: str) -> list[str]:
    """Names ``source`` reads from its global namespace without assigning them first, in order
    of first use. Builtins are not filtered here: the caller knows the namespace."""
    tree = ast.parse(source)
    top = _ModuleLoads()
    for stmt in tree.body:
        top.visit(stmt)
    table = symtable.symtable(source, "<cell>", "exec")
    late: dict[str, None] = {}
    assigned = set(top.bound)
    assigned.update(s.get_name() for s in table.get_symbols() if s.is_assigned() or s.is_imported())
    _late_globals(table, late, assigned)
    names = dict(top.needed)
    names.update((n, None) for n in late if n not in assigned)
    return list(names)


def cell_identity(source: str, outs: Sequence[str] = ()) -> str:
    """The identity of a ``%%omniq submit`` cell for sweep keys: a digest of its source (and of
    ``--out``, which shapes what each point returns), so re-running the same cell resumes."""
    h = hashlib.sha256(source.strip().encode())
    if outs:
        h.update(b"\0out:" + ",".join(outs).encode())
    return f"cell:{h.hexdigest()[:16]}"


def ship_globals(
    names: Iterable[str], namespace: Mapping[str, Any], *, skip: Iterable[str] = ()
) -> tuple[dict[str, Any], list[str]]:
    """The notebook values ``names`` refer to, to ship with a cell: ``(shipped, names)``.

    Modules travel as their import name; builtins (unless shadowed), names missing from the
    namespace (a remote ``NameError`` will say so, as it would locally) and ``skip`` stay behind.
    The values are serialized with the task (large ones stored once, as blobs); a handle on
    something local to this kernel raises ``UsageError`` naming its variable."""
    skipped = set(skip)
    values: dict[str, Any] = {}
    imports: dict[str, str] = {}
    for name in names:
        if name in skipped or name not in namespace or (name.startswith("__") and name.endswith("__")):
            continue
        value = namespace[name]
        if value is getattr(builtins, name, object()):
            continue
        if isinstance(value, types.ModuleType) and value.__name__ != "__main__":
            imports[name] = value.__name__
        else:
            values[name] = value
    for name, value in values.items():
        local = _process_local(value)
        if local is not None:
            what = (f"a {_type_name(value)}" if local is value
                    else f"a {_type_name(value)} holding a {_type_name(local)}")
            raise UsageError(
                f"%%omniq submit: the cell uses the notebook variable {name!r}, {what}: {_LOCAL_WHY} "
                f"Create it inside the cell instead (or pass what it points to, e.g. a path or "
                f"URL). Nothing was submitted."
            )
    return {"values": values, "imports": imports}, [*imports, *values]


_LOCAL_WHY = "a handle on something that exists only in this kernel, which a worker process cannot share."


def _local_types() -> tuple[type, ...]:
    import _thread
    import asyncio
    import subprocess

    return (
        _thread.LockType, _thread.RLock, threading.Thread, socket.socket, io.IOBase,
        subprocess.Popen, asyncio.AbstractEventLoop, types.GeneratorType, types.CoroutineType,
    )


_IN_MEMORY_IO = ("StringIO", "BytesIO")


class _Found(Exception):
    def __init__(self, obj: Any) -> None:
        self.obj = obj


def _process_local(value: Any) -> Any:
    """The first process-local handle (lock, socket, open file, thread, ...) inside ``value``,
    or None. dill would happily pickle a lock or a file handle, and the worker would get a new,
    unrelated one; a notebook user should hear about it instead. Plain data is skipped cheaply;
    anything else is walked by a dill pickler writing to nowhere."""
    from ..serialization._classify import DILL, classify

    if classify(value) != DILL:
        return None
    kinds = _local_types()

    class _Probe(dill.Pickler):
        def persistent_id(self, obj: Any) -> None:
            if isinstance(obj, kinds) and type(obj).__name__ not in _IN_MEMORY_IO:
                raise _Found(obj)
            return None

    try:
        _Probe(_Sink(), protocol=5, recurse=True).dump(value)
    except _Found as found:
        return found.obj
    except Exception:  # not picklable at all: the dump that follows names the culprit
        return None
    return None


class _Sink:
    def write(self, data: Any) -> int:
        return len(data)


def _type_name(obj: Any) -> str:
    t = type(obj)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def unshippable_message(values: Mapping[str, Any], exc: Exception) -> str:
    for name, value in values.items():
        err = probe(value)
        if err is not None:
            detail = describe_failure(value, f"variable {name!r}", err)
            return (
                f"%%omniq submit: the cell uses the notebook variable {name!r} "
                f"({_type_name(value)}), which cannot be sent to "
                f"a worker process: {detail}. Create it inside the cell instead "
                f"(or pass what it holds, e.g. a path or URL). Nothing was submitted."
            )
    return f"%%omniq submit: the cell's globals cannot be sent to a worker: {exc}. Nothing was submitted."


def split_remote_output(traceback_text: str) -> tuple[str, str, str]:
    """``(traceback, stdout, stderr)`` from a failed cell's traceback text, where the runner
    attached what the cell printed as exception notes."""
    stdout = stderr = ""
    tb = traceback_text
    if STDERR_MARK in tb:
        tb, _, stderr = tb.partition(STDERR_MARK + "\n")
    if STDOUT_MARK in tb:
        tb, _, stdout = tb.partition(STDOUT_MARK + "\n")
    return _cell_frames(tb).rstrip() + "\n", stdout, stderr


def _cell_frames(tb: str) -> str:
    """Drop the worker's own frames from a traceback: a user wants the cell's lines, as
    IPython shows them for a local cell."""
    lines = tb.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.lstrip().startswith('File "<omniq cell '):
            head = [ln for ln in lines[:i] if ln.startswith("Traceback")][-1:]
            return "".join(head + lines[i:])
    return tb


def syntax_error_text(exc: SyntaxError, name: str) -> str:
    """A cell's syntax error in a few lines: where, what, the line and a caret. Nothing was sent."""
    where = f"line {exc.lineno}" if exc.lineno else "the cell"
    lines = [f"%%omniq submit -n {name}: SyntaxError at {where} of the cell: {exc.msg}. Nothing was submitted."]
    if exc.text and exc.text.strip():
        text = exc.text.rstrip("\n")
        lines.append("    " + text)
        if exc.offset:
            lines.append("    " + " " * (max(exc.offset, 1) - 1) + "^")
    return "\n".join(lines)


def envelope(value: Any) -> dict[str, Any] | None:
    """The runner's return value (``value``, ``outs``, ``stdout``, ``stderr``), with its
    ``value`` and ``outs`` made of the kernel's own ``__main__`` classes; or None."""
    if isinstance(value, dict) and {"value", "outs", "stdout", "stderr"} <= value.keys():
        if not value.get("_kernel_classes"):
            value["value"] = _kernel_classes(value["value"])
            value["outs"] = _kernel_classes(value["outs"])
            value["_kernel_classes"] = True
        return value
    return None


_SCALARS = (str, bytes, bytearray, int, float, complex, bool, type(None))


def _kernel_classes(value: Any, main_ns: Mapping[str, Any] | None = None) -> Any:
    """``value`` with instances of copied ``__main__`` classes turned into instances of the
    kernel's own classes of the same qualified name (and such classes into the kernel's).

    A class defined in a notebook travels to a worker by value (dill), so what comes back is an
    instance of a copy: ``isinstance(model, Model)`` and a dataclass's ``==`` would be False.
    Instances are re-classed in place; lists, dicts, tuples and sets are walked."""
    if main_ns is None:
        main_ns = getattr(sys.modules.get("__main__"), "__dict__", {})
    if not main_ns:
        return value
    memo: dict[int, Any] = {}

    def kernel_class(cls: type) -> type:
        if getattr(cls, "__module__", None) != "__main__":
            return cls
        mine: Any = main_ns
        for part in cls.__qualname__.split("."):
            mine = mine.get(part) if isinstance(mine, Mapping) else getattr(mine, part, None)
            if mine is None:
                return cls
        return mine if isinstance(mine, type) and mine.__name__ == cls.__name__ else cls

    def walk(v: Any, depth: int) -> Any:
        if isinstance(v, _SCALARS) or depth > 100:
            return v
        if id(v) in memo:
            return memo[id(v)]
        t = type(v)
        if isinstance(v, type):
            return kernel_class(v)
        if t is list:
            memo[id(v)] = v
            v[:] = [walk(x, depth + 1) for x in v]
            return v
        if t is dict:
            memo[id(v)] = v
            for k, x in list(v.items()):
                v[k] = walk(x, depth + 1)
            return v
        if t in (tuple, set, frozenset):
            memo[id(v)] = out = t(walk(x, depth + 1) for x in v)
            return out
        if t.__module__ != "__main__":
            return v  # arrays, frames, library objects: left as they are
        memo[id(v)] = v
        mine = kernel_class(t)
        if mine is not t:
            with contextlib.suppress(TypeError):  # a class changed since (other slots): keep the copy
                object.__setattr__(v, "__class__", mine)
        d = getattr(v, "__dict__", None)
        if isinstance(d, dict):
            for k, x in list(d.items()):
                d[k] = walk(x, depth + 1)
        return v

    return walk(value, 0)
