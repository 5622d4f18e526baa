"""What ties a pool of batch jobs to the OmniQ it serves.

A pool (``JobWorkers`` in ``base.py``) takes an ``OmniQ`` or an ``AsyncOmniQ`` (``core_of``), reads
how many tasks wait in the queues it serves through that OmniQ's loop (``waiting``: adapt and
the replacement of ended jobs follow it), and is closed with it (``close_with``) or at
interpreter exit (``close_at_exit``), so no job outlives the notebook that started it longer
than its idle timeout. The pool is held weakly: it can still be collected.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import weakref
from collections.abc import Collection
from typing import Any, Protocol

from ..errors import ConfigError


class Closable(Protocol):
    """A pool, as far as closing it goes."""

    closed: bool

    def close(self, *, wait: bool = True) -> None:
        """Cancel the pool's jobs (``wait``: until the scheduler lists none)."""


def core_of(oq: Any) -> Any:
    """The ``AsyncOmniQ`` behind ``oq`` (the facade's core, or ``oq`` itself).

    Args:
        oq: An ``OmniQ`` or ``AsyncOmniQ``.

    Returns:
        The ``AsyncOmniQ``.

    Raises:
        ConfigError: ``oq`` is neither.

    Examples:
        >>> from omniq import ConfigError
        >>> from omniq.hpc.link import core_of
        >>> try:
        ...     core_of("sqlite:///q.db")
        ... except ConfigError as e:
        ...     print(e)
        oq must be an OmniQ or AsyncOmniQ, got str
    """
    from ..core import AsyncOmniQ, OmniQ

    if isinstance(oq, OmniQ):
        return oq.core
    if isinstance(oq, AsyncOmniQ):
        return oq
    raise ConfigError(f"oq must be an OmniQ or AsyncOmniQ, got {type(oq).__name__}")


def waiting(core: Any, queues: Collection[str] | None) -> tuple[int, int] | None:
    """``(queued, running)`` tasks in ``queues`` (None: all), counted on ``core``'s loop from
    the calling thread; None when unknown (the OmniQ closed or not open, no answer in 30 s).

    Args:
        core: The ``AsyncOmniQ`` (see :func:`core_of`).
        queues: The queues the pool serves; None: every queue.

    Returns:
        The counts, or None.

    Examples:
        >>> from omniq import OmniQ
        >>> from omniq.hpc.link import core_of, waiting
        >>> oq = OmniQ("memory://", concurrency=0)
        >>> waiting(core_of(oq), None) is None  # not opened yet: nothing to ask
        True
    """
    loop = core.session.loop
    if not core.is_open or loop is None or loop.is_closed():
        return None
    coro = core.session.queue.counts()
    try:
        fut = asyncio.run_coroutine_threadsafe(coro, loop)
    except RuntimeError:
        coro.close()
        return None
    try:
        counts = fut.result(timeout=30)
    except Exception:
        fut.cancel()
        return None
    queued = running = 0
    for q, by in counts.items():
        if queues is None or q in queues:
            queued += int(by.get("queued", 0))
            running += int(by.get("running", 0))
    return queued, running


def _close(ref: weakref.ref[Closable]) -> None:
    pool = ref()
    if pool is not None and not pool.closed:
        pool.close(wait=False)


def close_with(pool: Closable, oq: Any) -> None:
    """Closing ``oq`` closes ``pool`` too (after ``oq`` stored what it holds).

    Args:
        pool: The pool.
        oq: The ``OmniQ`` or ``AsyncOmniQ`` it serves; its ``close`` is wrapped.

    Examples:
        >>> from omniq import OmniQ
        >>> from omniq.hpc.link import close_with
        >>> class Pool:
        ...     closed = False
        ...     def close(self, *, wait=True):
        ...         self.closed = True
        >>> oq, pool = OmniQ("memory://", concurrency=0), Pool()
        >>> close_with(pool, oq)
        >>> oq.close(); pool.closed
        True
    """
    from ..core import OmniQ

    ref = weakref.ref(pool)
    if isinstance(oq, OmniQ):  # the facade (its close runs even when it never opened)
        before_sync = oq.close

        def close_sync(*args: Any, **kwargs: Any) -> Any:
            try:
                return before_sync(*args, **kwargs)
            finally:
                _close(ref)

        setattr(oq, "close", close_sync)  # noqa: B010 (an instance's own close)
        return
    core = core_of(oq)
    before = core.close

    async def close(*args: Any, **kwargs: Any) -> Any:
        try:
            return await before(*args, **kwargs)
        finally:
            _close(ref)

    core.close = close


def _close_at_exit(ref: weakref.ref[Closable]) -> None:
    with contextlib.suppress(BaseException):
        _close(ref)


def close_at_exit(pool: Closable) -> None:
    """Interpreter exit closes ``pool`` if it is still open (errors are not reported then).

    Args:
        pool: The pool.

    Examples:
        ``close_at_exit(self)`` in the pool's constructor.
    """
    atexit.register(_close_at_exit, weakref.ref(pool))
