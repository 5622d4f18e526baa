"""OmniQConfig: the configuration keys of DESIGN, as one typed struct."""

from __future__ import annotations

from typing import Any

import msgspec

from ..config import settings
from ..redact import masked, masked_options


class OmniQConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Every configuration key, typed: what ``OmniQ.from_config`` and the constructor resolve.

    Keys are the settings constants in lower case; ``None`` means "derive from tasks". Every
    key, its ``OMNIQ_*`` variable, type and default is listed in the configuration reference.
    ``repr()`` masks URL passwords and secret ``storage_options``.

    Attributes:
        base_dir: Folder of the default SQLite file and local data.
        log_level: The ``omniq`` loggers' level.
        task_queue_type: The task queue's URL.
        result_storage_type: The result store's URL; None: the task queue's backend.
        event_storage_type: The event store's URL; None: the task queue's backend.
        database_url: A URL for backends that take one (used where a type names no URL).
        default_worker: Worker kind: ``async``, ``thread``, ``process`` or ``gevent``.
        concurrency: Worker slots this instance starts (0: enqueue only).
        task_ttl: Default seconds a task may wait before it expires (None: never).
        result_ttl: Default seconds results are kept (None: for ever).
        lease: Seconds a worker's claim lasts unless renewed.
        max_deliveries: Claims before a task whose worker keeps dying fails.
        memory_limit: Bytes a task without its own ``memory_limit`` may use.
        queues: Queues this instance's workers take from (None: all).
        storage_options: Options passed to the storage backends (fsspec options, ...).
        require_signing: Opening shared storage without ``OMNIQ_SECRET_KEY`` is an error
            instead of a warning.

    Examples:
        >>> from omniq import OmniQ
        >>> oq = OmniQ.from_config({"concurrency": 3, "task_queue_type": "memory://"})
        >>> cfg = oq.config
        >>> cfg.concurrency, cfg.task_queue_type
        (3, 'memory://')
        >>> "secret" in repr(oq.config.__class__(task_queue_type="redis://:secret@h:6379/0"))
        False
    """

    base_dir: str = settings.BASE_DIR
    log_level: str = settings.LOG_LEVEL
    task_queue_type: str = settings.TASK_QUEUE_TYPE
    result_storage_type: str | None = settings.RESULT_STORAGE_TYPE
    event_storage_type: str | None = settings.EVENT_STORAGE_TYPE
    database_url: str | None = settings.DATABASE_URL
    default_worker: str = settings.DEFAULT_WORKER
    concurrency: int = settings.CONCURRENCY
    task_ttl: float | None = settings.TASK_TTL
    result_ttl: float | None = settings.RESULT_TTL
    lease: float = settings.LEASE
    max_deliveries: int = settings.MAX_DELIVERIES
    #: bytes a task without its own ``memory_limit`` may use on this instance's workers
    memory_limit: int | None = settings.MEMORY_LIMIT
    queues: list[str] | None = None
    storage_options: dict[str, object] = msgspec.field(default_factory=dict)
    #: opening shared storage (PostgreSQL, Redis, NATS, object stores, file://) without
    #: ``OMNIQ_SECRET_KEY`` is a ConfigError instead of a warning
    require_signing: bool = settings.REQUIRE_SIGNING

    def _masked_items(self) -> list[tuple[str, Any]]:
        parts = []
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if isinstance(value, str) and name.endswith(("_type", "_url")):
                value = masked(value)
            elif name == "storage_options":
                value = masked_options(value)
            parts.append((name, value))
        return parts

    def __repr__(self) -> str:
        """Every key, with URL passwords / tokens and secret ``storage_options`` values masked."""
        return f"OmniQConfig({', '.join(f'{k}={v!r}' for k, v in self._masked_items())})"

    __str__ = __repr__

    def __rich_repr__(self) -> Any:
        yield from self._masked_items()
