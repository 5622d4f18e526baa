"""Checks and rules every backend's ``BlobStore`` part shares (pure: no I/O).

A digest is the lowercase hex SHA-256 of a blob's bytes: 64 characters from ``0-9a-f``. Backends
use it as a key, a file name or a subject token as it is, so anything else is refused before it
reaches them. An owner is ``"t:" + task id`` (alive while this backend holds that task unfinished)
or ``"r:" + task id`` (alive while this backend holds a result for it); any other owner is never
alive, so ``sweep_blobs`` drops it once it is older than the grace time.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence

from ..errors import ConfigError

_DIGEST = re.compile(r"[0-9a-f]{64}")

#: Statuses of a task that keeps its blobs: it may still run.
LIVE_TASK_STATUSES = ("pending", "queued", "running")
TASK_OWNER = "t:"
RESULT_OWNER = "r:"

Blob = bytes | bytearray | memoryview


def _digest_error(what: str, d: object) -> ConfigError:
    return ConfigError(
        f"{what} must be a SHA-256 digest (64 lowercase hex characters), got {d!r}"[:300]
    )


def check_digests(digests: Sequence[str], name: str = "digests") -> list[str]:
    """The digests, deduplicated in order; ``ConfigError`` (a ``ValueError``) naming ``name``
    for anything that is not a lowercase hex SHA-256."""
    if isinstance(digests, (str, bytes)) or not isinstance(digests, (Sequence, set, frozenset)):
        raise ConfigError(f"{name} must be a list of digests, got {type(digests).__name__}")
    out = list(dict.fromkeys(digests))
    for i, d in enumerate(out):
        if type(d) is not str or not _DIGEST.fullmatch(d):
            raise _digest_error(f"{name}[{i}]", d)
    return out


def check_blobs(blobs: Mapping[str, Blob], owner: str) -> dict[str, Blob]:
    """``put_blobs`` arguments checked: digests as keys, bytes-like values, a str owner. A
    memoryview comes back as a flat view of unsigned bytes (``len`` is its size in bytes)."""
    if not isinstance(blobs, Mapping):
        raise ConfigError(f"blobs must be a mapping of digest -> bytes, got {type(blobs).__name__}")
    check_owner(owner, "owner")
    out: dict[str, Blob] = {}
    for d, data in blobs.items():
        if type(d) is not str or not _DIGEST.fullmatch(d):
            raise _digest_error("blobs key", d)
        if isinstance(data, memoryview):
            data = _flat(data)
        elif not isinstance(data, (bytes, bytearray)):
            raise ConfigError(f"blobs[{d!r}] must be bytes, got {type(data).__name__}")
        out[d] = data
    return out


def _flat(view: memoryview) -> Blob:
    """A memoryview as one contiguous run of unsigned bytes (what drivers take as a BLOB)."""
    if view.format == "B" and view.ndim == 1 and view.c_contiguous:
        return view
    if view.c_contiguous:
        return view.cast("B")
    return view.tobytes()


def check_owner(owner: str, name: str) -> None:
    if type(owner) is not str or not owner:
        raise ConfigError(f"{name} must be a non-empty str such as 't:<task id>', got {owner!r}")


def check_owners(owners: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """``add_blob_owners`` arguments checked: ``{owner: [digests]}``."""
    if not isinstance(owners, Mapping):
        raise ConfigError(
            f"owners must be a mapping of owner -> digests, got {type(owners).__name__}"
        )
    out: dict[str, list[str]] = {}
    for owner, digests in owners.items():
        check_owner(owner, "owners key")
        out[owner] = check_digests(digests, f"owners[{owner!r}]")
    return out


def nbytes(data: Blob) -> int:
    """Size in bytes of a value ``check_blobs`` returned."""
    return len(data)


def as_bytes(data: Blob) -> bytes:
    """``data`` as immutable bytes: the very object when it already is ``bytes``."""
    return data if type(data) is bytes else bytes(data)


def task_owner(owner: str) -> str | None:
    """The task id of a ``"t:"`` owner, else None."""
    return owner[2:] if owner.startswith(TASK_OWNER) else None


def result_owner(owner: str) -> str | None:
    """The task id of an ``"r:"`` owner, else None."""
    return owner[2:] if owner.startswith(RESULT_OWNER) else None


def gone_owners(old: Iterable[tuple[str, str, str]], live: Collection[str], owned: set[str]) -> list[str]:
    """Of owner records past their grace time, ``(where, digest, owner)``: where those of owners
    no longer ``live`` are (to delete); the digests of live ones are added to ``owned``."""
    dead = []
    for where, d, owner in old:
        if owner in live:
            owned.add(d)
        else:
            dead.append(where)
    return dead


__all__ = [
    "LIVE_TASK_STATUSES",
    "RESULT_OWNER",
    "TASK_OWNER",
    "as_bytes",
    "check_blobs",
    "check_digests",
    "check_owner",
    "check_owners",
    "gone_owners",
    "nbytes",
    "result_owner",
    "task_owner",
]
