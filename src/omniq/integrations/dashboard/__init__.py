"""The OmniQ web dashboard: a Starlette app served by uvicorn (extra ``dashboard``).

``omniq dashboard`` and ``%omniq dashboard`` start it; :func:`create_app` builds the ASGI app
over an open ``AsyncOmniQ`` and :class:`Dashboard` serves it. This module imports Starlette
only when one of those names is used, so the command line builds its parser without the extra.
"""

from __future__ import annotations

from typing import Any

from .options import missing_extra

__all__ = ["Dashboard", "create_app", "missing_extra"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "Dashboard":
        from .server import Dashboard

        return Dashboard
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
