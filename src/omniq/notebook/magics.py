"""``%omniq`` and ``%%omniq``: OmniQ from notebook cells (``%load_ext omniq``).

Line magic subcommands: ``init``, ``status``, ``wait``, ``cancel``, ``results``,
``schedules``, ``workers``, ``dashboard`` (the web page, ``omniq.integrations.dashboard``);
cell magic: ``%%omniq submit``, which ships the cell body to a worker with the notebook
globals it uses and returns at once.

SLURM from a cell. ``%omniq workers --slurm N`` (or ``--adapt MIN:MAX``) starts the kernel's
:class:`~omniq.hpc.SlurmWorkers` on its OmniQ's storage; a later call rescales that same pool
(a new one only when a job option changes). The pool is closed with the OmniQ (``%omniq init``
of another one, unloading the extension) and at kernel exit; a kernel killed outright cannot
cancel them, and its jobs leave after ``idle_timeout`` without tasks. ``%omniq status`` lists
the kernel's SLURM jobs beside the workers' heartbeats.

How a cell travels. The cell is analysed with :mod:`ast` / :mod:`symtable` for the names it
reads before (or without) assigning them; each one found in the notebook namespace is shipped
(modules by name, to be imported on the worker; everything else by dill, in one piece so a
notebook class and its instances stay one class). A value that cannot be shipped is reported
by variable name *before* anything is submitted. The worker runs
``omniq.notebook.cells.CellCall`` (importable, so the payload holds data only) in a fresh
namespace and sends back the last expression's value, the ``--out`` variables and the cell's
stdout/stderr.

When outputs land. ``--out`` variables are written into the notebook namespace only between
cells (IPython's ``pre_run_cell`` / ``post_run_cell`` events) or by ``%omniq wait``: never by a
background thread while a cell runs, which would change a user's variables under their code.

Why no ``nest_asyncio``. Every blocking call goes through the ``OmniQ`` facade, which runs
the async core on its own event loop in its own thread (an anyio blocking portal). The
kernel's running loop is never re-entered, so there is nothing to patch: patching it would only
make unrelated libraries' re-entrancy bugs possible.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import hashlib
import html
import keyword
import os
import re
import symtable
import sys
import threading
import time
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import dill
from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import (
    ArgDecorator,
    argument,
    magic_arguments,
    parse_argstring,
)
from IPython.utils.process import arg_split

from .._futures import bulk
from ..core import OmniQ, TaskHandle
from ..errors import ConfigError, OmniQError, SerializationError, StorageError
from ..hpc import JobSystemError, SlurmWorkers, parse_walltime
from ..hpc import pools as slurm_pools
from ..models import TaskResult, TaskStatus
from ..serialization._diagnose import describe_failure, probe
from ..sweep import Sweep
from .cells import STDERR_MARK, STDOUT_MARK, CellCall, compile_cell

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

__all__ = ["CellHandle", "OmniQMagics", "cell_globals", "cell_identity", "default_instance"]

F = TypeVar("F", bound=Callable[..., Any])
_NO_DEFAULT: Any = object()
_RECORD_FIELDS = ("value", "status", "error", "duration", "traceback")


# --------------------------------------------------------------------------------------------
# what a cell needs: pure functions, no IPython
# --------------------------------------------------------------------------------------------
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
    import io
    import socket
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


def _unshippable(values: Mapping[str, Any], exc: Exception) -> str:
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


def _syntax_error_text(exc: SyntaxError, name: str) -> str:
    """A cell's syntax error in a few lines: where, what, the line and a caret. Nothing was sent."""
    where = f"line {exc.lineno}" if exc.lineno else "the cell"
    lines = [f"%%omniq submit -n {name}: SyntaxError at {where} of the cell: {exc.msg}. Nothing was submitted."]
    if exc.text and exc.text.strip():
        text = exc.text.rstrip("\n")
        lines.append("    " + text)
        if exc.offset:
            lines.append("    " + " " * (max(exc.offset, 1) - 1) + "^")
    return "\n".join(lines)


def _envelope(value: Any) -> dict[str, Any] | None:
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


def default_instance() -> OmniQ:
    """The instance used until ``%omniq init``: SQLite under the notebook's working directory
    (``.omniq/omniq.db``), process workers, one per core. ``OMNIQ_*`` variables still win."""
    env = os.environ
    return OmniQ(
        worker=None if {"OMNIQ_DEFAULT_WORKER", "OMNIQ_WORKER"} & env.keys() else "process",
        concurrency=None if "OMNIQ_CONCURRENCY" in env else (os.cpu_count() or 1),
    )


# --------------------------------------------------------------------------------------------
# handles
# --------------------------------------------------------------------------------------------
class CellHandle(TaskHandle):
    """A ``%%omniq submit`` cell running on a worker: a ``TaskHandle`` whose ``result()`` is the
    cell's last expression (the runner's envelope is unwrapped) and ``outputs()`` the ``--out``
    variables."""

    __slots__ = ("name", "outs", "source")

    def __init__(self, oq: OmniQ, handle_id: str, queue: str, future: Any, *, name: str,
                 outs: Sequence[str], source: str) -> None:
        super().__init__(oq, handle_id, queue, future)
        self.name = name
        self.outs = tuple(outs)
        self.source = source

    def _env(self, timeout: float | None) -> dict[str, Any]:
        value = self._value(self.get(timeout))
        env = _envelope(value)
        return env if env is not None else {"value": value, "outs": {}, "stdout": "", "stderr": ""}

    def result(self, timeout: float | None = None) -> Any:
        """The value of the cell's last expression (None if it ends with a statement)."""
        return self._env(timeout)["value"]

    def outputs(self, timeout: float | None = None) -> dict[str, Any]:
        """The ``--out`` variables the cell assigned."""
        return dict(self._env(timeout)["outs"])

    def add_done_callback(self, fn: Callable[[CellHandle], Any]) -> None:
        """Call ``fn(self)`` once the task is final (at once if it already is)."""
        self._future.add_done_callback(lambda _f: fn(self))

    def __repr__(self) -> str:
        state = self.status().value if self.done() else "pending"
        return f"<CellHandle {self.name!r} task={self.id} {state}>"


