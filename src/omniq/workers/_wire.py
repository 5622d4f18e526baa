"""The protocol between a runner and the worker children it owns, written once for both sides.

Frames on the child's stdin / stdout (which the child moves out of its tasks' way at once: see
``setup_child``): a 4-byte big-endian length and a msgpack body.

parent -> child  ["T", [[task_id, payload, timeout, expires_at(, blob paths)], ...]]   run
                                                             these (timeout: seconds or None;
                                                             blob paths: {digest: file})
                 ["X", task_id]                              stop this task (gevent children;
                                                             a process child is killed instead)
                 ["U", [task_id, ...]]                       give back those not started yet
                                                             (process children)
                 ["Q"]                                       exit
child -> parent  ["H", pid]                                  ready
                 ["S", task_id, started_at]                  started (for timeouts / live events;
                                                             not every quick task: see child.py)
                 ["R", [[task_id, code, data, started_at, finished_at(, blobs)], ...]]   codes
                                                             below; blobs: digests of a large
                                                             result's values, written to the
                                                             owner's blob folder
                 ["B", [task_id, ...]]                       given back, never started (answers "U")

A process child runs its tasks one by one, in order; a gevent child runs them at once and
reports each as it ends, so rows name their task. The user's prints go to stderr: stdout
carries only the protocol.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import sys
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from ..errors import SerializationError
from ..serialization import BlobSink, Fetch, dumps, fetching, loads_call, path_fetch
from ..serialization._blobs import write_file
from ..serialization._signing import TAG_VERIFIED, trusting

if TYPE_CHECKING:
    import asyncio  # the parent's side only; children import it when a task is a coroutine

# result codes (the ``code`` of an "R" row) and what ``data`` then holds
OK = 1  # the serialized value
FAILED = 0  # [type, message, traceback]
REJECTED = 2  # as FAILED, but never retried (bad signature, unreadable payload)
TIMED_OUT = 3  # None: the child stopped the task at its timeout
CANCELLED = 4  # None: the child stopped the task on an "X" frame
EXPIRED = 5  # None: the task's ttl ran out while it waited in the child (never started)

HEADER = struct.Struct(">I")
_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder()


class _Readable(Protocol):
    def read(self, n: int, /) -> bytes: ...


def frame(msg: Any) -> bytes:
    """One message as a frame, ready to write."""
    body = _enc.encode(msg)
    return HEADER.pack(len(body)) + body


def read_frame(stream: _Readable) -> Any:
    """The next message from a buffered binary stream, or None once the other side is gone."""
    hdr = stream.read(4)
    if len(hdr) < 4:
        return None
    (n,) = HEADER.unpack(hdr)
    body = stream.read(n)
    if len(body) < n:
        return None
    return _dec.decode(body)


async def read_frame_async(stream: asyncio.StreamReader) -> Any:
    """The next message from a child; raises ``IncompleteReadError`` once it is gone."""
    (n,) = HEADER.unpack(await stream.readexactly(4))
    return _dec.decode(await stream.readexactly(n))


def write_all(fd: int, data: bytes, write: Callable[[int, Any], int] = os.write) -> None:
    """Write every byte (a pipe may take a frame in pieces); ``write`` may be a cooperative one."""
    view = memoryview(data)
    while view:
        view = view[write(fd, view) :]


_OWN = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the omniq package folder


def error_row(exc: BaseException) -> list[str]:
    """An exception as ``[type, message, traceback]``, readable in any process. The traceback
    starts at the user's code: OmniQ's own frames above it (loading and calling the task) are
    left out."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None and tb.tb_frame.f_code.co_filename.startswith(_OWN):
        tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    notes = getattr(exc, "__notes__", None)
    if sys.version_info < (3, 11) and notes:  # 3.11+ prints them itself
        text += "".join(f"{n}\n" for n in notes)
    return [type(exc).__name__, str(exc), text]


def _import_hint(exc: SerializationError) -> SerializationError:
    """A payload naming a module this worker cannot import: say where it looked."""
    if "No module named" not in str(exc):
        return exc
    return SerializationError(
        f"{exc}. This worker runs in {os.getcwd()!r}: start it where the module is, or put the module's "
        "folder on PYTHONPATH (or install it) on the worker's machine"
    )


PARENT_ENV = "OMNIQ_CHILD_PARENT"  # the pid of the process that owns this child
BLOB_DIR_ENV = "OMNIQ_BLOB_DIR"  # the owner's blob cache: large results are written there


