"""The PostgreSQL connection: URL options, errors in plain words, the pool with its reconnects and
the LISTEN connection for wake-ups (``PgConnection``)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import socket
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import msgspec

from ...errors import ConfigError, StorageError
from ...logs import get_logger
from ...models import Schedule, Task, TaskResult, TaskStatus
from .._codec import decoder, encode
from .._reconnect import Backoff
from ..base import Finished, Reaped, Signal, TaskQueue, WorkerInfo, masked
from ..rows import read_task_row
from .queries import (
    GET_OP,
    KEY_BUCKETS,
    NEXT_DUE,
    PURGE_OPS,
    RECORD_OP,
    SCHEMA,
    SCHEMA_EXISTS,
    SCHEMA_LOCK,
    SCHEMA_VERSION,
    SCHEMA_VERSION_OF,
)

try:
    import asyncpg
except ImportError:  # pragma: no cover - exercised by installs without the extra
    asyncpg = None


log = get_logger("omniq.storage.postgres")

# --- settings ------------------------------------------------------------------------------------

DEFAULT_SCHEMA = "public"
DEFAULT_POOL_SIZE = 10
DEFAULT_RECONNECT_TIMEOUT = 30.0
EVENTS_PAYLOAD = "events"  # a NOTIFY on the queue's channel saying: events were appended
CHANNEL = "omniq_tasks"  # NOTIFY channel for the default schema (others get a suffix)
CONNECT_TIMEOUT = 10.0
OPS_PURGE_EVERY = 60.0  # seconds between sweeps of old omniq_ops records
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_OWN_PARAMS = ("schema", "pool_size", "reconnect_timeout")

# --- encoding ------------------------------------------------------------------------------------

decode_result = decoder(TaskResult).decode
decode_schedule = decoder(Schedule).decode
decode_worker = decoder(WorkerInfo).decode
decode_finished = decoder(Finished).decode
decode_reaped = decoder(Reaped).decode
decode_tasks = decoder(list[Task]).decode
decode_statuses = decoder(dict[str, TaskStatus]).decode
STATUS_OF = {s.value: s for s in TaskStatus}

T = TypeVar("T")
MISSING: Any = object()  # a recovery found nothing: run the operation again


def tasks_in_order(rows: Sequence[Any]) -> list[Task]:
    """Tasks in enqueue order (RETURNING gives rows in no defined order)."""
    return [read_task_row(r) for r in sorted(rows, key=lambda r: int(r[0]))]


def escape_like(prefix: str) -> str:
    """``prefix`` as a LIKE pattern matching strings that start with it."""
    return re.sub(r"([\\%_])", r"\\\1", prefix) + "%"


def rowcount(status: str) -> int:
    """Rows changed, from a command tag such as ``DELETE 3``."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


class PgURL(msgspec.Struct, frozen=True):
    """A parsed ``postgresql://`` URL: what asyncpg gets, and our own parameters."""

    dsn: str
    schema: str
    pool_size: int
    reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT


def parse_url(url: str) -> PgURL:
    """Split our query parameters (``schema``, ``pool_size``, ``reconnect_timeout``) off a
    ``postgresql://`` URL."""
    if not isinstance(url, str) or url.partition("://")[0].lower() not in (
        "postgresql",
        "postgres",
    ):
        raise ConfigError(f"not a postgresql:// URL: {masked(str(url))!r}")
    parts = urlsplit(url)
    params = parse_qsl(parts.query, keep_blank_values=True)
    own = {k: v for k, v in params if k in _OWN_PARAMS}
    rest = [(k, v) for k, v in params if k not in _OWN_PARAMS]
    schema = own.get("schema", DEFAULT_SCHEMA)
    if not _SCHEMA_NAME.fullmatch(schema):
        raise ConfigError(
            f"postgresql URL {masked(url)!r}: schema={schema!r} is not valid; use 1-63 letters, "
            "digits or _ (not starting with a digit)"
        )
    size_text = own.get("pool_size", str(DEFAULT_POOL_SIZE))
    if not size_text.isdigit() or not 1 <= int(size_text) <= 1000:
        raise ConfigError(
            f"postgresql URL {masked(url)!r}: pool_size={size_text!r} is not valid; "
            "use a whole number from 1 to 1000"
        )
    reconnect_text = own.get("reconnect_timeout", str(DEFAULT_RECONNECT_TIMEOUT))
    try:
        reconnect = float(reconnect_text)
    except ValueError:
        reconnect = -1.0
    if not 0 <= reconnect < float("inf"):
        raise ConfigError(
            f"postgresql URL {masked(url)!r}: reconnect_timeout={reconnect_text!r} is not valid; "
            "use seconds >= 0"
        )
    dsn = urlunsplit(parts._replace(query=urlencode(rest)))
    return PgURL(dsn=dsn, schema=schema, pool_size=int(size_text), reconnect_timeout=reconnect)


