"""Large values out of band: stored once by the digest of their bytes, referred to by it.

A 40 MB array in a notebook global, read by a function submitted 30 times, must not be written
30 times. While a payload is pickled, every large value met -- a numpy array, a pandas object,
long ``bytes`` / ``str``, a big container -- is replaced by a *persistent id* naming the
SHA-256 digest of its bytes, and its bytes go to a :class:`BlobSink`. The caller stores what the
sink collected (``BlobStore.put_blobs``) before the task that refers to it, once per digest.

Loading resolves each digest through a *fetch* function: a worker gives it the bytes of a blob
cache file mapped copy-on-write (``map_file``), so an array loads without a copy and each task
still gets its own writable view. Since a digest names bytes, a value changed in place between
two submits gets a new digest: every task sees its values as they were when it was submitted.

Arrays and pandas objects go through pickle protocol 5: a small in-band head plus their raw
buffers, each buffer its own blob (so one array shared by two DataFrames is stored once).
"""

from __future__ import annotations

import contextvars
import hashlib
import io
import mmap
import os
import pickle
import time
from collections.abc import Callable, Iterable
from typing import Any

import dill

from ..errors import SerializationError
from ._classify import holds_objects

#: values at least this large (bytes) travel as blobs
THRESHOLD = 1 << 20
#: out-of-band buffers smaller than this stay inside the payload
_SMALL = 1 << 16
#: containers with at least this many items are weighed (pickled apart) as one value
_BIG_CONTAINER = 10_000
PROTOCOL = 5

Fetch = Callable[[str], Any]  # digest -> a bytes-like object (bytes, mmap, memoryview)

_fetch: contextvars.ContextVar[Fetch | None] = contextvars.ContextVar("omniq_blob_fetch", default=None)


# the tagged value format (``_codec.dump_value`` / ``load_value``) that big containers kept apart
# are written in; ``_codec`` hands it over when it loads, so this module does not import it
_value_codec: tuple[Callable[[Any], bytes], Callable[[bytes], Any]] | None = None


def use_value_codec(dump: Callable[[Any], bytes], load: Callable[[bytes], Any]) -> None:
    global _value_codec
    _value_codec = (dump, load)


def digest(data: Any) -> str:
    """The blob key of ``data`` (anything with the buffer protocol): lowercase hex SHA-256."""
    return hashlib.sha256(data).hexdigest()


class BlobSink:
    """Collects the large values met while serializing: ``digest -> bytes``.

    ``known`` names digests the caller knows are stored: their bytes are not copied (only the
    digest is kept), which is what makes a second submit over the same 40 MB array cheap.
    Values are copied at once otherwise, since the caller may change them in place right after.

    Args:
        known: Digests already stored (a set or any container); their bytes are not kept.

    Attributes:
        data: ``digest -> bytes`` (None for a known digest).
        known: As given.
        touched: Digests referred to since the last :meth:`take`.
        per_call: Filled by ``dumps_calls``: each payload's digests.

    Examples:
        >>> from omniq.serialization import BlobSink, dumps
        >>> sink = BlobSink()
        >>> p = dumps([bytes(2 << 20), bytes(2 << 20)], blobs=sink)   # one value, twice
        >>> len(sink.take()), len(sink.data[sink.digests()[0]])
        (1, 2097152)
    """

    __slots__ = ("data", "known", "per_call", "touched")

    def __init__(self, known: Any = ()) -> None:
        self.known = known
        self.data: dict[str, bytes | None] = {}
        self.touched: list[str] = []  # digests referred to since the last ``take``
        self.per_call: list[tuple[str, ...]] = []  # ``dumps_calls``: each payload's digests

    def add(self, buf: Any) -> str:
        """Keep one large value (unless its digest is known) and note it as referred to.

        Args:
            buf: The value's bytes (any buffer).

        Returns:
            Its digest (SHA-256, hex), which the payload holds instead.

        Examples:
            >>> from omniq.serialization import BlobSink
            >>> sink = BlobSink()
            >>> d = sink.add(b"abc")
            >>> len(d), sink.data[d], sink.take() == (d,)
            (64, b'abc', True)
        """
        d = digest(buf)
        if d not in self.data:
            self.data[d] = None if d in self.known else bytes(buf)
        self.touched.append(d)
        return d

    def take(self) -> tuple[str, ...]:
        """The digests referred to since the last call (one payload's).

        Returns:
            Those digests, each once, in order of first use.

        Examples:
            See :class:`BlobSink`.
        """
        out = tuple(dict.fromkeys(self.touched))
        self.touched.clear()
        return out

    def digests(self) -> tuple[str, ...]:
        """Every digest collected so far.

        Returns:
            The digests, in order of first use.

        Examples:
            See :class:`BlobSink`.
        """
        return tuple(self.data)

    def __bool__(self) -> bool:
        return bool(self.data)


