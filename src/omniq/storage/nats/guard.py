"""Errors and retries of NATS calls: client errors in plain words, the ``guarded`` decorator
that turns them into ``StorageError`` and runs a call again across a reconnect, and small
concurrency helpers."""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, ParamSpec, Protocol, TypeVar, runtime_checkable

import nats.errors
import nats.js.errors
import nats.js.object_store
from nats.aio.client import Client as NATS

from ...errors import StorageError
from ...logs import get_logger
from .._reconnect import Backoff
from ..base import (
    masked,
)
from .records import (
    BATCH,
    RECONNECT_TIMEOUT,
)

log = get_logger("omniq.storage.nats")

def plain_error(e: BaseException) -> str:
    """A NATS client error in words a user can act on."""
    if isinstance(e, nats.errors.MaxPayloadError):
        return "a message is larger than the server's max_payload (raise it in nats-server.conf)"
    if isinstance(e, nats.js.errors.ServiceUnavailableError):
        return "JetStream is not available on that server (start nats-server with -js)"
    if isinstance(e, nats.js.errors.NoStreamResponseError):
        return "no JetStream stream answered (is JetStream enabled, and were streams deleted?)"
    if isinstance(e, (nats.errors.TimeoutError, asyncio.TimeoutError)):
        return "the server did not answer in time"
    if isinstance(e, nats.errors.ConnectionClosedError):
        return "the connection is closed"
    if isinstance(e, nats.js.errors.APIError) and e.description:
        return f"{e.description} (JetStream error {e.err_code})"
    return str(e) or type(e).__name__


@runtime_checkable
class Reconnecting(Protocol):
    """What ``guarded`` needs of the object whose method it runs (the connection)."""

    def _may_retry(self, e: BaseException, disconnects: int) -> bool: ...

    async def _wait_connected(self, pause: float) -> None: ...


P = ParamSpec("P")
R = TypeVar("R")


class ConnectionLost(nats.errors.Error):
    """The connection dropped while a reply was awaited: the request may or may not have run."""

    def __str__(self) -> str:
        return "the connection was lost before the server answered"


#: Errors after which a call is run again when the connection dropped meanwhile (or is down, or
#: just came back): nothing was done, or the call is safe to repeat (see "Reconnects" above).
TRANSIENT = (
    ConnectionLost,
    nats.errors.TimeoutError,
    asyncio.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.NoStreamResponseError,
)

#: Which attempt of a guarded call is running (0: the first): a retry may find the work of an
#: attempt whose reply was lost, and must take it as its own rather than fail or repeat it.
ATTEMPT: contextvars.ContextVar[int] = contextvars.ContextVar("omniq_nats_attempt", default=0)


def guarded(fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Turn NATS client errors into ``StorageError`` naming the (masked) URL; run the call again
    when it failed because the connection dropped, once the client has reconnected (for up to
    ``RECONNECT_TIMEOUT`` seconds)."""

    @functools.wraps(fn)
    async def run(*args: P.args, **kwargs: P.kwargs) -> R:
        backend = args[0]
        url = getattr(backend, "url", "nats://")
        backoff = Backoff(RECONNECT_TIMEOUT, first=0.05)
        attempt = 0
        while True:
            disconnects = getattr(backend, "_disconnects", 0)
            token = ATTEMPT.set(attempt)
            try:
                return await fn(*args, **kwargs)
            except (nats.errors.Error, asyncio.TimeoutError) as e:
                retry = isinstance(backend, Reconnecting) and backend._may_retry(e, disconnects)
                if not retry or backoff.expired():
                    gave_up = f"; gave up after {RECONNECT_TIMEOUT:g} s" if retry else ""
                    raise StorageError(f"NATS {masked(url)}: {plain_error(e)}{gave_up}") from e
                log.debug("NATS %s: %s; trying again", masked(url), plain_error(e))
                assert isinstance(backend, Reconnecting)
                await backend._wait_connected(backoff.pause())
                attempt += 1
            finally:
                ATTEMPT.reset(token)

    return run


async def gather(aws: Iterable[Awaitable[R]]) -> list[R]:
    """Run awaitables concurrently, at most ``BATCH`` at a time, results in order."""
    items = list(aws)
    out: list[R] = []
    for i in range(0, len(items), BATCH):
        out.extend(await asyncio.gather(*items[i : i + BATCH]))
    return out


async def close_quietly(nc: NATS) -> None:
    try:
        await nc.close()
    except Exception:  # closing a half-open connection: nothing left to save
        log.debug("closing NATS connection failed", exc_info=True)


async def publish_quietly(nc: NATS, subject: str, data: bytes) -> None:
    try:
        await nc.publish(subject, data)
    except nats.errors.Error:
        log.debug("wake-up publish failed", exc_info=True)  # workers poll anyway


def why_unreachable(e: BaseException) -> str:
    """Why a connection failed, in plain words."""
    if isinstance(e, ConnectionRefusedError):
        return "connection refused (is nats-server running and listening there?)"
    if isinstance(e, (asyncio.TimeoutError, nats.errors.TimeoutError)):
        return "no answer in time (wrong host or port, or a firewall?)"
    if isinstance(e, nats.errors.NoServersError):
        return "no server reachable"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    if isinstance(e, nats.errors.Error) and "authorization" in str(e).lower():
        return "authorization failed (check user and password)"
    return str(e) or type(e).__name__
