"""A gevent worker's child: ``python -m omniq.workers.gevent_child``.

gevent needs the standard library monkey-patched, which must never happen in the user's
process (a Jupyter kernel has threads and an event loop of its own), so it happens here,
before anything imports ``socket`` or ``ssl``. The child speaks the protocol in ``_wire``:
every task of a "T" frame becomes a greenlet at once (the parent sends no more than its slots),
frames are read cooperatively while tasks run, and each result is reported as its task ends,
in whatever order that is. A timeout is a ``gevent.Timeout`` in the task's greenlet and a
cancel (``["X", task_id]``) kills the greenlet, so neither costs the other tasks anything.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()  # first: everything imported below must see the cooperative versions

import functools  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import gevent.os  # noqa: E402
from gevent.event import Event  # noqa: E402
from gevent.fileobject import FileObjectPosix  # noqa: E402

from . import _wire  # noqa: E402


class _Cancel(gevent.GreenletExit):
    """Thrown into a task's greenlet by an "X" frame. A ``GreenletExit``: not an ``Exception``,
    so a task's ``except Exception`` does not swallow it, and gevent treats it as a normal end
    (no traceback on stderr for a greenlet cancelled before it ran)."""


class _Outbox:
    """Frames for the parent, written by one greenlet, so frames never interleave and everything
    that piled up while a write was under way goes out in the next one."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.starts: list[list[Any]] = []
        self.rows: list[list[Any]] = []
        self.wake = Event()
        gevent.os.make_nonblocking(fd)

    def started(self, tid: str, at: float) -> None:
        self.starts.append(["S", tid, at])
        self.wake.set()

    def result(self, tid: str, code: int, data: Any, started: float, blobs: tuple[str, ...] = ()) -> None:
        self.rows.append(_wire.row(tid, code, data, started, time.time(), blobs))
        self.wake.set()

    def send(self, msg: Any) -> None:
        _wire.write_all(self.fd, _wire.frame(msg), gevent.os.nb_write)

    def run(self) -> None:
        while True:
            self.wake.wait()
            self.wake.clear()
            # a task's "S" is always queued before its "R", so starts go first
            msgs = self.starts
            self.starts = []
            if self.rows:
                msgs.append(["R", self.rows])
                self.rows = []
            _wire.write_all(self.fd, b"".join(map(_wire.frame, msgs)), gevent.os.nb_write)


def main() -> None:
    """Run the child: every task of a frame becomes a greenlet, each result is reported as its
    task ends; return when the parent closes the pipe.

    Started only by its parent (``GeventRunner``), as ``python -m omniq.workers.gevent_child``.
    """
    rfd, wfd = _wire.setup_child()
    out = _Outbox(wfd)
    inp = FileObjectPosix(rfd, "rb", bufsize=1 << 16)  # cooperative reads
    running: dict[str, gevent.Greenlet] = {}
    threads = gevent.get_hub().threadpool

    def in_thread(aw: Any) -> Any:
        """A coroutine runs on an event loop of its own in a native thread: asyncio keeps one
        running loop per thread, so loops in two greenlets would collide. The greenlet waits
        cooperatively; a timeout or cancel ends the wait, not the thread (its result is dropped)."""
        threads.maxsize = max(threads.maxsize, len(running))
        return threads.apply(_wire.run_coroutine, (aw,))

    blob_dir = os.environ.get(_wire.BLOB_DIR_ENV) or None

    def run(tid: str, payload: bytes, timeout: float | None, item: list[Any]) -> None:
        started = time.time()
        out.started(tid, started)
        timer = gevent.Timeout(timeout) if timeout is not None else None
        blobs: tuple[str, ...] = ()
        try:
            if timer is not None:
                timer.start()
            code, data, blobs = _wire.run_call(payload, (gevent.Timeout, _Cancel), in_thread,
                                               fetch=_wire.task_fetch(item), blob_dir=blob_dir)
        except gevent.Timeout as exc:
            code, data = (_wire.TIMED_OUT, None) if exc is timer else (_wire.FAILED, _wire.error_row(exc))
        except _Cancel:
            code, data = _wire.CANCELLED, None
        finally:
            if timer is not None:
                timer.close()
        del running[tid]
        out.result(tid, code, data, started, blobs)

    def gone(tid: str, g: gevent.Greenlet) -> None:
        # ``run`` removes its own entry: one still here was cancelled before it ever ran (or
        # ``run`` itself broke); either way it is reported, never lost
        exc = g.exception
        if running.get(tid) is g:
            del running[tid]
            if exc is None or isinstance(exc, _Cancel):
                out.result(tid, _wire.CANCELLED, None, time.time())
            else:
                out.result(tid, _wire.FAILED, _wire.error_row(exc), time.time())

    out.send(["H", os.getpid()])
    gevent.spawn(out.run)
    while True:
        msg = _wire.read_frame(inp)
        if msg is None or msg[0] == "Q":
            return  # the parent is done with us (or gone); running greenlets end with us
        if msg[0] == "T":
            for item in msg[1]:  # started at once: no wait here
                tid, payload, timeout = item[:3]
                g = running[tid] = gevent.spawn(run, tid, payload, timeout, item)
                g.rawlink(functools.partial(gone, tid))
        elif msg[0] == "X":
            g = running.get(msg[1])
            if g is not None:
                g.kill(_Cancel, block=False)


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:  # the parent closed our pipe (shutting down, or gone): nothing to tell
        os._exit(0)
