"""A process's local copy of the blobs it uses: one file per digest, mapped by whoever loads.

A worker fetches each blob once from storage into this cache, however many tasks and children
use it; children map the file copy-on-write (``serialization._blobs.map_file``), so a 40 MB array
is in memory once per machine, not once per task. Results a task makes leave the child the same
way: the child writes their large values here and the worker stores them from here.

Where storage keeps blobs as local files itself (``file://``), those files are used directly.
A fetched blob's digest is checked before it is kept: a blob changed in storage never loads.
The cache is bounded: past ``limit`` bytes, the files used longest ago go (a mapped file stays
readable to whoever mapped it).

Examples:
    >>> import anyio, tempfile
    >>> from omniq.blobcache import BlobCache
    >>> from omniq.serialization._blobs import digest
    >>> from omniq.storage.memory import MemoryBackend
    >>> async def main():
    ...     store, data = MemoryBackend(), b"x" * 1000
    ...     await store.put_blobs({digest(data): data}, owner="t:1", now=0.0)
    ...     cache = BlobCache(tempfile.mkdtemp())
    ...     paths = await cache.ensure(store, [digest(data)])      # fetched once, then local
    ...     with open(paths[digest(data)], "rb") as f:
    ...         same = f.read() == data
    ...     cache.close()
    ...     return same
    >>> anyio.run(main)
    True
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .logs import get_logger
from .serialization._blobs import BlobSink, Fetch, digest, map_file, path_fetch, write_file
from .storage.base import BlobStore

log = get_logger("omniq.blobs")

def _default_limit() -> int:
    """Bytes kept before the least recently used files go: an eighth of the machine's memory
    (the folder may be RAM-backed), between 256 MiB and 4 GiB."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 << 30
    return max(256 << 20, min(4 << 30, total // 8))


DEFAULT_LIMIT = _default_limit()
HOLD = 600.0  # seconds a file stays after its last use, whatever the limit
_SHM = "/dev/shm"


def _default_root() -> str:
    """RAM-backed when the machine has room there (as joblib maps its arrays), else temp. The
    folder's name carries this pid: folders left by a process that died (``kill -9``) are
    removed here, so they cannot pile up in RAM."""
    base = tempfile.gettempdir()
    with contextlib.suppress(OSError):
        st = os.statvfs(_SHM)
        if os.access(_SHM, os.W_OK) and st.f_bavail * st.f_frsize > 2 << 30:
            base = _SHM
    with contextlib.suppress(OSError):
        for name in os.listdir(base):
            parts = name.split("-")
            if name.startswith("omniq-blobs-") and len(parts) >= 4 and parts[2].isdigit() and not _alive(int(parts[2])):
                shutil.rmtree(os.path.join(base, name), ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"omniq-blobs-{os.getpid()}-", dir=base)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


class BlobCache:
    """Blob files of this process (a worker, or a client reading large results).

    Thread-safe for its bookkeeping; files are written whole under their digest, so a reader
    never sees half a blob.

    Args:
        root: the folder (default: a new one under ``/dev/shm`` when it has room, else the
            temporary folder, removed at ``close`` or interpreter exit).
        limit: bytes kept before the files used longest ago go (default: an eighth of the
            machine's memory, between 256 MiB and 4 GiB); files used in the last ``HOLD``
            seconds always stay.

    Attributes:
        limit: as given.

    Examples:
        >>> import tempfile
        >>> from omniq.blobcache import BlobCache
        >>> cache = BlobCache(tempfile.mkdtemp(), limit=64 << 20)
        >>> cache.has("0" * 64), cache.locate(["0" * 64])
        (False, {})
        >>> cache.close()
    """

    def __init__(self, root: str | None = None, *, limit: int = DEFAULT_LIMIT) -> None:
        self._root = root
        self.limit = limit
        self._files: OrderedDict[str, int] = OrderedDict()  # digest -> size, least recent first
        self._used: dict[str, float] = {}  # digest -> when last asked for
        self._size = 0
        self._lock = threading.Lock()
        self._direct: dict[str, str] = {}  # digest -> a file of the storage itself (file://)

    @property
    def root(self) -> str:
        """The folder (made on first use; removed at ``close`` or interpreter exit).

        Examples:
            >>> import os
            >>> from omniq.blobcache import BlobCache
            >>> cache = BlobCache()
            >>> os.path.basename(cache.root).startswith(f"omniq-blobs-{os.getpid()}-")
            True
            >>> cache.close()
        """
        if self._root is None:
            self._root = _default_root()
            atexit.register(shutil.rmtree, self._root, True)
        return self._root

    def path(self, d: str) -> str:
        """The file blob ``d`` has (or would have) in this cache.

        Args:
            d: a blob's digest (SHA-256, hex).

        Returns:
            ``<root>/<digest>``.
        """
        return os.path.join(self.root, d)

    def _touch(self, d: str, size: int | None = None) -> None:
        self._used[d] = time.monotonic()
        with self._lock:
            if d in self._files:
                self._files.move_to_end(d)
            elif size is not None:
                self._files[d] = size
                self._size += size

    def _evict(self, keep: set[str]) -> None:
        """Drop the files used longest ago while over the limit, but none used in the last
        ``HOLD`` seconds: tasks fetched for then may still be waiting for a slot."""
        recent = time.monotonic() - HOLD
        with self._lock:
            gone: list[str] = []
            for d in list(self._files):
                if self._size <= self.limit:
                    break
                if d in keep or self._used.get(d, 0.0) > recent:
                    continue
                self._size -= self._files.pop(d)
                self._used.pop(d, None)
                gone.append(d)
        for d in gone:
            with contextlib.suppress(OSError):
                os.unlink(self.path(d))

    def has(self, d: str) -> bool:
        """Whether blob ``d`` is a file of this cache (not counting local storage's own files).

        Args:
            d: a blob's digest.

        Returns:
            True when it is kept here.
        """
        return d in self._files

    def locate(self, digests: Sequence[str]) -> dict[str, str]:
        """``{digest: file}`` for those of ``digests`` at hand (here, or in local storage).

        Args:
            digests: blob digests.

        Returns:
            A file for each digest at hand; the others are left out (nothing is fetched).
        """
        out = {}
        for d in digests:
            p = self._direct.get(d)
            if p is not None:
                out[d] = p
            elif d in self._files:
                out[d] = self.path(d)
        return out

    async def ensure(self, store: BlobStore, digests: Iterable[str]) -> dict[str, str]:
        """``{digest: local file}`` for every digest stored, fetching only what is not here yet.

        A fetched blob whose bytes do not match its digest is logged and left out, never used.

        Args:
            store: the storage holding the blobs.
            digests: the blobs a task (or a result) refers to.

        Returns:
            A local file for each digest found; digests ``store`` does not have are left out.
        """
        out: dict[str, str] = {}
        need: list[str] = []
        for d in dict.fromkeys(digests):
            direct = self._direct.get(d) or store.blob_path(d)
            if direct is not None:
                self._direct[d] = out[d] = direct
            elif d in self._files:
                self._touch(d)
                out[d] = self.path(d)
            else:
                need.append(d)
        if need:
            got = await store.get_blobs(need)
            for d, data in got.items():
                if digest(data) != d:
                    log.error("blob %s read from %s does not match its digest: not used", d,
                              getattr(store, "url", "storage"))
                    continue
                write_file(self.path(d), [data])
                self._touch(d, len(data))
                out[d] = self.path(d)
        self._evict(set(out))
        return out

    def fetch(self, paths: Mapping[str, str]) -> Fetch:
        """A fetch function for the deserializer, mapping the given files.

        Args:
            paths: ``{digest: file}`` as ``ensure`` or ``locate`` gave it.

        Returns:
            What ``serialization`` calls to load a blob by digest (mapped copy-on-write).
        """
        return path_fetch(dict(paths))

    def seed(self, store: BlobStore, blobs: Mapping[str, bytes]) -> None:
        """Put blobs this process has (it just stored them) into the cache, unless ``store``
        keeps them as local files already.

        Args:
            store: the storage they were stored in.
            blobs: ``{digest: bytes}``.
        """
        for d, data in blobs.items():
            if d in self._files or d in self._direct:
                continue
            direct = store.blob_path(d)
            if direct is not None:
                self._direct[d] = direct
                continue
            write_file(self.path(d), [data])
            self._touch(d, len(data))
        self._evict(set(blobs))

    def keep(self, sink: BlobSink) -> tuple[str, ...]:
        """Write what ``sink`` collected (a result's large values) into the cache.

        Args:
            sink: the ``BlobSink`` a result was serialized with.

        Returns:
            Its digests, all of which are then files here.
        """
        for d, data in sink.data.items():
            if d in self._files:
                continue
            if data is None:  # known stored elsewhere, but not here: nothing to keep
                continue
            write_file(self.path(d), [data])
            self._touch(d, len(data))
        self._evict(set(sink.data))
        return sink.digests()

    def adopt(self, digests: Sequence[str]) -> None:
        """Count files another process (a child) wrote into this cache's folder.

        Args:
            digests: the blobs the child wrote (under their digest, in ``root``).
        """
        for d in digests:
            if d not in self._files:
                with contextlib.suppress(OSError):
                    self._touch(d, os.path.getsize(self.path(d)))
        self._evict(set(digests))

    def read(self, digests: Sequence[str]) -> dict[str, Any]:
        """The cached blobs, mapped (for storing a result's blobs without copying them).

        Args:
            digests: blob digests.

        Returns:
            ``{digest: memoryview}`` for those kept here; the others are left out.
        """
        return {d: memoryview(map_file(self.path(d))) for d in digests if d in self._files}

    def close(self) -> None:
        """Remove the folder and forget its files (a mapped file stays readable to whoever
        mapped it). The cache makes a new folder if used again."""
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None
            self._files.clear()
            self._size = 0

