"""Results and events on any fsspec filesystem, and a task queue on a shared POSIX directory.

URLs: ``file:///dir``, ``memory://bucket/prefix``, ``s3://bucket/prefix`` (s3fs; the endpoint comes
from ``AWS_ENDPOINT_URL`` or ``storage_options``), ``gs://bucket/prefix`` (gcsfs, extra ``gcs``;
an emulator from ``STORAGE_EMULATOR_HOST`` or ``endpoint_url``), ``abfs://container/prefix`` /
``az://`` (adlfs, extra ``azure``; the account from ``storage_options`` such as
``connection_string``, or the ``AZURE_STORAGE_*`` variables). Error messages name the URL with
its password masked and never quote a key, SAS token or connection string.

``open_fsspec(url, storage_options)`` returns a ``FileTaskQueueBackend`` (results, events *and*
tasks) for ``file://`` and an ``FsspecBackend`` (results and events only) for the rest: an object
store has no atomic claim, so it cannot hold a task queue (``can_hold_tasks``).

Layout under the URL's prefix, chosen so a person can browse it and every hot read is one
request::

    omniq-layout.json                           what this is; written on connect (a write probe)
    results/<yyyy-mm-dd>/<task id>.msgpack      one TaskResult (msgpack), day from the time-ordered
                                                id, so ``get_result(id)`` is one GET; ids that are
                                                not OmniQ ids go to results/other/
    keys/<key segments...>/<last>@<task id>     empty index objects for results with a ``key``;
                                                ``find_results(key_prefix=)`` lists one subtree
    expiry/<yyyy-mm-dd>/<expires_at>@<task id>  empty index objects for results with a TTL;
                                                ``purge_results`` lists only these
    events/<yyyy-mm-dd>/<min ts>_<max ts>_<n>_<batch id>.msgpack
                                                one object per appended batch (a list of
                                                TaskEvent); the day is that of the batch's newest
                                                event, so ``since`` skips older days by name
    blobs/<first 2 hex digits>/<sha-256 hex>    one blob: exactly its bytes (``blob_path`` maps
                                                it on file://)
    blob-owners/<sha-256 hex>/<at>@<owner>      empty objects: ``owner`` (``t:``/``r:`` + task
                                                id) referred to the blob at ``at``
    blob-trash/<sha-256 hex>/<time>@<random>    a blob a running ``sweep_blobs`` took away while
                                                it makes sure nobody just began to own it

Names are percent-encoded (only ``A-Z a-z 0-9 - _ .`` stay as they are), long key segments are
split into ``+``-suffixed chunks so no file name passes 255 bytes.

Writes are atomic: object stores take one PUT per object; on ``file://`` a temp file (a hidden
name in the same directory) is fsynced and ``os.replace``d over the target. Index objects are
written *before* the result they point to, so a crash leaves at worst a dangling index entry,
never an unindexed result. An object that does not decode (truncated by hand, a foreign file) is
logged and treated as missing.

Blobs: ``put_blobs`` writes its owner markers first, then looks which blobs are there (no blob
is read) and writes the others whole. ``sweep_blobs`` lists the blobs, then the markers, deletes
markers of dead owners recorded before its ``older_than``, and takes each blob left without a
marker in two steps: it moves the blob to ``blob-trash/``, lists the blob's markers again, and
moves it back when a put marked it meanwhile (that put may have found it stored), else deletes
it. A reader that misses a blob looks in ``blob-trash/`` before calling it missing.

The ``file://`` task queue keeps one file per task whose *directory* is its status and whose
*name* carries the fields that change (see ``_TaskDir``); every status change is one
``os.rename``, which succeeds for exactly one of several racing processes.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import inspect
import os
import re
import secrets
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple, TypeVar
from urllib.parse import unquote

import anyio
import anyio.to_thread
import msgspec

from ..errors import ConfigError, StorageError, StorageUnwritable
from ..ids import new_id, new_ids
from ..lifecycle import (
    Cascade,
    claim_order,
    claimable,
    expires,
    fired,
    lease_lapsed,
    on_dependency_end,
    on_lapse,
    ready_status,
    slot_fires,
)
from ..logs import get_logger
from ..models import Schedule, Task, TaskEvent, TaskResult, TaskStatus
from .base import (
    KEY_WRITE_GRACE,
    UNSUCCESSFUL,
    Backend,
    EventStore,
    Finished,
    Overrun,
    Reaped,
    ResultStore,
    TaskQueue,
    WorkerInfo,
    check_claim,
    check_new_tasks,
    check_outcomes,
    check_owner,
    holds_key,
    keyed,
    make_private_dir,
    masked,
    plan_enqueue,
    plan_keys,
    stand_in_task,
)
from .blobs import (
    LIVE_TASK_STATUSES,
    Blob,
    as_bytes,
    check_blobs,
    check_digests,
    check_owners,
    nbytes,
    result_owner,
    task_owner,
)

log = get_logger("omniq.storage.fsspec")
_UNWRITABLE = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM)  # local writes refused

T = TypeVar("T")
R = TypeVar("R")

#: Concurrent requests for many-object reads and writes on an async filesystem.
CONCURRENCY = 64
#: Events kept decoded in memory across ``query_events`` calls (batches are immutable).
EVENT_CACHE_LIMIT = 500_000
LAYOUT_VERSION = 1

#: Packages that provide each protocol, for the "install this" message.
_PACKAGES: dict[str, tuple[str, str]] = {
    "s3": ("s3fs", "pip install 'omniq[s3]'"),
    "s3a": ("s3fs", "pip install 'omniq[s3]'"),
    "gs": ("gcsfs", "pip install 'omniq[gcs]'"),
    "gcs": ("gcsfs", "pip install 'omniq[gcs]'"),
    "abfs": ("adlfs", "pip install 'omniq[azure]'"),
    "abfss": ("adlfs", "pip install 'omniq[azure]'"),
    "az": ("adlfs", "pip install 'omniq[azure]'"),
}

_results_enc = msgspec.msgpack.Encoder()


class _KeyMark(msgspec.Struct, array_like=True):
    """A file:// key marker: the key's latest task ("" once that task was purged unsuccessful),
    when the marker was written, and whether that task's record was purged after it succeeded
    (it then holds the key while its result is stored)."""

    task: str
    at: float
    purged: bool = False


_key_dec = msgspec.msgpack.Decoder(_KeyMark)
_result_dec = msgspec.msgpack.Decoder(TaskResult)
_events_dec = msgspec.msgpack.Decoder(list[TaskEvent])


# --------------------------------------------------------------------------------------------
# Names: pure functions, no I/O
# --------------------------------------------------------------------------------------------
_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
_CHUNK = 120  # longest encoded key segment per path component
_OMNIQ_ID = re.compile(r"[0-9a-f]{24}")


def encode_name(text: str) -> str:
    """``text`` as one safe path component: ``%XX`` for anything but ``A-Za-z0-9-_.``.

    A leading dot is escaped too (no ``.``/``..``/hidden names) and ``""`` becomes ``%``.
    """
    if not text:
        return "%"
    out: list[str] = []
    for i, ch in enumerate(text):
        if ch in _SAFE and not (i == 0 and ch == "."):
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode())
    return "".join(out)


def decode_name(name: str) -> str:
    return "" if name == "%" else unquote(name, errors="strict")


def _chunks(segment: str) -> list[str]:
    """An encoded key segment split into components of at most ``_CHUNK`` characters, every one
    but the last ending in ``+`` (``+`` is always escaped, so the marker is unambiguous)."""
    enc = encode_name(segment)
    if len(enc) <= _CHUNK:
        return [enc]
    tokens = re.findall(r"%[0-9A-F]{2}|.", enc)
    parts: list[str] = []
    cur = ""
    for tok in tokens:
        if len(cur) + len(tok) > _CHUNK:
            parts.append(cur + "+")
            cur = ""
        cur += tok
    parts.append(cur)
    return parts


def key_dir(segments: Sequence[str]) -> str:
    """Relative directory for complete key segments (``["exp1", "abc"]`` -> ``exp1/abc``)."""
    return "/".join(c for seg in segments for c in _chunks(seg))


def key_marker(key: str, task_id: str) -> str:
    """Relative path of the key index entry for ``key`` -> ``task_id``."""
    *head, last = key.split("/")
    parts = [c for seg in head for c in _chunks(seg)]
    last_parts = _chunks(last)
    parts.extend(last_parts[:-1])
    parts.append(f"{last_parts[-1]}@{encode_name(task_id)}")
    return "/".join(parts)


def parse_key_marker(rel: str) -> tuple[str, str] | None:
    """``(key, task_id)`` from a relative key index path; None for anything else."""
    parts = rel.split("/")
    last, sep, tid = parts[-1].rpartition("@")
    if not sep or not tid:
        return None
    parts[-1] = last
    segments: list[str] = []
    cur = ""
    try:
        for p in parts:
            if p.endswith("+"):
                cur += p[:-1]
                continue
            segments.append(decode_name(cur + p))
            cur = ""
        return "/".join(segments), decode_name(tid)
    except UnicodeDecodeError:
        return None


_DIGEST_NAME = re.compile(r"[0-9a-f]{64}")
#: Seconds after which a ``blob-trash/`` entry is a crashed sweep's, for any sweep to settle.
TRASH_STALE = 3600.0


def blob_relpath(digest: str) -> str:
    return f"blobs/{digest[:2]}/{digest}"


def blob_owner_marker(digest: str, owner: str, at: float) -> str:
    name = encode_name(owner)
    if len(name) > 200:
        raise ConfigError(f"blob owner {owner[:40]!r}... is too long to name a file (max 200)")
    return f"blob-owners/{digest}/{float(at)!r}@{name}"


def parse_blob_owner_marker(rel: str) -> tuple[str, float, str] | None:
    """``(digest, at, owner)`` of a ``blob-owners/...`` path relative to the root."""
    parts = rel.split("/")
    if len(parts) != 3 or parts[0] != "blob-owners" or not _DIGEST_NAME.fullmatch(parts[1]):
        return None
    at, sep, owner = parts[2].partition("@")
    if not sep:
        return None
    try:
        return parts[1], float(at), decode_name(owner)
    except (ValueError, UnicodeDecodeError):
        return None


def day(ts: float) -> str:
    """UTC ``yyyy-mm-dd`` of an epoch time (``undated`` when it has none)."""
    try:
        return time.strftime("%Y-%m-%d", time.gmtime(ts))
    except (OverflowError, OSError, ValueError):
        return "undated"


def result_relpath(task_id: str) -> str:
    """Where a result lives, from its id alone: ``results/<day of the id>/<id>.msgpack``."""
    name = encode_name(task_id)
    if len(name) > 200:
        raise ConfigError(f"task id {task_id[:40]!r}... is too long to name a file (max 200)")
    if _OMNIQ_ID.fullmatch(task_id):
        return f"results/{day(int(task_id[:16], 16) / 1e9)}/{name}.msgpack"
    return f"results/other/{name}.msgpack"


def expiry_marker(expires_at: float, task_id: str) -> str:
    return f"expiry/{day(expires_at)}/{float(expires_at)!r}@{encode_name(task_id)}"


def parse_expiry_marker(name: str) -> tuple[float, str] | None:
    ts, sep, tid = name.rpartition("@")
    if not sep:
        return None
    try:
        return float(ts), decode_name(tid)
    except (ValueError, UnicodeDecodeError):
        return None


class BatchName(NamedTuple):
    """Fields of an event batch object's name."""

    first: float
    last: float
    n: int  # events in the batch
    batch: str

    def render(self) -> str:
        return f"events/{day(self.last)}/{self.first!r}_{self.last!r}_{self.n}_{self.batch}.msgpack"

    @classmethod
    def parse(cls, name: str) -> BatchName | None:
        if not name.endswith(".msgpack"):
            return None
        parts = name[: -len(".msgpack")].split("_")
        if len(parts) != 4:
            return None
        try:
            return cls(float(parts[0]), float(parts[1]), int(parts[2]), parts[3])
        except ValueError:
            return None


def _basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


# --------------------------------------------------------------------------------------------
# Errors in plain words
# --------------------------------------------------------------------------------------------
def _names(exc: BaseException) -> set[str]:
    return {c.__name__ for c in type(exc).__mro__}


#: Protocols whose top-level namespace is a "container" (Azure), not a "bucket".
_CONTAINER_PROTOCOLS = frozenset({"abfs", "abfss", "az"})
#: What a person sets to give each store credentials, for the "access denied" message.
_CREDENTIALS_HINT = {
    "gs": "a service account (GOOGLE_APPLICATION_CREDENTIALS) or token in storage_options",
    "abfs": "connection_string, account_key, sas_token or a credential in storage_options",
}
_CREDENTIALS_HINT["gcs"] = _CREDENTIALS_HINT["gs"]
for _p in ("abfss", "az"):
    _CREDENTIALS_HINT[_p] = _CREDENTIALS_HINT["abfs"]


