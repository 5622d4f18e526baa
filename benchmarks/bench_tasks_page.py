"""``oq.tasks()`` with 1,000,000 tasks in SQLite: a page of 100 must cost what it costs with ten
tasks (issue 17). Prints the time of each kind of page and SQLite's plan for it.

    uv run python benchmarks/bench_tasks_page.py                  # 1,000,000 tasks (~1-2 min once)
    uv run python benchmarks/bench_tasks_page.py --tasks 100000 --db /tmp/pages.db

The file holds ``--tasks`` tasks over four queues, stored in batches, then 1 in 10 marked
failed and 8 in 10 succeeded by one UPDATE each (so every status has many rows). The file is
kept and reused when it already holds the tasks.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import anyio  # noqa: E402

from omniq import OmniQ  # noqa: E402
from omniq.ids import new_ids  # noqa: E402
from omniq.models import Task  # noqa: E402
from omniq.storage.sqlite import SQLiteBackend  # noqa: E402
from omniq.storage.sqlite.queries import PAGE_TOP, page_sql  # noqa: E402


def build(db: str, n: int) -> None:
    if os.path.exists(db):
        with sqlite3.connect(db) as c:
            try:
                if c.execute("SELECT count(*) FROM omniq_tasks").fetchone()[0] >= n:
                    return
            except sqlite3.Error:
                pass
        os.unlink(db)
    t0 = time.perf_counter()

    async def store() -> None:  # the backend directly: one transaction per batch, as map() stores
        queue = SQLiteBackend(f"sqlite:///{db}")
        await queue.connect()
        try:
            now = time.time()
            for start in range(0, n, 50_000):
                ids = new_ids(min(50_000, n - start))
                await queue.enqueue([Task(id=i, payload=b"C\x93\xc4\x00\x90\x80", name=f"bench.fn{k % 3}",
                                          queue=f"q{k % 4}", created_at=now) for k, i in enumerate(ids)])
        finally:
            await queue.close()

    anyio.run(store)
    with sqlite3.connect(db) as c:
        c.execute("UPDATE omniq_tasks SET status = 'failed', finished_at = 1 WHERE seq % 10 = 0")
        c.execute("UPDATE omniq_tasks SET status = 'succeeded', finished_at = 1 WHERE seq % 10 > 1")
    print(f"built {n:,} tasks in {time.perf_counter() - t0:.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=1_000_000)
    ap.add_argument("--db", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "omniq-pages.db"))
    ap.add_argument("--repeat", type=int, default=20)
    a = ap.parse_args()
    build(a.db, a.tasks)
    cases: list[tuple[str, dict[str, Any], tuple[str, ...] | None, bool]] = [
        ("newest 100", {}, None, False),
        ("status=failed", {"status": "failed"}, ("failed",), True),
        ("status=queued, queue=q2", {"status": "queued", "queue": "q2"}, ("queued",), True),
        ("queue=q1 (all statuses)", {"queue": "q1"}, None, True),
        ("status in (failed, queued)", {"status": ["failed", "queued"]}, ("failed", "queued"), True),
    ]
    with OmniQ(tasks=f"sqlite:///{a.db}", concurrency=0) as oq:
        total = sqlite3.connect(a.db).execute("SELECT count(*) FROM omniq_tasks").fetchone()[0]
        print(f"{total:,} tasks in {a.db}")
        for label, kw, statuses, by_queue in cases:
            first = oq.tasks(limit=100, **kw)
            times = []
            for _ in range(a.repeat):
                t0 = time.perf_counter()
                page = oq.tasks(limit=100, **kw)
                times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            deeper = oq.tasks(limit=100, before=first[-1].id, **kw)
            next_page = time.perf_counter() - t0
            sql = page_sql(statuses, by_queue)
            # (a page by status alone reads this plan once per queue)
            params = (PAGE_TOP, 100, "q2" if "q2" in label else "q1") if by_queue else (PAGE_TOP, 100)
            plan = [r[3] for r in sqlite3.connect(a.db).execute("EXPLAIN QUERY PLAN " + sql, params)]
            print(f"{label:28} {len(page):3} rows  median {statistics.median(times) * 1000:6.2f} ms  "
                  f"next page {next_page * 1000:6.2f} ms ({len(deeper)} rows)")
            for step in plan:
                print(f"{'':30}plan: {step}")


if __name__ == "__main__":
    main()
