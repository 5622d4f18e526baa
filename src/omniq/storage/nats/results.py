"""Results in the RESULTS bucket, indexed by key and by expiry."""

from __future__ import annotations

from collections.abc import Sequence

from ...errors import ConfigError
from ...models import TaskResult
from .._codec import encode
from ..base import (
    ResultStore,
)
from .connection import (
    JetStream,
)
from .guard import (
    gather,
    guarded,
)
from .records import (
    token,
    untoken,
    whole_second,
)


class NatsResults(JetStream, ResultStore):
    """The result store."""

    # --- results -------------------------------------------------------------------------------------------
    @guarded
    async def _put_results(self, results: Sequence[TaskResult]) -> None:
        items: list[tuple[str, bytes, dict[str, str] | None]] = []
        for r in results:
            tid = token(r.task_id)
            items.append((self._result_subject(r.task_id), encode(r), None))
            if r.key is not None:
                items.append((f"{self._p}.ix.k.k{r.key.encode().hex()}.{tid}", b"", None))
            if r.expires_at is not None:
                items.append((f"{self._p}.ix.e.{whole_second(r.expires_at)}", r.task_id.encode(), None))
        for i in range(0, len(items), 1000):
            await self._publish_ok(items[i : i + 1000])

    @guarded
    async def get_result(self, task_id: str) -> TaskResult | None:
        return await self._get_result(task_id)

    @guarded
    async def get_results(self, task_ids: Sequence[str]) -> dict[str, TaskResult]:
        ids = list(dict.fromkeys(task_ids))
        got = await gather(self._get_result(i) for i in ids)
        return {i: r for i, r in zip(ids, got, strict=True) if r is not None}

    @guarded
    async def find_results(self, *, key_prefix: str) -> list[TaskResult]:
        if not isinstance(key_prefix, str):
            raise ConfigError(f"key_prefix must be a str, got {type(key_prefix).__name__}")
        want = key_prefix.encode().hex()
        found: dict[str, str] = {}  # task id -> index subject
        for subject in await self._subjects(self.index_stream, f"{self._p}.ix.k.>"):
            parts = subject.split(".")
            if parts[4][1:].startswith(want):
                found[untoken(parts[5])] = subject
        got = await gather(self._get_result(i) for i in found)
        out: list[TaskResult] = []
        stale: list[str] = []
        for subject, r in zip(found.values(), got, strict=True):
            if r is None or r.key is None or f"k{r.key.encode().hex()}" != subject.split(".")[4]:
                stale.append(subject)  # deleted, or overwritten under another key
            if r is not None and r.key is not None and r.key.startswith(key_prefix):
                out.append(r)
        await gather(self._purge(self.index_stream, s) for s in stale)
        out.sort(key=lambda r: r.key or "")
        return out

    @guarded
    async def delete_results(self, task_ids: Sequence[str]) -> int:
        found = await self.get_results(task_ids)
        await gather(self._delete_result(i) for i in found)
        return len(found)

    async def _delete_result(self, task_id: str) -> None:
        await self._purge(f"KV_{self.results_bucket}", self._result_subject(task_id))
        await self._purge(self.index_stream, f"{self._p}.ix.k.*.{token(task_id)}")

    @guarded
    async def purge_results(self, *, now: float) -> int:
        gone: set[str] = set()
        for subject in await self._subjects(self.index_stream, f"{self._p}.ix.e.>"):
            second = int(subject.split(".")[-1])
            if second > now:
                continue
            msgs = await self._read_index(subject)
            results = await self.get_results([m.data.decode() for m in msgs])
            done: list[int] = []
            for m in msgs:
                r = results.get(m.data.decode())
                if r is None or r.expires_at is None or whole_second(r.expires_at) != second:
                    done.append(m.seq)  # gone, or its expiry changed
                elif r.expires_at <= now:
                    gone.add(r.task_id)
                    done.append(m.seq)
            await gather(self._delete_result(i) for i in gone)
            await self._delete_index(done)
        return len(gone)
