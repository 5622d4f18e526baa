"""HMAC-SHA256 signing of payloads, keyed by ``OMNIQ_SECRET_KEY`` (with rotation).

Loading dill bytes runs code, so when a key is configured every payload is signed and checked
*before* it is opened. ``OMNIQ_SECRET_KEY`` signs; ``OMNIQ_SECRET_KEYS`` (comma-separated) adds
older keys that are still accepted, so keys can be rotated without failing tasks in flight.

The environment is read on every call (so a key exported after import, or set by a test, takes
effect at once). ``os.environ.get`` costs ~0.5 µs on a miss, which would be half the budget of
serializing a ``None`` result, so we look the key up in ``os.environ``'s backing dict (~15 ns);
it is what ``os.environ.get`` reads too.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import ConfigError, SignatureError

SIGNING_ENV = "OMNIQ_SECRET_KEY"
ACCEPTED_ENV = "OMNIQ_SECRET_KEYS"
MAC_SIZE = 32  # HMAC-SHA256
MIN_KEY_BYTES = 32  # a key shorter than the MAC it makes can be guessed faster than the MAC

Keys = tuple[bytes | None, tuple[bytes, ...]]  # (signing key, accepted keys incl. the signing key)
_NO_KEYS: Keys = (None, ())


def _env_reader(name: str) -> Callable[[], str | None]:
    """A fast ``os.environ.get(name)`` reading the same backing dict."""
    data: Any = getattr(os.environ, "_data", None)
    encodekey: Any = getattr(os.environ, "encodekey", None)
    decodevalue: Any = getattr(os.environ, "decodevalue", None)
    if not isinstance(data, dict) or encodekey is None or decodevalue is None:
        return lambda: os.environ.get(name)
    key = encodekey(name)

    def read() -> str | None:
        raw = data.get(key)
        return None if raw is None else decodevalue(raw)

    return read


_read_signing = _env_reader(SIGNING_ENV)
_read_accepted = _env_reader(ACCEPTED_ENV)

_override: Keys | None = None
_env_cache: tuple[str | None, str | None, Keys] = (None, None, _NO_KEYS)


def _as_key(key: str | bytes, what: str) -> bytes:
    if isinstance(key, str):
        key = key.strip().encode()
    if not isinstance(key, bytes):
        raise ConfigError(f"{what} must be str or bytes, not {type(key).__name__}")
    if not key.strip():
        raise ConfigError(
            f"{what} is empty or blank: a key must be at least {MIN_KEY_BYTES} bytes "
            f"(e.g. python -c 'import secrets; print(secrets.token_hex(32))')"
        )
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(
            f"{what} is {len(key)} bytes long: a key must be at least {MIN_KEY_BYTES} bytes "
            f"(e.g. python -c 'import secrets; print(secrets.token_hex(32))')"
        )
    return key


def set_secret_keys(keys: str | bytes | Iterable[str | bytes] | None) -> None:
    """Override the environment's keys in this process (``None`` goes back to the environment).

    A single key signs and verifies. A list rotates: its first key signs, every key is accepted.
    An empty list turns signing off whatever the environment says. Spawned workers do not
    inherit an override: pass the keys to them (e.g. through ``OMNIQ_SECRET_KEY``).

    Args:
        keys: One key, a list of keys (the first signs), an empty list (signing off), or
            None (back to ``OMNIQ_SECRET_KEY`` / ``OMNIQ_SECRET_KEYS``). A key is ``str`` or
            ``bytes`` of at least 32 bytes.

    Raises:
        ConfigError: A key is not ``str`` / ``bytes``, is blank, or is shorter than 32 bytes.

    Examples:
        >>> from omniq.serialization import dumps, get_secret_keys, loads, set_secret_keys
        >>> set_secret_keys("k" * 32)
        >>> signed = dumps(42)
        >>> signed[:1], loads(signed)
        (b'S', 42)
        >>> set_secret_keys("n" * 32)           # another key: the payload is refused
        >>> loads(signed)
        Traceback (most recent call last):
        ...
        omniq.errors.SignatureError: signature does not match any accepted key ...
        >>> set_secret_keys(None)               # back to the environment
    """
    global _override
    if keys is None:
        _override = None
        return
    if isinstance(keys, (str, bytes)):
        keys = [keys]
    parsed = [_as_key(k, f"secret key #{i}") for i, k in enumerate(keys)]
    _override = (parsed[0], tuple(dict.fromkeys(parsed))) if parsed else _NO_KEYS


def _parse_env(signing: str | None, accepted: str | None) -> Keys:
    """Unset means no signing; set but empty, blank or short is a ConfigError (never "off")."""
    extra = [k.strip() for k in (accepted or "").split(",") if k.strip()]
    if signing is None:
        if extra:
            raise ConfigError(
                f"{ACCEPTED_ENV} is set but {SIGNING_ENV} is not: {ACCEPTED_ENV} only adds "
                f"older keys to accept; set {SIGNING_ENV} to the key that signs"
            )
        return _NO_KEYS
    key = _as_key(signing, SIGNING_ENV)
    older = [_as_key(k, f"{ACCEPTED_ENV} entry #{i + 1}") for i, k in enumerate(extra)]
    return key, tuple(dict.fromkeys([key, *older]))


def get_secret_keys() -> Keys:
    """The keys in force, from :func:`set_secret_keys` or else the environment.

    Returns:
        ``(signing_key or None, accepted_keys)`` as bytes; ``(None, ())`` means no signing.

    Raises:
        ConfigError: ``OMNIQ_SECRET_KEY`` or ``OMNIQ_SECRET_KEYS`` is set to a blank or short
            key, or only ``OMNIQ_SECRET_KEYS`` is set.

    Examples:
        >>> from omniq.serialization import get_secret_keys, set_secret_keys
        >>> set_secret_keys(["new" * 11, "old" * 11])
        >>> signing, accepted = get_secret_keys()
        >>> signing == b"new" * 11, len(accepted)
        (True, 2)
        >>> set_secret_keys([])                 # signing off, whatever the environment says
        >>> get_secret_keys()
        (None, ())
        >>> set_secret_keys(None)
    """
    global _env_cache
    if _override is not None:
        return _override
    signing, accepted = _read_signing(), _read_accepted()
    cached_signing, cached_accepted, keys = _env_cache
    if signing == cached_signing and accepted == cached_accepted:
        return keys
    keys = _parse_env(signing, accepted)
    _env_cache = (signing, accepted, keys)
    return keys


def sign(payload: bytes, key: bytes, tag: bytes) -> bytes:
    """``tag + HMAC(payload) + payload``: the MAC covers the inner payload and its format tag."""
    return tag + hmac.digest(key, payload, hashlib.sha256) + payload


def verify(data: bytes, accepted: tuple[bytes, ...]) -> bytes:
    """The inner payload of a signed ``data`` (tag already checked), or SignatureError."""
    if len(data) < 1 + MAC_SIZE + 1:
        raise SignatureError("signed payload is truncated (shorter than its signature)")
    mac = data[1 : 1 + MAC_SIZE]
    inner = data[1 + MAC_SIZE :]
    for key in accepted:
        if hmac.compare_digest(mac, hmac.digest(key, inner, hashlib.sha256)):
            return inner
    raise SignatureError(
        f"signature does not match any accepted key ({len(accepted)} accepted: "
        f"{SIGNING_ENV} and {ACCEPTED_ENV}); the payload was not loaded"
    )


# ------------------------------------------------------------------------------ roles
#
# Values (results, a chunk's outcomes: what ``dumps`` writes) are signed with a key derived for
# that role, ``HMAC(key, b"omniq-result")``; calls (``dumps_call``: tasks, callbacks,
# schedules) with the key itself. ``loads_call`` accepts only the key, so a signed result can
# never run as a task. A process worker's children get only the derived key (in
# ``CHILD_RESULT_ENV``, never the key): task code there can sign results, not tasks. Their
# parent checks each task's signature and hands over the inner payload through its private pipe.

CHILD_RESULT_ENV = "OMNIQ_CHILD_RESULT_KEY"
RESULT_ROLE = b"omniq-result"
#: first byte of what a parent sends its child for a task whose signature it refused
TAG_REFUSED = b"!"
#: first byte of what a parent sends its child for a task whose signature it checked
TAG_VERIFIED = b"+"

_read_child = _env_reader(CHILD_RESULT_ENV)
_derived: dict[bytes, bytes] = {}


def derive(key: bytes) -> bytes:
    """The result-role key of ``key`` (cached)."""
    got = _derived.get(key)
    if got is None:
        got = _derived[key] = hmac.digest(key, RESULT_ROLE, hashlib.sha256)
    return got


def child_result_key() -> bytes | None:
    """In a process worker's child: the result-role key its parent gave it (None elsewhere)."""
    raw = _read_child()
    if not raw:
        return None
    try:
        return bytes.fromhex(raw)
    except ValueError:
        raise ConfigError(f"{CHILD_RESULT_ENV} is not hex") from None


