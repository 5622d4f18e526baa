"""A process's local copy of the blobs it uses: one file per digest, mapped by whoever loads.

A worker fetches each blob once from storage into this cache, however many tasks and children
use it; children map the file copy-on-write (``serialization._blobs.map_file``), so a 40 MB array
is in memory once per machine, not once per task. Results a task makes leave the child the same
way: the child writes their large values here and the worker stores them from here.

Where storage keeps blobs as local files itself (``file://``), those files are used directly.
A fetched blob's digest is checked before it is kept: a blob changed in storage never loads.
The cache is bounded: past ``limit`` bytes, the files used longest ago go (a mapped file stays
readable to whoever mapped it).
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
    """Blob files of this process (a worker, or a client reading large results)."""

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
        """The folder (made on first use; removed at ``close`` or interpreter exit)."""
        if self._root is None:
            self._root = _default_root()
            atexit.register(shutil.rmtree, self._root, True)
        return self._root

    def path(self, d: str) -> str:
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
        return d in self._files

    def locate(self, digests: Sequence[str]) -> dict[str, str]:
        """``{digest: file}`` for those of ``digests`` at hand (here, or in local storage)."""
        out = {}
        for d in digests:
            p = self._direct.get(d)
            if p is not None:
                out[d] = p
            elif d in self._files:
                out[d] = self.path(d)
        return out

    async def ensure(self, store: BlobStore, digests: Iterable[str]) -> dict[str, str]:
        """``{digest: local file}`` for every digest stored (missing ones left out), fetching
        from ``store`` only what is not here yet."""
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
        return path_fetch(dict(paths))

    def seed(self, store: BlobStore, blobs: Mapping[str, bytes]) -> None:
        """Put blobs this process has (it just stored them) into the cache, unless ``store``
        keeps them as local files already."""
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
        """Write what ``sink`` collected (a result's large values) into the cache; returns its
        digests, all of which are then files here."""
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
        """Count files another process (a child) wrote into this cache's folder."""
        for d in digests:
            if d not in self._files:
                with contextlib.suppress(OSError):
                    self._touch(d, os.path.getsize(self.path(d)))
        self._evict(set(digests))

    def read(self, digests: Sequence[str]) -> dict[str, Any]:
        """The cached blobs, mapped (for storing a result's blobs without copying them)."""
        return {d: memoryview(map_file(self.path(d))) for d in digests if d in self._files}

    def close(self) -> None:
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None
            self._files.clear()
            self._size = 0

