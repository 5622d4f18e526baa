"""A process that enqueues one keyed task at a signal (the key race of the contract suite).

``python -m tests.storage.key_racer URL KEY READY GO``: connects to ``URL``, creates the file
``READY``, waits for the file ``GO``, enqueues a task with key ``KEY`` and prints the id that
holds the key afterwards (its own, or the holder's when it was a duplicate).
"""

from __future__ import annotations

import os
import sys
import time

import anyio

from omniq.ids import new_id
from omniq.models import Task
from omniq.storage.urls import open_backends


async def race(url: str, key: str, ready: str, go: str) -> str:
    queue, _, _ = open_backends(url)
    await queue.connect()
    try:
        with open(ready, "w"):
            pass
        deadline = time.monotonic() + 60
        while not os.path.exists(go):
            if time.monotonic() > deadline:
                raise TimeoutError("no go signal")
            time.sleep(0.001)  # spin (no await): start as close to the others as possible
        t = Task(id=new_id(), payload=b"race", key=key, created_at=time.time())
        dups = await queue.enqueue([t])
        return dups.get(t.id, t.id)
    finally:
        await queue.close()


if __name__ == "__main__":
    print(anyio.run(race, *sys.argv[1:5]), flush=True)
