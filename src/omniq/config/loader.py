"""Build an :class:`OmniQConfig` from a file, a dict, the environment and arguments.

Precedence, highest first: constructor arguments (``None`` means "not given") > ``OMNIQ_*``
environment > YAML file / dict / OmniQConfig > settings defaults. Every value is checked where
it enters, so an error names the key, variable or file it came from, not a field deep inside.

Examples:
    >>> from omniq.config.loader import load_config
    >>> cfg = load_config({"concurrency": 1, "tasks": "memory://"}, concurrency=4)
    >>> cfg.concurrency, cfg.task_queue_type
    (4, 'memory://')
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import IO, Any

import msgspec
import yaml

from ..errors import ConfigError
from ..logs import ContextFilter, ContextFormatter
from ..models.config import OmniQConfig
from . import settings
from .env import KEY_ALIASES, RULES, STORAGE_SHORT_NAMES, check_value, read_env, unknown_key

ConfigSource = OmniQConfig | Mapping[str, Any] | str | os.PathLike[str] | None


# Constructor argument names (OmniQ(tasks=..., worker=...)) accepted as overrides, so an error
# names the argument the caller actually wrote.
ARGUMENT_ALIASES = KEY_ALIASES


def load_config(source: ConfigSource = None, **overrides: Any) -> OmniQConfig:
    """The configuration in force: ``source`` under the environment, under ``overrides``.

    ``OmniQ.from_config`` and the constructor use it; it is public for tools that want the
    same resolution without opening a queue.

    Args:
        source: a YAML file path (its keys at the top level or under one ``omniq:`` section),
            a dict, an ``OmniQConfig``, or None (defaults only).
        **overrides: config keys or the constructor's names ``tasks`` / ``results`` /
            ``events`` / ``worker``; ``None`` values are ignored.

    Returns:
        The checked ``OmniQConfig``.

    Raises:
        ConfigError: an unknown key (suggesting the closest), a value that is not valid
            (naming the key, variable or file), a file that cannot be read or is not YAML, or
            a key set twice under two names.

    Examples:
        >>> import os
        >>> from omniq.config.loader import load_config
        >>> os.environ["OMNIQ_LEASE"] = "60"
        >>> cfg = load_config({"lease": 10, "worker": "thread"})
        >>> del os.environ["OMNIQ_LEASE"]
        >>> cfg.lease, cfg.default_worker           # the environment wins over the dict
        (60.0, 'thread')
    """
    merged = _from_source(source)
    merged.update(read_env())
    given: dict[str, str] = {}
    for name, value in overrides.items():
        if value is None:
            continue
        key = ARGUMENT_ALIASES.get(name, name)
        if key in given:
            raise ConfigError(f"{given[key]} and {name} both set the same config key {key!r}")
        given[key] = name
        merged[key] = check_value(key, value, name=name)
    return OmniQConfig(**merged)


def _from_source(source: ConfigSource) -> dict[str, Any]:
    if source is None:
        return {}
    if isinstance(source, OmniQConfig):
        return _checked(msgspec.structs.asdict(source), "OmniQConfig")
    if isinstance(source, Mapping):
        return _checked(source, "config dict")
    if isinstance(source, (str, os.PathLike)):
        return _checked(_read_yaml(os.fspath(source)), os.fspath(source))
    raise ConfigError(
        f"config source must be a YAML file path, a dict or an OmniQConfig, "
        f"not {type(source).__name__}"
    )


def _checked(values: Mapping[Any, Any], source: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    named: dict[str, str] = {}
    for name, value in values.items():
        key = KEY_ALIASES.get(name, name) if isinstance(name, str) else name
        if not isinstance(key, str) or key not in RULES:
            raise unknown_key(name, source)
        if key in named:
            raise ConfigError(f"{source}: {named[key]} and {name} both set the config key {key!r}: keep one")
        named[key] = name
        out[key] = check_value(key, value, source=source, name=name)
    return out


def _read_yaml(path: str) -> Mapping[Any, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    # Allow the keys to sit under one top-level "omniq:" section of a shared file.
    if isinstance(data, Mapping) and list(data) == ["omniq"] and isinstance(data["omniq"], Mapping):
        data = data["omniq"]
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"config file {path} must hold a mapping of config keys, not {type(data).__name__}"
        )
    return data


# ----------------------------------------------------------------------------- URLs


def sqlite_url(base_dir: str) -> str:
    """``sqlite:///<base_dir>/omniq.db``: three slashes for a relative path, four for absolute.

    Args:
        base_dir: the ``base_dir`` setting (``~`` is expanded).

    Returns:
        The URL of the default SQLite file.

    Examples:
        >>> from omniq.config.loader import sqlite_url
        >>> sqlite_url(".omniq"), sqlite_url("/srv/q")
        ('sqlite:///.omniq/omniq.db', 'sqlite:////srv/q/omniq.db')
    """
    path = os.path.join(os.path.expanduser(base_dir), settings.SQLITE_FILENAME)
    return f"sqlite:///{path}"


def resolve_urls(config: OmniQConfig) -> tuple[str, str, str]:
    """(tasks, results, events) URLs: short names expanded, ``None`` meaning "same as tasks".

    Args:
        config: the configuration.

    Returns:
        The three URLs; ``sqlite`` is ``database_url`` when set, else the file under
        ``base_dir``; ``memory`` is ``memory://``.

    Raises:
        ConfigError: a storage key is neither a short name nor a URL.

    Examples:
        >>> from omniq import OmniQConfig
        >>> from omniq.config.loader import resolve_urls
        >>> resolve_urls(OmniQConfig(result_storage_type="memory"))
        ('sqlite:///.omniq/omniq.db', 'memory://', 'sqlite:///.omniq/omniq.db')
    """
    tasks = _url(config.task_queue_type, "task_queue_type", config)
    results = (
        tasks
        if config.result_storage_type is None
        else _url(config.result_storage_type, "result_storage_type", config)
    )
    events = (
        tasks
        if config.event_storage_type is None
        else _url(config.event_storage_type, "event_storage_type", config)
    )
    return tasks, results, events


def _url(value: str, key: str, config: OmniQConfig) -> str:
    if "://" in value:
        return value
    name = value.strip().lower()
    if name == "sqlite":
        return config.database_url or sqlite_url(config.base_dir)
    if name == "memory":
        return "memory://"
    raise ConfigError(
        f"{key}={value!r} is not valid: expected a short name "
        f"({', '.join(STORAGE_SHORT_NAMES)}) or a full URL such as sqlite:///path.db"
    )


# ----------------------------------------------------------------------------- logging

LOGGER_NAME = "omniq"
DEFAULT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_DISABLED = logging.CRITICAL + 1


class _OmniQHandler(logging.StreamHandler):
    """The one handler configure_logging attaches; its class marks it as ours."""


class LoggingConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How the "omniq" logger reports: a level from ``settings.LOG_LEVELS`` and a format.

    Attributes:
        level: ``DEBUG``, ``INFO``, ``WARNING``, ``ERROR`` or ``DISABLED``.
        format: a ``logging`` format; the default carries each record's task id, queue and
            worker.

    Examples:
        >>> import io
        >>> from omniq.config.loader import LoggingConfig
        >>> logger = LoggingConfig(level="ERROR", format="%(levelname)s %(message)s").apply(io.StringIO())
        >>> logger.name, logger.level
        ('omniq', 40)
    """

    level: str = settings.LOG_LEVEL
    format: str = DEFAULT_FORMAT

    def apply(self, stream: IO[str] | None = None) -> logging.Logger:
        """``configure_logging`` with this level and format.

        Args:
            stream: where records go (default: stderr).

        Returns:
            The "omniq" logger.
        """
        return configure_logging(self.level, fmt=self.format, stream=stream)