# --------------------------------------------------------------------------------- dumping

_PLAIN_TYPES = frozenset({int, float, bool, type(None), complex, tuple, list, dict, set, frozenset, type})


def data_nbytes(obj: Any) -> int:
    """How many bytes of data a numpy / pandas object holds (0 when unknown or not data)."""
    n = getattr(obj, "nbytes", None)
    if isinstance(n, int):
        return n
    usage = getattr(obj, "memory_usage", None)  # a DataFrame
    if callable(usage):
        try:
            return int(usage(index=True, deep=False).sum())
        except Exception:
            return 0
    return 0


class _Refs:
    """What both picklers do: large values become persistent ids (see the module docstring)."""

    sink: BlobSink
    _seen: dict[int, tuple[Any, Any]]

    def _blob_id(self, obj: Any) -> Any:
        t = type(obj)
        if t in _PLAIN_TYPES:
            if t in (list, dict, set, frozenset, tuple) and len(obj) >= _BIG_CONTAINER:
                return self._apart(obj)
            return None
        if t is bytes or t is bytearray:
            if len(obj) >= THRESHOLD:
                return ("b", self.sink.add(obj), t is bytearray)
            return None
        if t is str:
            if len(obj) >= THRESHOLD:
                return ("s", self.sink.add(obj.encode("utf-8", "surrogatepass")))
            return None
        module = getattr(t, "__module__", "") or ""
        if module.startswith(("numpy", "pandas")) and data_nbytes(obj) >= THRESHOLD and not holds_objects(obj):
            return self._out_of_band(obj)
        return None

    def _out_of_band(self, obj: Any) -> Any:
        bufs: list[pickle.PickleBuffer] = []
        try:
            head = pickle.dumps(obj, protocol=PROTOCOL, buffer_callback=bufs.append)
        except Exception:
            return None  # dill will say what is wrong with it, in band
        parts: list[Any] = [self._part(memoryview(head))]
        for b in bufs:
            try:
                raw = b.raw()
            except BufferError:  # not contiguous
                raw = memoryview(bytes(b))
            parts.append(self._part(raw))
        return ("B", parts)

    def _part(self, view: memoryview) -> Any:
        return view.tobytes() if view.nbytes < _SMALL else self.sink.add(view)

    def _apart(self, obj: Any) -> Any:
        """A big container pickled on its own: a blob when it comes out large."""
        if _value_codec is None:
            return None
        data = _value_codec[0](obj)  # the tagged value format, so it loads like any result
        if len(data) < THRESHOLD:
            return None
        return ("o", self.sink.add(data))

    def _ref(self, obj: Any) -> Any:
        seen = self._seen.get(id(obj))
        if seen is not None:
            return seen[1]
        pid = self._blob_id(obj)
        if pid is not None:
            self._seen[id(obj)] = (obj, pid)  # the object is kept alive, so its id stays its own
        return pid


class RefsPickler(_Refs, pickle.Pickler):
    """The stdlib (C) pickler, with large values as blob references."""

    def __init__(self, file: Any, sink: BlobSink) -> None:
        super().__init__(file, protocol=PROTOCOL)
        self.sink = sink
        self._seen = {}

    def persistent_id(self, obj: Any) -> Any:
        return self._ref(obj)


class RefsDillPickler(_Refs, dill.Pickler):
    """dill's pickler (``recurse=True``), with large values as blob references."""

    def __init__(self, file: Any, sink: BlobSink) -> None:
        super().__init__(file, protocol=PROTOCOL, recurse=True)
        self.sink = sink
        self._seen = {}

    def persistent_id(self, obj: Any) -> Any:
        return self._ref(obj)


def pickle_refs(obj: Any, sink: BlobSink, *, use_dill: bool) -> bytes:
    buf = io.BytesIO()
    (RefsDillPickler if use_dill else RefsPickler)(buf, sink).dump(obj)
    return buf.getvalue()


# --------------------------------------------------------------------------------- loading


