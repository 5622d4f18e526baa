"""Defaults for every configuration key. ``OMNIQ_<NAME>`` overrides each (see env.py).

Each constant is a key's default, named as the key in upper case; its trailing comment is the
key's note in the generated configuration reference.

Examples:
    >>> from omniq import OmniQConfig
    >>> from omniq.config import settings
    >>> settings.CONCURRENCY == OmniQConfig().concurrency, settings.WORKER_KINDS
    (True, ('async', 'thread', 'process', 'gevent'))
"""

from __future__ import annotations

BASE_DIR = ".omniq"  # relative to the working directory: a notebook's folder keeps its queue
LOG_LEVEL = "WARNING"  # DEBUG / INFO / WARNING / ERROR / DISABLED
TASK_QUEUE_TYPE = "sqlite"  # short name (sqlite, memory) or a full URL
RESULT_STORAGE_TYPE: str | None = None  # None: same backend as the task queue
EVENT_STORAGE_TYPE: str | None = None
DATABASE_URL: str | None = None  # explicit URL for the sqlite short name
DEFAULT_WORKER = "process"  # async / thread / process / gevent
CONCURRENCY = 2
TASK_TTL: float | None = None  # seconds a task may wait before it expires
RESULT_TTL: float | None = None  # seconds a result is kept
LEASE = 30.0  # seconds a claim holds before another worker may take the task again
MAX_DELIVERIES = 3  # deliveries of a task whose worker keeps dying
MEMORY_LIMIT: int | None = None  # bytes a task may use on this instance's workers (None: no limit)
REQUIRE_SIGNING = False  # True: opening shared storage without OMNIQ_SECRET_KEY is a ConfigError
SQLITE_FILENAME = "omniq.db"
WORKER_KINDS = ("async", "thread", "process", "gevent")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "DISABLED")