class BucketMissing(FileNotFoundError):
    """A write was refused because the bucket (or Azure container) itself does not exist."""


def bucket_missing(exc: BaseException) -> bool:
    """True when ``exc`` says the bucket/container is missing, not just one object."""
    if isinstance(exc, BucketMissing):
        return True
    text = str(exc)
    return (
        "NoSuchBucket" in text
        or "ContainerNotFound" in text
        or "specified bucket does not exist" in text.lower()
        or "specified container does not exist" in text.lower()
    )


def explain(
    exc: BaseException,
    *,
    bucket: str = "",
    endpoint: str | None = None,
    local: bool = False,
    protocol: str = "",
) -> str:
    """A sentence saying what went wrong, for a person who has to fix it."""
    names = _names(exc)
    text = str(exc) or type(exc).__name__
    if local:
        if isinstance(exc, PermissionError):
            return f"access denied: this user may not write there ({text})"
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return f"the disk is full ({text})"
        if isinstance(exc, OSError) and exc.errno == errno.EROFS:
            return f"the file system is read-only ({text})"
        return f"{type(exc).__name__}: {text}"
    text = text.split("\nRequestId:", 1)[0].strip()  # Azure appends request ids and times
    if "NoCredentialsError" in names or "PartialCredentialsError" in names:
        return (
            "no credentials found (set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile, "
            f"or key/secret in storage_options): {text}"
        )
    if "CredentialUnavailableError" in names or text.startswith("DefaultAzureCredential failed"):
        first = text.split("\n", 1)[0]
        return (
            "no credentials found (give connection_string, account_key or sas_token in "
            f"storage_options, or sign in for DefaultAzureCredential): {first}"
        )
    if (
        isinstance(exc, PermissionError)
        or "AccessDenied" in text
        or "ClientAuthenticationError" in names
        or text.startswith(("Forbidden", "Server failed to authenticate"))
        or "Invalid Credentials" in text
    ):
        how = _CREDENTIALS_HINT.get(protocol, "the access key and secret")
        return f"access denied: check the credentials ({how}) and that they may write here: {text}"
    word = "container" if protocol in _CONTAINER_PROTOCOLS else "bucket"
    if bucket_missing(exc) or (isinstance(exc, FileNotFoundError) and "bucket" in text.lower()):
        return f"the {word} {bucket!r} does not exist: create it first"
    if names & {
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ClientConnectorError",
        "ServerTimeoutError",
        "ConnectionError",
        "ServiceRequestError",  # azure-core: the request never got an answer
        "gaierror",
        "TimeoutError",
    }:
        where = f" {endpoint}" if endpoint else ""
        return f"cannot reach the endpoint{where}: {text}"
    return f"{type(exc).__name__}: {text}"


_SECRET_OPTIONS = frozenset(
    {
        "key",
        "secret",
        "token",
        "password",
        "account_key",
        "sas_token",
        "connection_string",
        "client_secret",
        "credential",
        "session_token",
    }
)
_SECRET_PATTERNS = [
    (re.compile(r"(AccountKey=)[^;\s]+", re.IGNORECASE), r"\1***"),
    (re.compile(r"(SharedAccessSignature=)[^;\s]+", re.IGNORECASE), r"\1***"),
    (re.compile(r"([?&]sig=)[^&\s'\"]+", re.IGNORECASE), r"\1***"),
]


def scrub(text: str, storage_options: dict[str, Any] | None = None) -> str:
    """``text`` without secrets: values of secret ``storage_options`` and the secret parts of
    Azure connection strings and SAS URLs."""
    for name, value in (storage_options or {}).items():
        if name.lower() in _SECRET_OPTIONS and isinstance(value, str) and len(value) >= 6:
            text = text.replace(value, "***")
    for pattern, repl in _SECRET_PATTERNS:
        text = pattern.sub(repl, text)
    return text


# --------------------------------------------------------------------------------------------
# Filesystem adapters: the same small async surface over local disk, sync and async fsspec
# --------------------------------------------------------------------------------------------
async def _bounded(fn: Callable[[T], Awaitable[R]], items: Sequence[T], limit: int) -> list[R]:
    """``[await fn(x) for x in items]`` with at most ``limit`` in flight; the first error wins
    after every item has been tried (so one bad object does not stop the others)."""
    out: list[Any] = [None] * len(items)
    errors: list[BaseException] = []
    it = iter(enumerate(items))

    async def worker() -> None:
        for i, item in it:
            try:
                out[i] = await fn(item)
            except Exception as exc:
                errors.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(min(limit, len(items))):
            tg.start_soon(worker)
    if errors:
        raise errors[0]
    return out


