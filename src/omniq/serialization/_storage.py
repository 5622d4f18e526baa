"""Thin msgspec helpers for storage records (Tasks, Results, Events as msgpack).

Backends store records, not payloads: no format tag, no signature, never pickle. A decode
error becomes a SerializationError naming the expected type, not a raw msgspec traceback.
"""

from __future__ import annotations

from typing import Any, TypeVar, overload

import msgspec

from ..errors import SerializationError

T = TypeVar("T")

_encoder = msgspec.msgpack.Encoder()
_decoders: dict[Any, msgspec.msgpack.Decoder[Any]] = {}


def encode(obj: Any) -> bytes:
    """msgpack bytes of a Struct or plain data (enums as their values)."""
    try:
        return _encoder.encode(obj)
    except (TypeError, ValueError, OverflowError) as exc:
        raise SerializationError(f"cannot encode {type(obj).__name__} for storage: {exc}") from exc


@overload
def decode(data: bytes | bytearray | memoryview) -> Any: ...
@overload
def decode(data: bytes | bytearray | memoryview, type: type[T]) -> T: ...
@overload
def decode(data: bytes | bytearray | memoryview, type: Any) -> Any: ...
def decode(data: bytes | bytearray | memoryview, type: Any = Any) -> Any:
    """Decode :func:`encode` output as ``type`` (a Struct, ``list[Task]``, ...), validating it."""
    try:
        dec = _decoders[type]
    except KeyError:
        dec = _decoders[type] = msgspec.msgpack.Decoder(type)
    except TypeError:  # an unhashable type expression: do not cache
        dec = msgspec.msgpack.Decoder(type)
    try:
        return dec.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        name = getattr(type, "__name__", None) or repr(type)
        raise SerializationError(f"cannot decode stored {name}: {exc}") from exc
