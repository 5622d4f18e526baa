"""URL -> backend: the one place that knows which module serves which scheme.

``open_backends(tasks, results, events)`` returns the three storage roles. ``None`` for results
or events means "the task queue's backend"; equal URLs share one backend object (its
``connect``/``close`` are reference counted), so ``sqlite:///x.db`` for all three is one
connection and one file.

Backend modules are imported only when their scheme is used, so optional drivers (asyncpg,
redis, nats-py, s3fs, ...) are needed only by those who use them.

``memory://`` is a fresh private backend per call. ``memory://name`` as the task queue is shared
by every caller in this process that names it (like a named in-memory database); as a separate
result or event store it is fsspec's in-memory filesystem (``memory://bucket``), which is also
process-wide.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import threading
from typing import Any, NamedTuple

from ..errors import ConfigError
from .base import Backend, EventStore, ResultStore, TaskQueue, masked


class _Kind(NamedTuple):
    module: str  # under omniq.storage
    factory: str  # class (or function) in that module, called with the URL
    driver: str | None  # the import its extra brings
    extra: str | None  # pip install 'omniq[extra]'; None: a core dependency


_FSSPEC = _Kind("fsspec", "FsspecBackend", "fsspec", None)
_KINDS: dict[str, _Kind] = {
    "memory": _Kind("memory", "MemoryBackend", None, None),
    "sqlite": _Kind("sqlite", "SQLiteBackend", None, None),
    "file": _FSSPEC,
    "s3": _FSSPEC._replace(driver="s3fs", extra="s3"),
    "gs": _FSSPEC._replace(driver="gcsfs", extra="gcs"),
    "gcs": _FSSPEC._replace(driver="gcsfs", extra="gcs"),
    "abfs": _FSSPEC._replace(driver="adlfs", extra="azure"),
    "az": _FSSPEC._replace(driver="adlfs", extra="azure"),
    "postgresql": _Kind("postgres", "PostgresBackend", "asyncpg", "postgres"),
    "postgres": _Kind("postgres", "PostgresBackend", "asyncpg", "postgres"),
    "redis": _Kind("redis", "RedisBackend", "redis", "redis"),
    "rediss": _Kind("redis", "RedisBackend", "redis", "redis"),
    "nats": _Kind("nats", "NatsBackend", "nats", "nats"),
}
SCHEMES = tuple(_KINDS)
#: Object stores whose task queue is a bucket queue (``omniq.storage.bucket``: conditional
#: writes); as results or events they are plain fsspec storage.
BUCKET_SCHEMES = ("s3", "gs", "gcs", "abfs", "az")
#: Schemes whose backend can hold a task queue (file:// is a directory queue on a shared disk).
TASK_QUEUE_SCHEMES = ("memory", "sqlite", "file", "postgresql", "redis", "nats", *BUCKET_SCHEMES)

_named_memory: dict[str, Backend] = {}  # memory://name task queues, for the process's life
_named_lock = threading.Lock()


def scheme_of(url: str) -> str:
    """The lower-cased scheme of ``url``; ``ConfigError`` when there is none or it is unknown."""
    head, sep, _ = url.partition("://")
    scheme = head.lower()
    if not sep or scheme not in _KINDS:
        what = f"unknown scheme {scheme!r}" if sep else "no scheme"
        raise ConfigError(
            f"storage URL {masked(url)!r} has {what}; valid schemes: "
            + ", ".join(f"{s}://" for s in SCHEMES)
        )
    return scheme


def _install_hint(url: str, kind: _Kind) -> str:
    if kind.extra:
        return f"pip install 'omniq[{kind.extra}]'"
    if kind.driver and kind.driver != "fsspec":
        return f"pip install {kind.driver}"
    return "reinstall omniq"


def _construct(url: str, role: str, storage_options: dict[str, Any] | None) -> Backend:
    """A new backend object for ``url`` (``role`` picks fsspec for a named memory store)."""
    scheme = scheme_of(url)
    kind = _KINDS[scheme]
    if scheme == "memory" and role != "tasks" and url[len("memory://") :].strip("/"):
        kind = _FSSPEC
    if kind.driver is not None and importlib.util.find_spec(kind.driver) is None:
        raise ConfigError(
            f"storage URL {masked(url)!r} needs the {kind.driver!r} package, which is not "
            f"installed: {_install_hint(url, kind)}"
        )
    try:
        module = importlib.import_module(f"omniq.storage.{kind.module}")
    except ModuleNotFoundError as e:
        raise ConfigError(
            f"storage URL {masked(url)!r}: the {scheme}:// backend could not be loaded "
            f"({e}); {_install_hint(url, kind)}"
        ) from e
    if kind.module == "fsspec" and role == "tasks" and scheme in BUCKET_SCHEMES:
        from .bucket import BucketQueueBackend

        return BucketQueueBackend(url, storage_options=storage_options)
    if kind.module == "fsspec":
        opener = getattr(module, "open_fsspec", None)
        if opener is not None:
            return opener(url, storage_options)
        return module.FsspecBackend(url, storage_options=storage_options)
    factory = getattr(module, kind.factory, None)
    if factory is None:
        raise ConfigError(
            f"storage URL {masked(url)!r}: omniq.storage.{kind.module} has no {kind.factory}; "
            f"{_install_hint(url, kind)}"
        )
    return factory(url)


def _backend(
    url: str, role: str, shared: dict[str, Backend], storage_options: dict[str, Any] | None
) -> Backend:
    if not isinstance(url, str) or not url:
        raise ConfigError(f"{role} must be a storage URL string, got {url!r}")
    if url in shared:
        return shared[url]
    try:
        scheme = scheme_of(url)
        if scheme == "memory" and role == "tasks" and url[len("memory://") :].strip("/"):
            with _named_lock:
                backend = _named_memory.get(url)
                if backend is None:
                    backend = _named_memory[url] = _construct(url, role, storage_options)
        else:
            backend = _construct(url, role, storage_options)
    except ConfigError as exc:
        msg = str(exc)
        if msg.startswith(role):
            raise
        raise ConfigError(f"{role}: {_scrubbed(msg, url)}") from None
    except ValueError as exc:
        # a backend's URL parsing (urllib.parse: "Invalid IPv6 URL", "Port out of range ...")
        raise ConfigError(
            f"{role} URL {masked(url)!r} is not a valid URL: {_scrubbed(str(exc), url)}"
        ) from None
    shared[url] = backend
    return backend


def _scrubbed(text: str, url: str) -> str:
    """``text`` without the password of ``url`` (also where ``masked`` would miss part of it,
    e.g. a password holding ``@``)."""
    _, sep, rest = url.partition("://")
    if not sep:
        return text
    userinfo, at, _ = rest.split("/", 1)[0].rpartition("@")
    _, colon, password = userinfo.partition(":")
    if at and colon and password:
        text = text.replace(password, "***")
    for value in re.findall(r"[?&;](?:ssl)?(?:password|token|secret)=([^&;#]+)", url, re.I):
        text = text.replace(value, "***")
    return text


#: Schemes of storage other accounts or machines may write to: a payload planted there runs code
#: in whoever loads it (workers take task calls; the submitting process unpickles results).
SHARED_SCHEMES = frozenset(SCHEMES) - {"memory", "sqlite"}

_UNSIGNED_RISK = (
    "anyone who can write to it can run code as this user: a planted task runs in the workers, "
    "a planted result runs in the process that reads .value (this notebook too)"
)


def check_signing(urls: tuple[str, ...], *, require: bool, log: Any) -> None:
    """One WARNING (or, with ``require``, a ConfigError) when shared storage is opened without
    ``OMNIQ_SECRET_KEY``. Raises ConfigError for a malformed key either way."""
    from ..serialization._signing import SIGNING_ENV, get_secret_keys

    if get_secret_keys()[0] is not None:
        return
    shared = list(dict.fromkeys(masked(u) for u in urls if scheme_of(u) in SHARED_SCHEMES))
    if not shared:
        return
    where = ", ".join(shared)
    if require:
        raise ConfigError(
            f"require_signing is set but {SIGNING_ENV} is not: refusing to open shared storage "
            f"{where} unsigned ({_UNSIGNED_RISK}). Set {SIGNING_ENV} (32+ bytes) on every process"
        )
    log.warning(
        "payload signing is off (%s is not set) on shared storage %s: %s. Set %s (32+ bytes) "
        "on every process, and require_signing (OMNIQ_REQUIRE_SIGNING=1) to refuse this",
        SIGNING_ENV, where, _UNSIGNED_RISK, SIGNING_ENV,
    )


def open_backends(
    tasks: str,
    results: str | None = None,
    events: str | None = None,
    *,
    storage_options: dict[str, Any] | None = None,
) -> tuple[TaskQueue, ResultStore, EventStore]:
    """Backends for the three roles (not yet connected: call ``connect()`` on each).

    Raises ``ConfigError`` for an unknown scheme, a missing optional driver (naming the extra to
    install), or a backend that cannot serve its role (e.g. ``s3://`` as the task queue).
    Passwords in URLs are masked in every message.
    """
    if storage_options is not None and not isinstance(storage_options, dict):
        raise ConfigError(f"storage_options must be a dict, got {type(storage_options).__name__}")
    shared: dict[str, Backend] = {}
    queue = _backend(tasks, "tasks", shared, storage_options)
    if not isinstance(queue, TaskQueue):
        raise ConfigError(
            f"tasks URL {masked(tasks)!r} cannot hold a task queue; task queues live in "
            + ", ".join(f"{s}://" for s in TASK_QUEUE_SCHEMES)
            + " (an object store's task queue needs conditional writes: s3://, gs://, abfs://)"
        )
    result_store = (
        queue if results is None else _backend(results, "results", shared, storage_options)
    )
    if not isinstance(result_store, ResultStore):
        raise ConfigError(f"results URL {masked(str(results))!r} cannot store results")
    event_store = queue if events is None else _backend(events, "events", shared, storage_options)
    if not isinstance(event_store, EventStore):
        raise ConfigError(f"events URL {masked(str(events))!r} cannot store events")
    return queue, result_store, event_store


__all__ = [
    "BUCKET_SCHEMES",
    "SCHEMES",
    "SHARED_SCHEMES",
    "TASK_QUEUE_SCHEMES",
    "check_signing",
    "open_backends",
    "scheme_of",
]