def _resolve(pid: Any) -> Any:
    fetch = _fetch.get()
    if fetch is None:
        raise SerializationError(
            "this payload refers to large values stored apart (blobs), and no blob source was given to load it"
        )
    try:
        kind = pid[0]
        if kind == "B":
            parts = [fetch(p) if type(p) is str else p for p in pid[1]]
            return pickle.loads(parts[0], buffers=parts[1:])
        if kind == "b":
            data = fetch(pid[1])
            return bytearray(data) if pid[2] else bytes(data)
        if kind == "s":
            return bytes(fetch(pid[1])).decode("utf-8", "surrogatepass")
        if kind == "o" and _value_codec is not None:
            return _value_codec[1](bytes(fetch(pid[1])))
    except SerializationError:
        raise
    except KeyError as exc:
        raise SerializationError(f"a large value this payload refers to is missing: blob {exc}") from None
    except Exception as exc:
        raise SerializationError(f"cannot load a large value this payload refers to ({type(exc).__name__}: {exc})") from exc
    raise SerializationError(f"corrupted payload: unknown blob reference {kind!r}")


class RefsUnpickler(pickle.Unpickler):
    def persistent_load(self, pid: Any) -> Any:
        return _resolve(pid)


class RefsDillUnpickler(dill.Unpickler):
    def persistent_load(self, pid: Any) -> Any:
        return _resolve(pid)


def unpickle_refs(data: Any, *, use_dill: bool) -> Any:
    return (RefsDillUnpickler if use_dill else RefsUnpickler)(io.BytesIO(data)).load()


class fetching:
    """``with fetching(fetch): loads(...)``: where blob references are resolved meanwhile.

    For code that loads payloads without passing ``blobs=`` itself (a value's ``__reduce__``,
    a nested load).

    Args:
        fetch: ``digest -> bytes``; None leaves the current one in place.

    Examples:
        >>> from omniq.serialization import BlobSink, dumps, fetching, loads
        >>> sink = BlobSink()
        >>> p = dumps(bytes(2 << 20), blobs=sink)
        >>> with fetching(lambda d: sink.data[d]):
        ...     len(loads(p))
        2097152
    """

    __slots__ = ("_fetch", "_token")

    def __init__(self, fetch: Fetch | None) -> None:
        self._fetch = fetch
        self._token: contextvars.Token[Fetch | None] | None = None

    def __enter__(self) -> None:
        if self._fetch is not None:
            self._token = _fetch.set(self._fetch)

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _fetch.reset(self._token)
            self._token = None


# --------------------------------------------------------------------------------- files


def map_file(path: str) -> Any:
    """A blob file's bytes, mapped copy-on-write: nothing is read until used, pages are shared
    by every process mapping the file, and a task writing to an array it got changes only its
    own copy.

    Args:
        path: The blob file (a local cache file, see ``omniq.blobcache``).

    Returns:
        An ``mmap.mmap`` (copy-on-write) over the file; an empty file gives ``b""``.

    Raises:
        OSError: The file cannot be opened.

    Examples:
        >>> import os, tempfile
        >>> from omniq.serialization import map_file
        >>> path = os.path.join(tempfile.mkdtemp(), "blob")
        >>> with open(path, "wb") as f:
        ...     _ = f.write(b"abc")
        >>> bytes(map_file(path)[:3])
        b'abc'
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return b""
        return mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)


def path_fetch(paths: dict[str, str]) -> Fetch:
    """A fetch over ``{digest: path}`` (what a worker child is given with each task).

    Args:
        paths: ``digest -> path`` of the local blob files.

    Returns:
        ``fetch(digest)``: the file's bytes, mapped by :func:`map_file`.

    Raises:
        KeyError: (when called) a digest that ``paths`` does not name.

    Examples:
        >>> import os, tempfile
        >>> from omniq.serialization import path_fetch
        >>> path = os.path.join(tempfile.mkdtemp(), "blob")
        >>> with open(path, "wb") as f:
        ...     _ = f.write(b"abc")
        >>> bytes(path_fetch({"d1": path})("d1")[:3])
        b'abc'
    """

    def fetch(d: str) -> Any:
        return map_file(paths[d])

    return fetch


def write_file(path: str, chunks: Iterable[Any]) -> None:
    """Write a blob file whole or not at all (a temporary name, then a rename)."""
    tmp = f"{path}.{os.getpid()}.{time.monotonic_ns()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            for c in chunks:
                f.write(c)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