class CellSweep(Sweep):
    """A ``%%omniq submit --sweep`` cell: a :class:`~omniq.sweep.Sweep` whose records, values
    and table show each point's last expression as ``value`` and its ``--out`` variables as
    columns, instead of the runner's envelope."""

    outs: tuple[str, ...] = ()

    def _record(self, i: int, *, traceback: bool = False) -> dict[str, Any]:
        rec = super()._record(i, traceback=traceback)
        env = _envelope(rec.get("value"))
        params = {k: rec.pop(k) for k in list(rec) if k not in _RECORD_FIELDS}
        outs = {o: env["outs"].get(o) if env is not None else None for o in self.outs}
        rec["value"] = env["value"] if env is not None else None
        return {**params, **{o: v for o, v in outs.items() if o not in params}, **rec}

    def values(self, default: Any = _NO_DEFAULT) -> list[Any]:
        """Each point's last-expression value, in grid order (see ``Sweep.values``)."""
        raw = super().values() if default is _NO_DEFAULT else super().values(default)
        return [env["value"] if (env := _envelope(v)) is not None else v for v in raw]

    def outputs(self) -> dict[str, list[Any]]:
        """``--out`` variables as lists in grid order (None for points without a value)."""
        envs = []
        for i in range(len(self.points)):
            r = self.tracker.result(i)
            envs.append(_envelope(r.value) if r is not None and r.status is TaskStatus.SUCCEEDED else None)
        return {out: [e["outs"].get(out) if e is not None else None for e in envs] for out in self.outs}

    def to_pandas(self) -> Any:
        """Parameters, ``--out`` columns, value, status, error, duration; grid order."""
        import pandas as pd

        records = self.results()
        columns = list(dict.fromkeys(k for r in records for k in r))
        return pd.DataFrame.from_records(records, columns=columns)


class _Job:
    """One ``%%omniq submit``: its handle, widget and the ``--out`` values still to apply."""

    def __init__(self, name: str, handle: TaskHandle | Sweep, outs: Sequence[str], widget: Any) -> None:
        self.name = name
        self.handle = handle
        self.outs = tuple(outs)
        self.widget = widget
        self.applied = not outs
        self._shown: set[str] = set()
        self._lock = threading.Lock()
        self.stop_watching: Callable[[], None] = lambda: None

    @property
    def is_sweep(self) -> bool:
        return not isinstance(self.handle, TaskHandle)

    def done(self) -> bool:
        return bool(self.handle.done())

    def show_output(self, result: TaskResult, label: str = "") -> None:
        """Put a finished task's remote stdout / stderr / traceback under the widget (once)."""
        with self._lock:  # held throughout, so `%omniq wait` never finalizes half an output
            self._show_output(result, label)

    def _show_output(self, result: TaskResult, label: str) -> None:
        if result.task_id in self._shown or self.widget is None:
            return
        self._shown.add(result.task_id)
        head = f"[{label}] " if label else ""
        if result.status is TaskStatus.SUCCEEDED:
            env = _envelope(result.value)
            if env is None:
                return
            out, err, tb = env["stdout"], env["stderr"], ""
        else:
            if result.error is None:
                return
            tb, out, err = split_remote_output(result.error.traceback or f"{result.error}\n")
            if not result.error.traceback:
                tb = f"{result.error.type}: {result.error.message}\n"
        if out:
            self.widget.append_stdout(_prefixed(head, out))
        if err:
            self.widget.append_stderr(_prefixed(head, err))
        if tb and not self.is_sweep:  # a sweep's widget lists failed points with tracebacks
            self.widget.append_stderr(tb)


def _prefixed(head: str, text: str) -> str:
    """``text`` ending in a newline, each line led by ``head`` (a sweep point's parameters, so
    interleaved output from many points stays readable)."""
    lines = text.splitlines(keepends=True)
    return "".join(f"{head}{ln}" for ln in lines).rstrip("\n") + "\n"


# --------------------------------------------------------------------------------------------
# argument stacks (shared between subcommands)
# --------------------------------------------------------------------------------------------
_HELP = (argument("-h", "--help", action="store_true", help="show this help and do nothing else"),)
_TARGET = (argument("name", metavar="NAME", help="a name given to %%%%omniq submit -n, or a variable holding a sweep or handle"),)
_TIMEOUT = (argument("--timeout", type=float, default=None, metavar="S", help="give up after S seconds"),)
_STORAGE = (
    argument("--tasks", metavar="URL", help="task queue URL (default: sqlite under ./.omniq)"),
    argument("--results", metavar="URL", help="result storage URL, e.g. s3://bucket/runs (default: as --tasks)"),
    argument("--events", metavar="URL", help="event storage URL (default: as --tasks)"),
)
_WORKERS = (
    argument("--worker", metavar="KIND", choices=("process", "thread", "async", "gevent"),
             help="worker kind: process (default), thread, async or gevent"),
    argument("--concurrency", "-c", type=int, metavar="N", help="worker slots in this kernel (default: one per core; 0 = submit only)"),
    argument("--queues", metavar="NAMES", help="queues this kernel's workers take from (default: all)"),
)
_ENQUEUE = (
    argument("--queue", "-q", default=None, metavar="Q", help="queue to submit to (default: 'default')"),
    argument("--priority", "-p", type=int, default=None, metavar="P", help="higher runs first (default 0)"),
    argument("--retries", "-r", type=int, default=None, metavar="R", help="retries after the cell raises (default 0)"),
    argument("--timeout", type=float, default=None, metavar="S", help="stop a run after S seconds"),
    argument("--memory", default=None, metavar="SIZE",
             help="memory a run may use, e.g. 4GB or 512MB; over it, it fails naming the limit"),
)
_SLURM = (
    argument("--slurm", metavar="N",
             help="keep N SLURM jobs running omniq worker on this kernel's storage (again: rescale "
                  "the same jobs; 0: none)"),
    argument("--adapt", metavar="MIN:MAX",
             help="SLURM jobs that follow the queue: at least MIN, at most MAX; idle ones leave"),
    argument("--partition", metavar="P", help="SLURM partition of the jobs (default: the cluster's)"),
    argument("--walltime", metavar="T", help="each job's time limit, e.g. 02:00:00 (default 01:00:00)"),
    argument("--cores", metavar="C", help="CPUs and worker slots per job (default 1)"),
    argument("--gpus", metavar="G", help="GPUs per job: a count, or type:count such as a100:2"),
)
_SUBMIT = (
    argument("-n", "--name", required=True, metavar="NAME",
             help="bind the handle (a sweep with --sweep) to this notebook variable"),
    argument("--sweep", "-s", metavar="SPEC",
             help='run the cell once per grid point, e.g. "lr=[1e-3, 1e-2]; seed=range(3)"'),
    argument("--out", "-o", metavar="NAMES",
             help="variables brought back into the notebook when the work is done "
                  "(lists in grid order with --sweep)"),
    argument("--wait", "-w", action="store_true", help="block until the work is done"),
)


