"""Configuration: defaults (``settings``), ``OMNIQ_*`` overrides (``env``), and ``load_config``.

``settings`` is imported eagerly; the rest lazily (PEP 562). ``omniq.models.config`` imports
``settings`` from here while ``omniq.models`` is still initializing, and ``loader``/``env``
import ``OmniQConfig`` from it, so importing them eagerly here would be circular.

Examples:
    >>> from omniq.config import env_var, load_config
    >>> load_config({"concurrency": 3}).concurrency, env_var("concurrency")
    (3, 'OMNIQ_CONCURRENCY')
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from . import settings

if TYPE_CHECKING:
    from .env import (
        CONFIG_KEYS,
        ENV_PREFIX,
        STORAGE_SHORT_NAMES,
        check_value,
        env_var,
        read_env,
    )
    from .loader import (
        LoggingConfig,
        configure_logging,
        load_config,
        resolve_urls,
        sqlite_url,
    )

_LAZY = {
    "CONFIG_KEYS": "env",
    "ENV_PREFIX": "env",
    "STORAGE_SHORT_NAMES": "env",
    "check_value": "env",
    "env_var": "env",
    "read_env": "env",
    "LoggingConfig": "loader",
    "configure_logging": "loader",
    "load_config": "loader",
    "resolve_urls": "loader",
    "sqlite_url": "loader",
}

__all__ = [
    "CONFIG_KEYS",
    "ENV_PREFIX",
    "STORAGE_SHORT_NAMES",
    "LoggingConfig",
    "check_value",
    "configure_logging",
    "env_var",
    "load_config",
    "read_env",
    "resolve_urls",
    "settings",
    "sqlite_url",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


# A library prints nothing until asked (configure_logging); same as loader.install_null_handler,
# done here without importing the loader.
if not any(isinstance(h, logging.NullHandler) for h in logging.getLogger("omniq").handlers):
    logging.getLogger("omniq").addHandler(logging.NullHandler())
