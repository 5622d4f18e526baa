"""Blobs in a NATS object store, with owner keys in their own bucket (see the package docstring
for the protocol)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import hashlib
import io
import json
import secrets
import time
from collections.abc import Sequence
from typing import Any

import nats.errors
import nats.js.errors
import nats.js.object_store
from nats.js import api

from ...logs import get_logger
from ..base import (
    masked,
)
from ..blobs import (
    LIVE_TASK_STATUSES,
    Blob,
    gone_owners,
    nbytes,
    result_owner,
    task_owner,
)
from .guard import (
    gather,
    guarded,
)
from .records import (
    BLOB_CHUNK,
    BLOB_WINDOW,
    KV_OPERATION,
    TRASH,
    TRASH_STALE,
    blob_created,
    token,
    untoken,
)
from .tasks import (
    NatsTaskRecords,
)

log = get_logger("omniq.storage.nats")

class NatsBlobs(NatsTaskRecords):
    """The blob store (owners are tasks and results of this namespace)."""

    # --- blobs ----------------------------------------------------------------------------------------------
    def _blob_meta_subject(self, name: str) -> str:
        return f"$O.{self.blobs_bucket}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"

    def _blob_chunk_subject(self, nuid: str) -> str:
        return f"$O.{self.blobs_bucket}.C.{nuid}"

    def _blob_owner_subject(self, digest: str, owner: str) -> str:
        return f"$KV.{self.blob_owners_bucket}.{digest}.{token(owner)}"

    async def _blob_meta(self, name: str) -> tuple[int, dict[str, Any]] | None:
        """The meta message of object ``name``: its sequence and its fields (None: none)."""
        m = await self._get_last(self.blobs_stream, self._blob_meta_subject(name))
        return None if m is None else (m.seq, json.loads(m.data))

    async def _blob_metas(self, digests: Sequence[str]) -> dict[str, tuple[int, dict[str, Any]]]:
        """The meta messages of the objects stored (and not deleted) under these digests."""
        got = await gather(self._blob_meta(d) for d in digests)
        return {d: g for d, g in zip(digests, got, strict=True) if g is not None and not g[1].get("deleted")}

    async def _own(self, owners: dict[str, list[str]], now: float) -> None:
        at = repr(float(now)).encode()
        items = [(self._blob_owner_subject(d, o), at, None) for o, ds in owners.items() for d in ds]
        for i in range(0, len(items), 1000):
            await self._publish_ok(items[i : i + 1000])

    @guarded
    async def _put_blobs(self, given: dict[str, Blob], owner: str, now: float) -> int:
        await self._own({owner: list(given)}, now)  # first: a sweep now sees the owner
        found = await gather(self._blob_meta(d) for d in given)
        written = 0
        for (d, data), meta in zip(given.items(), found, strict=True):
            if meta is None or meta[1].get("deleted"):
                written += await self._put_blob(d, data, now, 0 if meta is None else meta[0])
        return written

    async def _put_blob(self, digest: str, data: Blob, now: float, last: int) -> int:
        """Chunks, then the meta message by compare-and-set on ``last`` (0: none yet); bytes
        written (0 when another process stored the blob first: our chunks are purged)."""
        nc = self._nc
        size = min(BLOB_CHUNK, max(1024, (nc.max_payload if nc is not None else 0) // 2))
        nuid = secrets.token_hex(11)
        subject = self._blob_chunk_subject(nuid)
        view = memoryview(data)
        n = nbytes(data)
        sha = hashlib.sha256()
        chunks = 0
        try:
            for start in range(0, n, size * BLOB_WINDOW):
                items: list[tuple[str, bytes, dict[str, str] | None]] = []
                for i in range(start, min(n, start + size * BLOB_WINDOW), size):
                    piece = bytes(view[i : i + size])
                    sha.update(piece)
                    items.append((subject, piece, None))
                await self._publish_ok(items)
                chunks += len(items)
            info = api.ObjectInfo(
                name=digest, bucket=self.blobs_bucket, nuid=nuid, size=n,
                mtime=datetime.datetime.fromtimestamp(now, datetime.timezone.utc).isoformat(),
                chunks=chunks,
                digest="SHA-256=" + base64.urlsafe_b64encode(sha.digest()).decode(),
                options=api.ObjectMetaOptions(max_chunk_size=size),
            )  # fmt: skip
            seq = await self._cas(
                self._blob_meta_subject(digest), json.dumps(info.as_dict()).encode(), last
            )
        except BaseException:
            await self._purge_quietly(subject)
            raise
        if seq is None:  # stored by someone else meanwhile: theirs is the blob
            await self._purge_quietly(subject)
            return 0
        return n

    async def _purge_quietly(self, subject: str) -> None:
        try:
            await self._purge(self.blobs_stream, subject)
        except (nats.errors.Error, asyncio.TimeoutError) as e:
            log.debug("NATS %s: purging %s failed: %s", masked(self.url), subject, e)

    @guarded
    async def _add_blob_owners(self, owners: dict[str, list[str]], now: float) -> None:
        await self._own(owners, now)

    @guarded
    async def _get_blobs(self, ds: list[str]) -> dict[str, bytes]:
        got = await gather(self._read_blob(d) for d in ds)
        return {d: data for d, data in zip(ds, got, strict=True) if data is not None}

    async def _read_blob(self, digest: str) -> bytes | None:
        """A blob's bytes (checked against the digest in its meta); a blob a sweep is taking
        away is read from its trash name."""
        obs = nats.js.object_store.ObjectStore(self.blobs_bucket, self.blobs_stream, self.js)
        for name in (digest, TRASH + digest):
            meta = await self._blob_meta(name)
            if meta is None or meta[1].get("deleted"):
                continue
            out = io.BytesIO()
            # chunks purged under a reader (a sweep) would leave it waiting: bounded
            wait = self.timeout * 4 + int(meta[1].get("size") or 0) / 1e6
            try:
                await asyncio.wait_for(obs.get(name, writeinto=out), wait)
            except nats.js.errors.ObjectNotFoundError:
                continue
            return out.getvalue()
        return None

    @guarded
    async def _missing_blobs(self, ds: list[str]) -> set[str]:
        return set(ds).difference(await self._blob_metas(ds))

    async def _live_owners(self, owners: set[str]) -> set[str]:
        tasks = {tid: o for o in owners if (tid := task_owner(o)) is not None}
        results = {rid: o for o in owners if (rid := result_owner(o)) is not None}
        recs = await self._get_recs(tasks)
        live = {tasks[t] for t, (_, r) in recs.items() if r.task.status.value in LIVE_TASK_STATUSES}
        ids = list(results)
        there = await gather(
            self._get_last(f"KV_{self.results_bucket}", self._result_subject(i)) for i in ids
        )
        live.update(results[i] for i, m in zip(ids, there, strict=True) if m is not None)
        return live

    @guarded
    async def sweep_blobs(self, *, older_than: float) -> int:
        # blobs first, then owners: a blob listed here had its first owner key written before
        metas = await self._scan(
            self.blobs_stream, f"$O.{self.blobs_bucket}.M.>", last_per_subject=True
        )
        stored: dict[str, float] = {}  # digest -> created at
        trash: list[tuple[str, dict[str, Any]]] = []
        stale = time.time() - TRASH_STALE
        for m in metas:
            info = json.loads(m.data)
            name = str(info.get("name", ""))
            if info.get("deleted"):
                continue
            if name.startswith(TRASH):
                with contextlib.suppress(ValueError):
                    if float(info.get("description") or 0) < stale:
                        trash.append((name[len(TRASH) :], info))
                continue
            stored[name] = blob_created(info)
        keys = await self._scan(
            f"KV_{self.blob_owners_bucket}", f"$KV.{self.blob_owners_bucket}.>",
            last_per_subject=True,
        )  # fmt: skip
        owned: set[str] = set()
        old: list[tuple[str, str, str]] = []  # (subject, digest, owner)
        for m in keys:
            if m.headers and m.headers.get(KV_OPERATION) in ("DEL", "PURGE"):
                continue
            parts = m.subject.split(".")
            if len(parts) != 4:
                continue
            d, owner = parts[2], untoken(parts[3])
            try:
                at = float(m.data)
            except ValueError:
                at = 0.0
            if at >= older_than:
                owned.add(d)
            else:
                old.append((m.subject, d, owner))
        live = await self._live_owners({o for _, _, o in old})
        dead = gone_owners(old, live, owned)
        await gather(self._purge(f"KV_{self.blob_owners_bucket}", s) for s in dead)
        doomed: list[tuple[str, dict[str, Any] | None]] = [
            (d, None) for d, created in sorted(stored.items())
            if created < older_than and d not in owned
        ]  # fmt: skip
        doomed.extend(trash)
        return sum(await gather(self._take_blob(d, info) for d, info in doomed))

    async def _take_blob(self, digest: str, trashed: dict[str, Any] | None) -> int:
        """Delete one blob nobody owned when the sweep looked: its meta moves to the trash
        name first, and back when an owner was marked meanwhile. 1 when it is gone."""
        js, home = self.js, self._blob_meta_subject(digest)
        if trashed is None:
            meta = await self._blob_meta(digest)
            if meta is None or meta[1].get("deleted"):
                return 0
            trashed = dict(meta[1], name=TRASH + digest, description=repr(time.time()))
            await self._publish_ok(
                [(self._blob_meta_subject(TRASH + digest), json.dumps(trashed).encode(),
                  {api.Header.ROLLUP: "sub"})]
            )  # fmt: skip
            await self._purge(self.blobs_stream, home)
        else:  # a crashed sweep's: unless it never took the blob away
            meta = await self._blob_meta(digest)
            if meta is not None and meta[1].get("nuid") == trashed.get("nuid"):
                await self._purge(self.blobs_stream, self._blob_meta_subject(TRASH + digest))
                return 0
        chunks = self._blob_chunk_subject(str(trashed.get("nuid")))
        owners = await self._subjects(
            f"KV_{self.blob_owners_bucket}", f"$KV.{self.blob_owners_bucket}.{digest}.>"
        )
        gone = 0
        if owners:  # a put owns it now: it stays (unless that put stored it again itself)
            back = dict(trashed, name=digest, description=None)
            if await self._cas(home, json.dumps(back).encode(), 0) is None:
                await js.purge_stream(self.blobs_stream, subject=chunks)
        else:
            await js.purge_stream(self.blobs_stream, subject=chunks)
            gone = 1
        await self._purge(self.blobs_stream, self._blob_meta_subject(TRASH + digest))
        return gone