def _split(items: Sequence[T], n: int) -> list[Sequence[T]]:
    size = max(1, -(-len(items) // n))
    return [items[i : i + size] for i in range(0, len(items), size)]


class _Files:
    """Async file operations on one filesystem. Paths are absolute, without protocol."""

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def endpoint(self) -> str | None:
        return None

    async def put(self, path: str, data: Blob) -> None:
        raise NotImplementedError

    async def put_chains(self, chains: Sequence[Sequence[tuple[str, bytes]]]) -> None:
        """Write many objects at once; within a chain, in order (an index entry before the
        object it points to)."""
        raise NotImplementedError

    async def get(self, path: str) -> bytes | None:
        """The object's bytes, or None when there is none."""
        raise NotImplementedError

    async def get_many(self, paths: Sequence[str]) -> dict[str, bytes]:
        raise NotImplementedError

    async def delete(self, paths: Sequence[str]) -> None:
        """Delete objects; missing ones are fine."""
        raise NotImplementedError

    async def find(self, path: str) -> list[str]:
        """Every object below a directory, recursively ([] when there is none)."""
        raise NotImplementedError

    async def dirs(self, path: str) -> list[str]:
        """Names of the immediate subdirectories."""
        raise NotImplementedError

    async def exists(self, paths: Sequence[str]) -> set[str]:
        """Which of these objects exist (none is read)."""
        raise NotImplementedError

    async def move(self, src: str, dst: str) -> None:
        """Move one object (``FileNotFoundError`` when ``src`` is not there)."""
        raise NotImplementedError


def _write_atomic(path: str, data: Blob, *, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` so a reader sees all of it or the old file, never a part."""
    head, name = os.path.split(path)
    for _ in range(3):
        tmp = os.path.join(head, f".{name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileNotFoundError:
            os.makedirs(head, exist_ok=True)
            continue
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        os.close(fd)
        try:
            os.replace(tmp, path)
            return
        except FileNotFoundError:  # the directory was pruned under us: make it and go again
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            os.makedirs(head, exist_ok=True)
    raise FileNotFoundError(errno.ENOENT, "directory keeps disappearing", head)


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def _prune(path: str, stop: str) -> None:
    """Remove empty parent directories of ``path`` up to (not including) ``stop``."""
    head = os.path.dirname(path)
    while len(head) > len(stop) and head.startswith(stop):
        try:
            os.rmdir(head)
        except OSError:
            return
        head = os.path.dirname(head)


class _LocalFiles(_Files):
    """A local or shared POSIX directory. Single small reads run on the loop (about 8 us, less
    than a thread hop's 100 us); writes fsync, so they and all batches run in worker threads."""

    def __init__(self, root: str) -> None:
        self.root = root

    async def open(self) -> None:
        # the root is 0700 (files under it 0600), so no other user reads or plants payloads
        await anyio.to_thread.run_sync(make_private_dir, self.root)
        await anyio.to_thread.run_sync(check_owner, self.root, self.root)

    async def put(self, path: str, data: Blob) -> None:
        await anyio.to_thread.run_sync(
            functools.partial(_write_atomic, path, data, fsync=bool(data))
        )

    async def put_chains(self, chains: Sequence[Sequence[tuple[str, bytes]]]) -> None:
        # fsync makes each write cost a disk flush; flushes from several threads share one
        # journal commit, so batches go to up to 16 threads. Empty index files need no fsync.
        def run(part: Sequence[Sequence[tuple[str, bytes]]]) -> None:
            for chain in part:
                for p, d in chain:
                    _write_atomic(p, d, fsync=bool(d))

        async def one(part: Sequence[Sequence[tuple[str, bytes]]]) -> None:
            await anyio.to_thread.run_sync(run, part)

        await _bounded(one, _split(chains, 16), 16)

    async def get(self, path: str) -> bytes | None:
        return _read(path)

    async def get_many(self, paths: Sequence[str]) -> dict[str, bytes]:
        def run(chunk: Sequence[str]) -> list[tuple[str, bytes | None]]:
            return [(p, _read(p)) for p in chunk]

        if len(paths) <= 16:
            found = run(paths)
        else:

            async def one(chunk: Sequence[str]) -> list[tuple[str, bytes | None]]:
                return await anyio.to_thread.run_sync(run, chunk)

            found = [x for part in await _bounded(one, _split(paths, 8), 8) for x in part]
        return {p: d for p, d in found if d is not None}

    async def delete(self, paths: Sequence[str]) -> None:
        def run() -> None:
            for p in paths:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)
                _prune(p, self.root)

        await anyio.to_thread.run_sync(run)

    async def find(self, path: str) -> list[str]:
        def run() -> list[str]:
            out: list[str] = []
            for head, dirs, files in os.walk(path):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                out.extend(f"{head}/{f}" for f in files if not f.startswith("."))
            return out

        return await anyio.to_thread.run_sync(run)

    async def dirs(self, path: str) -> list[str]:
        def run() -> list[str]:
            try:
                with os.scandir(path) as it:
                    return [e.name for e in it if e.is_dir() and not e.name.startswith(".")]
            except (FileNotFoundError, NotADirectoryError):
                return []

        return await anyio.to_thread.run_sync(run)

    async def exists(self, paths: Sequence[str]) -> set[str]:
        def run() -> set[str]:
            return {p for p in paths if os.path.isfile(p)}

        return run() if len(paths) <= 16 else await anyio.to_thread.run_sync(run)

    async def move(self, src: str, dst: str) -> None:
        def run() -> None:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            os.replace(src, dst)
            _prune(src, self.root)

        await anyio.to_thread.run_sync(run)


class _SyncFiles(_Files):
    """A synchronous fsspec filesystem. ``memory://`` answers in microseconds, so its calls run
    on the loop; anything else (sftp, hdfs, ...) runs in worker threads."""

    def __init__(self, fs: Any, *, threaded: bool) -> None:
        self.fs = fs
        self.threaded = threaded

    async def _call(self, fn: Callable[..., R], *args: Any) -> R:
        if self.threaded:
            return await anyio.to_thread.run_sync(functools.partial(fn, *args))
        return fn(*args)

    def _get(self, path: str) -> bytes | None:
        try:
            data: bytes = self.fs.cat_file(path)
            return data
        except (FileNotFoundError, IsADirectoryError):
            return None

    async def put(self, path: str, data: Blob) -> None:
        await self._call(self.fs.pipe_file, path, as_bytes(data))

    def _put_chain(self, chain: Sequence[tuple[str, bytes]]) -> None:
        for p, d in chain:
            self.fs.pipe_file(p, d)

    async def put_chains(self, chains: Sequence[Sequence[tuple[str, bytes]]]) -> None:
        if not self.threaded:
            for chain in chains:
                self._put_chain(chain)
            return
        await _bounded(lambda c: self._call(self._put_chain, c), chains, 16)

    async def get(self, path: str) -> bytes | None:
        return await self._call(self._get, path)

    async def get_many(self, paths: Sequence[str]) -> dict[str, bytes]:
        if self.threaded:
            got = await _bounded(self.get, paths, 16)
        else:
            got = [self._get(p) for p in paths]
        return {p: d for p, d in zip(paths, got, strict=True) if d is not None}

    def _delete(self, paths: Sequence[str]) -> None:
        for p in paths:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(p)

    async def delete(self, paths: Sequence[str]) -> None:
        await self._call(self._delete, paths)

    def _find(self, path: str) -> list[str]:
        try:
            return list(self.fs.find(path))
        except FileNotFoundError:
            return []

    async def find(self, path: str) -> list[str]:
        return await self._call(self._find, path)

    def _dirs(self, path: str) -> list[str]:
        try:
            entries = self.fs.ls(path, detail=True)
        except FileNotFoundError:
            return []
        return [_basename(e["name"].rstrip("/")) for e in entries if e.get("type") == "directory"]

    async def dirs(self, path: str) -> list[str]:
        return await self._call(self._dirs, path)

    async def exists(self, paths: Sequence[str]) -> set[str]:
        def run() -> set[str]:
            return {p for p in paths if self.fs.isfile(p)}

        return await self._call(run)

    def _move(self, src: str, dst: str) -> None:
        self.fs.cp_file(src, dst)
        self.fs.rm_file(src)

    async def move(self, src: str, dst: str) -> None:
        await self._call(self._move, src, dst)


class _AsyncFiles(_Files):
    """An async fsspec filesystem (s3fs, gcsfs, adlfs): its coroutines run on our loop, many at
    once, bounded by ``CONCURRENCY``."""

    def __init__(self, fs: Any) -> None:
        self.fs = fs
        # s3fs >= 2024.12 sends a HEAD before each GET to decide on a chunked download unless
        # told max_concurrency=1: for our small objects that doubled the requests.
        self._cat_kw: dict[str, Any] = {}
        if "max_concurrency" in inspect.signature(fs._cat_file).parameters:
            self._cat_kw["max_concurrency"] = 1

    async def open(self) -> None:
        setter = getattr(self.fs, "set_session", None)
        if setter is not None:
            await setter()

    async def close(self) -> None:
        creator = getattr(self.fs, "_s3creator", None)  # s3fs keeps the client's context here
        if creator is not None:
            with contextlib.suppress(Exception):
                await creator.__aexit__(None, None, None)
            self.fs._s3 = None
            return
        # gcsfs: an aiohttp session (its ``session`` property raises before the first request);
        # adlfs: an async BlobServiceClient (and maybe a credential) that own aiohttp sessions
        for attr in ("_session", "service_client", "credential"):
            closer = getattr(getattr(self.fs, attr, None), "close", None)
            if closer is not None:
                with contextlib.suppress(Exception):
                    res = closer()
                    if hasattr(res, "__await__"):
                        await res
        if getattr(self.fs, "_session", None) is not None:
            self.fs._session = None
        # Closed: their at-exit finalizers have nothing left to do. adlfs's would call
        # ``fsspec.asyn.sync(None, ...)`` for an asynchronous instance and print a traceback at
        # interpreter exit (and they keep the instance alive until then).
        registry = getattr(weakref.finalize, "_registry", {})
        for fin, info in list(registry.items()):
            with contextlib.suppress(Exception):
                if info.weakref() is self.fs:
                    fin.detach()

    def endpoint(self) -> str | None:
        url = getattr(self.fs, "endpoint_url", None)
        if url:
            return str(url)
        client = getattr(self.fs, "_s3", None)
        host = getattr(getattr(client, "_endpoint", None), "host", None)
        if host:
            return str(host)
        if getattr(type(self.fs), "_location", None) is not None:  # gcsfs (a property)
            with contextlib.suppress(Exception):
                return str(self.fs._location)
        url = getattr(getattr(self.fs, "service_client", None), "url", None)  # adlfs
        if url:
            return str(url).split("?", 1)[0]  # never a SAS token
        return os.environ.get("AWS_ENDPOINT_URL")

    async def _pipe(self, path: str, data: bytes) -> None:
        try:
            await self.fs._pipe_file(path, data)
        except FileNotFoundError as exc:
            # a PUT finds no object to miss: a 404 means the bucket (container) is not there
            raise BucketMissing(errno.ENOENT, f"no bucket for {path}: {exc}") from exc

    async def put(self, path: str, data: Blob) -> None:
        await self._pipe(path, as_bytes(data))

    async def put_chains(self, chains: Sequence[Sequence[tuple[str, bytes]]]) -> None:
        async def chain(c: Sequence[tuple[str, bytes]]) -> None:
            for p, d in c:
                await self._pipe(p, d)

        await _bounded(chain, chains, CONCURRENCY)

    async def get(self, path: str) -> bytes | None:
        try:
            data: bytes = await self.fs._cat_file(path, **self._cat_kw)
            return data
        except FileNotFoundError as exc:
            if bucket_missing(exc):  # the bucket is gone, not the object
                raise
            return None

    async def get_many(self, paths: Sequence[str]) -> dict[str, bytes]:
        got = await _bounded(self.get, paths, CONCURRENCY)
        return {p: d for p, d in zip(paths, got, strict=True) if d is not None}

    async def delete(self, paths: Sequence[str]) -> None:
        if not paths:
            return
        bulk = getattr(self.fs, "_bulk_delete", None)  # s3fs: 1,000 keys per request
        if bulk is not None:
            chunks = [paths[i : i + 1000] for i in range(0, len(paths), 1000)]
            await _bounded(lambda c: bulk(list(c)), chunks, 4)
            return

        async def one(p: str) -> None:
            with contextlib.suppress(FileNotFoundError):
                await self.fs._rm_file(p)

        await _bounded(one, paths, CONCURRENCY)

    async def find(self, path: str) -> list[str]:
        try:
            found = await self.fs._find(path)
        except FileNotFoundError as exc:
            if bucket_missing(exc):
                raise
            return []
        return [p for p in found if p != path]

    async def dirs(self, path: str) -> list[str]:
        try:
            entries = await self.fs._ls(path, detail=True)
        except FileNotFoundError:
            return []
        return [_basename(e["name"].rstrip("/")) for e in entries if e.get("type") == "directory"]

    async def exists(self, paths: Sequence[str]) -> set[str]:
        found = await _bounded(self.fs._exists, paths, CONCURRENCY)
        return {p for p, there in zip(paths, found, strict=True) if there}

    async def move(self, src: str, dst: str) -> None:
        await self.fs._cp_file(src, dst)  # a copy inside the store: no bytes come here
        await self.fs._rm_file(src)


# --------------------------------------------------------------------------------------------
# URL -> filesystem
# --------------------------------------------------------------------------------------------
class Location(NamedTuple):
    protocol: str
    root: str  # path without protocol, no trailing slash
    local: bool


def parse_url(url: str) -> Location:
    """Split an fsspec URL into protocol and root; ``ConfigError`` for what cannot work."""
    from fsspec.core import split_protocol

    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(
            f"storage url {url!r} has no scheme: use file:///dir, memory://bucket, "
            "s3://bucket/prefix, gs://bucket/prefix or abfs://container/prefix"
        )
    protocol, path = split_protocol(url)
    protocol = (protocol or "").lower()
    if protocol in ("file", "local"):
        root = os.path.abspath(os.path.expanduser(path or "")).rstrip("/") or "/"
        return Location("file", root, True)
    cls = filesystem_class(protocol, url)
    root = str(cls._strip_protocol(url)).rstrip("/")
    if not root.strip("/"):
        raise ConfigError(
            f"storage url {masked(url)!r} names no bucket: use {protocol}://bucket or "
            f"{protocol}://bucket/prefix"
        )
    return Location(protocol, root, False)


def filesystem_class(protocol: str, url: str = "") -> Any:
    """The fsspec class for ``protocol``; a missing package is a ``ConfigError`` saying what to
    install."""
    import fsspec

    try:
        return fsspec.get_filesystem_class(protocol)
    except ImportError as exc:
        pkg, how = _PACKAGES.get(protocol, (protocol, f"install the fsspec package for {protocol}"))
        raise ConfigError(
            f"{protocol}:// storage needs the {pkg} package, which is not installed: {how} ({exc})"
        ) from exc
    except ValueError as exc:
        raise ConfigError(
            f"storage url {masked(url) or protocol!r}: unknown protocol {protocol!r} "
            "(use file://, memory://, s3://, gs:// or abfs://)"
        ) from exc


def _gcs_emulator(opts: dict[str, Any]) -> str | None:
    """The GCS emulator (or other non-Google endpoint) in use, if any."""
    if opts.get("endpoint_url"):
        return str(opts["endpoint_url"])
    env = os.environ.get("STORAGE_EMULATOR_HOST", "")
    return env if env not in ("", "default") else None


def _gcs_class(cls: Any, opts: dict[str, Any]) -> Any:
    """The gcsfs class to use, and the emulator defaults in ``opts``.

    Against an emulator (``STORAGE_EMULATOR_HOST`` or ``endpoint_url``) this is gcsfs's plain
    JSON-API ``GCSFileSystem``: its default subclass (gcsfs >= 2025.x) first asks the gRPC
    storage-control API for each bucket's layout, which emulators do not serve, and retries that
    for a minute per operation. Like Google's own client, an emulator set through the
    environment gets anonymous credentials unless a ``token`` is given.
    """
    if _gcs_emulator(opts) is None:
        return cls
    if os.environ.get("STORAGE_EMULATOR_HOST") and "endpoint_url" not in opts:
        opts.setdefault("token", "anon")
    try:
        from gcsfs.core import GCSFileSystem
    except ImportError:  # an older gcsfs: its only class is the plain one
        return cls
    return GCSFileSystem if issubclass(cls, GCSFileSystem) else cls


def no_task_queue_message(url: str) -> str:
    """Why an object-store URL cannot be a task queue, and what to use instead."""
    scheme = url.split("://", 1)[0] if "://" in url else url
    return (
        f"{scheme}:// cannot hold a task queue (no atomic claim); use sqlite://, "
        "postgresql://, redis://, nats:// or file://"
    )


# --------------------------------------------------------------------------------------------
# Results and events
# --------------------------------------------------------------------------------------------
class FsspecBackend(ResultStore, EventStore):
    """Results and events as objects under one fsspec URL (layout in the module docstring)."""

    #: False: an object store has no atomic claim (see ``no_task_queue_message``).
    can_hold_tasks: ClassVar[bool] = False
    #: What omniq-layout.json tells a person browsing the storage.
    _layout: ClassVar[dict[str, str]] = {
        "omniq": "results and events of OmniQ tasks",
        "results": "results/<yyyy-mm-dd of the task id>/<task id>.msgpack: one TaskResult",
        "keys": "keys/<key>@<task id>: empty index objects, for results with a key",
        "expiry": "expiry/<yyyy-mm-dd>/<expires_at>@<task id>: empty index objects",
        "events": "events/<yyyy-mm-dd>/<first>_<last>_<count>_<batch>.msgpack: TaskEvents",
        "blobs": "blobs/<2 hex>/<sha-256 hex>: large values, each exactly its bytes",
        "blob-owners": "blob-owners/<sha-256 hex>/<time>@<owner>: empty, who refers to a blob",
        "blob-trash": "blob-trash/<sha-256 hex>/...: blobs a running sweep is deleting",
    }

    def __init__(self, url: str, *, storage_options: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.url = url
        self.storage_options = dict(storage_options or {})
        self.location = parse_url(url)
        self.root = self.location.root
        self._files: _Files | None = None
        self._events: OrderedDict[str, list[TaskEvent]] = OrderedDict()
        self._cached_events = 0

    # --- lifecycle ------------------------------------------------------------------------------
    def _make_files(self) -> _Files:
        loc = self.location
        if loc.local:
            return _LocalFiles(loc.root)
        cls = filesystem_class(loc.protocol, self.url)
        is_async = bool(getattr(cls, "async_impl", False))
        # Our own instance (no sharing across event loops) and no listing cache (other
        # processes write here too); what the URL says (an Azure account in
        # abfs://container@account.dfs.core.windows.net) comes next, and the caller's
        # storage_options win over everything else.
        opts: dict[str, Any] = {"skip_instance_cache": True, "use_listings_cache": False}
        if is_async:
            opts["asynchronous"] = True
        with contextlib.suppress(Exception):
            opts.update(cls._get_kwargs_from_urls(self.url))
        opts.update(self.storage_options)
        if loc.protocol in ("s3", "s3a"):  # enough pooled connections for CONCURRENCY
            cfg = dict(opts.get("config_kwargs") or {})
            cfg.setdefault("max_pool_connections", CONCURRENCY)
            opts["config_kwargs"] = cfg
        if loc.protocol in ("gs", "gcs"):
            cls = _gcs_class(cls, opts)
        try:
            fs = cls(**opts)
        except Exception as exc:
            why = scrub(explain(exc, protocol=loc.protocol), self.storage_options)
            raise StorageError(f"cannot open {masked(self.url)}: {why}") from exc
        if is_async:
            return _AsyncFiles(fs)
        return _SyncFiles(fs, threaded=loc.protocol != "memory")

    async def _open(self) -> None:
        files = self._make_files()
        self._files = files
        layout = msgspec.json.encode({"layout": LAYOUT_VERSION, **self._layout})
        try:
            await files.open()
            # The write probe: proves the bucket exists, the credentials work and may write.
            await files.put(self._path("omniq-layout.json"), layout)
        except BaseException as exc:
            err = self._error("connect to", exc) if isinstance(exc, Exception) else None
            self._files = None
            with contextlib.suppress(Exception):
                await files.close()
            if err is not None:
                raise err from exc
            raise

    async def _close(self) -> None:
        files, self._files = self._files, None
        if files is not None:
            await files.close()

    # --- helpers ---------------------------------------------------------------------------------
    @property
    def files(self) -> _Files:
        if self._files is None:
            raise StorageError(f"{masked(self.url)} is not connected: call connect() first")
        return self._files

    def _path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if self.root != "/" else f"/{rel}"

    def result_path(self, task_id: str) -> str:
        """Full path (without protocol) of a task's result object."""
        return self._path(result_relpath(task_id))

    def _error(self, action: str, exc: BaseException) -> StorageError:
        if isinstance(exc, StorageError):
            return exc
        bucket = self.root.strip("/").split("/")[0]
        endpoint = self._files.endpoint() if self._files is not None else None
        unwritable = self.location.local and isinstance(exc, OSError) and exc.errno in _UNWRITABLE
        why = explain(
            exc,
            bucket=bucket,
            endpoint=endpoint,
            local=self.location.local,
            protocol=self.location.protocol,
        )
        return (StorageUnwritable if unwritable else StorageError)(
            f"cannot {action} {masked(self.url)}: " + scrub(why, self.storage_options)
        )

    async def _guard(self, action: str, aw: Awaitable[R]) -> R:
        try:
            return await aw
        except (StorageError, ConfigError):
            raise
        except Exception as exc:
            raise self._error(action, exc) from exc

    def _decode_result(self, path: str, data: bytes) -> TaskResult | None:
        try:
            return _result_dec.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("ignoring unreadable result object %s (%d bytes): %s", path, len(data), exc)
            return None

    # --- ResultStore -------------------------------------------------------------------------------
    async def put_results(self, results: Sequence[TaskResult]) -> None:
        for r in results:
            if not isinstance(r, TaskResult):
                raise ConfigError(f"results must hold TaskResult, got {type(r).__name__}")
        if not results:
            return
        chains: list[list[tuple[str, bytes]]] = []
        for r in results:
            # index entries first: a crash leaves a dangling entry, never an unindexed result
            chain = [(p, b"") for p in self._index_paths(r)]
            chain.append((self.result_path(r.task_id), _results_enc.encode(r)))
            chains.append(chain)
        files = self.files
        if len(chains) == 1 and len(chains[0]) == 1:
            await self._guard("write a result to", files.put(*chains[0][0]))
        else:
            await self._guard("write results to", files.put_chains(chains))

    async def get_result(self, task_id: str) -> TaskResult | None:
        path = self.result_path(task_id)
        data = await self._guard("read a result from", self.files.get(path))
        return None if data is None else self._decode_result(path, data)

    async def get_results(self, task_ids: Sequence[str]) -> dict[str, TaskResult]:
        paths = {self.result_path(t): t for t in dict.fromkeys(task_ids)}
        if not paths:
            return {}
        found = await self._guard("read results from", self.files.get_many(list(paths)))
        out: dict[str, TaskResult] = {}
        for path, tid in paths.items():  # in the order asked for
            data = found.get(path)
            r = self._decode_result(path, data) if data is not None else None
            if r is not None:
                out[tid] = r
        return out

    async def find_results(self, *, key_prefix: str) -> list[TaskResult]:
        if not isinstance(key_prefix, str):
            raise ConfigError(f"key_prefix must be a str, got {type(key_prefix).__name__}")
        *full, _partial = key_prefix.split("/")
        base = "keys/" + key_dir(full) if full else "keys"
        keys_root = self._path("keys")
        found = await self._guard("list result keys in", self.files.find(self._path(base)))
        ids: dict[str, None] = {}
        folded = key_prefix.casefold()  # a case-insensitive disk may spell a directory otherwise
        for path in found:
            parsed = parse_key_marker(path[len(keys_root) + 1 :])
            if parsed is not None and parsed[0].casefold().startswith(folded):
                ids[parsed[1]] = None
        results = await self.get_results(list(ids))
        out = [r for r in results.values() if r.key is not None and r.key.startswith(key_prefix)]
        out.sort(key=lambda r: (r.key or "", r.task_id))
        return out

    def _index_paths(self, r: TaskResult) -> list[str]:
        out = []
        if r.key is not None:
            out.append(self._path("keys/" + key_marker(r.key, r.task_id)))
        if r.expires_at is not None:
            out.append(self._path(expiry_marker(r.expires_at, r.task_id)))
        return out

    async def delete_results(self, task_ids: Sequence[str]) -> int:
        paths = {self.result_path(t): t for t in dict.fromkeys(task_ids)}
        if not paths:
            return 0
        files = self.files
        found = await self._guard("read results from", files.get_many(list(paths)))
        doomed = list(found)
        for path, data in found.items():
            r = self._decode_result(path, data)
            if r is not None:
                doomed.extend(self._index_paths(r))
        # the result objects go first: an index entry without a result is harmless
        await self._guard("delete results in", files.delete(list(found)))
        await self._guard("delete result index in", files.delete(doomed[len(found) :]))
        return len(found)

    async def purge_results(self, *, now: float) -> int:
        files = self.files
        root = self._path("expiry")
        entries = await self._guard("list expiring results in", files.find(root))
        due: dict[str, list[str]] = {}  # task id -> its expiry markers that are due
        for path in entries:
            parsed = parse_expiry_marker(_basename(path))
            if parsed is not None and parsed[0] <= now:
                due.setdefault(parsed[1], []).append(path)
        if not due:
            return 0
        results = await self.get_results(list(due))
        doomed: list[str] = []
        stale: list[str] = []
        count = 0
        for tid, markers in due.items():
            r = results.get(tid)
            if r is None:
                # a marker written just before its result (see put_results) is left alone
                stale.extend(m for m in markers if _marker_time(m) < now - 60)
            elif r.expires_at is not None and r.expires_at <= now:
                count += 1
                doomed.append(self.result_path(tid))
                doomed.extend(self._index_paths(r))
                stale.extend(markers)
            else:  # overwritten with a later expiry: only the old marker goes
                stale.extend(markers)
        await self._guard("delete expired results in", files.delete(doomed))
        await self._guard("delete result index in", files.delete(list(dict.fromkeys(stale))))
        return count

    # --- EventStore -----------------------------------------------------------------------------
    async def append_events(self, events: Sequence[TaskEvent]) -> None:
        for e in events:
            if not isinstance(e, TaskEvent):
                raise ConfigError(f"events must hold TaskEvent, got {type(e).__name__}")
        if not events:
            return
        stamps = [e.timestamp for e in events]
        name = BatchName(float(min(stamps)), float(max(stamps)), len(events), new_id())
        path = self._path(name.render())
        batch = list(events)
        await self._guard("write events to", self.files.put(path, _results_enc.encode(batch)))
        self._remember(path, batch)

    def _remember(self, path: str, batch: list[TaskEvent]) -> None:
        if path in self._events:
            return
        self._events[path] = batch
        self._cached_events += len(batch)
        while self._cached_events > EVENT_CACHE_LIMIT and len(self._events) > 1:
            _, old = self._events.popitem(last=False)
            self._cached_events -= len(old)

    def _forget(self, path: str) -> None:
        old = self._events.pop(path, None)
        if old is not None:
            self._cached_events -= len(old)

    async def _batches(self, since: float | None) -> list[tuple[str, BatchName]]:
        """Event batch objects that may hold events at or after ``since``, oldest first."""
        files = self.files
        root = self._path("events")
        if since is None:
            found = await self._guard("list events in", files.find(root))
        else:
            days = await self._guard("list events in", files.dirs(root))
            first = day(since)
            wanted = [d for d in days if d >= first or d == "undated"]
            parts = await _bounded(
                lambda d: self._guard("list events in", files.find(f"{root}/{d}")), wanted, 16
            )
            found = [p for part in parts for p in part]
        out = []
        for path in found:
            name = BatchName.parse(_basename(path))
            if name is not None and (since is None or name.last >= since):
                out.append((path, name))
        out.sort(key=lambda pn: (pn[1].first, pn[1].batch))
        return out

    async def _load_batches(self, paths: Sequence[str]) -> dict[str, list[TaskEvent]]:
        missing = [p for p in paths if p not in self._events]
        if missing:
            got = await self._guard("read events from", self.files.get_many(missing))
            for path, data in got.items():
                try:
                    self._remember(path, _events_dec.decode(data))
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    log.warning("ignoring unreadable event batch %s: %s", path, exc)
        return {p: self._events[p] for p in paths if p in self._events}

    async def query_events(
        self,
        *,
        task_id: str | None = None,
        since: float | None = None,
        types: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> list[TaskEvent]:
        batches = await self._batches(since)
        if since is None:  # a full listing: forget batches purged by someone else
            listed = {p for p, _ in batches}
            for path in [p for p in self._events if p not in listed]:
                self._forget(path)
        loaded = await self._load_batches([p for p, _ in batches])
        if isinstance(types, str):
            types = [types]
        wanted = {str(t) for t in types} if types is not None else None
        rows: list[tuple[float, str, int, TaskEvent]] = []
        for path, name in batches:
            for i, ev in enumerate(loaded.get(path, ())):
                if task_id is not None and ev.task_id != task_id:
                    continue
                if since is not None and ev.timestamp < since:
                    continue
                if wanted is not None and ev.type not in wanted:
                    continue
                rows.append((ev.timestamp, name.batch, i, ev))
        rows.sort(key=lambda row: row[:3])
        out = [row[3] for row in rows]
        return out[:limit] if limit is not None else out

    async def purge_events(self, *, before: float) -> int:
        batches = [(p, n) for p, n in await self._batches(None) if n.first < before]
        whole = [p for p, n in batches if n.last < before]
        partial = [p for p, n in batches if n.last >= before]
        count = sum(n.n for p, n in batches if n.last < before)
        if partial:
            loaded = await self._load_batches(partial)
            for path in partial:
                evs = loaded.get(path)
                if evs is None:
                    continue
                keep = [e for e in evs if e.timestamp >= before]
                count += len(evs) - len(keep)
                if keep:  # the rest becomes a new object (same batch id: same tie order),
                    # written before the old one goes
                    old = BatchName.parse(_basename(path))
                    assert old is not None
                    stamps = [e.timestamp for e in keep]
                    name = BatchName(min(stamps), max(stamps), len(keep), old.batch)
                    new_path = self._path(name.render())
                    await self._guard(
                        "write events to", self.files.put(new_path, _results_enc.encode(keep))
                    )
                    self._remember(new_path, keep)
                whole.append(path)
        await self._guard("delete events in", self.files.delete(whole))
        for path in whole:
            self._forget(path)
        return count

    # --- BlobStore --------------------------------------------------------------------------------
    def _blob_file(self, digest: str) -> str:
        return self._path(blob_relpath(digest))

    async def put_blobs(self, blobs: Mapping[str, Blob], owner: str, *, now: float) -> int:
        given = check_blobs(blobs, owner)
        if not given:
            return 0
        await self._own({owner: list(given)}, now)
        files = self.files
        paths = {self._blob_file(d): d for d in given}
        stored = await self._guard("look for blobs in", files.exists(list(paths)))
        todo = [(p, d) for p, d in paths.items() if p not in stored]

        async def put(item: tuple[str, str]) -> None:
            await files.put(item[0], given[item[1]])  # whole, or not at all

        await self._guard("write blobs to", _bounded(put, todo, 8))
        return sum(nbytes(given[d]) for _, d in todo)

    async def _own(self, owners: dict[str, list[str]], now: float) -> None:
        chains = [
            [(self._path(blob_owner_marker(d, o, now)), b"")] for o, ds in owners.items() for d in ds
        ]
        if chains:
            await self._guard("record blob owners in", self.files.put_chains(chains))

    async def add_blob_owners(self, owners: Mapping[str, Sequence[str]], *, now: float) -> None:
        await self._own(check_owners(owners), now)

    async def get_blobs(self, digests: Sequence[str]) -> dict[str, bytes]:
        ds = check_digests(digests)
        if not ds:
            return {}
        files = self.files
        paths = {self._blob_file(d): d for d in ds}
        found = await self._guard("read blobs from", files.get_many(list(paths)))
        out = {paths[p]: data for p, data in found.items()}
        for d in ds:
            if d not in out:  # a sweep may be making sure nobody owns it (see the docstring)
                trash = await self._guard(
                    "read blobs from", files.find(self._path(f"blob-trash/{d}"))
                )
                got = await self._guard("read blobs from", files.get_many(trash[:1]))
                out.update((d, data) for data in got.values())
        return {d: out[d] for d in ds if d in out}

    async def missing_blobs(self, digests: Sequence[str]) -> set[str]:
        ds = check_digests(digests)
        if not ds:
            return set()
        paths = {self._blob_file(d): d for d in ds}
        stored = await self._guard("look for blobs in", self.files.exists(list(paths)))
        return {d for p, d in paths.items() if p not in stored}

    def blob_path(self, digest: str) -> str | None:
        if not self.location.local or not _DIGEST_NAME.fullmatch(str(digest)):
            return None
        path = self._blob_file(digest)
        return path if os.path.isfile(path) else None

    async def _live_tasks(self, task_ids: list[str]) -> set[str]:
        """Which of these tasks may still run: none here (no task queue)."""
        return set()

    async def sweep_blobs(self, *, older_than: float) -> int:
        files = self.files
        root_len = len(self._path(""))
        # blobs first, then owners: a blob listed here had its first owner marked before
        listed = await self._guard("list blobs in", files.find(self._path("blobs")))
        stored = {d for p in listed if _DIGEST_NAME.fullmatch(d := _basename(p))}
        markers = await self._guard("list blob owners in", files.find(self._path("blob-owners")))
        owned: set[str] = set()
        old: list[tuple[str, str, str]] = []  # (marker path, digest, owner)
        for path in markers:
            parsed = parse_blob_owner_marker(path[root_len:])
            if parsed is None:
                continue
            d, at, owner = parsed
            if at >= older_than:
                owned.add(d)
            else:
                old.append((path, d, owner))
        live = await self._live_owners({o for _, _, o in old})
        dead = []
        for path, d, owner in old:
            if owner in live:
                owned.add(d)
            else:
                dead.append(path)
        await self._guard("delete blob owners in", files.delete(dead))
        trash = await self._guard("list blobs in", files.find(self._path("blob-trash")))
        stale = time.time() - TRASH_STALE
        doomed: list[tuple[str, str | None]] = [(d, None) for d in sorted(stored - owned)]
        for path in trash:  # left by a sweep that crashed: settled here
            name = _basename(path)
            d = path[root_len:].split("/")[1]
            with contextlib.suppress(ValueError):
                if _DIGEST_NAME.fullmatch(d) and float(name.partition("@")[0]) < stale:
                    doomed.append((d, path))
        gone = await self._guard("delete blobs in", _bounded(self._take_blob, doomed, 16))
        return sum(gone)

    async def _live_owners(self, owners: set[str]) -> set[str]:
        tasks = {tid: o for o in owners if (tid := task_owner(o)) is not None}
        results: dict[str, str] = {}
        for o in owners:
            if (rid := result_owner(o)) is not None:
                with contextlib.suppress(ConfigError):  # an id no result can have
                    results[self.result_path(rid)] = o
        live = {tasks[t] for t in await self._live_tasks(list(tasks))}
        there = await self._guard("look for results in", self.files.exists(list(results)))
        live.update(results[p] for p in there)
        return live

    async def _take_blob(self, item: tuple[str, str | None]) -> int:
        """Delete one blob nobody owned when the sweep looked: moved to the trash first, and
        back when an owner was marked meanwhile. 1 when it is gone."""
        d, trashed = item
        files = self.files
        home = self._blob_file(d)
        if trashed is None:
            trashed = self._path(f"blob-trash/{d}/{time.time()!r}@{secrets.token_hex(4)}")
            try:
                await files.move(home, trashed)
            except FileNotFoundError:
                return 0  # another sweep took it
        if await files.find(self._path(f"blob-owners/{d}")):
            with contextlib.suppress(FileNotFoundError):  # a put owns it now: it stays
                await files.move(trashed, home)
            return 0
        await files.delete([trashed])
        return 1


def _marker_time(path: str) -> float:
    parsed = parse_expiry_marker(_basename(path))
    return parsed[0] if parsed else 0.0


# --------------------------------------------------------------------------------------------
# The file:// task queue
# --------------------------------------------------------------------------------------------
class Slot(NamedTuple):
    """The fields of a task file's *name*: everything about a task that changes while it lives.

    The file's content (``_Record``) is written once at enqueue; a status change is one
    ``os.rename`` to a new directory and name, so exactly one of several racing processes wins
    it and nobody ever rewrites a file someone else may be moving. ``x`` stands for None.
    """

    priority: int
    seq: str  # enqueue order (a time-ordered id), for FIFO among equal priorities
    deliveries: int
    attempts: int
    created_at: float
    expires_at: float | None
    eta: float | None
    lease_until: float | None
    ndeps: int  # dependencies it may still wait for
    task_id: str

    def render(self) -> str:
        def f(x: float | None) -> str:
            return "x" if x is None else repr(float(x))

        return (
            f"{self.priority}_{self.seq}_{self.deliveries}_{self.attempts}_{f(self.created_at)}_"
            f"{f(self.expires_at)}_{f(self.eta)}_{f(self.lease_until)}_{self.ndeps}_"
            f"{encode_name(self.task_id)}.msgpack"
        )

    @classmethod
    def parse(cls, name: str) -> Slot | None:
        if name.startswith(".") or not name.endswith(".msgpack"):
            return None
        parts = name[: -len(".msgpack")].split("_", 9)
        if len(parts) != 10:
            return None

        def f(x: str) -> float | None:
            return None if x == "x" else float(x)

        try:
            return cls(
                int(parts[0]),
                parts[1],
                int(parts[2]),
                int(parts[3]),
                float(parts[4]),
                f(parts[5]),
                f(parts[6]),
                f(parts[7]),
                int(parts[8]),
                decode_name(parts[9]),
            )
        except (ValueError, UnicodeDecodeError):
            return None


class _Record(msgspec.Struct):
    """A task file's content: the task as enqueued (final fields once it is done)."""

    seq: str
    task: Task


class _Loc(NamedTuple):
    status: TaskStatus
    path: str
    slot: Slot | None  # None once final
    worker: str | None = None


_rec_dec = msgspec.msgpack.Decoder(_Record)
_sched_dec = msgspec.msgpack.Decoder(Schedule)
_worker_dec = msgspec.msgpack.Decoder(WorkerInfo)
_FINALS = (TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.EXPIRED)
_VERSION = re.compile(r"v(\d+)\.msgpack")
_MAX_TASK_NAME = 100  # encoded task id characters in a file:// queue (names stay < 255 bytes)
#: fsync each task file. Off: like SQLite's ``synchronous = NORMAL``, a process crash loses
#: nothing (writes are atomic renames); only an OS crash may lose the newest tasks.
FSYNC_TASKS = False


def _listdir(path: str) -> list[str]:
    try:
        return [n for n in os.listdir(path) if not n.startswith(".")]
    except (FileNotFoundError, NotADirectoryError):
        return []


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _touch(path: str) -> None:
    for _ in range(3):
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | _NOFOLLOW, 0o600))
            return
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), exist_ok=True)


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def _rmtree(path: str) -> None:
    """Remove a directory of plain files (best effort: someone may be adding one)."""
    try:
        names = os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return
    for name in names:
        _unlink(os.path.join(path, name))
    with contextlib.suppress(OSError):
        os.rmdir(path)


class _TaskDir:
    """The task queue's files under ``<root>/tasks`` (synchronous; the backend runs each call
    in a worker thread). Layout::

        queued/<queue>/<slot>.msgpack        QUEUED; claim renames into running/<worker>/
        pending/<queue>/<slot>.msgpack       PENDING (eta, dependencies); claim promotes when due
        running/<worker>/<slot>.msgpack      RUNNING; the lease is in the name (extend renames)
        done/<status>/<task id>.msgpack      final, finish time in the mtime; one stat finds it
        deps/<dependency id>/<task id>       who waits on whom, resolved when the dependency ends
        cancel/<task id>                     a cancel request for a running task
        staged/<schedule>@<task id>.msgpack  a schedule's task between its compare-and-set and
                                             its enqueue (reap finishes the job after a crash)
        schedules/<schedule id>/v<N>.msgpack versions; compare-and-set = os.link of v<N+1>
        keys/<key>/v<N>                      idempotency key markers: msgpack [task id, time];
                                             the newest names the key's latest task; a new
                                             version is made with O_EXCL (compare-and-set)
        workers/<worker>.msgpack             heartbeats

    Every status change is ``os.rename`` of the one file that is the task, so two processes can
    never both claim, cancel or reap it: the loser's rename finds no source. No locks, so it
    works on NFS too. Writes are temp file + rename, so a crash leaves no partial file.
    """

    def __init__(self, root: str) -> None:
        base = os.path.join(root, "tasks")
        self.base = base
        self.queued = os.path.join(base, "queued")
        self.pending = os.path.join(base, "pending")
        self.running = os.path.join(base, "running")
        self.done = os.path.join(base, "done")
        self.deps = os.path.join(base, "deps")
        self.cancels = os.path.join(base, "cancel")
        self.staged = os.path.join(base, "staged")
        self.scheds = os.path.join(base, "schedules")
        self.workers_dir = os.path.join(base, "workers")
        self.keys = os.path.join(base, "keys")
        self.results_here = False  # (TaskQueue.results_here, copied by the backend)
        #: whether a SUCCEEDED result of a task (whose record is gone) is stored here; set by
        #: the backend holding the results beside this queue
        self.succeeded_result: Callable[[str], bool] = lambda task_id: False
        self._queue_of: dict[str, str] = {}  # task id -> queue (never changes)
        self._deps_of: dict[str, tuple[str, ...]] = {}  # task id -> its dependencies

    def setup(self) -> None:
        for d in (
            self.queued,
            self.pending,
            self.running,
            self.deps,
            self.cancels,
            self.staged,
            self.scheds,
            self.workers_dir,
            self.keys,
        ):
            os.makedirs(d, exist_ok=True)
        for st in _FINALS:
            os.makedirs(os.path.join(self.done, st.value), exist_ok=True)

    # --- paths, reads, moves -----------------------------------------------------------------------
    def _done_path(self, status: TaskStatus, task_id: str) -> str:
        return os.path.join(self.done, status.value, encode_name(task_id) + ".msgpack")

    def _slot_path(self, status: TaskStatus, queue: str, slot: Slot) -> str:
        area = self.queued if status is TaskStatus.QUEUED else self.pending
        return os.path.join(area, encode_name(queue), slot.render())

    def _cancel_path(self, task_id: str) -> str:
        return os.path.join(self.cancels, encode_name(task_id))

    def _read_rec(self, path: str, errors: list[Exception] | None = None) -> _Record | None:
        """The record in ``path``; None when it is gone or does not decode (for any reason: a
        record nested too deep raises RecursionError), the exception then added to ``errors``."""
        data = _read(path)
        if data is None:
            return None
        try:
            rec = _rec_dec.decode(data)
        except Exception as exc:
            log.error("unreadable task file %s (%d bytes): %s", path, len(data), type(exc).__name__)
            if errors is not None:
                errors.append(exc)
            return None
        self._queue_of[rec.task.id] = rec.task.queue
        return rec

    def _write_rec(self, path: str, rec: _Record) -> None:
        _write_atomic(path, _results_enc.encode(rec), fsync=FSYNC_TASKS)

    def _write_final(self, path: str, rec: _Record, now: float, **fields: Any) -> Task:
        """Rewrite a file that just became final (nobody else moves a final file)."""
        task = msgspec.structs.replace(rec.task, lease_until=None, **fields)
        self._write_rec(path, _Record(rec.seq, task))
        with contextlib.suppress(OSError):
            os.utime(path, (now, now))  # purge reads the finish time from the mtime
        return task

    def _end(
        self, loc: _Loc, rec: _Record, status: TaskStatus, now: float, **fields: Any
    ) -> Task | None:
        """Move an active task to ``done/<status>``; None if someone else moved it first."""
        dst = self._done_path(status, rec.task.id)
        if not self._move(loc.path, dst):
            return None
        s = loc.slot
        if s is not None:
            fields = {"deliveries": s.deliveries, "attempts": s.attempts, "eta": s.eta, **fields}
        return self._write_final(dst, rec, now, status=status, **fields)

    def _move(self, src: str, dst: str) -> bool:
        """Rename ``src`` to ``dst``; False if someone else moved ``src`` first."""
        try:
            os.rename(src, dst)
            return True
        except FileNotFoundError:
            if not os.path.exists(src):
                return False
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        try:
            os.rename(src, dst)
            return True
        except FileNotFoundError:
            return False

    def _scan(self, status: TaskStatus, queues: Sequence[str] | None = None) -> dict[str, _Loc]:
        """Every task in one active status (optionally only some queues), by id."""
        out: dict[str, _Loc] = {}
        if status is TaskStatus.RUNNING:
            for w in _listdir(self.running):
                wdir = os.path.join(self.running, w)
                worker = decode_name(w)
                for name in _listdir(wdir):
                    slot = Slot.parse(name)
                    if slot is not None:
                        out[slot.task_id] = _Loc(status, os.path.join(wdir, name), slot, worker)
            return out
        area = self.queued if status is TaskStatus.QUEUED else self.pending
        names = [encode_name(q) for q in queues] if queues else _listdir(area)
        for q in names:
            qdir = os.path.join(area, q)
            queue = decode_name(q)
            for name in _listdir(qdir):
                slot = Slot.parse(name)
                if slot is not None:
                    out[slot.task_id] = _Loc(status, os.path.join(qdir, name), slot)
                    self._queue_of.setdefault(slot.task_id, queue)
        return out

    def _held(self, worker: str) -> dict[str, _Loc]:
        wdir = os.path.join(self.running, encode_name(worker))
        out = {}
        for name in _listdir(wdir):
            slot = Slot.parse(name)
            if slot is not None:
                out[slot.task_id] = _Loc(TaskStatus.RUNNING, os.path.join(wdir, name), slot, worker)
        return out

    def _final_status(self, task_id: str) -> TaskStatus | None:
        for st in _FINALS:
            if os.path.exists(self._done_path(st, task_id)):
                return st
        return None

    def locate(self, task_ids: Iterable[str]) -> dict[str, _Loc]:
        """Where each known task is. Active directories are read in the order tasks move through
        them and a miss is looked for once more, so a task moving meanwhile is still found."""
        want = list(dict.fromkeys(task_ids))
        out: dict[str, _Loc] = {}
        if not want:
            return out
        for _ in range(2):
            active: dict[str, _Loc] = {}
            for st in (TaskStatus.PENDING, TaskStatus.QUEUED, TaskStatus.RUNNING):
                active.update(self._scan(st))
            for tid in want:
                if tid in out:
                    continue
                if tid in active:
                    out[tid] = active[tid]
                    continue
                final = self._final_status(tid)
                if final is not None:
                    out[tid] = _Loc(final, self._done_path(final, tid), None)
            if len(out) == len(want):
                break
        return out

    def _existing(self, task_ids: set[str]) -> set[str]:
        """Which of these ids are stored (for the duplicate check: names are not parsed)."""
        by_name = {encode_name(t): t for t in task_ids}
        out = {t for t in task_ids if self._final_status(t) is not None}
        dirs = [os.path.join(a, q) for a in (self.pending, self.queued) for q in _listdir(a)]
        dirs += [os.path.join(self.running, w) for w in _listdir(self.running)]
        for d in dirs:
            for name in _listdir(d):
                tid = by_name.get(name[name.rfind("_") + 1 : -len(".msgpack")])
                if tid is not None:
                    out.add(tid)
        return out

    def _task(self, loc: _Loc, rec: _Record) -> Task:
        """The stored task as it is now: its content overlaid with the fields of its name."""
        t = rec.task
        s = loc.slot
        if s is None:
            return msgspec.structs.replace(t, status=loc.status)
        running = loc.status is TaskStatus.RUNNING
        return msgspec.structs.replace(
            t,
            status=loc.status,
            deliveries=s.deliveries,
            attempts=s.attempts,
            eta=s.eta,
            worker=loc.worker if running else None,
            lease_until=s.lease_until if running else None,
            cancel_requested=running and os.path.exists(self._cancel_path(t.id)),
        )

    # --- idempotency keys -----------------------------------------------------------------------------
    def _key_dir(self, key: str) -> str:
        name = encode_name(key)
        if len(name) > 200:  # a long key: its digest (the marker holds no key, only the task)
            name = "~" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        return os.path.join(self.keys, name)

    def _key_current(self, kdir: str) -> tuple[int, _KeyMark | None, float] | None:
        """The newest marker of a key: (version, marker, written at); the marker is None while
        it is being written (or left empty by a crash: ``written at`` is then its mtime)."""
        for _ in range(5):
            versions = [int(n[1:]) for n in _listdir(kdir) if n[:1] == "v" and n[1:].isdigit()]
            if not versions:
                return None
            v = max(versions)
            path = os.path.join(kdir, f"v{v}")
            try:
                with open(path, "rb") as f:
                    data = f.read()
                    at = os.fstat(f.fileno()).st_mtime
            except FileNotFoundError:
                continue  # replaced and cleaned meanwhile: look again
            try:
                mark = _key_dec.decode(data)
                return v, mark, mark.at
            except (msgspec.DecodeError, msgspec.ValidationError):
                return v, None, at
        return None

    def _key_cas(self, kdir: str, version: int, task_id: str, now: float, purged: bool = False) -> bool:
        """Write marker ``version + 1`` naming ``task_id``; False if someone wrote it first
        (``O_EXCL`` creation is atomic on every POSIX filesystem, NFS included)."""
        path = os.path.join(kdir, f"v{version + 1}")
        for _ in range(3):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                break
            except FileNotFoundError:
                os.makedirs(kdir, exist_ok=True)
            except FileExistsError:
                return False
        else:
            return False
        try:
            os.write(fd, _results_enc.encode(_KeyMark(task_id, now, purged)))
        finally:
            os.close(fd)
        for n in _listdir(kdir):  # keep the newest two; a reader whose file vanished looks again
            if n[:1] == "v" and n[1:].isdigit() and int(n[1:]) < version:
                _unlink(os.path.join(kdir, n))
        return True

    def _claim_keys(self, tasks: Sequence[Task], now: float) -> tuple[dict[str, str], list[str]]:
        """Point each key of the batch at its first task, unless another task holds it:
        ``(key -> holder, for keys held; holders known only by a stored success)``.

        A marker is written *before* its task's file, so a marker whose task is not there yet
        may be a write in progress: it is waited for, up to ``KEY_WRITE_GRACE`` seconds after
        it was written (then its writer is taken to have died in between). ``purge`` marks the
        keys of the tasks it removes, so a purged task is never taken for one being written."""
        first: dict[str, str] = {}
        for t in tasks:
            if t.key is not None:
                first.setdefault(t.key, t.id)
        holders: dict[str, str] = {}
        gone: list[str] = []
        todo = dict(first)
        delay = 0.005
        while todo:
            current = {k: self._key_current(self._key_dir(k)) for k in todo}
            mine = set(todo.values())
            others = {c[1].task for c in current.values() if c is not None and c[1] is not None}
            others -= mine | {""}
            found = self.locate(others) if others else {}
            waiting: dict[str, str] = {}
            for k, tid in todo.items():
                cur = current[k]
                version = 0
                if cur is not None:
                    version, mark, at = cur
                    if mark is not None and mark.task == tid:
                        continue  # ours already
                    if mark is None or not (mark.purged or mark.task == "" or mark.task in found):
                        if time.time() - at < KEY_WRITE_GRACE:
                            waiting[k] = tid  # its task may be being stored: look again shortly
                            continue
                    elif mark.task in found:
                        st = found[mark.task].status
                        ok = st is TaskStatus.SUCCEEDED and self.results_here and self.succeeded_result(mark.task)
                        if holds_key(st, ok, self.results_here):
                            holders[k] = mark.task
                            continue
                    elif mark.purged and self.succeeded_result(mark.task):
                        holders[k] = mark.task
                        gone.append(mark.task)
                        continue
                if not self._key_cas(self._key_dir(k), version, tid, now):
                    waiting[k] = tid  # someone else was first: look at what they wrote
            todo = waiting
            if todo:
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
        return holders, gone

    # --- enqueue ------------------------------------------------------------------------------------
    def enqueue(self, tasks: Sequence[Task]) -> tuple[bool, dict[str, str]]:
        """Store a checked batch: (some task is ready to claim at once, {duplicate id: holder
        id} for tasks whose key another task holds, which are not stored)."""
        now = time.time()
        for t in tasks:
            if len(encode_name(t.id)) > _MAX_TASK_NAME:
                raise ConfigError(
                    f"task id {t.id[:40]!r}... is too long for a file:// queue "
                    f"(at most {_MAX_TASK_NAME} characters once percent-encoded)"
                )
        existing = self._existing({t.id for t in tasks})
        taken = [t.id for t in tasks if t.id in existing]
        if taken:
            raise ConfigError(f"task id {taken[0]!r} already exists")
        dups: dict[str, str] = {}
        if keyed(tasks):
            holders, gone = self._claim_keys(tasks, now)
            tasks, dups = plan_keys(tasks, holders, gone)
            if not tasks:
                return False, dups
        batch = {t.id for t in tasks}
        outside = {d for t in tasks for d in t.depends_on} - batch
        found = self.locate(outside)
        plans = plan_enqueue(tasks, {d: found[d].status for d in outside if d in found})
        ready = False
        recheck: list[tuple[str, Task]] = []
        for task, seq, (status, waiting) in zip(tasks, new_ids(len(tasks)), plans, strict=True):
            rec = _Record(seq, task)
            self._queue_of[task.id] = task.queue
            for d in waiting:  # before the task file: see _cascade
                _touch(os.path.join(self.deps, encode_name(d), encode_name(task.id)))
            if status is TaskStatus.CANCELLED:
                self._write_final(self._done_path(status, task.id), rec, now, status=status)
                continue
            if waiting:
                self._deps_of[task.id] = tuple(waiting)
            slot = Slot(
                task.priority,
                seq,
                task.deliveries,
                task.attempts,
                task.created_at,
                task.expires_at,
                task.eta,
                None,
                len(waiting),
                task.id,
            )
            path = self._slot_path(status, task.queue, slot)
            self._write_rec(path, rec)
            ready = ready or status is TaskStatus.QUEUED
            if any(d in outside for d in waiting):
                recheck.append((path, task))
        # A dependency that ended badly between our look and our write may not have seen this
        # task's deps/ entry; enqueue cancels such a task itself (as for a known failure).
        for path, task in recheck:
            if any(self._final_status(d) in UNSUCCESSFUL for d in task.depends_on):
                stored = self._read_rec(path)
                if stored is not None:
                    self._end(
                        _Loc(TaskStatus.PENDING, path, None), stored, TaskStatus.CANCELLED, now
                    )
        return ready, dups

    # --- claim ----------------------------------------------------------------------------------------
    def _deps_done(self, loc: _Loc) -> bool:
        assert loc.slot is not None
        tid = loc.slot.task_id
        deps = self._deps_of.get(tid)
        if deps is None:
            rec = self._read_rec(loc.path)
            if rec is None:
                return False
            deps = self._deps_of[tid] = tuple(rec.task.depends_on)
        return all(os.path.exists(self._done_path(TaskStatus.SUCCEEDED, d)) for d in deps)

    def _claimable(self, loc: _Loc, now: float) -> bool:
        """The lifecycle's claim rule for a QUEUED or PENDING file (dependencies are looked up
        only for a PENDING task that could otherwise run)."""
        s = loc.slot
        assert s is not None
        if not claimable(loc.status, eta=s.eta, expires_at=s.expires_at, waiting=False, now=now):
            return False
        return loc.status is TaskStatus.QUEUED or not s.ndeps or self._deps_done(loc)

    def _promote(self, queues: Sequence[str] | None, now: float) -> None:
        """PENDING tasks whose eta came and whose dependencies succeeded become QUEUED."""
        for tid, loc in self._scan(TaskStatus.PENDING, queues).items():
            s = loc.slot
            assert s is not None
            if not self._claimable(loc, now):
                continue
            queue = self._queue_of.get(tid) or decode_name(
                os.path.basename(os.path.dirname(loc.path))
            )
            self._move(loc.path, self._slot_path(TaskStatus.QUEUED, queue, s._replace(ndeps=0)))

    def claimable(self, queues: Sequence[str] | None, now: float) -> bool:
        """Whether ``claim`` would find something (for polling across processes)."""
        return any(
            self._claimable(loc, now)
            for status in (TaskStatus.QUEUED, TaskStatus.PENDING)
            for loc in self._scan(status, queues).values()
        )

    def claim(
        self, worker: str, queues: Sequence[str] | None, limit: int, lease: float, now: float
    ) -> list[Task]:
        self._promote(queues, now)
        cands = sorted(
            (
                (claim_order(loc.slot.priority, loc.slot.seq), loc)
                for loc in self._scan(TaskStatus.QUEUED, queues).values()
                if loc.slot is not None and self._claimable(loc, now)
            ),
            key=lambda c: c[0],
        )
        wdir = os.path.join(self.running, encode_name(worker))
        out: list[Task] = []
        for _, loc in cands:
            if len(out) >= limit:
                break
            assert loc.slot is not None
            new = loc.slot._replace(deliveries=loc.slot.deliveries + 1, lease_until=now + lease)
            dst = os.path.join(wdir, new.render())
            if not self._move(loc.path, dst):
                continue  # another worker won it
            held = _Loc(TaskStatus.RUNNING, dst, new, worker)
            errors: list[Exception] = []
            rec = self._read_rec(dst, errors)
            if rec is None and errors:
                # unreadable (logged): a stand-in that fails when run, saying why, so the task
                # ends with a TaskResult and the rest of the batch goes on
                queue = decode_name(os.path.basename(os.path.dirname(loc.path)))
                task = stand_in_task(
                    new.task_id, errors[0], queue=queue, priority=new.priority,
                    created_at=new.created_at,
                )
                rec = _Record(new.seq, task)
                self._write_rec(dst, rec)
            if rec is None:  # gone under us: fail it rather than meet it again forever
                self._move(dst, self._done_path(TaskStatus.FAILED, new.task_id))
                continue
            out.append(self._task(held, rec))
        return out

    # --- ends of a lease and their consequences -------------------------------------------------------
    def finish(
        self, worker: str, outcomes: Sequence[tuple[str, TaskStatus]], now: float
    ) -> Finished:
        held = self._held(worker)
        ended: list[tuple[str, TaskStatus]] = []
        for tid, status in outcomes:
            loc = held.get(tid)
            rec = self._read_rec(loc.path) if loc is not None else None
            if loc is None or rec is None:
                continue  # not (or no longer) this worker's
            if self._end(loc, rec, status, now, worker=worker) is not None:
                _unlink(self._cancel_path(tid))
                ended.append((tid, status))
        return self._cascade(ended, now)

    def _cascade(self, ended: Sequence[tuple[str, TaskStatus]], now: float) -> Finished:
        """Release or cancel (transitively) the tasks waiting on tasks that just ended."""
        fin = Finished()
        todo = list(ended)
        pending: dict[str, _Loc] | None = None
        while todo:
            dep, dep_status = todo.pop(0)
            ddir = os.path.join(self.deps, encode_name(dep))
            names = _listdir(ddir)
            if names and pending is None:
                pending = self._scan(TaskStatus.PENDING)
            for name in names:
                assert pending is not None
                did = decode_name(name)
                loc = pending.get(did)
                rec = self._read_rec(loc.path) if loc is not None else None
                if loc is None or loc.slot is None or rec is None:
                    continue  # not waiting (any more); an enqueue in flight checks for itself
                others_left = dep_status is TaskStatus.SUCCEEDED and not self._deps_done(loc)
                fate = on_dependency_end(dep_status, others_left=others_left)
                if fate is Cascade.CANCEL:
                    task = self._end(loc, rec, TaskStatus.CANCELLED, now)
                    if task is not None:
                        del pending[did]
                        fin.cancelled.append((task, dep))
                        todo.append((did, TaskStatus.CANCELLED))
                    continue
                if fate is not Cascade.RELEASE:
                    continue
                s = loc.slot._replace(ndeps=0)
                status = ready_status(s.eta, now)
                dst = self._slot_path(status, rec.task.queue, s)
                if self._move(loc.path, dst):
                    del pending[did]
                    fin.released.append(self._task(_Loc(status, dst, s), rec))
            _rmtree(ddir)
        return fin

    def retry(self, worker: str, task_id: str, eta: float, attempts: int) -> bool:
        """True when the task is QUEUED again at once (``retry`` has no ``now``: the wall clock
        decides, as in the other backends)."""
        loc = self._held(worker).get(task_id)
        rec = self._read_rec(loc.path) if loc is not None else None
        if loc is None or loc.slot is None or rec is None:
            return False
        slot = loc.slot._replace(attempts=attempts, eta=eta, lease_until=None, ndeps=0)
        status = ready_status(eta, time.time())
        moved = self._move(loc.path, self._slot_path(status, rec.task.queue, slot))
        return moved and status is TaskStatus.QUEUED

    def release(self, worker: str, task_ids: Sequence[str]) -> bool:
        held = self._held(worker)
        moved = False
        for tid in task_ids:
            loc = held.get(tid)
            rec = self._read_rec(loc.path) if loc is not None else None
            if loc is None or loc.slot is None or rec is None:
                continue
            slot = loc.slot._replace(deliveries=max(0, loc.slot.deliveries - 1), lease_until=None)
            moved |= self._move(loc.path, self._slot_path(TaskStatus.QUEUED, rec.task.queue, slot))
        return moved

    def extend(self, worker: str, task_ids: Sequence[str], lease_until: float) -> None:
        held = self._held(worker)
        for tid in task_ids:
            loc = held.get(tid)
            if loc is None or loc.slot is None:
                continue
            new = loc.slot._replace(lease_until=lease_until)
            self._move(loc.path, os.path.join(os.path.dirname(loc.path), new.render()))

    def overrun(self, now: float, limit: int) -> list[Overrun]:
        lapsed = sorted(
            (loc for loc in self._scan(TaskStatus.RUNNING).values()
             if loc.slot is not None and lease_lapsed(loc.slot.lease_until, now)),
            key=lambda loc: loc.slot.lease_until if loc.slot and loc.slot.lease_until else 0.0,
        )[:limit]
        return [
            Overrun(task_id=loc.slot.task_id, queue=self._queue(loc.slot.task_id, loc.path) or "default",
                    worker=loc.worker, lease_until=loc.slot.lease_until or 0.0)
            for loc in lapsed if loc.slot is not None
        ]

    def reap(self, now: float) -> Reaped:
        out = Reaped(requeued=[], dead=[], cancelled=[])
        ended: list[tuple[str, TaskStatus]] = []
        lapsed = sorted(
            (
                loc
                for loc in self._scan(TaskStatus.RUNNING).values()
                if loc.slot is not None and lease_lapsed(loc.slot.lease_until, now)
            ),
            key=lambda loc: loc.slot.seq if loc.slot else "",
        )
        for loc in lapsed:
            s = loc.slot
            rec = self._read_rec(loc.path)
            if s is None or rec is None:
                continue
            tid = s.task_id
            fate = on_lapse(
                cancel_requested=os.path.exists(self._cancel_path(tid)),
                deliveries=s.deliveries,
                max_deliveries=rec.task.max_deliveries,
            )
            if fate is TaskStatus.CANCELLED:
                task = self._end(loc, rec, TaskStatus.CANCELLED, now, worker=loc.worker)
                if task is not None:
                    _unlink(self._cancel_path(tid))
                    out.cancelled.append((task, tid))
                    ended.append((tid, TaskStatus.CANCELLED))
            elif fate is TaskStatus.QUEUED:
                slot = s._replace(lease_until=None)
                dst = self._slot_path(TaskStatus.QUEUED, rec.task.queue, slot)
                if self._move(loc.path, dst):
                    out.requeued.append(self._task(_Loc(TaskStatus.QUEUED, dst, slot), rec))
            else:
                task = self._end(loc, rec, TaskStatus.FAILED, now, worker=loc.worker)
                if task is not None:
                    out.dead.append(task)
                    ended.append((tid, TaskStatus.FAILED))
        out.cancelled.extend(self._cascade(ended, now).cancelled)
        self._recover_staged(now)
        return out

    def expire(self, now: float) -> list[Task]:
        found = [
            loc
            for st in (TaskStatus.QUEUED, TaskStatus.PENDING)
            for loc in self._scan(st).values()
            if loc.slot is not None and expires(st, loc.slot.expires_at, now)
        ]
        found.sort(key=lambda loc: loc.slot.seq if loc.slot else "")
        out: list[Task] = []
        for loc in found:
            rec = self._read_rec(loc.path)
            task = self._end(loc, rec, TaskStatus.EXPIRED, now) if rec is not None else None
            if task is not None:
                out.append(task)
        cascade = self._cascade([(t.id, TaskStatus.EXPIRED) for t in out], now)
        return out + [t for t, _ in cascade.cancelled]

    def cancel(self, task_ids: Sequence[str], now: float) -> dict[str, TaskStatus]:
        out: dict[str, TaskStatus] = {}
        ended: list[tuple[str, TaskStatus]] = []
        todo = list(dict.fromkeys(task_ids))
        for _ in range(5):  # a task claimed under our feet is looked up again
            if not todo:
                break
            locs = self.locate(todo)
            todo = []
            for tid, loc in locs.items():
                if loc.status in (TaskStatus.QUEUED, TaskStatus.PENDING):
                    rec = self._read_rec(loc.path)
                    task = self._end(loc, rec, TaskStatus.CANCELLED, now) if rec else None
                    if task is None:
                        todo.append(tid)
                        continue
                    ended.append((tid, TaskStatus.CANCELLED))
                elif loc.status is TaskStatus.RUNNING:
                    _touch(self._cancel_path(tid))
                out.setdefault(tid, loc.status)
        for t, _ in self._cascade(ended, now).cancelled:
            out[t.id] = TaskStatus.PENDING
        return out

    # --- reads ----------------------------------------------------------------------------------------
    def get_task(self, task_id: str) -> Task | None:
        for _ in range(3):
            loc = self.locate([task_id]).get(task_id)
            if loc is None:
                return None
            rec = self._read_rec(loc.path)
            if rec is not None:
                return self._task(loc, rec)
        return None

    def statuses(self, task_ids: Sequence[str]) -> dict[str, TaskStatus]:
        return {tid: loc.status for tid, loc in self.locate(task_ids).items()}

    def cancel_requests(self, task_ids: Sequence[str]) -> list[str]:
        running = self._scan(TaskStatus.RUNNING)
        return [t for t in task_ids if t in running and os.path.exists(self._cancel_path(t))]

    def _queue(self, task_id: str, path: str) -> str | None:
        q = self._queue_of.get(task_id)
        if q is None:
            rec = self._read_rec(path)
            q = rec.task.queue if rec is not None else None
        return q

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}

        def add(queue: str | None, status: TaskStatus, n: int = 1) -> None:
            if queue is not None and n:
                per = out.setdefault(queue, {})
                per[status.value] = per.get(status.value, 0) + n

        for st, area in ((TaskStatus.QUEUED, self.queued), (TaskStatus.PENDING, self.pending)):
            for q in _listdir(area):
                n = sum(1 for name in _listdir(os.path.join(area, q)) if Slot.parse(name))
                add(decode_name(q), st, n)
        for tid, loc in self._scan(TaskStatus.RUNNING).items():
            add(self._queue(tid, loc.path), TaskStatus.RUNNING)
        for st in _FINALS:
            sdir = os.path.join(self.done, st.value)
            for name in _listdir(sdir):
                if name.endswith(".msgpack"):
                    tid = decode_name(name[: -len(".msgpack")])
                    add(self._queue(tid, os.path.join(sdir, name)), st)
        return out

    def oldest_queued(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for q in _listdir(self.queued):
            slots = [s for n in _listdir(os.path.join(self.queued, q)) if (s := Slot.parse(n))]
            if slots:
                out[decode_name(q)] = min(s.created_at for s in slots)
        return out

    def purge(self, before: float) -> int:
        count = 0
        for st in _FINALS:
            try:
                entries = list(os.scandir(os.path.join(self.done, st.value)))
            except FileNotFoundError:
                continue
            for e in entries:
                if e.name.startswith(".") or not e.name.endswith(".msgpack"):
                    continue
                try:
                    if e.stat().st_mtime >= before:
                        continue
                except FileNotFoundError:
                    continue
                rec = self._read_rec(e.path)
                if _unlink(e.path):
                    count += 1
                    tid = decode_name(e.name[: -len(".msgpack")])
                    if rec is not None and rec.task.key is not None:
                        self._forget_key(rec.task.key, tid, st, time.time())
                    _unlink(self._cancel_path(tid))
                    _rmtree(os.path.join(self.deps, encode_name(tid)))
                    self._queue_of.pop(tid, None)
                    self._deps_of.pop(tid, None)
        return count

    def _forget_key(self, key: str, task_id: str, status: TaskStatus, now: float) -> None:
        """``purge`` removed ``task_id``: if it is its key's latest task, say so in a new marker
        (free, or held while its stored success lasts); someone re-keying first wins."""
        kdir = self._key_dir(key)
        cur = self._key_current(kdir)
        if cur is None or cur[1] is None or cur[1].task != task_id:
            return
        if status is TaskStatus.SUCCEEDED:
            self._key_cas(kdir, cur[0], task_id, now, purged=True)
        else:
            self._key_cas(kdir, cur[0], "", now)

    # --- schedules ------------------------------------------------------------------------------------
    def _sched_dir(self, schedule_id: str) -> str:
        return os.path.join(self.scheds, encode_name(schedule_id))

    def _sched_current(self, sdir: str) -> tuple[int, Schedule] | None:
        for _ in range(5):
            versions = [int(m.group(1)) for n in _listdir(sdir) if (m := _VERSION.fullmatch(n))]
            if not versions:
                return None
            v = max(versions)
            data = _read(os.path.join(sdir, f"v{v}.msgpack"))
            if data is None:
                continue  # superseded and pruned meanwhile: look again
            try:
                return v, _sched_dec.decode(data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.error("unreadable schedule version %s/v%d: %s", sdir, v, exc)
                return None
        return None

    def _sched_cas(self, sdir: str, version: int, schedule: Schedule) -> bool:
        """Write version ``version + 1``; False if someone else wrote it first (``os.link``
        fails when the name exists, atomically, on every POSIX filesystem, NFS included)."""
        tmp = os.path.join(sdir, f".tmp-{secrets.token_hex(6)}")
        try:
            _write_atomic(tmp, _results_enc.encode(schedule), fsync=FSYNC_TASKS)
        except FileNotFoundError:
            return False
        try:
            os.link(tmp, os.path.join(sdir, f"v{version + 1}.msgpack"))
        except (FileExistsError, FileNotFoundError):
            return False
        finally:
            _unlink(tmp)
        for n in _listdir(sdir):  # keep the newest two; a reader whose file vanished looks again
            m = _VERSION.fullmatch(n)
            if m and int(m.group(1)) < version:
                _unlink(os.path.join(sdir, n))
        return True

    def add_schedule(self, schedule: Schedule) -> None:
        sdir = self._sched_dir(schedule.id)
        for _ in range(100):
            cur = self._sched_current(sdir)
            if cur is None:
                os.makedirs(sdir, exist_ok=True)
                if not any(n.startswith("added-") for n in _listdir(sdir)):
                    _touch(os.path.join(sdir, f"added-{new_id()}"))  # for insertion order
            if self._sched_cas(sdir, cur[0] if cur else 0, schedule):
                return
        raise StorageError(f"schedule {schedule.id}: too many concurrent updates")

    def get_schedules(self) -> list[Schedule]:
        found = []
        for n in _listdir(self.scheds):
            sdir = os.path.join(self.scheds, n)
            cur = self._sched_current(sdir)
            if cur is not None:
                added = min((x for x in _listdir(sdir) if x.startswith("added-")), default="~")
                found.append((added, cur[1]))
        found.sort(key=lambda pair: pair[0])
        return [s for _, s in found]

    def set_schedule_paused(self, schedule_id: str, paused: bool, next_run: float | None) -> bool:
        sdir = self._sched_dir(schedule_id)
        for _ in range(100):
            cur = self._sched_current(sdir)
            if cur is None:
                return False
            v, s = cur
            nxt = next_run if (not paused or next_run is not None) else s.next_run
            if self._sched_cas(sdir, v, msgspec.structs.replace(s, paused=paused, next_run=nxt)):
                return True
        raise StorageError(f"schedule {schedule_id}: too many concurrent updates")

    def delete_schedule(self, schedule_id: str) -> bool:
        sdir = self._sched_dir(schedule_id)
        gone = os.path.join(self.scheds, f".deleted-{secrets.token_hex(6)}")
        try:
            os.rename(sdir, gone)
        except FileNotFoundError:
            return False
        found = any(_VERSION.fullmatch(n) for n in _listdir(gone))
        _rmtree(gone)
        return found

    def fire_schedule(
        self,
        schedule_id: str,
        expected_next_run: float,
        next_run: float | None,
        now: float,
        task: Task,
    ) -> tuple[bool, bool]:
        """(won the slot, the task is ready to claim)."""
        sdir = self._sched_dir(schedule_id)
        cur = self._sched_current(sdir)
        if cur is None:
            return False, False
        v, s = cur
        if not slot_fires(s, expected_next_run):
            return False, False
        if self._existing({task.id}):
            raise ConfigError(f"task id {task.id!r} already exists")
        # The task is staged first, so a crash between winning the slot and enqueueing loses
        # nothing: reap finds the staged file and finishes the job.
        staged = os.path.join(
            self.staged, f"{encode_name(schedule_id)}@{encode_name(task.id)}.msgpack"
        )
        rec = _Record(new_id(), task)
        self._write_rec(staged, rec)
        new = fired(s, next_run=next_run, now=now, task_id=task.id)
        if not self._sched_cas(sdir, v, new):
            _unlink(staged)
            return False, False
        return True, self._commit_staged(staged, rec)

    def _commit_staged(self, staged: str, rec: _Record) -> bool:
        t = rec.task
        self._queue_of[t.id] = t.queue
        [(status, _)] = plan_enqueue([msgspec.structs.replace(t, depends_on=())], {})
        slot = Slot(
            t.priority,
            rec.seq,
            t.deliveries,
            t.attempts,
            t.created_at,
            t.expires_at,
            t.eta,
            None,
            0,
            t.id,
        )
        return self._move(staged, self._slot_path(status, t.queue, slot)) and (
            status is TaskStatus.QUEUED
        )

    def _recover_staged(self, now: float) -> None:
        for name in _listdir(self.staged):
            path = os.path.join(self.staged, name)
            try:
                if os.stat(path).st_mtime > time.time() - 300:
                    continue  # its firing may still be under way
            except FileNotFoundError:
                continue
            sid = name.rpartition("@")[0]
            rec = self._read_rec(path)
            cur = self._sched_current(self._sched_dir(decode_name(sid))) if sid else None
            if rec is not None and cur is not None and cur[1].last_task_id == rec.task.id:
                log.warning("enqueueing task %s of schedule %s after a crash", rec.task.id, sid)
                self._commit_staged(path, rec)
            else:
                _unlink(path)

    # --- workers --------------------------------------------------------------------------------------
    def heartbeat(self, info: WorkerInfo) -> None:
        path = os.path.join(self.workers_dir, encode_name(info.id) + ".msgpack")
        _write_atomic(path, _results_enc.encode(info), fsync=False)

    def remove_worker(self, worker_id: str) -> None:
        _unlink(os.path.join(self.workers_dir, encode_name(worker_id) + ".msgpack"))
        with contextlib.suppress(OSError):
            os.rmdir(os.path.join(self.running, encode_name(worker_id)))

    def workers(self) -> list[WorkerInfo]:
        out = []
        for name in _listdir(self.workers_dir):
            data = _read(os.path.join(self.workers_dir, name))
            if data is None:
                continue
            try:
                out.append(_worker_dec.decode(data))
            except (msgspec.DecodeError, msgspec.ValidationError):
                log.warning("ignoring unreadable worker record %s", name)
        out.sort(key=lambda w: w.id)
        return out


class FileTaskQueueBackend(FsspecBackend, TaskQueue):
    """Tasks, results and events in one directory on a local or shared POSIX filesystem (NFS
    included: claims are renames, compare-and-set is ``os.link``, neither needs a lock)."""

    can_hold_tasks: ClassVar[bool] = True
    _layout: ClassVar[dict[str, str]] = {
        **FsspecBackend._layout,
        "tasks": "tasks/<status>/...: one file per task, see omniq.storage.fsspec._TaskDir",
    }
    #: ``wait_for_tasks`` notices work enqueued by other processes (it polls the directories).
    cross_process_wakeups = True

    def __init__(self, url: str, *, storage_options: dict[str, Any] | None = None) -> None:
        super().__init__(url, storage_options=storage_options)
        if not self.location.local:
            raise ConfigError(no_task_queue_message(url))
        self._tasks = _TaskDir(self.root)
        self._tasks.succeeded_result = self._succeeded_result
        self._watched: set[str] | None = set()  # queues claimed from (None: all)

    async def _open(self) -> None:
        await super()._open()
        try:
            await self._run("open the task queue in", self._tasks.setup)
        except BaseException:
            await super()._close()
            raise

    async def _run(self, action: str, fn: Callable[..., R], *args: Any) -> R:
        try:
            return await anyio.to_thread.run_sync(functools.partial(fn, *args))
        except (StorageError, ConfigError):
            raise
        except OSError as exc:
            raise self._error(action, exc) from exc

    async def enqueue(self, tasks: Sequence[Task]) -> dict[str, str]:
        check_new_tasks(tasks)
        if not tasks:
            return {}
        self._tasks.results_here = self.results_here
        ready, dups = await self._run("enqueue tasks in", self._tasks.enqueue, list(tasks))
        if ready:
            self.notify()
        return dups

    def _succeeded_result(self, task_id: str) -> bool:
        """Whether a SUCCEEDED result of ``task_id`` is stored here (in the queue's thread)."""
        path = self.result_path(task_id)
        data = _read(path)
        r = self._decode_result(path, data) if data is not None else None
        return r is not None and r.status is TaskStatus.SUCCEEDED

    async def _live_tasks(self, task_ids: list[str]) -> set[str]:
        """Which of these tasks may still run (pending, queued or running here)."""
        if not task_ids:
            return set()
        found = await self._run("read task statuses in", self._tasks.statuses, task_ids)
        return {t for t, s in found.items() if s.value in LIVE_TASK_STATUSES}

    async def claim(
        self, worker: str, *, queues: Sequence[str] | None, limit: int, lease: float, now: float
    ) -> list[Task]:
        names = check_claim(queues, limit, lease)
        if names is None:
            self._watched = None
        elif self._watched is not None:
            self._watched.update(names)
        if limit == 0 or names == []:
            return []
        return await self._run(
            "claim tasks from", self._tasks.claim, worker, names, limit, lease, now
        )

    async def finish(
        self, worker: str, outcomes: Sequence[tuple[str, TaskStatus]], *, now: float
    ) -> Finished:
        check_outcomes(outcomes)
        if not outcomes:
            return Finished()
        out = await self._run("finish tasks in", self._tasks.finish, worker, list(outcomes), now)
        if out.released:
            self.notify()
        return out

    async def retry(self, worker: str, task_id: str, *, eta: float, attempts: int) -> None:
        if await self._run("retry a task in", self._tasks.retry, worker, task_id, eta, attempts):
            self.notify()

    async def release(self, worker: str, task_ids: Sequence[str]) -> None:
        if await self._run("release tasks in", self._tasks.release, worker, list(task_ids)):
            self.notify()

    async def extend(self, worker: str, task_ids: Sequence[str], *, lease_until: float) -> None:
        await self._run("extend leases in", self._tasks.extend, worker, list(task_ids), lease_until)

    async def overrun(self, *, now: float, limit: int = 100) -> list[Overrun]:
        return await self._run("read leases in", self._tasks.overrun, now, limit)

    async def reap(self, *, now: float) -> Reaped:
        out = await self._run("reap leases in", self._tasks.reap, now)
        if out.requeued:
            self.notify()
        return out

    async def expire(self, *, now: float) -> list[Task]:
        return await self._run("expire tasks in", self._tasks.expire, now)

    async def cancel(self, task_ids: Sequence[str], *, now: float) -> dict[str, TaskStatus]:
        return await self._run("cancel tasks in", self._tasks.cancel, list(task_ids), now)

    async def get_task(self, task_id: str) -> Task | None:
        return await self._run("read a task from", self._tasks.get_task, task_id)

    async def statuses(self, task_ids: Sequence[str]) -> dict[str, TaskStatus]:
        return await self._run("read task statuses from", self._tasks.statuses, list(task_ids))

    async def cancel_requests(self, task_ids: Sequence[str]) -> list[str]:
        return await self._run(
            "read cancel requests from", self._tasks.cancel_requests, list(task_ids)
        )

    async def counts(self) -> dict[str, dict[str, int]]:
        return await self._run("count tasks in", self._tasks.counts)

    async def oldest_queued(self) -> dict[str, float]:
        return await self._run("read queues in", self._tasks.oldest_queued)

    async def purge(self, *, before: float) -> int:
        return await self._run("purge tasks in", self._tasks.purge, before)

    async def add_schedule(self, schedule: Schedule) -> None:
        await self._run("write a schedule to", self._tasks.add_schedule, schedule)

    async def get_schedules(self) -> list[Schedule]:
        return await self._run("read schedules from", self._tasks.get_schedules)

    async def set_schedule_paused(
        self, schedule_id: str, paused: bool, next_run: float | None
    ) -> bool:
        return await self._run(
            "update a schedule in", self._tasks.set_schedule_paused, schedule_id, paused, next_run
        )

    async def delete_schedule(self, schedule_id: str) -> bool:
        return await self._run("delete a schedule in", self._tasks.delete_schedule, schedule_id)

    async def fire_schedule(
        self,
        schedule_id: str,
        *,
        expected_next_run: float,
        next_run: float | None,
        now: float,
        task: Task,
    ) -> bool:
        check_new_tasks([task])
        fired, ready = await self._run(
            "fire a schedule in",
            self._tasks.fire_schedule,
            schedule_id,
            expected_next_run,
            next_run,
            now,
            task,
        )
        if ready:
            self.notify()
        return fired

    async def heartbeat(self, info: WorkerInfo) -> None:
        await self._run("write a heartbeat to", self._tasks.heartbeat, info)

    async def remove_worker(self, worker_id: str) -> None:
        await self._run("remove a worker from", self._tasks.remove_worker, worker_id)

    async def workers(self) -> list[WorkerInfo]:
        return await self._run("read workers from", self._tasks.workers)

    async def wait_for_tasks(self, timeout: float) -> None:
        """Return on ``notify`` or when another process made work claimable (the queue
        directories are polled every 5 ms, backing off to 100 ms), or after ``timeout``."""
        deadline = anyio.current_time() + timeout
        delay = 0.005
        while not self._wakeup.is_set():
            left = deadline - anyio.current_time()
            if left <= 0:
                break
            with anyio.move_on_after(min(delay, left)):
                await self._wakeup.wait()
            if self._wakeup.is_set() or self._files is None:
                break
            queues = sorted(self._watched) if self._watched else None
            if await self._run("poll", self._tasks.claimable, queues, time.time()):
                break
            delay = min(delay * 2, 0.1)
        self._wakeup = anyio.Event()


def open_fsspec(url: str, storage_options: dict[str, Any] | None = None) -> Backend:
    """The backend for an fsspec URL: ``FileTaskQueueBackend`` (tasks too) for ``file://``,
    ``FsspecBackend`` (results and events) for object stores. Not connected yet."""
    if parse_url(url).local:
        return FileTaskQueueBackend(url, storage_options=storage_options)
    return FsspecBackend(url, storage_options=storage_options)


__all__ = [
    "FileTaskQueueBackend",
    "FsspecBackend",
    "encode_name",
    "no_task_queue_message",
    "open_fsspec",
    "parse_url",
]