def value_keys() -> Keys:
    """``(signing key, accepted keys)`` for values: the derived keys (and, for values stored
    before roles, the keys themselves)."""
    signing, accepted = get_secret_keys()
    if signing is None:
        child = child_result_key()
        return (child, ()) if child is not None else _NO_KEYS
    return derive(signing), (*(derive(k) for k in accepted), *accepted)


def for_child(data: bytes) -> bytes:
    """What a parent sends its child for task payload ``data``: with keys set,
    ``TAG_VERIFIED`` + the verified inner payload, or ``TAG_REFUSED`` + why; without keys,
    ``data`` (which a child given a result key refuses: nothing opens there unchecked)."""
    accepted = get_secret_keys()[1]
    if not accepted:
        return data
    try:
        if not data or data[:1] != b"S":
            raise SignatureError(
                f"payload is not signed but {SIGNING_ENV} is set; it was not loaded"
            )
        inner = verify(data, accepted)
        if inner[:1] == b"S":
            raise SignatureError("corrupted payload: a signed payload nested in another")
        return TAG_VERIFIED + inner
    except SignatureError as exc:
        return TAG_REFUSED + str(exc).encode()


_trust = threading.local()


class trusting:
    """While a child runs a task its parent verified (``TAG_VERIFIED``): its payload, and
    signed payloads nested in it (a chunk's function), open without a check the child has no
    key for; they came inside the bytes the parent checked."""

    def __enter__(self) -> None:
        _trust.depth = getattr(_trust, "depth", 0) + 1

    def __exit__(self, *exc: object) -> None:
        _trust.depth -= 1


def trusted() -> bool:
    return getattr(_trust, "depth", 0) > 0
