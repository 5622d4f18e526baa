"""The record codec every backend shares: Tasks, Results, Events, Schedules and backend records
as msgpack (msgspec).

Backends store records, not payloads: no format tag, no signature, never pickle (payloads are
``omniq.serialization``'s). Decoders are built once per type and cached. :func:`decode` turns a
bad record into a ``SerializationError`` naming the expected type; backends that read records
another process may be writing use :func:`decoder` and handle ``msgspec`` errors themselves
(a record they cannot read is logged and skipped, or stood in for, never a crash).
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


def decoder(type: type[T]) -> msgspec.msgpack.Decoder[T]:
    """The (cached) msgpack decoder of records of ``type`` (a Struct, ``list[TaskEvent]``, ...)."""
    try:
        return _decoders[type]
    except KeyError:
        dec = _decoders[type] = msgspec.msgpack.Decoder(type)
        return dec
    except TypeError:  # an unhashable type expression: do not cache
        return msgspec.msgpack.Decoder(type)


@overload
def decode(data: bytes | bytearray | memoryview) -> Any: ...
@overload
def decode(data: bytes | bytearray | memoryview, type: type[T]) -> T: ...
@overload
def decode(data: bytes | bytearray | memoryview, type: Any) -> Any: ...
def decode(data: bytes | bytearray | memoryview, type: Any = Any) -> Any:
    """Decode :func:`encode` output as ``type``, validating it (``SerializationError`` if not)."""
    try:
        return decoder(type).decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        name = getattr(type, "__name__", None) or repr(type)
        raise SerializationError(f"cannot decode stored {name}: {exc}") from exc


__all__ = ["decode", "decoder", "encode"]