def _command(name: str, *stacks: Sequence[ArgDecorator]) -> Callable[[F], F]:
    """``magic_arguments`` with argument stacks applied in the order given."""

    def deco(func: F) -> F:
        for d in reversed([d for s in stacks for d in s]):
            func = d(func)
        return magic_arguments(name)(func)

    return deco


def _names(value: str | None, option: str) -> list[str]:
    if not value:
        return []
    names = [n.strip() for n in value.strip("'\"").split(",") if n.strip()]
    bad = [n for n in names if not n.isidentifier() or keyword.iskeyword(n)]
    if bad:
        raise UsageError(f"{option} {value!r}: {', '.join(map(repr, bad))} is not a valid variable name")
    return names


# --------------------------------------------------------------------------------------------
# the magics
# --------------------------------------------------------------------------------------------
@magics_class
class OmniQMagics(Magics):
    """``%omniq`` / ``%%omniq``. Holds the kernel's OmniQ instance and the jobs submitted from
    cells; applies finished ``--out`` variables between cells."""

    _LINE = ("init", "status", "wait", "cancel", "results", "schedules", "workers", "dashboard")

    def __init__(self, shell: InteractiveShell) -> None:
        super().__init__(shell)
        self._oq: OmniQ | None = None
        self._jobs: dict[str, _Job] = {}
        self._status_stop: threading.Event | None = None
        self._slurm: SlurmWorkers | None = None
        self._ip = shell
        shell.events.register("pre_run_cell", self._between_cells)
        shell.events.register("post_run_cell", self._between_cells)

    # --- state ----------------------------------------------------------------------------------
    @property
    def oq(self) -> OmniQ:
        """The kernel's instance (``%omniq init``'s, or the default one), open."""
        if self._oq is None:
            self._oq = default_instance()
        return self._oq.open()

    @property
    def _in_kernel(self) -> bool:
        return getattr(self._ip, "kernel", None) is not None

    def close(self) -> None:
        """Unhook from the shell, stop live status updates, close the instance."""
        for event in ("pre_run_cell", "post_run_cell"):
            with contextlib.suppress(ValueError):
                self._ip.events.unregister(event, self._between_cells)
        self._stop_status()
        self._close_slurm()
        if self._oq is not None:
            self._oq.close()
            self._oq = None

    def _close_slurm(self) -> None:
        pool, self._slurm = self._slurm, None
        if pool is not None:
            pool.close(wait=False)

    # --- dispatch -------------------------------------------------------------------------------
    @line_cell_magic
    def omniq(self, line: str, cell: str | None = None) -> Any:
        """OmniQ from notebook cells. Subcommands (each takes --help)::

          %omniq init [--tasks URL] [--results URL] [--events URL] [--worker KIND]
                      [--concurrency N] [--queues A,B]
          %omniq status | %omniq schedules | %omniq workers | %omniq dashboard [--port N]
          %omniq wait NAME [--timeout S] | %omniq cancel NAME | %omniq results NAME
          %%omniq submit -n NAME [--sweep SPEC] [--out X,Y] [--queue Q] [--priority P]
                         [--retries R] [--timeout S] [--memory SIZE] [--wait]
        """
        sub, _, rest = line.strip().partition(" ")
        if sub in ("", "-h", "--help", "help"):
            print(self._overview())
            return None
        try:
            return self._dispatch(sub, rest, cell)
        except ConfigError as exc:  # a bad option value: say it like any other usage error
            raise UsageError(str(exc)) from None
        except StorageError as exc:  # a missing bucket, an unreachable server: its one line
            raise UsageError(str(exc)) from None
        except JobSystemError as exc:  # SLURM's controller down, a command timed out
            raise UsageError(str(exc)) from None

    def _dispatch(self, sub: str, rest: str, cell: str | None) -> Any:
        if cell is not None:
            if sub != "submit":
                raise UsageError(f"%%omniq {sub}: the cell magic has one subcommand, submit (%%omniq submit -n NAME ...)")
            return self._submit(rest, cell)
        if sub == "submit":
            if _wants_help(rest):
                print(_help(self._cmd_submit))
                return None
            raise UsageError("submit runs a cell: write it as a cell magic, %%omniq submit -n NAME ... (two %)")
        if sub not in self._LINE:
            raise UsageError(f"%omniq {sub}: unknown subcommand; expected one of {', '.join(self._LINE)}, or submit (as %%omniq)")
        cmd = getattr(self, f"_cmd_{sub}")
        if _wants_help(rest):
            print(_help(cmd))
            return None
        return cmd(_parse(cmd, rest, f"%omniq {sub}"))

    def _overview(self) -> str:
        doc = getattr(self, "omniq").__doc__ or ""  # noqa: B009 (mypy and the magic decorator)
        parts = [doc.split("::")[0].strip().rstrip(".") + ":", ""]
        for sub in (*self._LINE, "submit"):
            usage = _help(getattr(self, f"_cmd_{sub}"), usage_only=True)
            parts.append("  " + usage.removeprefix("usage: "))
        parts.append("\n%omniq SUBCOMMAND --help (%%omniq submit --help) shows one subcommand's options.")
        return "\n".join(parts)

    # --- init -----------------------------------------------------------------------------------
    @_command("omniq init", _STORAGE, _WORKERS, _HELP)
    def _cmd_init(self, args: Any) -> OmniQ:
        """Start (or replace) this kernel's OmniQ: storage URLs and worker slots. A previous
        instance is closed first (its unstarted tasks stay queued)."""
        env = os.environ
        concurrency = args.concurrency
        if concurrency is None and "OMNIQ_CONCURRENCY" not in env:
            concurrency = os.cpu_count() or 1
        worker = args.worker or (None if {"OMNIQ_DEFAULT_WORKER", "OMNIQ_WORKER"} & env.keys() else "process")
        new = OmniQ(
            tasks=_unquote(args.tasks), results=_unquote(args.results), events=_unquote(args.events),
            worker=worker, concurrency=concurrency, queues=_unquote(args.queues),
        )
        new.open()  # if this fails, the previous instance stays in use
        self._stop_status()
        old, self._oq = self._oq, new
        self._close_slurm()  # its jobs served the old storage
        if old is not None:
            old.close()
        return new

    # --- submit ---------------------------------------------------------------------------------
    @_command("omniq submit", _SUBMIT, _ENQUEUE, _HELP)
    def _cmd_submit(self, args: Any) -> None:
        """Run this cell on a worker process and return at once. The cell takes the notebook
        variables it uses along (modules are imported on the worker); NAME is bound to a handle
        (a sweep with --sweep) and a progress widget shows the work and the cell's output."""

    def _submit(self, line: str, cell: str) -> Any:
        if _wants_help(line):
            print(_help(self._cmd_submit))
            return None
        args = _parse(self._cmd_submit, line, "%%omniq submit")
        name = _unquote(args.name) or ""
        if not name.isidentifier() or keyword.iskeyword(name):
            raise UsageError(f"-n {args.name!r}: expected a valid Python variable name for the handle")
        outs = _names(args.out, "--out")
        if name in outs:
            raise UsageError(f"-n {name} and --out {name}: the handle and an output variable need different names")
        source = self._ip.transform_cell(cell)
        if "get_ipython()" in source and "get_ipython()" not in cell:
            raise UsageError("%%omniq submit: IPython magics and shell escapes (%, !) cannot run on a worker; "
                             "keep them in another cell")
        filename = f"<omniq cell {name}>"
        try:
            compile_cell(source, filename)  # a SyntaxError shows here, not on a worker
        except SyntaxError as exc:
            raise UsageError(_syntax_error_text(exc, name)) from None
        grid: dict[str, Any] | None = None
        if args.sweep:
            from ..sweep import parse_sweep_spec

            try:
                grid = parse_sweep_spec(args.sweep, self._ip.user_ns)
            except Exception as exc:  # the spec's own error, said against the option
                raise UsageError(f"--sweep {args.sweep}: {exc}") from None
        ns = self._ip.user_ns
        hidden = set(getattr(self._ip, "user_ns_hidden", {}))
        needed = cell_globals(source)
        params = {p for key in (grid or ()) for p in key.split(",")}
        payload, _shipped = ship_globals(needed, ns, skip=hidden | params)
        options = {k: v for k, v in (("queue", args.queue), ("priority", args.priority),
                                     ("retries", args.retries), ("timeout", args.timeout)) if v is not None}
        if args.memory is not None:  # "4GB" or bytes; a bad size is a UsageError naming --memory
            from ..config.sizes import SIZE_TEXT, size_or_none

            options["memory_limit"] = size_or_none(_unquote(args.memory))
            if options["memory_limit"] is None:
                raise UsageError(f"--memory {args.memory}: not a size; expected {SIZE_TEXT}")
        if "queue" in options:
            options["queue"] = _unquote(options["queue"])
        call = CellCall(source, payload, outs, name)
        oq = self.oq
        try:
            job = self._start(oq, name, call, grid, outs, source, options)
        except SerializationError as exc:
            raise UsageError(_unshippable(payload["values"], exc)) from None
        old = self._jobs.get(name)
        if old is not None and old is not job:
            old.applied = True  # a re-run replaces the earlier job's pending outputs
            old.stop_watching()
        self._jobs[name] = job
        ns[name] = job.handle
        if job.widget is not None:
            from IPython.display import display

            display(job.widget)
        if args.wait:
            self._wait(job, None)
        return None

    def _start(self, oq: OmniQ, name: str, call: CellCall, grid: dict[str, Any] | None,
               outs: Sequence[str], source: str, options: dict[str, Any]) -> _Job:
        from .widgets import Progress

        if grid is not None:
            with bulk():  # no collector passes while 10,000 points' objects are made
                sw = CellSweep.start(oq, call, grid, name=name, identity=cell_identity(source, outs), **options)
                assert isinstance(sw, CellSweep)
                sw.outs = tuple(outs)
                job = _Job(name, sw, outs, sw.progress())
                _watch_sweep(job, sw)
                return job
        core = oq.core
        (task,) = core.build_tasks(call, [((), {})], **options)
        (fut,) = core.submit_tasks([task])
        handle = CellHandle(oq, task.id, task.queue, fut, name=name, outs=outs, source=source)
        job = _Job(name, handle, outs, Progress(oq, [handle], title=name))
        handle.add_done_callback(lambda h: _show_handle_output(job, h))
        return job

    # --- wait / results / cancel ----------------------------------------------------------------
    def _job(self, name: str) -> _Job:
        name = _unquote(name) or ""
        job = self._jobs.get(name)
        value = self._ip.user_ns.get(name)
        if job is not None and (value is None or value is job.handle):
            return job
        if isinstance(value, (Sweep, TaskHandle)):
            return _Job(name, value, (), None)
        if job is not None:
            return job
        known = ", ".join(sorted(self._jobs)) or "none yet"
        raise UsageError(f"{name!r} is not a job: give a name from %%omniq submit -n (known: {known}) "
                         f"or a variable holding a sweep or task handle")

    @_command("omniq wait", _TARGET, _TIMEOUT, _HELP)
    def _cmd_wait(self, args: Any) -> None:
        """Block until NAME is done, bring its --out variables into the notebook and show the
        final progress (re-sent, so a saved notebook keeps the end state)."""
        self._wait(self._job(args.name), args.timeout)

    def _wait(self, job: _Job, timeout: float | None) -> None:
        h = job.handle
        t0 = time.monotonic()
        try:
            if isinstance(h, TaskHandle):
                h.get(timeout)
            else:
                h.wait(timeout)
        except TimeoutError:
            raise TimeoutError(f"{job.name} is not done after {timeout} s; it keeps running "
                               f"(%omniq wait {job.name} again, or %omniq cancel {job.name})") from None
        _deliver_output(job)
        self._apply(job)
        if job.widget is not None:
            _finalize(job.widget)
        print(_summary(job, time.monotonic() - t0))

    @_command("omniq results", _TARGET, _HELP)
    def _cmd_results(self, args: Any) -> Any:
        """A sweep's table (a pandas DataFrame: parameters, --out variables, value, status,
        error, duration, in grid order); a single cell's value, or its TaskResult if it failed."""
        job = self._job(args.name)
        h = job.handle
        if isinstance(h, TaskHandle):
            try:
                r = h.get(timeout=0)
            except TimeoutError:
                print(f"{job.name} is still running; %omniq wait {job.name} blocks until it is done")
                return None
            if r.status is TaskStatus.SUCCEEDED:
                return h.result(0) if isinstance(h, CellHandle) else r.value
            return r
        return h.to_pandas()

    @_command("omniq cancel", _TARGET, _HELP)
    def _cmd_cancel(self, args: Any) -> None:
        """Cancel NAME: queued runs never start, running ones are stopped."""
        job = self._job(args.name)
        n = job.handle.cancel()
        job.applied = True
        if job.is_sweep:
            print(f"{job.name}: cancelled {int(n)} unfinished point(s)")
        else:
            print(f"{job.name}: {'cancelled' if n else 'already finished'}")
        if job.widget is not None:
            with contextlib.suppress(Exception):
                _finalize(job.widget)

    # --- status / schedules / workers -----------------------------------------------------------
    @_command("omniq status", _HELP)
    def _cmd_status(self, args: Any) -> Any:
        """Queues by status, workers and schedules; a widget that refreshes itself (text
        outside a kernel)."""
        oq = self.oq
        if not self._in_kernel:
            print(status_text(oq.health(), slurm=slurm_status(fresh=True)))
            return None
        import ipywidgets

        box = ipywidgets.HTML(value=status_html(oq.health(), slurm=slurm_status(fresh=True)))
        self._stop_status()
        stop = self._status_stop = threading.Event()
        threading.Thread(target=_refresh_status, args=(oq, box, stop), name="omniq-status", daemon=True).start()
        from IPython.display import display

        display(box)
        return None

    def _stop_status(self) -> None:
        if self._status_stop is not None:
            self._status_stop.set()
            self._status_stop = None

    @_command("omniq schedules", _HELP)
    def _cmd_schedules(self, args: Any) -> Any:
        """Schedules with their next run (a DataFrame)."""
        return _frame(self.oq.schedules())

    @_command("omniq workers", _SLURM, _HELP)
    def _cmd_workers(self, args: Any) -> Any:
        """Workers seen by the task queue, with their last heartbeat (a DataFrame); a pool short
        of children says so. With --slurm N or --adapt MIN:MAX: worker jobs on SLURM instead
        (returns the pool; its jobs end with this kernel's OmniQ)."""
        request = slurm_request(args)
        if request is not None:
            return self._slurm_workers(*request)
        rows = []
        for w in self.oq.health()["workers"]:
            row = dict(w)
            row["last_heartbeat"] = _ago(w.get("last_heartbeat"))
            row["started_at"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(w.get("started_at") or 0))
            if w.get("missing"):
                print(f"WARNING: worker {w['id']} is short of {w['missing']} of its {w['slots']} slots "
                      "(a child process could not be replaced; it keeps trying)", file=sys.stderr)
            rows.append(row)
        return _frame(rows)

    @_command("omniq dashboard", (
        argument("--port", type=int, default=8765, metavar="N", help="port (default 8765; 0: any free one)"),
        argument("--host", default="127.0.0.1", metavar="H",
                 help="address (default 127.0.0.1; any other needs a token, generated if not given)"),
        argument("--token", default=None, metavar="T", help="token the page requires (default: none on loopback)"),
        argument("--inline", action="store_true", help="show the page in the notebook (an IFrame), not a link"),
        argument("--stop", action="store_true", help="stop this kernel's dashboard"),
    ), _HELP)
    def _cmd_dashboard(self, args: Any) -> Any:
        """Serve the web dashboard (queues, tasks, Retry / Cancel, sweeps) for this kernel's OmniQ
        and show its link; it runs on the instance's loop and ends with it. Needs the
        'dashboard' extra."""
        from ..integrations.dashboard.notebook import show

        return show(self.oq, host=_unquote(args.host) or "127.0.0.1", port=args.port,
                    token=_unquote(args.token), inline=args.inline, stop=args.stop)

    def _slurm_workers(self, mode: tuple[str, int, int], options: dict[str, Any]) -> SlurmWorkers:
        """Scale (or adapt) the kernel's SLURM pool, making it first when there is none for this
        OmniQ or a job option differs from the pool's."""
        oq = self.oq
        pool = self._slurm
        if pool is not None and (pool.closed or pool.oq is not oq):
            pool = self._slurm = None
        changed = [] if pool is None else _changed_options(pool, options)
        if pool is not None and not changed:
            _follow(pool, mode)
            return pool
        new = SlurmWorkers(oq, **options)  # a bad option: ConfigError naming it, nothing started
        try:
            _follow(new, mode)  # refused by SLURM: the previous pool stays as it was
        except BaseException:
            new.close(wait=False)
            raise
        if pool is not None:
            print(f"omniq: new SLURM pool {new.name} ({', '.join(changed)}); the jobs of {pool.name} "
                  "leave after their running tasks", file=sys.stderr)
            try:
                pool.scale(0)  # pending jobs cancelled, running ones finish their tasks; closed with oq
            except OmniQError:
                pool.close(wait=False)
        self._slurm = new
        return new

    # --- between cells --------------------------------------------------------------------------
    def _between_cells(self, *_: Any) -> None:
        """Apply the --out variables of jobs that finished (IPython event hook)."""
        for job in list(self._jobs.values()):
            if not job.applied and job.done():
                try:
                    _deliver_output(job)
                    self._apply(job)
                except Exception as exc:  # never break the user's next cell
                    job.applied = True
                    print(f"omniq: could not bring back {job.name}'s outputs: {exc}", file=sys.stderr)

    def _apply(self, job: _Job) -> None:
        if job.applied:
            return
        job.applied = True
        ns = self._ip.user_ns
        h = job.handle
        if isinstance(h, CellHandle):
            r = h.get(0)
            if r.status is TaskStatus.SUCCEEDED:
                ns.update(h.outputs(0))
            return
        if isinstance(h, CellSweep):
            ns.update(h.outputs())


