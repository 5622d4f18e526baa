"""``NatsBackend``: task queue, result store and event store on one NATS connection, made of the
parts of this package (each one responsibility on the shared ``JetStream`` connection)."""

from __future__ import annotations

from .blobs import NatsBlobs
from .events import NatsEvents
from .leases import NatsLeases
from .records import DEFAULT_SERVER
from .results import NatsResults
from .schedules import NatsSchedules


class NatsBackend(NatsLeases, NatsSchedules, NatsBlobs, NatsResults, NatsEvents):
    """Task queue, result store and event store in one NATS JetStream namespace."""

    def __init__(self, url: str = DEFAULT_SERVER) -> None:
        super().__init__(url)


__all__ = ["NatsBackend"]
