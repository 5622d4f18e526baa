"""Results, events and blobs as objects under one fsspec URL (``FsspecBackend``)."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Collection, Sequence
from typing import Any, ClassVar

import msgspec

from ...errors import ConfigError, StorageError, StorageUnwritable
from ...ids import new_id
from ...logs import get_logger
from ...models import TaskEvent, TaskResult
from .._codec import decoder, encode
from ..base import (
    EventStore,
    ResultStore,
    masked,
)
from ..blobs import (
    Blob,
    gone_owners,
    nbytes,
    result_owner,
    task_owner,
)
from .errors import (
    explain,
    scrub,
)
from .files import (
    CONCURRENCY,
    AsyncFiles,
    Files,
    LocalFiles,
    R,
    SyncFiles,
    bounded,
    filesystem_class,
    gcs_class,
    parse_url,
)
from .layout import (
    _DIGEST_NAME,
    TRASH_STALE,
    BatchName,
    basename,
    blob_owner_marker,
    blob_relpath,
    day,
    expiry_marker,
    key_dir,
    key_marker,
    parse_blob_owner_marker,
    parse_expiry_marker,
    parse_key_marker,
    result_relpath,
)

log = get_logger("omniq.storage.fsspec")

_UNWRITABLE = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM)  # local writes refused

#: Events kept decoded in memory across ``query_events`` calls (batches are immutable).
EVENT_CACHE_LIMIT = 500_000
LAYOUT_VERSION = 1


_result_dec = decoder(TaskResult)
_events_dec = decoder(list[TaskEvent])

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
        self._files: Files | None = None
        self._events: OrderedDict[str, list[TaskEvent]] = OrderedDict()
        self._cached_events = 0

    # --- lifecycle ------------------------------------------------------------------------------
    def _make_files(self) -> Files:
        loc = self.location
        if loc.local:
            return LocalFiles(loc.root)
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
            cls = gcs_class(cls, opts)
        try:
            fs = cls(**opts)
        except Exception as exc:
            why = scrub(explain(exc, protocol=loc.protocol), self.storage_options)
            raise StorageError(f"cannot open {masked(self.url)}: {why}") from exc
        if is_async:
            return AsyncFiles(fs)
        return SyncFiles(fs, threaded=loc.protocol != "memory")

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
    def files(self) -> Files:
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
    async def _put_results(self, results: Sequence[TaskResult]) -> None:
        chains: list[list[tuple[str, bytes]]] = []
        for r in results:
            # index entries first: a crash leaves a dangling entry, never an unindexed result
            chain = [(p, b"") for p in self._index_paths(r)]
            chain.append((self.result_path(r.task_id), encode(r)))
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
            parsed = parse_expiry_marker(basename(path))
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
    async def _append_events(self, events: Sequence[TaskEvent]) -> None:
        stamps = [e.timestamp for e in events]
        name = BatchName(float(min(stamps)), float(max(stamps)), len(events), new_id())
        path = self._path(name.render())
        batch = list(events)
        await self._guard("write events to", self.files.put(path, encode(batch)))
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
            parts = await bounded(
                lambda d: self._guard("list events in", files.find(f"{root}/{d}")), wanted, 16
            )
            found = [p for part in parts for p in part]
        out = []
        for path in found:
            name = BatchName.parse(basename(path))
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

    async def _query_events(
        self, task_id: str | None, since: float | None, types: list[str] | None, limit: int | None
    ) -> list[TaskEvent]:
        batches = await self._batches(since)
        if since is None:  # a full listing: forget batches purged by someone else
            listed = {p for p, _ in batches}
            for path in [p for p in self._events if p not in listed]:
                self._forget(path)
        loaded = await self._load_batches([p for p, _ in batches])
        wanted = None if types is None else set(types)
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

    async def purge_events(self, *, before: float, task_ids: Collection[str] | None = None) -> int:
        """With ``task_ids``, every batch that may hold their events is read and rewritten
        without them (a batch holds events of many tasks)."""
        ids = None if task_ids is None else set(task_ids)
        batches = [(p, n) for p, n in await self._batches(None) if n.first < before]
        whole = [p for p, n in batches if n.last < before and ids is None]
        partial = [p for p, n in batches if n.last >= before or ids is not None]
        count = sum(n.n for p, n in batches if n.last < before and ids is None)
        if partial:
            loaded = await self._load_batches(partial)
            for path in partial:
                evs = loaded.get(path)
                if evs is None:
                    continue
                keep = [e for e in evs if e.timestamp >= before or (ids is not None and e.task_id not in ids)]
                if len(keep) == len(evs):
                    continue  # none of them here: the batch stays as it is
                count += len(evs) - len(keep)
                if keep:  # the rest becomes a new object (same batch id: same tie order),
                    # written before the old one goes
                    old = BatchName.parse(basename(path))
                    assert old is not None
                    stamps = [e.timestamp for e in keep]
                    name = BatchName(min(stamps), max(stamps), len(keep), old.batch)
                    new_path = self._path(name.render())
                    await self._guard(
                        "write events to", self.files.put(new_path, encode(keep))
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

    async def _put_blobs(self, given: dict[str, Blob], owner: str, now: float) -> int:
        await self._own({owner: list(given)}, now)
        files = self.files
        paths = {self._blob_file(d): d for d in given}
        stored = await self._guard("look for blobs in", files.exists(list(paths)))
        todo = [(p, d) for p, d in paths.items() if p not in stored]

        async def put(item: tuple[str, str]) -> None:
            await files.put(item[0], given[item[1]])  # whole, or not at all

        await self._guard("write blobs to", bounded(put, todo, 8))
        return sum(nbytes(given[d]) for _, d in todo)

    async def _own(self, owners: dict[str, list[str]], now: float) -> None:
        chains = [
            [(self._path(blob_owner_marker(d, o, now)), b"")] for o, ds in owners.items() for d in ds
        ]
        if chains:
            await self._guard("record blob owners in", self.files.put_chains(chains))

    async def _add_blob_owners(self, owners: dict[str, list[str]], now: float) -> None:
        await self._own(owners, now)

    async def _get_blobs(self, ds: list[str]) -> dict[str, bytes]:
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

    async def _missing_blobs(self, ds: list[str]) -> set[str]:
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
        stored = {d for p in listed if _DIGEST_NAME.fullmatch(d := basename(p))}
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
        dead = gone_owners(old, live, owned)
        await self._guard("delete blob owners in", files.delete(dead))
        trash = await self._guard("list blobs in", files.find(self._path("blob-trash")))
        stale = time.time() - TRASH_STALE
        doomed: list[tuple[str, str | None]] = [(d, None) for d in sorted(stored - owned)]
        for path in trash:  # left by a sweep that crashed: settled here
            name = basename(path)
            d = path[root_len:].split("/")[1]
            with contextlib.suppress(ValueError):
                if _DIGEST_NAME.fullmatch(d) and float(name.partition("@")[0]) < stale:
                    doomed.append((d, path))
        gone = await self._guard("delete blobs in", bounded(self._take_blob, doomed, 16))
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
    parsed = parse_expiry_marker(basename(path))
    return parsed[0] if parsed else 0.0