def _full_doc() -> str:
    """``%omniq?``: the overview plus every subcommand's help."""
    head = (OmniQMagics.omniq.__doc__ or "").rstrip()
    subs = [_help(getattr(OmniQMagics, f"_cmd_{sub}")) for sub in (*OmniQMagics._LINE, "submit")]
    return head + "\n\n" + "\n\n".join(subs) + "\n"


# --------------------------------------------------------------------------------------------
# helpers shared by the subcommands
# --------------------------------------------------------------------------------------------
def _help(cmd: Any, *, usage_only: bool = False) -> str:
    """A subcommand's argparse help as plain text ("usage: %omniq wait ..."), without the
    reST ``::`` IPython puts in docstrings; ``submit`` reads as the cell magic it is."""
    parser = cmd.parser
    text = parser.format_usage() if usage_only else parser.format_help()
    text = text.replace("::\n\n  %", "usage: %", 1).strip()
    return text.replace("usage: %omniq submit", "usage: %%omniq submit", 1)


_NEGATIVE_VALUE = re.compile(r"(--(?:adapt|slurm|cores|gpus|priority|retries|timeout))\s+(-\d\S*)")


def _parse(cmd: Any, rest: str, usage: str) -> Any:
    """``parse_argstring`` whose every failure is a ``UsageError``: argparse reports bad options
    itself, but splitting the line (shlex) raises ``ValueError`` on an unbalanced quote or a
    trailing backslash. A negative value (``--adapt -1:3``, ``--priority -2``) is joined to its
    option first: argparse would take it for an option and not say what is valid."""
    rest = _NEGATIVE_VALUE.sub(r"\1=\2", rest)
    try:
        return parse_argstring(cmd, rest)
    except ValueError as exc:
        raise UsageError(
            f"{usage}: cannot split the arguments {rest.strip()!r} ({exc}): "
            "an unbalanced quote (\' or \") or a trailing backslash"
        ) from None


