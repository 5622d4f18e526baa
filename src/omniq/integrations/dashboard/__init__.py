"""The OmniQ web dashboard: a Starlette app served by uvicorn (extra ``dashboard``).

``omniq dashboard`` and ``%omniq dashboard`` start it; :func:`create_app` builds the ASGI app
over an open ``AsyncOmniQ`` and :class:`Dashboard` serves it. This module imports Starlette
only when one of those names is used, so the command line builds its parser without the extra.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Dashboard", "create_app", "missing_extra"]


def missing_extra() -> str | None:
    """Why the dashboard cannot run here (a missing package of the ``dashboard`` extra), or None."""
    import importlib.util

    for module in ("starlette", "uvicorn", "jinja2"):
        if importlib.util.find_spec(module) is None:
            return (f"the dashboard needs {module}, which is not installed: "
                    "pip install 'omniq[dashboard]'")
    return None


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "Dashboard":
        from .server import Dashboard

        return Dashboard
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
