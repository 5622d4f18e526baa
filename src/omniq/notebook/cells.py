"""The worker side of ``%%omniq submit``: :class:`CellCall`, the callable a cell's task runs, and
:func:`run_cell`, which runs the cell's source in a fresh namespace and brings back its value,
``--out`` variables and printed text.

Kept apart from ``magics.py`` so that a worker process (or an ``omniq worker`` on a machine
without IPython) loads it without importing IPython: the task payload names ``CellCall`` by
reference.
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import contextlib
import importlib
import inspect
import io
import linecache
import threading
import types
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ..serialization import loads

__all__ = ["STDERR_MARK", "STDOUT_MARK", "CellCall", "compile_cell", "run_cell"]

#: Marks the cell's own output inside a failed task's traceback text (the only channel a
#: failure has back); the magics split it off again and show it as stdout/stderr.
STDOUT_MARK = "--- omniq: cell stdout before the error ---"
STDERR_MARK = "--- omniq: cell stderr before the error ---"


def compile_cell(source: str, filename: str) -> tuple[Any, Any | None]:
    """Compile a cell like IPython does: ``(body, last)`` where ``last`` evaluates the final
    expression statement (the cell's value) or is None. Top-level ``await`` is allowed.

    Args:
        source: The cell's source.
        filename: The name tracebacks show for it.

    Returns:
        ``(body, last)``: code objects to ``eval`` in the cell's namespace.

    Raises:
        SyntaxError: The source does not parse.

    Examples:
        >>> from omniq.notebook import compile_cell
        >>> body, last = compile_cell("x = 20\\nx + 1", "<cell>")
        >>> ns = {}
        >>> eval(body, ns); eval(last, ns)
        21
        >>> compile_cell("x = 1", "<cell>")[1] is None
        True
    """
    tree = ast.parse(source, filename, "exec")
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        expr = ast.Expression(tree.body[-1].value)
        del tree.body[-1]
        last = compile(expr, filename, "eval", flags=flags)
    return compile(tree, filename, "exec", flags=flags), last


def _run_code(code: Any, ns: dict[str, Any]) -> Any:
    result = eval(code, ns)
    if code.co_flags & inspect.CO_COROUTINE:
        return asyncio.run(_await(result))
    return result


async def _await(aw: Any) -> Any:
    return await aw


def run_cell(
    source: str,
    shipped: bytes | dict[str, Any],
    params: Mapping[str, Any],
    outs: Sequence[str],
    filename: str = "<omniq cell>",
) -> dict[str, Any]:
    """Run a notebook cell in a fresh namespace on a worker.

    ``shipped`` is ``{"values": {name: value}, "imports": {name: module}}`` (values shipped
    with the task, modules by name and imported here; older payloads carry it serialized); ``params`` are a sweep point's
    parameters. Returns ``{"value", "outs", "stdout", "stderr"}``: the last expression's value,
    the ``--out`` variables, and what the cell printed. On failure the printed text rides on
    the exception as a note, since a failed task brings back only its traceback.

    Args:
        source: The cell's source.
        shipped: The globals shipped with the task (see above).
        params: A sweep point's parameters (empty for a plain submit).
        outs: The ``--out`` variable names.
        filename: The name tracebacks show for the cell.

    Returns:
        ``{"value": ..., "outs": {name: value}, "stdout": str, "stderr": str}``. A generator
        (as the value or an ``--out`` variable) comes back as the list of what it yields.

    Raises:
        NameError: The cell did not assign an ``--out`` variable.
        BaseException: Whatever the cell raised, with what it printed as a note.

    Examples:
        >>> from omniq.notebook import run_cell
        >>> out = run_cell("print('hi'); y = x * lr\\ny + 1", {"values": {"x": 10}}, {"lr": 2}, ["y"])
        >>> out["value"], out["outs"], out["stdout"]
        (21, {'y': 20}, 'hi\\n')
        >>> run_cell("z = 1", {}, {}, ["w"])
        Traceback (most recent call last):
        ...
        NameError: --out w: the cell did not assign this variable
    """
    if isinstance(shipped, (bytes, bytearray)):
        shipped = loads(bytes(shipped)) if shipped else {}
    ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    for name, module in (shipped.get("imports") or {}).items():
        ns[name] = importlib.import_module(module)
    ns.update(shipped.get("values") or {})
    ns.update(params)
    # Tracebacks show the cell's lines (the worker has no file to read them from).
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    out, err = io.StringIO(), io.StringIO()
    # Capture only in a worker process (tasks run on its main thread): in a thread or async
    # worker inside the kernel, swapping sys.stdout would swallow the kernel's own output.
    capture = threading.current_thread() is threading.main_thread()
    try:
        with _redirect(out, err, capture):
            body, last = compile_cell(source, filename)
            _run_code(body, ns)
            value = _run_code(last, ns) if last is not None else None
            # a generator cannot travel back (pickle refuses it): bring back what it yields
            value = _materialized(value)
            for n in outs:
                if n in ns:
                    ns[n] = _materialized(ns[n])
        missing = [n for n in outs if n not in ns]
        if missing:
            raise NameError(
                f"--out {', '.join(missing)}: the cell did not assign "
                f"{'this variable' if len(missing) == 1 else 'these variables'}"
            )
    except BaseException as exc:
        notes = []
        if out.getvalue():
            notes.append(f"{STDOUT_MARK}\n{out.getvalue().rstrip()}")
        if err.getvalue():
            notes.append(f"{STDERR_MARK}\n{err.getvalue().rstrip()}")
        for note in notes:
            if hasattr(exc, "add_note"):  # Python 3.11+
                exc.add_note(note)
            else:  # 3.10: the same attribute; the worker's traceback text adds it (_wire.error_row)
                setattr(exc, "__notes__", [*getattr(exc, "__notes__", []), note])  # noqa: B010
        raise
    return {
        "value": value,
        "outs": {n: ns[n] for n in outs},
        "stdout": out.getvalue(),
        "stderr": err.getvalue(),
    }


def _materialized(value: Any) -> Any:
    """A generator as the list of what it yields (it cannot be pickled); anything else as is."""
    if isinstance(value, types.GeneratorType):
        return list(value)
    return value


@contextlib.contextmanager
def _redirect(out: io.StringIO, err: io.StringIO, capture: bool) -> Iterator[None]:
    if not capture:
        yield
        return
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        yield


class CellCall:
    """The callable a ``%%omniq submit`` task runs: ``CellCall(...)(**params)``.

    An instance of an importable class (not a closure) so the payload names the code by
    reference and carries only the cell's source and shipped globals. ``__qualname__`` makes
    task names read ``cell:NAME`` in tables and events.

    Args:
        source: The cell's source.
        shipped: The globals shipped with it (``{"values": ..., "imports": ...}``).
        outs: The ``--out`` variable names.
        name: The cell's name (``--name``, or made from its source).

    Examples:
        >>> from omniq.notebook import CellCall
        >>> call = CellCall("n * 2", {"values": {}}, [], "double")
        >>> call, call(n=21)["value"]
        (<CellCall cell:double>, 42)
    """

    def __init__(self, source: str, shipped: dict[str, Any], outs: Sequence[str], name: str) -> None:
        self.source = source
        self.shipped = shipped
        self.outs = tuple(outs)
        self.filename = f"<omniq cell {name}>"
        self.__qualname__ = f"cell:{name}"
        self.__module__ = "__main__"  # so the task name is just "cell:NAME"

    def __call__(self, **params: Any) -> dict[str, Any]:
        return run_cell(self.source, self.shipped, params, self.outs, self.filename)

    def __repr__(self) -> str:
        return f"<CellCall {self.__qualname__}>"