def _wants_help(rest: str) -> bool:
    try:
        tokens = arg_split(rest, strict=False)
    except ValueError:
        return False
    return "-h" in tokens or "--help" in tokens


def _unquote(value: str | None) -> str | None:
    if value is None:
        return None
    v = value.strip()
    if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
        v = v[1:-1]
    return v


def _show_handle_output(job: _Job, handle: CellHandle) -> None:
    with contextlib.suppress(Exception):  # a callback on the loop thread must not raise
        job.show_output(handle.get(0))


def _watch_sweep(job: _Job, sw: Sweep) -> None:
    """Show each point's remote output under the widget as points finish. The tracker calls
    listeners on OmniQ's loop thread for every change, so the scan runs on a throttled thread
    instead (at most five times a second, once more after the last change): a sweep of
    thousands of points costs the loop nothing."""
    from .progress import Throttle

    def scan() -> bool:
        _show_points(job, sw)
        return False  # sleep until the next change

    throttle = Throttle(scan, interval=0.2, heartbeat=None)
    remove = sw.tracker.add_listener(throttle.poke)

    def stop() -> None:
        remove()
        throttle.close()

    job.stop_watching = stop
    throttle.poke()


def _show_points(job: _Job, sw: Sweep) -> None:
    tracker = sw.tracker
    for i in tracker.slots_in(lambda st: st not in ("pending", "queued", "running")):
        r = tracker.result(i)
        if r is not None and r.task_id not in job._shown:
            job.show_output(r, ", ".join(f"{k}={v!r}" for k, v in sw.points[i].items()))


