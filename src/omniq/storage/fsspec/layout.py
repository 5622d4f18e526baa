"""Where everything lives under an fsspec URL: the names of result, key, expiry, event and blob
objects, and of file:// task files. Pure functions, no I/O; the layout itself is described in
the package docstring."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Sequence
from typing import NamedTuple
from urllib.parse import unquote

from ...errors import ConfigError

_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
_CHUNK = 120  # longest encoded key segment per path component
_OMNIQ_ID = re.compile(r"[0-9a-f]{24}")


def encode_name(text: str) -> str:
    """``text`` as one safe path component: ``%XX`` for anything but ``A-Za-z0-9-_.``.

    A leading dot is escaped too (no ``.``/``..``/hidden names) and ``""`` becomes ``%``.
    """
    if not text:
        return "%"
    out: list[str] = []
    for i, ch in enumerate(text):
        if ch in _SAFE and not (i == 0 and ch == "."):
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode())
    return "".join(out)


def decode_name(name: str) -> str:
    return "" if name == "%" else unquote(name, errors="strict")


def _chunks(segment: str) -> list[str]:
    """An encoded key segment split into components of at most ``_CHUNK`` characters, every one
    but the last ending in ``+`` (``+`` is always escaped, so the marker is unambiguous)."""
    enc = encode_name(segment)
    if len(enc) <= _CHUNK:
        return [enc]
    tokens = re.findall(r"%[0-9A-F]{2}|.", enc)
    parts: list[str] = []
    cur = ""
    for tok in tokens:
        if len(cur) + len(tok) > _CHUNK:
            parts.append(cur + "+")
            cur = ""
        cur += tok
    parts.append(cur)
    return parts


def key_marks_name(key: str) -> str:
    """The name of the folder (file://) or object (bucket) holding ``key``'s markers: the key
    encoded, or ``~`` and its digest when that is too long (the marker holds no key, only the
    task)."""
    name = encode_name(key)
    if len(name) > 200:
        name = "~" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return name


def key_dir(segments: Sequence[str]) -> str:
    """Relative directory for complete key segments (``["exp1", "abc"]`` -> ``exp1/abc``)."""
    return "/".join(c for seg in segments for c in _chunks(seg))


def key_marker(key: str, task_id: str) -> str:
    """Relative path of the key index entry for ``key`` -> ``task_id``."""
    *head, last = key.split("/")
    parts = [c for seg in head for c in _chunks(seg)]
    last_parts = _chunks(last)
    parts.extend(last_parts[:-1])
    parts.append(f"{last_parts[-1]}@{encode_name(task_id)}")
    return "/".join(parts)


def parse_key_marker(rel: str) -> tuple[str, str] | None:
    """``(key, task_id)`` from a relative key index path; None for anything else."""
    parts = rel.split("/")
    last, sep, tid = parts[-1].rpartition("@")
    if not sep or not tid:
        return None
    parts[-1] = last
    segments: list[str] = []
    cur = ""
    try:
        for p in parts:
            if p.endswith("+"):
                cur += p[:-1]
                continue
            segments.append(decode_name(cur + p))
            cur = ""
        return "/".join(segments), decode_name(tid)
    except UnicodeDecodeError:
        return None


_DIGEST_NAME = re.compile(r"[0-9a-f]{64}")
#: Seconds after which a ``blob-trash/`` entry is a crashed sweep's, for any sweep to settle.
TRASH_STALE = 3600.0


def blob_relpath(digest: str) -> str:
    return f"blobs/{digest[:2]}/{digest}"


def blob_owner_marker(digest: str, owner: str, at: float) -> str:
    name = encode_name(owner)
    if len(name) > 200:
        raise ConfigError(f"blob owner {owner[:40]!r}... is too long to name a file (max 200)")
    return f"blob-owners/{digest}/{float(at)!r}@{name}"


def parse_blob_owner_marker(rel: str) -> tuple[str, float, str] | None:
    """``(digest, at, owner)`` of a ``blob-owners/...`` path relative to the root."""
    parts = rel.split("/")
    if len(parts) != 3 or parts[0] != "blob-owners" or not _DIGEST_NAME.fullmatch(parts[1]):
        return None
    at, sep, owner = parts[2].partition("@")
    if not sep:
        return None
    try:
        return parts[1], float(at), decode_name(owner)
    except (ValueError, UnicodeDecodeError):
        return None


def day(ts: float) -> str:
    """UTC ``yyyy-mm-dd`` of an epoch time (``undated`` when it has none)."""
    try:
        return time.strftime("%Y-%m-%d", time.gmtime(ts))
    except (OverflowError, OSError, ValueError):
        return "undated"


def result_relpath(task_id: str) -> str:
    """Where a result lives, from its id alone: ``results/<day of the id>/<id>.msgpack``."""
    name = encode_name(task_id)
    if len(name) > 200:
        raise ConfigError(f"task id {task_id[:40]!r}... is too long to name a file (max 200)")
    if _OMNIQ_ID.fullmatch(task_id):
        return f"results/{day(int(task_id[:16], 16) / 1e9)}/{name}.msgpack"
    return f"results/other/{name}.msgpack"


def expiry_marker(expires_at: float, task_id: str) -> str:
    return f"expiry/{day(expires_at)}/{float(expires_at)!r}@{encode_name(task_id)}"


def parse_expiry_marker(name: str) -> tuple[float, str] | None:
    ts, sep, tid = name.rpartition("@")
    if not sep:
        return None
    try:
        return float(ts), decode_name(tid)
    except (ValueError, UnicodeDecodeError):
        return None


class BatchName(NamedTuple):
    """Fields of an event batch object's name."""

    first: float
    last: float
    n: int  # events in the batch
    batch: str

    def render(self) -> str:
        return f"events/{day(self.last)}/{self.first!r}_{self.last!r}_{self.n}_{self.batch}.msgpack"

    @classmethod
    def parse(cls, name: str) -> BatchName | None:
        if not name.endswith(".msgpack"):
            return None
        parts = name[: -len(".msgpack")].split("_")
        if len(parts) != 4:
            return None
        try:
            return cls(float(parts[0]), float(parts[1]), int(parts[2]), parts[3])
        except ValueError:
            return None


def basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]
