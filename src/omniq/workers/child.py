"""A process worker's child: ``python -m omniq.workers.child``.

Started by the parent through the package's own entry point (spawned, never forked), so a
user's script needs no ``if __name__ == "__main__"`` guard. It speaks the protocol in
``_wire`` and runs its tasks one at a time, in the order they came; a timeout or cancel is
the parent killing this process.

A reader thread takes frames while a task runs, so the parent can take back tasks this child
holds but has not started (``["U", ids]``, answered by ``["B", ids]``: an idle sibling runs
them instead of waiting behind a slow task here), and so this child dies the moment its
parent does (the pipe closes), not after finishing a task the parent's successor will run
again.

Results are batched while tasks are quick and sent at once when a task took a while, so a
no-op costs a fraction of a pipe round trip and a slow task is reported as soon as it ends.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from typing import Any

from ._wire import (
    BLOB_DIR_ENV,
    EXPIRED,
    frame,
    read_frame,
    row,
    run_call,
    setup_child,
    task_fetch,
    write_all,
)

FLUSH_AFTER = 0.02  # seconds: report results at least this often while busy


class _Inbox:
    """Tasks received and not yet started, filled by the reader thread."""

    def __init__(self) -> None:
        self.todo: deque[list[Any]] = deque()
        self.cond = threading.Condition()
        self.quit = False

    def take(self) -> list[Any] | None:
        """The next task to run, waiting for one; None once the parent said to quit."""
        with self.cond:
            while not self.todo and not self.quit:
                self.cond.wait()
            return self.todo.popleft() if self.todo else None

    def give_back(self, ids: list[str]) -> list[str]:
        """Remove the tasks named that have not started; returns their ids."""
        wanted = set(ids)
        with self.cond:
            back = [item[0] for item in self.todo if item[0] in wanted]
            if back:
                self.todo = deque(item for item in self.todo if item[0] not in wanted)
        return back


def main() -> None:
    rfd, wfd = setup_child()
    inp = os.fdopen(rfd, "rb", buffering=1 << 16)
    write_lock = threading.Lock()
    inbox = _Inbox()

    def send(msg: Any) -> None:
        data = frame(msg)
        with write_lock:
            write_all(wfd, data)

    def read() -> None:
        while True:
            msg = read_frame(inp)
            if msg is None:  # the parent is gone (killed, even with -9): so are we, now
                if not inbox.quit:
                    os._exit(1)
                return
            kind = msg[0]
            if kind == "T":
                with inbox.cond:
                    inbox.todo.extend(msg[1])
                    inbox.cond.notify()
            elif kind == "U":
                send(["B", inbox.give_back(msg[1])])
            elif kind == "Q":
                with inbox.cond:
                    inbox.quit = True
                    inbox.todo.clear()
                    inbox.cond.notify()

    send(["H", os.getpid()])
    threading.Thread(target=read, name="omniq-child-reader", daemon=True).start()
    blob_dir = os.environ.get(BLOB_DIR_ENV) or None
    last = time.monotonic()
    out: list[list[Any]] = []
    while True:
        item = inbox.take()
        if item is None:
            break
        tid, payload, timeout, expires_at = item[:4]
        if expires_at is not None and time.time() >= expires_at:  # waited here past its ttl
            now = time.time()
            out.append([tid, EXPIRED, None, now, now])
        else:
            mono = time.monotonic()
            # announce a task when all before it are reported (so a task that kills this
            # process was seen to start), when it has a timeout (the parent times it), and
            # at least every FLUSH_AFTER while busy (live progress)
            if not out or timeout is not None or mono - last > FLUSH_AFTER:
                if out:
                    send(["R", out])
                    out = []
                send(["S", tid, time.time()])
                last = mono
            started = time.time()
            code, data, blobs = run_call(payload, fetch=task_fetch(item), blob_dir=blob_dir)
            out.append(row(tid, code, data, started, time.time(), blobs))
        if out and (not inbox.todo or time.monotonic() - last > FLUSH_AFTER):
            send(["R", out])
            out = []
            last = time.monotonic()
    if out:
        send(["R", out])


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:  # the parent closed our pipe (shutting down, or gone): nothing to tell
        os._exit(0)