def _deliver_output(job: _Job) -> None:
    """Show remote output synchronously (the callbacks may not have run yet)."""
    h = job.handle
    if isinstance(h, TaskHandle):
        if h.done():
            job.show_output(h.get(0))
    else:
        _show_points(job, h)


def _finalize(progress: Any) -> None:
    """Render now and re-send every widget's state from this cell (ipykernel tags messages sent
    from background threads with the latest cell, so a saved notebook needs the end state
    sent here)."""
    progress.finalize()


def _summary(job: _Job, waited: float) -> str:
    h = job.handle
    outs = f"; set {', '.join(job.outs)}" if job.outs else ""
    if isinstance(h, TaskHandle):
        r = h.get(0)
        if r.status is TaskStatus.SUCCEEDED:
            return f"{job.name}: succeeded{outs}"
        err = f" ({r.error})" if r.error else ""
        return f"{job.name}: {r.status.value}{err}"
    counts = h.counts()
    text = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    return f"{job.name}: {text}{outs}"


_JOB_OPTIONS = ("partition", "walltime", "cores", "gpus")


def slurm_request(args: Any) -> tuple[tuple[str, int, int], dict[str, Any]] | None:
    """``%omniq workers``'s SLURM options as ``(("scale", n, n) | ("adapt", min, max), job
    options given)``; None without --slurm / --adapt. A bad value is a one-line UsageError
    naming the option and what is valid (before any job is submitted)."""
    slurm, adapt = _unquote(args.slurm), _unquote(args.adapt)
    given = {k: _unquote(getattr(args, k)) or "" for k in _JOB_OPTIONS if getattr(args, k) is not None}
    if slurm is None and adapt is None:
        if given:
            opts = " ".join(f"--{k}" for k in given)
            raise UsageError(f"{opts}: job options need --slurm N or --adapt MIN:MAX "
                             "(%omniq workers --slurm 2 --cores 4)")
        return None
    if slurm is not None and adapt is not None:
        raise UsageError(f"--slurm {slurm} and --adapt {adapt}: give one (a fixed number of jobs, or "
                         "jobs that follow the queue)")
    if slurm is not None:
        n = _whole("--slurm", slurm, 0, "a number of jobs >= 0, e.g. --slurm 2 (0: none)")
        mode = ("scale", n, n)
    else:
        text = adapt or ""
        lo_text, sep, hi_text = text.partition(":")
        valid = "MIN:MAX, two whole numbers with 0 <= MIN <= MAX and MAX >= 1, e.g. --adapt 0:10"
        if not sep:
            raise UsageError(f"--adapt {text}: expected {valid}")
        lo = _whole("--adapt", lo_text, 0, valid, shown=text)
        hi = _whole("--adapt", hi_text, 1, valid, shown=text)
        if hi < lo:
            raise UsageError(f"--adapt {text}: MAX is below MIN; expected {valid}")
        mode = ("adapt", lo, hi)
    options: dict[str, Any] = {}
    for key, value in given.items():
        if key == "cores":
            options[key] = _whole("--cores", value, 1, "a number of CPUs per job >= 1, e.g. --cores 4")
        elif key == "gpus":
            options[key] = int(value) if value.isascii() and value.isdigit() else value  # a count, or type:count
        else:
            options[key] = value
    if "walltime" in options:  # said against the option here; the pool would say walltime=
        try:
            parse_walltime(options["walltime"])
        except ConfigError as exc:
            raise UsageError(f"--walltime {options['walltime']}: {str(exc).split(': ', 1)[1]}") from None
    return mode, options


