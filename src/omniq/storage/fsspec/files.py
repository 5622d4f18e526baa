"""Filesystem adapters: the same small async surface (put, get, find, move, ...) over local disk,
synchronous fsspec filesystems and asynchronous ones; and the URL -> filesystem mapping."""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import os
import secrets
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple, TypeVar

import anyio
import anyio.to_thread

from ...errors import ConfigError
from ..base import masked
from ..blobs import (
    Blob,
    as_bytes,
)
from ..checks import check_owner, make_private_dir
from .errors import (
    BucketMissing,
    bucket_missing,
)
from .layout import (
    basename,
)

T = TypeVar("T")
R = TypeVar("R")

#: Concurrent requests for many-object reads and writes on an async filesystem.
CONCURRENCY = 64

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

# --------------------------------------------------------------------------------------------
# Filesystem adapters: the same small async surface over local disk, sync and async fsspec
# --------------------------------------------------------------------------------------------
async def bounded(fn: Callable[[T], Awaitable[R]], items: Sequence[T], limit: int) -> list[R]:
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


def split_evenly(items: Sequence[T], n: int) -> list[Sequence[T]]:
    size = max(1, -(-len(items) // n))
    return [items[i : i + size] for i in range(0, len(items), size)]


class Files:
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


def write_atomic(path: str, data: Blob, *, fsync: bool = True) -> None:
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


def read_file(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def prune_empty(path: str, stop: str) -> None:
    """Remove empty parent directories of ``path`` up to (not including) ``stop``."""
    head = os.path.dirname(path)
    while len(head) > len(stop) and head.startswith(stop):
        try:
            os.rmdir(head)
        except OSError:
            return
        head = os.path.dirname(head)


class LocalFiles(Files):
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
            functools.partial(write_atomic, path, data, fsync=bool(data))
        )

    async def put_chains(self, chains: Sequence[Sequence[tuple[str, bytes]]]) -> None:
        # fsync makes each write cost a disk flush; flushes from several threads share one
        # journal commit, so batches go to up to 16 threads. Empty index files need no fsync.
        def run(part: Sequence[Sequence[tuple[str, bytes]]]) -> None:
            for chain in part:
                for p, d in chain:
                    write_atomic(p, d, fsync=bool(d))

        async def one(part: Sequence[Sequence[tuple[str, bytes]]]) -> None:
            await anyio.to_thread.run_sync(run, part)

        await bounded(one, split_evenly(chains, 16), 16)

    async def get(self, path: str) -> bytes | None:
        return read_file(path)

    async def get_many(self, paths: Sequence[str]) -> dict[str, bytes]:
        def run(chunk: Sequence[str]) -> list[tuple[str, bytes | None]]:
            return [(p, read_file(p)) for p in chunk]

        if len(paths) <= 16:
            found = run(paths)
        else:

            async def one(chunk: Sequence[str]) -> list[tuple[str, bytes | None]]:
                return await anyio.to_thread.run_sync(run, chunk)

            found = [x for part in await bounded(one, split_evenly(paths, 8), 8) for x in part]
        return {p: d for p, d in found if d is not None}

    async def delete(self, paths: Sequence[str]) -> None:
        def run() -> None:
            for p in paths:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)
                prune_empty(p, self.root)

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
            prune_empty(src, self.root)

        await anyio.to_thread.run_sync(run)


class SyncFiles(Files):
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
        await bounded(lambda c: self._call(self._put_chain, c), chains, 16)

    async def get(self, path: str) -> bytes | None:
        return await self._call(self._get, path)

    async def get_many(self, paths: Sequence[str]) -> dict[str, bytes]:
        if self.threaded:
            got = await bounded(self.get, paths, 16)
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
        return [basename(e["name"].rstrip("/")) for e in entries if e.get("type") == "directory"]

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


class AsyncFiles(Files):
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

        await bounded(chain, chains, CONCURRENCY)

    async def get(self, path: str) -> bytes | None:
        try:
            data: bytes = await self.fs._cat_file(path, **self._cat_kw)
            return data
        except FileNotFoundError as exc:
            if bucket_missing(exc):  # the bucket is gone, not the object
                raise
            return None

    async def get_many(self, paths: Sequence[str]) -> dict[str, bytes]:
        got = await bounded(self.get, paths, CONCURRENCY)
        return {p: d for p, d in zip(paths, got, strict=True) if d is not None}

    async def delete(self, paths: Sequence[str]) -> None:
        if not paths:
            return
        bulk = getattr(self.fs, "_bulk_delete", None)  # s3fs: 1,000 keys per request
        if bulk is not None:
            chunks = [paths[i : i + 1000] for i in range(0, len(paths), 1000)]
            await bounded(lambda c: bulk(list(c)), chunks, 4)
            return

        async def one(p: str) -> None:
            with contextlib.suppress(FileNotFoundError):
                await self.fs._rm_file(p)

        await bounded(one, paths, CONCURRENCY)

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
        return [basename(e["name"].rstrip("/")) for e in entries if e.get("type") == "directory"]

    async def exists(self, paths: Sequence[str]) -> set[str]:
        found = await bounded(self.fs._exists, paths, CONCURRENCY)
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


def gcs_class(cls: Any, opts: dict[str, Any]) -> Any:
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
