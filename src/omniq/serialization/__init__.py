"""Payload serialization: msgspec msgpack for plain data, dill for everything else.

Every payload starts with a one-byte format tag (see ``_codec``), so a reader knows how it was
written and a non-Python reader can still open plain results. Task payloads come from
:func:`dumps_call`; results from :func:`dumps`. Functions defined in ``__main__`` (a notebook,
a script) travel by value with the globals they use (``dill.dumps(..., recurse=True)``), since
a spawned worker has no copy of the user's ``__main__``.

Loading a pickle runs code. With ``OMNIQ_SECRET_KEY`` set, every payload is HMAC-signed and
verified before it is opened (``OMNIQ_SECRET_KEYS`` lists older keys still accepted);
:func:`set_secret_keys` overrides the environment in this process.

Storage records (tasks, results, events) are not payloads: ``omniq.storage._codec`` encodes them.
"""

from ._blobs import THRESHOLD as BLOB_THRESHOLD
from ._blobs import BlobSink, Fetch, fetching, map_file, path_fetch
from ._codec import (
    TAG_CALL,
    TAG_DILL,
    TAG_MSGPACK,
    TAG_PICKLE,
    TAG_SHARED,
    TAG_SIGNED,
    TAG_STRUCT,
    dumps,
    dumps_call,
    dumps_calls,
    loads,
    loads_call,
)
from ._signing import ACCEPTED_ENV, SIGNING_ENV, get_secret_keys, set_secret_keys

__all__ = [
    "ACCEPTED_ENV",
    "BLOB_THRESHOLD",
    "SIGNING_ENV",
    "TAG_CALL",
    "TAG_DILL",
    "TAG_MSGPACK",
    "TAG_PICKLE",
    "TAG_SHARED",
    "TAG_SIGNED",
    "TAG_STRUCT",
    "BlobSink",
    "Fetch",
    "dumps",
    "dumps_call",
    "dumps_calls",
    "fetching",
    "get_secret_keys",
    "loads",
    "loads_call",
    "map_file",
    "path_fetch",
    "set_secret_keys",
]