def _follow(pool: SlurmWorkers, mode: tuple[str, int, int]) -> None:
    if mode[0] == "scale":
        pool.scale(mode[1])
    else:
        pool.adapt(minimum=mode[1], maximum=mode[2])


def _whole(option: str, text: str, minimum: int, valid: str, *, shown: str | None = None) -> int:
    t = text.strip()
    if not (t.isascii() and t.isdigit()) or int(t) < minimum:
        raise UsageError(f"{option} {shown if shown is not None else text}: expected {valid}")
    return int(t)


def _changed_options(pool: SlurmWorkers, options: Mapping[str, Any]) -> list[str]:
    """The job options given that differ from ``pool``'s, as ``--cores 4 (was 1)``."""
    now = {"partition": pool.partition, "walltime": pool.walltime_seconds, "cores": pool.cores,
           "gpus": pool.gpus}
    was = {"partition": pool.partition, "walltime": pool.walltime, "cores": pool.cores, "gpus": pool.gpus_asked}
    out = []
    for key, value in options.items():
        asked: Any = value
        if key == "walltime":
            asked = parse_walltime(value)
        elif key == "gpus":
            asked = None if value in (0, "0") else str(value)
        if asked != now[key]:
            out.append(f"--{key} {value} (was {was[key] if was[key] is not None else 'unset'})")
    return out


def slurm_status(*, fresh: bool = False) -> list[dict[str, Any]]:
    """The SLURM pools this kernel started (``%omniq workers --slurm``, or ``SlurmWorkers`` in
    code) with their jobs, for ``%omniq status``. ``fresh``: ask ``squeue`` now (once per
    pool); otherwise the jobs the pools' own checks saw last (no command per refresh)."""
    out = []
    for pool in slurm_pools():
        if fresh:
            with contextlib.suppress(OmniQError):
                pool.jobs()
        st = pool.status()
        if st["jobs"] or (st["mode"] is not None and st["mode"] != ("scale", 0, 0)):
            out.append(st)
    return out


def _pool_head(st: Mapping[str, Any]) -> str:
    mode = st.get("mode")
    how = ("" if mode is None else f"scale={mode[1]}, " if mode[0] == "scale" else f"adapt={mode[1]}:{mode[2]}, ")
    return (f"pool {st.get('name')} ({how}cores={st.get('cores')}, walltime {st.get('walltime')}; "
            f"logs {st.get('log_dir')})")


def _job_state(job: Mapping[str, Any]) -> str:
    state = str(job.get("state", "")).lower()
    if job.get("stopping"):
        state += ", leaving after its tasks"
    if job.get("reason") and state.startswith("pending"):
        state += f" ({job['reason']})"
    return state


def _frame(rows: Sequence[Mapping[str, Any]]) -> Any:
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is in the notebook extra
        return list(rows)
    return pd.DataFrame(list(rows))


_STATUS_ORDER = [s.value for s in TaskStatus]


def _status_rows(health: Mapping[str, Any]) -> tuple[list[str], list[tuple[str, list[int]]]]:
    queues: Mapping[str, Mapping[str, int]] = health.get("queues") or {}
    cols = [s for s in _STATUS_ORDER if any(c.get(s) for c in queues.values())] or ["queued", "running"]
    return cols, [(q, [int(c.get(s, 0)) for s in cols]) for q, c in sorted(queues.items())]


def _ago(ts: float | None) -> str:
    if not ts:
        return "-"
    return f"{max(0.0, time.time() - ts):.0f} s ago"