def configure_logging(
    level: str | int | None = None, *, fmt: str | None = None, stream: IO[str] | None = None
) -> logging.Logger:
    """Make the "omniq" logger report at ``level`` (``"DISABLED"`` silences it). Idempotent.

    A library prints nothing by default (the logger has a NullHandler); this is the explicit
    ask. It attaches one stderr handler, unless the root logger already has handlers (the
    application configured logging; records reach them by propagation, and a handler of ours
    would print every line twice).

    Args:
        level: a name from ``DEBUG``, ``INFO``, ``WARNING``, ``ERROR``, ``DISABLED`` (any case)
            or a ``logging`` number; None: the ``log_level`` default (``WARNING``).
        fmt: a ``logging`` format; records carry ``task_id``, ``queue`` and ``worker``.
        stream: where records go (default: stderr).

    Returns:
        The "omniq" logger.

    Raises:
        ConfigError: ``level`` is not one of the names or a number.

    Examples:
        >>> import io, logging
        >>> from omniq.config import configure_logging
        >>> out = io.StringIO()
        >>> logger = configure_logging("info", fmt="%(levelname)s %(name)s: %(message)s", stream=out)
        >>> logging.getLogger("omniq.example").info("hello")
        >>> print(out.getvalue().strip())
        INFO omniq.example: hello
        >>> _ = configure_logging("DISABLED")
    """
    logger = logging.getLogger(LOGGER_NAME)
    if level is None:
        level = settings.LOG_LEVEL
    if isinstance(level, bool) or not isinstance(level, (str, int)):
        raise ConfigError(
            f"log_level={level!r} is not valid: expected one of {', '.join(settings.LOG_LEVELS)}"
        )
    if isinstance(level, str):
        name = level.strip().upper()
        if name not in settings.LOG_LEVELS:
            raise ConfigError(
                f"log_level={level!r} is not valid: expected one of "
                f"{', '.join(settings.LOG_LEVELS)} (any case)"
            )
        number = _DISABLED if name == "DISABLED" else logging.getLevelName(name)
    else:
        number = level
    logger.setLevel(number)
    ours = [h for h in logger.handlers if isinstance(h, _OmniQHandler)]
    if number >= _DISABLED:
        return logger
    if not ours and not logging.getLogger().handlers:
        handler = _OmniQHandler(stream if stream is not None else sys.stderr)
        handler.addFilter(ContextFilter())
        handler.setFormatter(_formatter(fmt))
        logger.addHandler(handler)
    for handler in ours:
        if fmt is not None:
            handler.setFormatter(_formatter(fmt))
        if stream is not None:
            handler.setStream(stream)
    return logger


def _formatter(fmt: str | None) -> logging.Formatter:
    """The default format gets the task/queue/worker tags; a format of the user's own names
    the fields it wants (``%(task_id)s``, ``%(queue)s``, ``%(worker)s``)."""
    if fmt is None or fmt == DEFAULT_FORMAT:
        return ContextFormatter(DEFAULT_FORMAT)
    return logging.Formatter(fmt)


def install_null_handler() -> None:
    """Give "omniq" a NullHandler (once), so nothing prints until configure_logging is called.

    Importing ``omniq.config`` does it already; calling it again changes nothing.

    Examples:
        >>> import logging
        >>> from omniq.config.loader import install_null_handler
        >>> install_null_handler()
        >>> any(isinstance(h, logging.NullHandler) for h in logging.getLogger("omniq").handlers)
        True
    """
    logger = logging.getLogger(LOGGER_NAME)
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())
