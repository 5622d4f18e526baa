"""``memory_limit``: carried from every way of submitting to the stored Task (bytes), from config
and ``omniq worker --memory-limit`` to the worker's default. (The workers enforce it: see
tests/workers.)"""

from __future__ import annotations

import anyio
import pytest

from omniq import OmniQ
from omniq.cli import build_parser
from omniq.errors import ConfigError
from omniq.storage.urls import open_backends


def inc(x=0, **_):
    return x + 1


def stored(url: str, ids: list[str]) -> dict[str, int | None]:
    async def read() -> dict[str, int | None]:
        q, _, _ = open_backends(url)
        await q.connect()
        try:
            return {i: t.memory_limit for i in ids if (t := await q.get_task(i)) is not None}
        finally:
            await q.close()

    return anyio.run(read)


def test_every_way_of_submitting_stores_the_limit_in_bytes(tmp_path):
    url = f"sqlite:///{tmp_path}/q.db"
    with OmniQ(tasks=url, concurrency=0) as oq:
        a = oq.enqueue(inc, args=(1,), memory_limit="4GB")
        b = oq.enqueue(inc, args=(1,), memory_limit=123_456_789)
        plain = oq.enqueue(inc, args=(1,))
        mapped = [h.id for h in oq.map(inc, [1, 2], memory_limit="200 MiB")]
        chunked = oq.map(inc, range(4), chunksize=2, memory_limit="1GB")
        sw = oq.sweep(inc, {"x": [1, 2]}, name="mem", memory_limit="512MB")
        oq.flush()
        swept = [sw.tracker.task_id(i) for i in range(2)]
    chunk_ids = sorted({h.id.rsplit(".", 1)[0] for h in chunked})
    got = stored(url, [a, b, plain, *mapped, *chunk_ids, *swept])
    assert got[a] == 4_000_000_000 and got[b] == 123_456_789 and got[plain] is None
    assert [got[i] for i in mapped] == [200 * 1024**2] * 2
    assert [got[i] for i in chunk_ids] == [10**9] * 2
    assert [got[i] for i in swept] == [512 * 10**6] * 2


@pytest.mark.parametrize("bad", ["lots", "-4GB", 0, True, "4 parsecs"])
def test_a_bad_limit_names_memory_limit_and_what_is_valid(tmp_path, bad):
    with OmniQ(tasks=f"sqlite:///{tmp_path}/q.db", concurrency=0) as oq:
        for call in (
            lambda: oq.enqueue(inc, memory_limit=bad),
            lambda: oq.map(inc, [1], memory_limit=bad),
            lambda: oq.sweep(inc, {"x": [1]}, name="bad", memory_limit=bad),
        ):
            with pytest.raises(ConfigError, match=r"memory_limit=.* is not valid: expected a size such as '4GB'"):
                call()
    with pytest.raises(ConfigError, match="memory_limit="):
        OmniQ(tasks="memory://", memory_limit=bad)


def test_the_instance_limit_is_its_workers_default(tmp_path, monkeypatch):
    with OmniQ(tasks=f"sqlite:///{tmp_path}/q.db", worker="process", concurrency=1, memory_limit="1GB") as oq:
        assert oq.config.memory_limit == 10**9
        runner = oq.core.worker.runner  # type: ignore[union-attr]
        assert runner.memory_limit == 10**9
    monkeypatch.setenv("OMNIQ_MEMORY_LIMIT", "256MiB")
    assert OmniQ(tasks="memory://").config.memory_limit == 256 * 1024**2
    assert OmniQ.from_config({"memory_limit": "2GB"}, tasks="memory://").config.memory_limit == 256 * 1024**2
    monkeypatch.delenv("OMNIQ_MEMORY_LIMIT")  # (the environment is over a config dict)
    assert OmniQ.from_config({"memory_limit": "2GB"}, tasks="memory://").config.memory_limit == 2 * 10**9


def test_omniq_worker_memory_limit_option(capsys):
    args = build_parser().parse_args(["worker", "--tasks", "memory://", "--memory-limit", "4GB"])
    assert args.memory_limit == 4_000_000_000
    assert build_parser().parse_args(["worker", "--tasks", "memory://"]).memory_limit is None
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["worker", "--tasks", "memory://", "--memory-limit", "plenty"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--memory-limit" in err and "'plenty' is not a size" in err and "4GB" in err


def test_omniq_worker_says_its_memory_limit(tmp_path):
    import signal
    import subprocess
    import sys

    p = subprocess.Popen(
        [sys.executable, "-m", "omniq.cli", "worker", "--tasks", f"sqlite:///{tmp_path}/q.db",
         "--worker", "thread", "-c", "1", "--memory-limit", "1.5GB"],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        assert p.stderr is not None
        line = p.stderr.readline()
        while line and not line.startswith("omniq worker:"):
            line = p.stderr.readline()
        assert "memory_limit=1.5 GB" in line, line
    finally:
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=30)
