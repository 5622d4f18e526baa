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
    """Run the child: read task frames from the parent's pipe, run them one at a time, report
    each start and (in batches) each result; return when the parent closes the pipe.

    Started only by its parent (``ProcessRunner``), as ``python -m omniq.workers.child``.
    """
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
                try:
                    send(["B", inbox.give_back(msg[1])])
                except OSError:  # the parent is gone: the next read says so
                    pass
            elif kind == "Q":
                with inbox.cond:
                    inbox.quit = True
                    inbox.todo.clear()
                    inbox.cond.notify()

    send(["H", os.getpid()])
    threading.Thread(target=read, name="omniq-child-reader", daemon=True).start()
    outbox = _Outbox(send)
    threading.Thread(target=outbox.run, name="omniq-child-flusher", daemon=True).start()
    blob_dir = os.environ.get(BLOB_DIR_ENV) or None
    while True:
        item = inbox.take()
        if item is None:
            break
        tid, payload, timeout, expires_at = item[:4]
        if expires_at is not None and time.time() >= expires_at:  # waited here past its ttl
            now = time.time()
            outbox.add([tid, EXPIRED, None, now, now])
        else:
            # announce a task when all before it are reported (so a task that kills this
            # process was seen to start), when it has a timeout (the parent times it), and
            # at least every FLUSH_AFTER while busy (live progress)
            if outbox.empty() or timeout is not None or outbox.stale():
                outbox.flush()
                send(["S", tid, time.time()])
                outbox.announced()
            started = time.time()
            code, data, blobs = run_call(payload, fetch=task_fetch(item), blob_dir=blob_dir)
            outbox.add(row(tid, code, data, started, time.time(), blobs))
        if not inbox.todo:
            outbox.flush()
    outbox.flush()


class _Outbox:
    """Result rows not yet sent. Quick tasks' rows go out in batches (a pipe write per no-op
    would cost more than the no-op); a flusher thread sends any row older than FLUSH_AFTER, so a
    finished task is never held back by a slow one started after it."""

    def __init__(self, send: Any) -> None:
        self._send = send
        self._rows: list[list[Any]] = []
        self._since: float | None = None  # when the oldest unsent row was added
        self._last = time.monotonic()  # the last frame about progress (a start or results)
        self._lock = threading.Lock()

    def add(self, r: list[Any]) -> None:
        with self._lock:
            if not self._rows:
                self._since = time.monotonic()
            self._rows.append(r)

    def empty(self) -> bool:
        return not self._rows

    def stale(self) -> bool:
        return time.monotonic() - self._last > FLUSH_AFTER

    def announced(self) -> None:
        self._last = time.monotonic()

    def flush(self) -> None:
        with self._lock:  # rows leave in the order they came, whoever sends them
            rows, self._rows, self._since = self._rows, [], None
            if rows:
                self._send(["R", rows])
                self._last = time.monotonic()

    def run(self) -> None:
        try:
            while True:
                time.sleep(FLUSH_AFTER / 2)
                since = self._since
                if since is not None and time.monotonic() - since >= FLUSH_AFTER:
                    self.flush()
        except OSError:  # the parent closed our pipe (shutting down, or gone)
            return


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:  # the parent closed our pipe (shutting down, or gone): nothing to tell
        os._exit(0)
