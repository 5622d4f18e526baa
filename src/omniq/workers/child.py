"""A process worker's child: ``python -m omniq.workers.child``.

Started by the parent through the package's own entry point (spawned, never forked), so a
user's script needs no ``if __name__ == "__main__"`` guard. It speaks the protocol in
``_wire`` and runs its tasks one at a time, in the order they came; a timeout or cancel is
the parent killing this process.

Results are batched while tasks are quick and sent at once when a task took a while, so a
no-op costs a fraction of a pipe round trip and a slow task is reported as soon as it ends.
"""

from __future__ import annotations

import os
import time
from typing import Any

from ._wire import EXPIRED, frame, read_frame, run_call, setup_child, write_all

FLUSH_AFTER = 0.02  # seconds: report results at least this often while busy


def main() -> None:
    rfd, wfd = setup_child()
    inp = os.fdopen(rfd, "rb", buffering=1 << 16)

    def send(msg: Any) -> None:
        write_all(wfd, frame(msg))

    send(["H", os.getpid()])
    last = time.monotonic()
    while True:
        msg = read_frame(inp)
        if msg is None or msg[0] == "Q":
            return  # the parent is done with us (or gone)
        if msg[0] != "T":
            continue
        out: list[list[Any]] = []
        for tid, payload, timeout, expires_at in msg[1]:
            if expires_at is not None and time.time() >= expires_at:  # waited here past its ttl
                now = time.time()
                out.append([tid, EXPIRED, None, now, now])
                continue
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
            code, data = run_call(payload)
            out.append([tid, code, data, started, time.time()])
            if time.monotonic() - last > FLUSH_AFTER:
                send(["R", out])
                out = []
                last = time.monotonic()
        if out:
            send(["R", out])
            last = time.monotonic()


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:  # the parent closed our pipe (shutting down, or gone): nothing to tell
        os._exit(0)
