"""OmniQConfig: the configuration keys of DESIGN, as one typed struct."""

from __future__ import annotations

from typing import Any

import msgspec

from ..config import settings
from ..redact import masked, masked_options


class OmniQConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Keys are the settings constants in lower case; ``None`` means "derive from tasks"."""

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
