"""Griffe extensions for the API reference.

``FacadeMethods``: show ``OmniQ``'s generated methods as the methods they are.

``OmniQ`` (the sync facade) makes most of its methods from ``AsyncOmniQ``'s coroutines at
import time (``get_result = _portal_method(AsyncOmniQ.get_result)``; ``enqueue`` is wrapped
with ``functools.wraps``). Read statically, those are attributes without a signature or
docstring. This extension gives each one the signature and docstring of its ``AsyncOmniQ``
twin, as a plain (blocking) method, which is what ``functools.wraps`` gives it at run time.
Importing the package for runtime inspection instead would import every submodule, the
gevent child's monkey patching included.

It also turns the reST roles some docstrings use (``:class:`Zipped```, ``:meth:`Sweep.start```)
into Markdown code, which is how the rest of the docstrings mark names.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_PORTAL = re.compile(r"^_portal_method\(AsyncOmniQ\.(\w+)\)$")
_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|mod|attr|data|exc|obj):`~?([^`]+)`")


def _plain_roles(obj: griffe.Object, seen: set[int]) -> None:
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if obj.docstring is not None and ":`" in obj.docstring.value:
        obj.docstring.value = _ROLE.sub(r"`\1`", obj.docstring.value)
    for member in obj.members.values():
        if not isinstance(member, griffe.Alias):
            _plain_roles(member, seen)


class FacadeMethods(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        if pkg.path != "omniq" or "core" not in pkg.members:
            return
        _plain_roles(pkg, set())
        core = pkg["core"]
        sync, core_async = core["OmniQ"], core["AsyncOmniQ"]
        for name, member in list(sync.members.items()):
            twin_name = None
            if isinstance(member, griffe.Attribute) and member.value is not None:
                m = _PORTAL.match(str(member.value))
                twin_name = m.group(1) if m else None
            elif isinstance(member, griffe.Function) and member.docstring is None and name in core_async.members:
                decorators = [str(d.value) for d in member.decorators]
                if any(d.startswith(f"functools.wraps(AsyncOmniQ.{name})") for d in decorators):
                    twin_name = name
            if twin_name is None or twin_name not in core_async.members:
                continue
            twin = core_async[twin_name]
            if not isinstance(twin, griffe.Function):
                continue
            method = griffe.Function(
                name,
                lineno=member.lineno,
                endlineno=member.endlineno,
                parameters=griffe.Parameters(
                    *(
                        griffe.Parameter(p.name, annotation=p.annotation, kind=p.kind, default=p.default)
                        for p in twin.parameters
                    )
                ),
                returns=twin.returns,
                docstring=griffe.Docstring(
                    twin.docstring.value,
                    lineno=twin.docstring.lineno,
                    endlineno=twin.docstring.endlineno,
                    parser=twin.docstring.parser,
                    parser_options=twin.docstring.parser_options,
                )
                if twin.docstring
                else None,
            )
            method.labels = set(twin.labels) - {"async"}
            sync.set_member(name, method)