def status_text(health: Mapping[str, Any], slurm: Sequence[Mapping[str, Any]] = ()) -> str:
    """``%omniq status`` outside a kernel; ``slurm``: :func:`slurm_status`."""
    cols, rows = _status_rows(health)
    w = max([5, *(len(q) for q, _ in rows)])
    lines = ["queue".ljust(w) + "".join(c.rjust(11) for c in cols)]
    lines += [q.ljust(w) + "".join(str(n).rjust(11) for n in ns) for q, ns in rows] or ["(no tasks)"]
    workers = health.get("workers") or []
    lines.append(f"\nworkers: {sum(1 for x in workers if x.get('alive'))} alive of {len(workers)}")
    for x in workers:
        short = f" SHORT of {x['missing']} (a child could not be replaced)" if x.get("missing") else ""
        job = f" job {x['job']}" if x.get("job") else ""
        lines.append(f"  {x.get('id')} {x.get('kind')} x{x.get('slots')}{job} "
                     f"{'alive' if x.get('alive') else 'gone'} heartbeat {_ago(x.get('last_heartbeat'))}{short}")
    for st in slurm:
        jobs = st.get("jobs") or []
        lines.append(f"{st.get('scheduler', 'SLURM')} jobs: {len(jobs)}, {_pool_head(st)}")
        lines += [f"  {j.get('id')} {_job_state(j)}" + (f" on {j['node']}" if j.get("node") else "") for j in jobs]
    schedules = health.get("schedules") or []
    lines.append(f"schedules: {len(schedules)}")
    for s in schedules:
        lines.append(f"  {s.get('name')} {'paused' if s.get('paused') else 'active'} next {s.get('next_run')}"
                     f" last {s.get('last_outcome') or '-'}")
    down = [f"{part} {p.get('url')}: {p.get('error')}" for part, p in (health.get("storage") or {}).items()
            if not p.get("ok", True)]
    if down:
        lines.append("storage unreachable: " + "; ".join(down))
    overrun = health.get("leases_overrun") or []
    if overrun:
        lines.append(f"leases overrun in the last hour: {len(overrun)}")
    return "\n".join(lines)


def status_html(health: Mapping[str, Any], slurm: Sequence[Mapping[str, Any]] = ()) -> str:
    """``%omniq status`` as an HTML table (the widget's value); ``slurm``: :func:`slurm_status`."""
    e = html.escape
    cols, rows = _status_rows(health)
    td = 'style="padding:2px 10px;text-align:right"'
    out = ['<div class="omniq-status"><b>Queues</b><table><tr><th style="text-align:left">queue</th>']
    out += [f"<th {td}>{e(c)}</th>" for c in cols] + ["</tr>"]
    for q, ns in rows:
        out.append(f"<tr><td>{e(q)}</td>" + "".join(f"<td {td}>{n}</td>" for n in ns) + "</tr>")
    if not rows:
        out.append(f'<tr><td colspan="{len(cols) + 1}"><i>no tasks yet</i></td></tr>')
    out.append("</table>")
    workers = health.get("workers") or []
    out.append(f"<b>Workers</b> ({sum(1 for x in workers if x.get('alive'))} alive)<table>")
    out.append("<tr><th>id</th><th>kind</th><th>slots</th><th>alive</th><th>heartbeat</th></tr>")
    for x in workers:
        job = f" (job {e(str(x['job']))})" if x.get("job") else ""
        out.append(f"<tr><td>{e(str(x.get('id')))}{job}</td><td>{e(str(x.get('kind')))}</td>"
                   f"<td {td}>{x.get('slots')}"
                   + (f" <b style=\"color:#c00\">short {x['missing']}</b>" if x.get("missing") else "")
                   + f"</td><td>{'yes' if x.get('alive') else 'no'}</td>"
                   f"<td>{_ago(x.get('last_heartbeat'))}</td></tr>")
    out.append("</table>")
    for st in slurm:
        jobs = st.get("jobs") or []
        out.append(f"<b>{e(str(st.get('scheduler', 'SLURM')))} jobs</b> ({len(jobs)}) "
                   f"<small>{e(_pool_head(st))}</small><table>")
        out.append("<tr><th>job</th><th>state</th><th>node</th></tr>")
        for j in jobs:
            out.append(f"<tr><td>{e(str(j.get('id')))}</td><td>{e(_job_state(j))}</td>"
                       f"<td>{e(str(j.get('node') or '-'))}</td></tr>")
        if not jobs:
            out.append('<tr><td colspan="3"><i>no jobs (they start when tasks wait)</i></td></tr>')
        out.append("</table>")
    schedules = health.get("schedules") or []
    out.append(f"<b>Schedules</b> ({len(schedules)})<table>")
    for s in schedules:
        out.append(f"<tr><td>{e(str(s.get('name')))}</td><td>{'paused' if s.get('paused') else 'active'}</td>"
                   f"<td>next {e(str(s.get('next_run')))}</td><td>last {e(str(s.get('last_outcome') or '-'))}</td></tr>")
    out.append("</table>")
    for part, p in (health.get("storage") or {}).items():
        if not p.get("ok", True):
            out.append(f'<div style="color:#b00">{e(part)} storage {e(str(p.get("url")))} unreachable: '
                       f"{e(str(p.get('error')))}</div>")
    overrun = health.get("leases_overrun") or []
    if overrun:
        out.append(f"<div>leases overrun in the last hour: {len(overrun)} (worker died or hung)</div>")
    out.append("</div>")
    return "".join(out)


def _refresh_status(oq: OmniQ, box: Any, stop: threading.Event) -> None:
    """Keep a status widget current until stopped (a newer ``%omniq status``, ``init``,
    unload) or the instance closes: every second for ten minutes, then every ten seconds.
    Only sets the widget's value: no output from this thread."""
    started = time.monotonic()
    while not stop.wait(1.0 if time.monotonic() - started < 600 else 10.0):
        if not oq.core.is_open:
            return
        try:
            value = status_html(oq.health(), slurm=slurm_status())
        except Exception:
            return
        if value != box.value:
            box.value = value


# --------------------------------------------------------------------------------------------
# extension entry points (omniq.load_ipython_extension delegates here)
# --------------------------------------------------------------------------------------------
def load_ipython_extension(ip: InteractiveShell) -> None:
    """Register the magics on ``ip`` (a reload replaces the previous instance)."""
    unload_ipython_extension(ip)
    if "usage: %omniq init" not in (OmniQMagics.omniq.__doc__ or ""):
        OmniQMagics.omniq.__doc__ = _full_doc()
    ip.register_magics(OmniQMagics(ip))


def unload_ipython_extension(ip: InteractiveShell) -> None:
    """Unhook the magics from ``ip`` and close their OmniQ instance."""
    mm = ip.magics_manager
    old = mm.registry.pop(OmniQMagics.__name__, None)
    if isinstance(old, OmniQMagics):
        old.close()
        for kind in ("line", "cell"):
            if getattr(mm.magics[kind].get("omniq"), "__self__", None) is old:
                del mm.magics[kind]["omniq"]
