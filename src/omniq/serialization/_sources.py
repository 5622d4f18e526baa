"""Ship the source lines of notebook-defined functions with their code.

A function defined in a Jupyter cell has a code object whose file (``/tmp/ipykernel_…/….py``
or ``<ipython-input-…>``) exists only in the kernel's ``linecache``. Pickled by value and run
in a worker, its traceback would show file and line number but not the line. So a call payload
that carries such functions also carries those lines, and loading it puts them into the
worker's ``linecache``. Files that exist on disk are not shipped: the worker can read them.
"""

from __future__ import annotations

import functools
import linecache
import os
import types
from typing import Any

from ._diagnose import global_names

_MAX_FUNCTIONS = 64  # how many functions (the task's and the __main__ helpers it calls) to visit


def collect(fn: Any) -> dict[str, list[str]]:
    """``{filename: lines}`` for the kernel-only files holding ``fn`` and the __main__ functions
    it reaches through globals and closures."""
    sources: dict[str, list[str]] = {}
    checked: set[str] = set()
    stack: list[Any] = [fn]
    seen: set[int] = set()
    while stack and len(seen) < _MAX_FUNCTIONS:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, functools.partial):
            stack.append(obj.func)
            continue
        if isinstance(obj, types.MethodType):
            stack.append(obj.__func__)
            continue
        if not isinstance(obj, types.FunctionType) or obj.__module__ != "__main__":
            continue
        code = obj.__code__
        filename = code.co_filename
        if filename not in checked:
            checked.add(filename)
            entry = linecache.cache.get(filename)
            if entry is not None and len(entry) == 4 and entry[2] and not os.path.exists(filename):
                sources[filename] = list(entry[2])
        reachable = []
        for cell in obj.__closure__ or ():
            try:
                reachable.append(cell.cell_contents)
            except ValueError:  # empty cell
                pass
        g = obj.__globals__
        reachable.extend(g[name] for name in global_names(code) if name in g)
        stack.extend(x for x in reachable if isinstance(x, _CALLABLES))
    return sources


_CALLABLES = (types.FunctionType, types.MethodType, functools.partial)


def register(sources: Any) -> None:
    """Make shipped lines visible to ``traceback`` in this process (never over a real file)."""
    if not isinstance(sources, dict):
        return
    for filename, lines in sources.items():
        if not isinstance(filename, str) or not isinstance(lines, list):
            continue
        entry = linecache.cache.get(filename)
        if entry is not None and len(entry) == 4 and entry[2] == lines:
            continue
        if os.path.exists(filename):
            continue
        size = sum(len(line) for line in lines)
        linecache.cache[filename] = (size, None, lines, filename)