def channel_for(schema: str) -> str:
    """The NOTIFY channel of a schema's queue (at most 63 bytes, PostgreSQL's identifier limit)."""
    if schema == DEFAULT_SCHEMA:
        return CHANNEL
    name = f"{CHANNEL}_{schema}"
    if len(name) > 63:
        name = f"{CHANNEL}_{hashlib.blake2b(schema.encode(), digest_size=12).hexdigest()}"
    return name


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def key_space(schema: str) -> int:
    """The first half (int4) of the two-key advisory locks guarding ``schema``'s idempotency keys
    (the two-key lock space does not overlap the one-key space of ``lock_key``)."""
    digest = hashlib.blake2b(f"omniq-keys:{schema}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)


def key_bucket(key: str) -> int:
    """Which of the ``KEY_BUCKETS`` advisory locks guards ``key`` (the same in every process)."""
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % KEY_BUCKETS


def lock_key(schema: str) -> int:
    """The advisory lock (a signed 64-bit key) serializing schema creation for ``schema``."""
    digest = hashlib.blake2b(f"omniq-schema:{schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


# --- errors --------------------------------------------------------------------------------------


def is_transient(exc: BaseException) -> bool:
    """True for errors after which running the operation again (on a new connection) is sound:
    the connection broke, the server is shutting the session down, or the transaction was
    rolled back by a deadlock or serialization failure."""
    if asyncpg is not None:
        if isinstance(
            exc,
            (
                asyncpg.PostgresConnectionError,  # class 08, incl. "closed in the middle"
                asyncpg.exceptions.OperatorInterventionError,  # 57P01 admin shutdown, ...
                asyncpg.exceptions.DeadlockDetectedError,
                asyncpg.exceptions.SerializationError,
                asyncpg.exceptions.TooManyConnectionsError,
            ),
        ):
            return True
        if isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc):
            return True
        if isinstance(exc, asyncpg.exceptions.InternalClientError):
            # e.g. "cannot switch to state 11; another operation is in progress": the server's
            # FATAL message reached an idle pooled connection; raised before anything is sent
            return True
    return isinstance(exc, (OSError, asyncio.TimeoutError))


def is_connection_error(exc: BaseException) -> bool:
    if asyncpg is not None and isinstance(
        exc,
        (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError),
    ):
        return False
    return is_transient(exc)


def describe(exc: BaseException) -> str:
    """A connection or server error in plain words (for messages naming the URL)."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is PostgreSQL running and accepting TCP connections there?)"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc})"
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timed out waiting for the server"
    if asyncpg is not None:
        if isinstance(exc, asyncpg.exceptions.InvalidPasswordError):
            return "password authentication failed"
        if isinstance(exc, asyncpg.exceptions.InvalidAuthorizationSpecificationError):
            return f"the server refused this login: {exc}"
        if isinstance(exc, asyncpg.exceptions.InvalidCatalogNameError):
            return f"the database does not exist ({exc})"
        if isinstance(exc, asyncpg.exceptions.TooManyConnectionsError):
            return "the server has too many connections"
        if isinstance(exc, asyncpg.exceptions.OperatorInterventionError):
            return f"the server closed the session ({exc})"
        if isinstance(exc, asyncpg.PostgresConnectionError):
            return f"the connection broke ({exc})"
        if isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc):
            return "the connection was closed"
        if isinstance(exc, asyncpg.exceptions.InternalClientError):
            return f"the connection is unusable ({exc})"
    if isinstance(exc, OSError):
        return f"network error ({exc.strerror or exc})"
    return f"{type(exc).__name__}: {exc}"


async def keep_session(conn: Any) -> None:
    """Pool reset hook: our sessions hold no state to undo (asyncpg still rolls back an open
    transaction), so skip the default ``RESET ALL; UNLISTEN *; ...`` round trip per release."""


class PgConnection(TaskQueue):
    """The asyncpg pool on one schema: connect (creating the schema), run a statement again
    across a lost connection, and the LISTEN connection that turns NOTIFYs from other processes
    into wake-ups (``wait_for_tasks``; events: ``EVENTS_PAYLOAD``). ``PostgresBackend`` is the
    task queue, result store and event store on it."""

    cross_process_wakeups = True

    def __init__(self, url: str) -> None:
        super().__init__()
        parsed = parse_url(url)
        if asyncpg is None:
            raise ConfigError(
                f"storage URL {masked(url)!r} needs the 'asyncpg' package, which is not "
                "installed: pip install 'omniq[postgres]'"
            )
        self.url = url
        self.schema = parsed.schema
        self.channel = channel_for(parsed.schema)
        self._events_appended = Signal()
        self._dsn = parsed.dsn
        self._pool_size = parsed.pool_size
        self._reconnect_timeout = parsed.reconnect_timeout
        self._settings = {"search_path": quote_ident(parsed.schema), "application_name": "omniq"}
        self._pool: Any = None
        self._listener: Any = None
        self._relisten: asyncio.Task[None] | None = None
        self._closing = False
        self._ready = False  # connected once: from now on a lost connection is waited out
        self._down_since: float | None = None  # monotonic time the connection was found lost
        self._next_due: float | None = None  # earliest eta of a delayed task, last we knew
        self._ops_purged_at = 0.0

    # --- lifecycle ----------------------------------------------------------------------------------
    async def _open(self) -> None:
        self._closing = False
        self._ready = False
        self._down_since = None
        try:
            # min_size=0: no connection floor kept by asyncpg, whose background re-connects
            # log a traceback per attempt while the server is away; ``_run`` reconnects instead
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=0,
                max_size=self._pool_size,
                server_settings=self._settings,
                reset=keep_session,
                timeout=CONNECT_TIMEOUT,
            )
            async with self._pool.acquire() as conn:  # the first connection: fail fast
                await conn.fetchval("SELECT 1")
        except Exception as e:
            if self._pool is not None:
                self._pool.terminate()
                self._pool = None
            raise StorageError(
                f"cannot connect to PostgreSQL at {masked(self.url)}: {describe(e)}"
            ) from e
        try:
            await self._run(self._setup)
            await self._listen()
            self._next_due = await self._run(lambda c: c.fetchval(NEXT_DUE))
        except BaseException:
            await self._close()
            raise
        self._ready = True

    async def _setup(self, conn: Any) -> None:
        """Create the schema and tables unless this version already did (advisory-locked)."""
        table = f"{quote_ident(self.schema)}.omniq_meta"

        async def version() -> str | None:
            if not await conn.fetchval(SCHEMA_EXISTS, table):
                return None
            return await conn.fetchval(SCHEMA_VERSION_OF)

        if await version() == str(SCHEMA_VERSION):
            return
        async with conn.transaction():
            await conn.execute(SCHEMA_LOCK, lock_key(self.schema))
            found = await version()
            if found is not None and int(found) > SCHEMA_VERSION:
                raise StorageError(
                    f"{masked(self.url)}: schema {self.schema!r} has OmniQ schema version "
                    f"{found}, newer than this OmniQ supports ({SCHEMA_VERSION}); upgrade omniq"
                )
            if found != str(SCHEMA_VERSION):
                await conn.execute(
                    SCHEMA.format(schema=quote_ident(self.schema), version=SCHEMA_VERSION)
                )

    async def _close(self) -> None:
        self._closing = True
        relisten, self._relisten = self._relisten, None
        if relisten is not None:
            relisten.cancel()
            with contextlib.suppress(BaseException):
                await relisten
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.remove_termination_listener(self._on_listener_lost)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(listener.close(), 5.0)
            if not listener.is_closed():
                listener.terminate()
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), 5.0)
            except Exception:
                pool.terminate()

    async def _run(
        self,
        fn: Callable[[Any], Awaitable[T]],
        *,
        recover: Callable[[Any], Awaitable[Any]] | None = None,
    ) -> T:
        """Run ``fn(connection)``; after a lost connection, again on a new one (at once, then
        with back-off for ``reconnect_timeout`` seconds); after a deadlock, up to twice more.

        ``recover(connection)`` runs before every later attempt: it returns the outcome of an
        earlier attempt that committed although its reply was lost, or ``MISSING`` to run ``fn``
        again.
        """
        pool = self._pool
        if pool is None:
            raise StorageError(f"{masked(self.url)} is not connected: call connect() first")
        attempt = rollbacks = 0
        backoff = Backoff(self._reconnect_timeout, first=0.05, at_once=True)
        while True:
            attempt += 1
            try:
                async with pool.acquire() as conn:
                    if attempt > 1 and recover is not None:
                        got = await recover(conn)
                        if got is not MISSING:
                            out = got
                            break
                    out = await fn(conn)
                break
            except (ConfigError, StorageError):
                raise
            except Exception as e:
                if not is_transient(e) or self._closing:
                    if is_connection_error(e):
                        raise StorageError(
                            f"lost the connection to PostgreSQL at {masked(self.url)}: "
                            f"{describe(e)}"
                        ) from e
                    raise StorageError(f"PostgreSQL {masked(self.url)}: {describe(e)}") from e
                if not is_connection_error(e):  # rolled back: run it again
                    rollbacks += 1
                    if rollbacks > 2:
                        raise StorageError(
                            f"PostgreSQL {masked(self.url)}: {describe(e)}"
                        ) from e
                    log.info("PostgreSQL %s: %s; retrying", masked(self.url), describe(e))
                    continue
                with contextlib.suppress(Exception):
                    await pool.expire_connections()  # the others are likely dead too
                if not self._ready:  # still connecting: one more try, then a clear error
                    if attempt > 1:
                        raise StorageError(
                            f"cannot connect to PostgreSQL at {masked(self.url)}: {describe(e)}"
                        ) from e
                    continue
                now = time.monotonic()
                if self._down_since is None:
                    self._down_since = now
                    log.warning(
                        "lost the connection to PostgreSQL at %s: %s; retrying on a new "
                        "connection for up to %g s", masked(self.url), describe(e),
                        self._reconnect_timeout,
                    )  # fmt: skip
                else:
                    log.debug("PostgreSQL %s still away: %s", masked(self.url), describe(e))
                if backoff.expired() and attempt > 1:
                    raise StorageError(
                        f"lost the connection to PostgreSQL at {masked(self.url)}: "
                        f"{describe(e)}; gave up reconnecting after {self._reconnect_timeout:g} s"
                    ) from e
                await anyio.sleep(backoff.pause())
        if self._down_since is not None:
            log.warning(
                "reconnected to PostgreSQL at %s after %.2f s",
                masked(self.url), time.monotonic() - self._down_since,
            )  # fmt: skip
            self._down_since = None
        return out

    async def _run_op(
        self,
        fn: Callable[[Any, str], Awaitable[T]],
        decode: Callable[[bytes], T],
    ) -> T:
        """``_run`` for a write whose outcome must survive a lost reply: ``fn(conn, op_id)``
        records its outcome under ``op_id`` (``_record``) in its own transaction when there is
        something to report; a retry returns that record instead of running again."""
        op_id = os.urandom(12).hex()
        if time.monotonic() - self._ops_purged_at > OPS_PURGE_EVERY:
            self._ops_purged_at = time.monotonic()
            await self._run(lambda c: c.execute(PURGE_OPS))

        async def recover(conn: Any) -> Any:
            row = await conn.fetchrow(GET_OP, op_id)
            return MISSING if row is None else decode(row[0])

        return await self._run(lambda conn: fn(conn, op_id), recover=recover)

    @staticmethod
    async def _record(conn: Any, op_id: str, outcome: Any) -> None:
        await conn.execute(RECORD_OP, op_id, encode(outcome))

    # --- LISTEN / NOTIFY ------------------------------------------------------------------------
    async def _listen(self) -> None:
        """Open the dedicated LISTEN connection (wake-ups from other processes)."""
        try:
            conn = await asyncpg.connect(
                self._dsn, server_settings=self._settings, timeout=CONNECT_TIMEOUT
            )
        except Exception as e:
            raise StorageError(
                f"cannot connect to PostgreSQL at {masked(self.url)}: {describe(e)}"
            ) from e
        try:
            await conn.add_listener(self.channel, self._on_notify)
        except BaseException:
            conn.terminate()
            raise
        conn.add_termination_listener(self._on_listener_lost)
        self._listener = conn

    def _on_notify(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        if payload == EVENTS_PAYLOAD:  # events were appended (for live subscriptions)
            self._events_appended.set()
            return
        if payload:
            with contextlib.suppress(ValueError):
                self._due_at(float(payload))
                return
        self._wakeup.set()

    def _on_listener_lost(self, conn: Any) -> None:
        if self._closing or conn is not self._listener:
            return
        self._listener = None
        log.warning(
            "PostgreSQL %s: the LISTEN connection was lost; reconnecting (wake-ups fall back "
            "to polling meanwhile)",
            masked(self.url),
        )
        self._wakeup.set()  # waiters look for work now rather than sleep on a dead channel
        if self._relisten is None or self._relisten.done():
            try:
                self._relisten = asyncio.get_running_loop().create_task(self._listen_again())
            except RuntimeError:  # no running loop (interpreter shutting down): nothing to do
                pass

    async def _listen_again(self) -> None:
        """Re-open the LISTEN connection with back-off (0.1 s doubling to 5 s) until it works."""
        delay = 0.1
        while not self._closing:
            try:
                await self._listen()
                break
            except Exception as e:
                log.debug("LISTEN reconnect to %s failed: %s", masked(self.url), describe(e))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        else:
            return
        log.warning("PostgreSQL %s: LISTEN connection restored", masked(self.url))
        with contextlib.suppress(Exception):  # delayed tasks announced while we were deaf
            self._next_due = await self._run(lambda c: c.fetchval(NEXT_DUE))
        self._wakeup.set()  # notifications may have been missed meanwhile

    async def wait_for_tasks(self, timeout: float) -> None:
        """Return on a NOTIFY or ``notify()``, when a delayed task falls due, or at ``timeout``."""
        deadline = anyio.current_time() + timeout
        while not self._wakeup.is_set():
            left = self._wait_left(deadline)
            if left <= 0:
                break
            with anyio.move_on_after(left):
                await self._wakeup.wait()
        self._wakeup = anyio.Event()
