"""A process worker's child: ``python -m omniq.workers.child``.

Started by the parent through the package's own entry point (spawned, never forked), so a
user's script needs no ``if __name__ == "__main__"`` guard. Protocol on stdin/stdout: frames of
a 4-byte big-endian length and a msgpack body.

parent -> child  ["T", [[task_id, payload, notify_start], ...]]   run these, in order
                 ["Q"]                                            finish and exit
child -> parent  ["H", pid]                                       ready
                 ["S", task_id, started_at]                       started (for timeouts / live events)
                 ["R", [[task_id, code, data, started_at, finished_at], ...]]
                      code 1: data = serialized value; 0: data = [type, message, traceback];
                      2: same as 0 but must not be retried (bad signature / unreadable payload)

Results are batched while tasks are quick and sent at once when a task took a while, so a
no-op costs a fraction of a pipe round trip and a slow task is reported as soon as it ends.
The user's prints go to stderr: stdout carries only the protocol.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import time
import traceback
from typing import Any

import msgspec

_HEADER = struct.Struct(">I")
FLUSH_AFTER = 0.02  # seconds: report results at least this often while busy


def _err(exc: BaseException) -> list[str]:
    return [type(exc).__name__, str(exc), "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))]


def main() -> None:
    extra = os.environ.get("OMNIQ_CHILD_SYSPATH")
    if extra:
        for p in reversed(json.loads(extra)):
            if p not in sys.path:
                sys.path.insert(0, p)
    wfd = os.dup(1)
    os.dup2(2, 1)  # user output must not corrupt the protocol
    inp = os.fdopen(0, "rb", buffering=1 << 16)
    enc = msgspec.msgpack.Encoder()
    dec = msgspec.msgpack.Decoder()

    def send(msg: Any) -> None:
        body = enc.encode(msg)
        data = memoryview(_HEADER.pack(len(body)) + body)
        while data:
            n = os.write(wfd, data)
            data = data[n:]

    from ..errors import SerializationError
    from ..serialization import dumps, loads_call

    send(["H", os.getpid()])
    last = time.monotonic()
    while True:
        hdr = inp.read(4)
        if len(hdr) < 4:
            return  # parent closed the pipe: it is gone or done with us
        body = inp.read(_HEADER.unpack(hdr)[0])
        msg = dec.decode(body)
        if msg[0] == "Q":
            return
        out: list[list[Any]] = []
        for tid, payload, notify in msg[1]:
            mono = time.monotonic()
            if notify or mono - last > FLUSH_AFTER:
                if out:
                    send(["R", out])
                    out = []
                send(["S", tid, time.time()])
                last = mono
            started = time.time()
            try:
                fn, args, kwargs = loads_call(payload)
            except SerializationError as exc:
                out.append([tid, 2, _err(exc), started, time.time()])
                continue
            except BaseException as exc:
                out.append([tid, 0, _err(exc), started, time.time()])
                continue
            try:
                value = fn(*args, **kwargs)
                if hasattr(value, "__await__"):
                    import asyncio

                    value = asyncio.run(_await(value))
                out.append([tid, 1, dumps(value), started, time.time()])
            except BaseException as exc:  # the task's own failure, whatever it raised
                out.append([tid, 0, _err(exc), started, time.time()])
            if time.monotonic() - last > FLUSH_AFTER:
                send(["R", out])
                out = []
                last = time.monotonic()
        if out:
            send(["R", out])
            last = time.monotonic()


async def _await(aw: Any) -> Any:
    return await aw


if __name__ == "__main__":
    main()
