"""The intake's held blob bytes: kept while a task still to be stored needs them, released
when nothing will store them."""

from __future__ import annotations

import asyncio

import pytest

from omniq import AsyncOmniQ, OmniQ
from omniq.errors import OmniQClosed, StorageError
from omniq.serialization import BLOB_THRESHOLD
from tests.servers import private_redis


def nbytes(data: bytes) -> int:
    return len(data)


def test_an_outage_keeps_the_blob_bytes_a_task_still_waiting_to_be_stored_shares() -> None:
    """A batch that could not be stored (its storage down through every retry) releases its
    held bytes, but not those a task still in the buffer shares: stored once the storage is
    back, that task must find its large argument and run."""
    big = b"x" * (BLOB_THRESHOLD + 1)
    with private_redis() as server:

        async def main() -> int:
            url = server.url() + "&reconnect_timeout=0.2"  # each try fails within 0.2 s
            async with AsyncOmniQ(tasks=url, worker="thread", concurrency=1) as oq:
                server.stop(crash=True)
                (first,) = oq.submit_tasks(oq.build_tasks(nbytes, [((big,), {})]))
                await asyncio.sleep(0.2)  # its batch is being retried: the next one waits
                (second,) = oq.submit_tasks(oq.build_tasks(nbytes, [((big,), {})]))
                with pytest.raises(StorageError):
                    await asyncio.wrap_future(first)
                server.start()  # while the second batch is retried
                result = await asyncio.wrap_future(second)
                assert result.error is None, result.error  # before: its large argument was gone
                assert not oq.intake._blob_bytes  # stored: nothing held any more
                return result.value

        assert asyncio.run(main()) == len(big)


def test_a_submit_refused_after_close_holds_no_bytes(tmp_path) -> None:
    oq = OmniQ(tasks=f"sqlite:///{tmp_path}/q.db", concurrency=0)
    oq.open()
    core = oq.core
    oq.close()
    (task,) = core.build_tasks(nbytes, [((b"y" * (BLOB_THRESHOLD + 1),), {})])
    assert task.blobs and core.intake._blob_bytes  # held until stored
    with pytest.raises(OmniQClosed):
        core.submit_tasks([task])
    assert not core.intake._blob_bytes  # refused for good: nothing will store them