def die_with_parent() -> None:
    """Have the kernel kill this process when its owner dies, even by ``kill -9`` (Linux); the
    closed pipe is the other, portable, signal (see the children's read loops)."""
    parent = os.environ.get(PARENT_ENV)
    if not sys.platform.startswith("linux") or not parent:
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:  # no prctl here: the pipe still tells
        return
    if os.getppid() != int(parent):  # the owner died before the request took hold
        os._exit(1)


def setup_child() -> tuple[int, int]:
    """Prepare a child process: dying with its owner, SIGINT ignored, the parent's import path,
    and the protocol pipes kept apart from what tasks use.

    Returns the descriptors frames come from and go to. They are private copies (not
    inherited by a task's subprocesses); fd 0 then reads /dev/null and fd 1 writes to stderr, so
    a task's prints, its ``input()`` or a subprocess it starts cannot corrupt or steal frames,
    nor flip the pipe's blocking mode under a gevent child.
    """
    # Jupyter's Stop button (and Ctrl-C in a terminal) signals the whole process group; the
    # parent decides when its children end (timeout, cancel, close), so they ignore SIGINT. They
    # run in a session of their own (see ``ChildRunner._spawn``); this covers a direct start.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()
    extra = os.environ.get("OMNIQ_CHILD_SYSPATH")
    if extra:
        for p in reversed(json.loads(extra)):
            if p not in sys.path:
                sys.path.insert(0, p)
    rfd, wfd = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    return rfd, wfd


def run_call(
    payload: bytes,
    passthrough: tuple[type[BaseException], ...] = (),
    in_loop: Callable[[Any], Any] | None = None,
    *,
    fetch: Fetch | None = None,
    blob_dir: str | None = None,
) -> tuple[int, Any, tuple[str, ...]]:
    """Run one task payload: ``(code, data, blobs)`` as an "R" row carries them.

    Whatever the task raises is its own failure, except ``passthrough`` exceptions: a gevent
    child's timeout and cancel, which must reach the code that raised them. A coroutine a task
    returns runs to its end with ``in_loop`` (default: ``run_coroutine``). ``fetch`` resolves
    the large values the payload refers to (while the task runs too: a chunk loads its function
    then); with ``blob_dir``, a large result's values are written there, named by digest.
    """
    if payload[:1] == TAG_VERIFIED:  # checked by the parent (this child has no key)
        with trusting():
            return run_call(payload[1:], passthrough, in_loop, fetch=fetch, blob_dir=blob_dir)
    with fetching(fetch):
        try:
            fn, args, kwargs = loads_call(payload)
        except SerializationError as exc:
            return REJECTED, error_row(_import_hint(exc)), ()
        except passthrough:
            raise
        except BaseException as exc:
            return FAILED, error_row(exc), ()
        try:
            value = fn(*args, **kwargs)
            if hasattr(value, "__await__"):
                value = (in_loop or run_coroutine)(value)
            data, blobs = dump_result(value, blob_dir)
            return OK, data, blobs
        except passthrough:
            raise
        except BaseException as exc:  # the task's own failure, whatever it raised
            return FAILED, error_row(exc), ()


def dump_result(value: Any, blob_dir: str | None) -> tuple[bytes, tuple[str, ...]]:
    """A task's value as a payload; with ``blob_dir``, its large values as files there."""
    if blob_dir is None:
        return dumps(value), ()
    sink = BlobSink()
    data = dumps(value, blobs=sink)
    for d, raw in sink.data.items():
        path = os.path.join(blob_dir, d)
        if raw is not None and not os.path.exists(path):
            write_file(path, [raw])
    return data, sink.digests()


def row(tid: str, code: int, data: Any, started: float, finished: float, blobs: tuple[str, ...]) -> list[Any]:
    """An "R" row; the blobs column only when the result has large values."""
    return [tid, code, data, started, finished, list(blobs)] if blobs else [tid, code, data, started, finished]


def task_fetch(item: list[Any]) -> Fetch | None:
    """The fetch for a "T" row's blobs (its optional fifth column: ``{digest: path}``)."""
    return path_fetch(item[4]) if len(item) > 4 and item[4] else None


def run_coroutine(aw: Any) -> Any:
    """Run an awaitable on a fresh event loop in this thread."""
    import asyncio

    return asyncio.run(_await(aw))


async def _await(aw: Any) -> Any:
    return await aw
