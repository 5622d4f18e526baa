"""``OMNIQ_<KEY>`` environment overrides, and the per-key rules shared with the loader.

Every key of :class:`~omniq.models.OmniQConfig` has one rule here: how to parse it from an
environment string, how to check a typed value (from a dict, a YAML file or an argument), and
the words that say what is valid. Errors name where the value came from: the variable
(``OMNIQ_CONCURRENCY='two' is not valid: expected an integer >= 0``) or the key.

Examples:
    >>> from omniq.config.env import env_var, read_env
    >>> env_var("task_queue_type")
    'OMNIQ_TASK_QUEUE_TYPE'
    >>> read_env({"OMNIQ_CONCURRENCY": "4", "OMNIQ_QUEUES": "gpu,default"})
    {'concurrency': 4, 'queues': ['gpu', 'default']}
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from ..errors import ConfigError
from ..models.config import OmniQConfig
from . import settings

ENV_PREFIX = "OMNIQ_"
STORAGE_SHORT_NAMES = ("sqlite", "memory")
_NONE_WORDS = frozenset({"none", "null"})
CONFIG_KEYS: tuple[str, ...] = tuple(f.name for f in msgspec.structs.fields(OmniQConfig))
#: The constructor's argument names, accepted for their config keys in dicts, YAML and
#: ``OMNIQ_*`` variables (``tasks: sqlite:///x.db``, ``OMNIQ_TASKS=...``).
KEY_ALIASES: dict[str, str] = {
    "tasks": "task_queue_type",
    "results": "result_storage_type",
    "events": "event_storage_type",
    "worker": "default_worker",
}
#: ``OMNIQ_*`` variables that are not config keys but are read elsewhere (not warned about).
_OTHER_VARS = frozenset(
    {"OMNIQ_BLOB_DIR", "OMNIQ_CHILD_SYSPATH", "OMNIQ_CHILD_PARENT", "OMNIQ_CHILD_RESULT_KEY"}
)
_OTHER_PREFIXES = ("OMNIQ_SECRET", "OMNIQ_TEST_", "OMNIQ_CI_", "OMNIQ_FAULT_", "OMNIQ_DEMO_",
                   "OMNIQ_AZURITE_", "OMNIQ_KEEP_")
_warned: set[str] = set()


class UnknownSettingWarning(UserWarning):
    """An ``OMNIQ_*`` environment variable that is no OmniQ setting (a typo?); it is ignored.

    Given once per variable and process, suggesting the closest setting.

    Examples:
        >>> import warnings
        >>> from omniq.config.env import UnknownSettingWarning, read_env
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     _ = read_env({"OMNIQ_CONCURENCY": "2"})
        >>> caught[0].category is UnknownSettingWarning, str(caught[0].message)
        (True, 'OMNIQ_CONCURENCY is not an OmniQ setting and is ignored. Did you mean OMNIQ_CONCURRENCY?')
    """


def canonical_key(key: str) -> str:
    """The config key ``key`` names (an argument alias such as ``tasks`` -> ``task_queue_type``).

    Args:
        key: a config key or one of the constructor's names (``tasks``, ``results``,
            ``events``, ``worker``).

    Returns:
        The config key (``key`` itself when it is no alias).

    Examples:
        >>> from omniq.config.env import canonical_key
        >>> canonical_key("tasks"), canonical_key("lease")
        ('task_queue_type', 'lease')
    """
    return KEY_ALIASES.get(key, key)


class Invalid(ValueError):
    """A value broke its key's rule; the caller adds where it came from.

    Internal to the rules: callers of ``check_value`` and ``read_env`` see a ``ConfigError``.

    Examples:
        >>> from omniq.config.env import RULES, Invalid
        >>> try:
        ...     RULES["concurrency"].check(-1)
        ... except Invalid:
        ...     print("invalid")
        invalid
    """


def env_var(key: str) -> str:
    """The environment variable that overrides config key ``key``.

    Args:
        key: a config key (or an alias).

    Returns:
        ``OMNIQ_`` and the key in upper case.

    Examples:
        >>> from omniq.config.env import env_var
        >>> env_var("concurrency")
        'OMNIQ_CONCURRENCY'
    """
    return ENV_PREFIX + key.upper()


# ----------------------------------------------------------------------------- typed checks
# Each takes a value as found in a dict / YAML / argument and returns it normalized, or
# raises Invalid. They are strict about types: YAML ``concurrency: "2"`` is a mistake to report.


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _seconds(value: Any) -> float:
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        raise Invalid
    return float(value)


def _optional_seconds(value: Any) -> float | None:
    return None if value is None else _seconds(value)


def _int_at_least(low: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise Invalid
        return value

    return check


def _text(value: Any) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        raise Invalid
    return value.strip()


def _choice(choices: tuple[str, ...], normalize: Callable[[str], str]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str) or normalize(value.strip()) not in choices:
            raise Invalid
        return normalize(value.strip())

    return check


def _storage(value: Any) -> str:
    text = _text(value)
    if "://" in text:
        return text
    if text.lower() in STORAGE_SHORT_NAMES:
        return text.lower()
    raise Invalid


def _optional_storage(value: Any) -> str | None:
    return None if value is None else _storage(value)


def _optional_url(value: Any) -> str | None:
    if value is None:
        return None
    text = _text(value)
    if "://" not in text:
        raise Invalid
    return text


def _queues(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, (list, tuple)) or not all(isinstance(q, str) for q in value):
        raise Invalid
    names = [q.strip() for q in value if q.strip()]
    if not names:
        raise Invalid
    return names


def _memory_limit(value: Any) -> int | None:
    from .sizes import size_or_none

    if value is None:
        return None
    size = size_or_none(value)
    if size is None:
        raise Invalid
    return size


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Invalid
    return value


def _as_bool(raw: str) -> Any:
    word = raw.lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise Invalid


def _options(value: Any) -> dict[str, object]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise Invalid
    return dict(value)


# ----------------------------------------------------------------------------- env parsers
# Turn an environment string into the typed value the check above then validates.


def _as_int(raw: str) -> Any:
    try:
        return int(raw)
    except ValueError:
        raise Invalid from None


def _as_float(raw: str) -> Any:
    try:
        return float(raw)
    except ValueError:
        raise Invalid from None


def _as_optional_float(raw: str) -> Any:
    return None if raw.lower() in _NONE_WORDS else _as_float(raw)


def _as_optional_str(raw: str) -> Any:
    return None if raw.lower() in _NONE_WORDS else raw


def _as_queues(raw: str) -> Any:
    return None if raw.lower() in _NONE_WORDS or raw == "*" else raw


def _as_json_object(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        raise Invalid from None


@dataclass(frozen=True)
class Rule:
    """How one config key is checked, parsed from the environment, and explained.

    ``RULES`` holds one per key of ``OmniQConfig``; the configuration reference is generated
    from them.

    Attributes:
        check: takes a typed value (dict, YAML, argument) and returns it normalized, or raises
            ``Invalid``.
        expected: what is valid, completing "... is not valid: expected ...".
        from_env: parses the environment's string before ``check``.
        env_expected: what is valid in the environment, when it is spelled differently.

    Examples:
        >>> from omniq.config.env import RULES
        >>> rule = RULES["lease"]
        >>> rule.check(rule.from_env("45")), rule.expected
        (45.0, 'a number of seconds > 0')
    """

    check: Callable[[Any], Any]
    expected: str  # completes "... is not valid: expected ..."
    from_env: Callable[[str], Any] = str
    env_expected: str = ""  # when the environment spelling differs from the typed one

    def env_text(self) -> str:
        """What is valid in the environment (``env_expected``, else ``expected``).

        Returns:
            Text completing "... is not valid: expected ...".

        Examples:
            >>> from omniq.config.env import RULES
            >>> RULES["require_signing"].env_text()
            'one of 1, true, yes, on, 0, false, no, off'
        """
        return self.env_expected or self.expected


_STORAGE_TEXT = (
    f"a short name ({', '.join(STORAGE_SHORT_NAMES)}) or a full URL such as sqlite:///path.db"
)
_LEVELS_TEXT = ", ".join(settings.LOG_LEVELS)

RULES: dict[str, Rule] = {
    "base_dir": Rule(
        _text, "a directory path (str or os.PathLike)", env_expected="a directory path"
    ),
    "log_level": Rule(_choice(settings.LOG_LEVELS, str.upper), f"one of {_LEVELS_TEXT} (any case)"),
    "task_queue_type": Rule(_storage, _STORAGE_TEXT),
    "result_storage_type": Rule(
        _optional_storage,
        f"{_STORAGE_TEXT}, or None (same as task_queue_type)",
        _as_optional_str,
        f"{_STORAGE_TEXT}, or 'none' (same as the task queue)",
    ),
    "event_storage_type": Rule(
        _optional_storage,
        f"{_STORAGE_TEXT}, or None (same as task_queue_type)",
        _as_optional_str,
        f"{_STORAGE_TEXT}, or 'none' (same as the task queue)",
    ),
    "database_url": Rule(
        _optional_url,
        "a URL such as sqlite:///path.db, or None",
        _as_optional_str,
        "a URL such as sqlite:///path.db, or 'none'",
    ),
    "default_worker": Rule(
        _choice(settings.WORKER_KINDS, str.lower), f"one of {', '.join(settings.WORKER_KINDS)}"
    ),
    "concurrency": Rule(_int_at_least(0), "an integer >= 0", _as_int),
    "task_ttl": Rule(
        _optional_seconds,
        "a number of seconds > 0, or None",
        _as_optional_float,
        "a number of seconds > 0, or 'none'",
    ),
    "result_ttl": Rule(
        _optional_seconds,
        "a number of seconds > 0, or None",
        _as_optional_float,
        "a number of seconds > 0, or 'none'",
    ),
    "lease": Rule(_seconds, "a number of seconds > 0", _as_float),
    "max_deliveries": Rule(_int_at_least(1), "an integer >= 1", _as_int),
    "queues": Rule(
        _queues,
        "a list of queue names (or one comma-separated string), or None for all queues",
        _as_queues,
        "queue names separated by commas, or 'none' / '*' for all queues",
    ),
    "memory_limit": Rule(
        _memory_limit,
        "a size such as '4GB', '512MB' or '200 MiB', a whole number of bytes > 0, or None",
        _as_optional_str,
        "a size such as 4GB, 512MB or '200 MiB', a number of bytes > 0, or 'none'",
    ),
    "storage_options": Rule(
        _options,
        "a mapping with str keys",
        _as_json_object,
        'a JSON object such as {"anon": true}',
    ),
    "require_signing": Rule(
        _bool, "True or False", _as_bool, "one of 1, true, yes, on, 0, false, no, off"
    ),
}


def check_value(key: str, value: Any, *, source: str = "", name: str | None = None) -> Any:
    """Validate and normalize ``value`` for config key ``key`` (from a dict, file or argument).

    Args:
        key: the config key.
        value: the value as given (typed: YAML's ``"2"`` is not the integer 2).
        source: where it came from, for the error (``"omniq.yaml"``).
        name: the name to show (default: ``key``; an alias such as ``tasks`` passes its own).

    Returns:
        The value normalized (``"4GB"`` -> 4000000000, ``"DEBUG"`` for ``"debug"``, ...).

    Raises:
        ConfigError: ``{source}: {name}={value!r} is not valid: expected ...``, or an unknown
            key suggesting the closest one.

    Examples:
        >>> from omniq import ConfigError
        >>> from omniq.config.env import check_value
        >>> check_value("memory_limit", "4GB"), check_value("log_level", "debug")
        (4000000000, 'DEBUG')
        >>> try:
        ...     check_value("concurrency", "2", source="omniq.yaml")
        ... except ConfigError as e:
        ...     print(e)
        omniq.yaml: concurrency='2' is not valid: expected an integer >= 0
    """
    rule = RULES.get(key)
    if rule is None:
        raise unknown_key(name or key, source)
    try:
        return rule.check(value)
    except Invalid:
        where = f"{source}: " if source else ""
        raise ConfigError(
            f"{where}{name or key}={value!r} is not valid: expected {rule.expected}"
        ) from None


def unknown_key(key: Any, source: str = "") -> ConfigError:
    """ConfigError for a key OmniQConfig does not have, suggesting the closest one.

    Args:
        key: the key as given.
        source: where it came from (``"config dict"``, a file name), or "".

    Returns:
        The error (not raised here), listing the valid keys.

    Examples:
        >>> from omniq.config.env import unknown_key
        >>> str(unknown_key("worker_kind")).split(" Valid keys")[0]
        "unknown config key 'worker_kind'. Did you mean 'worker' (config key 'default_worker')?"
    """
    where = f" in {source}" if source else ""
    hint = _suggest(str(key).lower(), lambda k: repr(k))
    return ConfigError(
        f"unknown config key {key!r}{where}.{hint} Valid keys: {', '.join(CONFIG_KEYS)} "
        f"(or the constructor's names {', '.join(KEY_ALIASES)})"
    )


def _suggest(text: str, spell: Callable[[str], str]) -> str:
    """" Did you mean ...?" for the config key or alias closest to ``text`` (or "")."""
    import difflib

    names = (*CONFIG_KEYS, *KEY_ALIASES)
    matches = difflib.get_close_matches(text, names, n=1, cutoff=0.5)
    if not matches:  # a fragment of a longer key: "queue" -> task_queue_type
        matches = [k for k in CONFIG_KEYS if len(text) >= 4 and text in k][:1]
    if not matches:
        return ""
    best = matches[0]
    if best in KEY_ALIASES:
        return f" Did you mean {spell(best)} (config key {spell(KEY_ALIASES[best])})?"
    return f" Did you mean {spell(best)}?"


def warn_unknown_env(environ: Mapping[str, str] | None = None) -> None:
    """Warn once per variable about ``OMNIQ_*`` variables that set nothing (``OMNIQ_CONCURENCY``).

    Variables OmniQ reads elsewhere (``OMNIQ_SECRET_KEY``, ...) are not warned about.

    Args:
        environ: the variables (default: ``os.environ``).

    Warns:
        UnknownSettingWarning: once per unknown variable and process, suggesting the closest.

    Examples:
        >>> import warnings
        >>> from omniq.config.env import warn_unknown_env
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     warn_unknown_env({"OMNIQ_SECRET_KEY": "x" * 32, "OMNIQ_LEASE": "60"})
        >>> caught
        []
    """
    import warnings

    env = os.environ if environ is None else environ
    known = {env_var(k) for k in (*CONFIG_KEYS, *KEY_ALIASES)} | _OTHER_VARS
    for var in env:
        if (not var.startswith(ENV_PREFIX) or var in known or var in _warned
                or var.startswith(_OTHER_PREFIXES)):
            continue
        _warned.add(var)
        hint = _suggest(var[len(ENV_PREFIX):].lower(), env_var)
        warnings.warn(f"{var} is not an OmniQ setting and is ignored.{hint}",
                      UnknownSettingWarning, stacklevel=3)


def read_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The config keys set through ``OMNIQ_<KEY>`` variables, parsed and checked.

    An empty variable counts as unset; ``none`` clears an optional key.

    Args:
        environ: the variables (default: ``os.environ``, read now).

    Returns:
        ``{config key: value}`` for each key set.

    Raises:
        ConfigError: a variable's value is not valid (naming the variable), or a key and its
            alias (``OMNIQ_TASKS``, ``OMNIQ_TASK_QUEUE_TYPE``) are set differently.

    Warns:
        UnknownSettingWarning: for ``OMNIQ_*`` variables that are no setting.

    Examples:
        >>> from omniq import ConfigError
        >>> from omniq.config.env import read_env
        >>> read_env({"OMNIQ_TASKS": "memory://", "OMNIQ_RESULT_TTL": "none", "OMNIQ_LEASE": ""})
        {'result_ttl': None, 'task_queue_type': 'memory://'}
        >>> try:
        ...     read_env({"OMNIQ_CONCURRENCY": "two"})
        ... except ConfigError as e:
        ...     print(e)
        OMNIQ_CONCURRENCY='two' is not valid: expected an integer >= 0
    """
    env = os.environ if environ is None else environ
    found: dict[str, Any] = {}
    set_by: dict[str, str] = {}
    for name in (*RULES, *KEY_ALIASES):
        key = canonical_key(name)
        rule = RULES[key]
        var = env_var(name)
        raw = env.get(var)
        if raw is None or not raw.strip():
            continue
        text = raw.strip()
        try:
            value = rule.check(rule.from_env(text))
        except Invalid:
            raise ConfigError(f"{var}={raw!r} is not valid: expected {rule.env_text()}") from None
        if key in set_by and found[key] != value:
            raise ConfigError(f"{set_by[key]} and {var} both set {key!r}, differently: unset one")
        found[key], set_by[key] = value, var
    warn_unknown_env(env)
    return found
