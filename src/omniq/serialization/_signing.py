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
    """The keys in force: ``(signing_key or None, accepted_keys)``; no keys means no signing."""
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
