"""Results and events on any fsspec filesystem, and a task queue on a shared POSIX directory.

URLs: ``file:///dir``, ``memory://bucket/prefix``, ``s3://bucket/prefix`` (s3fs; the endpoint comes
from ``AWS_ENDPOINT_URL`` or ``storage_options``), ``gs://bucket/prefix`` (gcsfs, extra ``gcs``;
an emulator from ``STORAGE_EMULATOR_HOST`` or ``endpoint_url``), ``abfs://container/prefix`` /
``az://`` (adlfs, extra ``azure``; the account from ``storage_options`` such as
``connection_string``, or the ``AZURE_STORAGE_*`` variables). Error messages name the URL with
its password masked and never quote a key, SAS token or connection string.

``open_fsspec(url, storage_options)`` returns a ``FileTaskQueueBackend`` (results, events *and*
tasks) for ``file://`` and an ``FsspecBackend`` (results and events only) for the rest: an object
store has no atomic claim, so it cannot hold a task queue (``can_hold_tasks``).

Layout under the URL's prefix, chosen so a person can browse it and every hot read is one
request::

    omniq-layout.json                           what this is; written on connect (a write probe)
    results/<yyyy-mm-dd>/<task id>.msgpack      one TaskResult (msgpack), day from the time-ordered
                                                id, so ``get_result(id)`` is one GET; ids that are
                                                not OmniQ ids go to results/other/
    keys/<key segments...>/<last>@<task id>     empty index objects for results with a ``key``;
                                                ``find_results(key_prefix=)`` lists one subtree
    expiry/<yyyy-mm-dd>/<expires_at>@<task id>  empty index objects for results with a TTL;
                                                ``purge_results`` lists only these
    events/<yyyy-mm-dd>/<min ts>_<max ts>_<n>_<batch id>.msgpack
                                                one object per appended batch (a list of
                                                TaskEvent); the day is that of the batch's newest
                                                event, so ``since`` skips older days by name
    blobs/<first 2 hex digits>/<sha-256 hex>    one blob: exactly its bytes (``blob_path`` maps
                                                it on file://)
    blob-owners/<sha-256 hex>/<at>@<owner>      empty objects: ``owner`` (``t:``/``r:`` + task
                                                id) referred to the blob at ``at``
    blob-trash/<sha-256 hex>/<time>@<random>    a blob a running ``sweep_blobs`` took away while
                                                it makes sure nobody just began to own it

Names are percent-encoded (only ``A-Z a-z 0-9 - _ .`` stay as they are), long key segments are
split into ``+``-suffixed chunks so no file name passes 255 bytes.

Writes are atomic: object stores take one PUT per object; on ``file://`` a temp file (a hidden
name in the same directory) is fsynced and ``os.replace``d over the target. Index objects are
written *before* the result they point to, so a crash leaves at worst a dangling index entry,
never an unindexed result. An object that does not decode (truncated by hand, a foreign file) is
logged and treated as missing.

Blobs: ``put_blobs`` writes its owner markers first, then looks which blobs are there (no blob
is read) and writes the others whole. ``sweep_blobs`` lists the blobs, then the markers, deletes
markers of dead owners recorded before its ``older_than``, and takes each blob left without a
marker in two steps: it moves the blob to ``blob-trash/``, lists the blob's markers again, and
moves it back when a put marked it meanwhile (that put may have found it stored), else deletes
it. A reader that misses a blob looks in ``blob-trash/`` before calling it missing.

The ``file://`` task queue keeps one file per task whose *directory* is its status and whose
*name* carries the fields that change (see ``taskdir.TaskDir``); every status change is one
``os.rename``, which succeeds for exactly one of several racing processes.

Modules: ``layout`` (names of every object and file, pure), ``errors`` (failures in plain words),
``files`` (the filesystem adapters and URL -> filesystem), ``store`` (results, events and blobs:
``FsspecBackend``), ``taskdir`` (the file:// task files), ``backend`` (``FileTaskQueueBackend``
and ``open_fsspec``). This package only re-exports.
"""

from __future__ import annotations

from .backend import FileTaskQueueBackend, open_fsspec
from .errors import bucket_missing, explain, scrub
from .files import Location, filesystem_class, no_task_queue_message, parse_url
from .layout import decode_name, encode_name, key_marker, parse_key_marker
from .store import FsspecBackend
from .taskdir import TaskDir, TaskRecord

_Record = TaskRecord  # the name older code imports

__all__ = [
    "FileTaskQueueBackend",
    "FsspecBackend",
    "Location",
    "TaskDir",
    "TaskRecord",
    "bucket_missing",
    "decode_name",
    "encode_name",
    "explain",
    "filesystem_class",
    "key_marker",
    "no_task_queue_message",
    "open_fsspec",
    "parse_key_marker",
    "parse_url",
    "scrub",
]
