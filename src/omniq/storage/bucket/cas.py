"""Conditional writes on object stores: read an object with its version tag, and write it only
if it is still that version (or, with no tag, only if it does not exist yet).

- S3 (s3fs): ``If-Match: <etag>`` and ``If-None-Match: *`` on ``PutObject``; a refusal is
  ``412 PreconditionFailed`` (or ``409 ConditionalRequestConflict`` when two race at once).
- Google Cloud Storage (gcsfs): ``ifGenerationMatch=<generation>`` on a media upload, ``0`` for
  "only if absent"; a refusal is ``412``.
- Azure Blob Storage (adlfs): ``If-Match: <etag>`` (``MatchConditions.IfNotModified``) and
  ``If-None-Match: *`` (``overwrite=False``); a refusal is ``412`` or ``409 BlobAlreadyExists``.

Every refusal becomes ``Conflict``: the caller reads the object again and decides again.
``cas_for`` picks the adapter for a filesystem and refuses (``ConfigError``) one that has no
conditional writes; ``CasStore.probe`` checks, once, that the server really honours them (an
old S3-compatible server, or an emulator, may accept the headers and ignore them).
"""

from __future__ import annotations

import abc
import secrets
from typing import Any, NamedTuple
from urllib.parse import quote

from ...errors import ConfigError
from ...redact import masked


class Conflict(Exception):
    """A conditional write was refused: the object changed (or exists) since it was read."""


class Tagged(NamedTuple):
    """An object's bytes and the version tag a conditional write names (ETag, generation)."""

    data: bytes
    tag: str


class CasStore(abc.ABC):
    """Compare-and-set on single objects. Paths are ``bucket/key`` (no protocol)."""

    #: What the store's conditions are called, for messages.
    conditions: str = ""

    @abc.abstractmethod
    async def get(self, path: str) -> Tagged | None:
        """The object and its tag; None when it does not exist."""

    @abc.abstractmethod
    async def put(self, path: str, data: bytes, *, tag: str | None) -> str:
        """Write ``data`` if the object is still at ``tag`` (None: only if it does not exist);
        returns the new tag. ``Conflict`` when the condition does not hold."""

    @abc.abstractmethod
    async def delete(self, path: str) -> None:
        """Remove the object (unconditionally; missing is fine)."""

    async def probe(self, path: str, url: str) -> None:
        """Check once that the server refuses a second create and a stale replace; a store that
        accepts either would let two workers claim one task, so it is refused (``ConfigError``).
        ``path``: an object name nobody else uses; removed afterwards."""
        path = f"{path}-{secrets.token_hex(6)}"
        first = await self.put(path, b"1", tag=None)
        try:
            why = ""
            try:
                await self.put(path, b"2", tag=None)
                why = "a second create-only write of one object succeeded"
            except Conflict:
                pass
            if not why:
                stale = "0" if first.isdigit() else '"0000000000000000"'
                try:
                    await self.put(path, b"3", tag=stale)
                    why = "a write naming a stale version succeeded"
                except Conflict:
                    pass
            if why:
                raise ConfigError(
                    f"tasks URL {masked(url)!r}: this object store does not honour conditional "
                    f"writes ({self.conditions}): {why}. A bucket task queue needs them so that "
                    "two workers never claim one task; use a store that supports them (AWS S3, "
                    "Google Cloud Storage, Azure Blob Storage, recent MinIO) or another task "
                    "queue (sqlite://, postgresql://, redis://, nats://, file://)"
                )
        finally:
            await self.delete(path)


def _split(path: str) -> tuple[str, str]:
    bucket, _, key = path.partition("/")
    return bucket, key


# --------------------------------------------------------------------------------------------
# S3
# --------------------------------------------------------------------------------------------
_S3_CONFLICTS = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "412", "409"})


def _s3_code(exc: BaseException) -> str:
    for e in (exc, exc.__cause__):
        resp = getattr(e, "response", None)
        if isinstance(resp, dict):
            code = str(resp.get("Error", {}).get("Code", ""))
            status = str(resp.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            return code if code in _S3_CONFLICTS else status
    return ""


class S3Cas(CasStore):
    """``If-Match`` / ``If-None-Match: *`` on PutObject through s3fs's client."""

    conditions = "S3 If-None-Match / If-Match"

    def __init__(self, fs: Any) -> None:
        self.fs = fs

    async def get(self, path: str) -> Tagged | None:
        bucket, key = _split(path)
        try:
            resp = await self.fs._call_s3("get_object", Bucket=bucket, Key=key)
        except FileNotFoundError:
            return None
        body = resp["Body"]
        try:
            data = await body.read()
        finally:
            body.close()
        return Tagged(data, str(resp["ETag"]))

    async def put(self, path: str, data: bytes, *, tag: str | None) -> str:
        bucket, key = _split(path)
        cond = {"IfNoneMatch": "*"} if tag is None else {"IfMatch": tag}
        try:
            resp = await self.fs._call_s3("put_object", Bucket=bucket, Key=key, Body=data, **cond)
        except FileExistsError as exc:
            raise Conflict(path) from exc
        except FileNotFoundError as exc:
            if tag is not None and "bucket" not in str(exc).lower():
                raise Conflict(path) from exc  # replaced an object someone deleted
            raise
        except OSError as exc:
            if _s3_code(exc) in _S3_CONFLICTS:
                raise Conflict(path) from exc
            raise
        return str(resp["ETag"])

    async def delete(self, path: str) -> None:
        bucket, key = _split(path)
        try:
            await self.fs._call_s3("delete_object", Bucket=bucket, Key=key)
        except FileNotFoundError:
            pass


# --------------------------------------------------------------------------------------------
# Google Cloud Storage
# --------------------------------------------------------------------------------------------
class GcsCas(CasStore):
    """``ifGenerationMatch`` on gcsfs's JSON-API media upload (``0``: only if absent)."""

    conditions = "GCS ifGenerationMatch"

    def __init__(self, fs: Any) -> None:
        self.fs = fs

    async def get(self, path: str) -> Tagged | None:
        bucket, key = _split(path)
        try:
            headers, data = await self.fs._call("GET", "b/{}/o/{}", bucket, key, alt="media")
        except FileNotFoundError:
            return None
        gen = headers.get("x-goog-generation") or headers.get("X-Goog-Generation")
        if gen:
            return Tagged(bytes(data), str(gen))
        # no generation header (some emulators): the metadata first, then the bytes of exactly
        # that generation (gone meanwhile: read again), so the tag never runs ahead of the data
        for _ in range(10):
            try:
                meta = await self.fs._call("GET", "b/{}/o/{}", bucket, key, json_out=True)
                gen = str(meta["generation"])
                _, data = await self.fs._call(
                    "GET", "b/{}/o/{}", bucket, key, alt="media", generation=gen
                )
            except FileNotFoundError:
                continue
            return Tagged(bytes(data), gen)
        return None

    async def put(self, path: str, data: bytes, *, tag: str | None) -> str:
        bucket, key = _split(path)
        try:
            out = await self.fs._call(
                "POST",
                f"{self.fs._location}/upload/storage/v1/b/{quote(bucket)}/o",
                uploadType="media",
                name=key,
                ifGenerationMatch="0" if tag is None else tag,
                data=data,
                headers={"Content-Type": "application/octet-stream"},
                json_out=True,
            )
        except FileExistsError as exc:  # gcsfs's name for 412 Precondition Failed
            raise Conflict(path) from exc
        return str(out["generation"])

    async def delete(self, path: str) -> None:
        try:
            await self.fs._rm_file(path)
        except FileNotFoundError:
            pass


# --------------------------------------------------------------------------------------------
# Azure Blob Storage
# --------------------------------------------------------------------------------------------
class AzureCas(CasStore):
    """ETag conditions on the azure-storage-blob client adlfs holds."""

    conditions = "Azure Blob If-None-Match / If-Match"

    def __init__(self, fs: Any) -> None:
        self.fs = fs

    def _blob(self, path: str) -> Any:
        container, blob = _split(path)
        return self.fs.service_client.get_blob_client(container, blob)

    async def get(self, path: str) -> Tagged | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            stream = await self._blob(path).download_blob()
            data = await stream.readall()
        except ResourceNotFoundError:
            return None
        return Tagged(bytes(data), str(stream.properties.etag))

    async def put(self, path: str, data: bytes, *, tag: str | None) -> str:
        from azure.core import MatchConditions
        from azure.core.exceptions import (
            ResourceExistsError,
            ResourceModifiedError,
            ResourceNotFoundError,
        )

        blob = self._blob(path)
        try:
            if tag is None:
                out = await blob.upload_blob(data, overwrite=False)
            else:
                out = await blob.upload_blob(
                    data, overwrite=True, etag=tag, match_condition=MatchConditions.IfNotModified
                )
        except (ResourceExistsError, ResourceModifiedError) as exc:
            raise Conflict(path) from exc
        except ResourceNotFoundError as exc:
            if tag is not None and "container" not in str(exc).lower():
                raise Conflict(path) from exc
            raise
        return str(out["etag"])

    async def delete(self, path: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            await self._blob(path).delete_blob()
        except ResourceNotFoundError:
            pass


def cas_for(fs: Any, protocol: str, url: str) -> CasStore:
    """The conditional-write adapter for an (asynchronous) fsspec filesystem; ``ConfigError``
    for a store that has none (``memory://``, ``file://``, sftp, ...)."""
    name = type(fs).__name__
    if protocol in ("s3", "s3a") and hasattr(fs, "_call_s3"):
        return S3Cas(fs)
    if protocol in ("gs", "gcs") and hasattr(fs, "_call"):
        return GcsCas(fs)
    if protocol in ("abfs", "abfss", "az") and hasattr(fs, "service_client"):
        return AzureCas(fs)
    raise ConfigError(
        f"tasks URL {masked(url)!r}: {protocol}:// ({name}) has no conditional writes, so it "
        "cannot hold a task queue: two workers could claim one task. A bucket task queue needs "
        "s3://, gs:// or abfs:// (az://); for one machine use sqlite:// or file://"
    )


__all__ = ["AzureCas", "CasStore", "Conflict", "GcsCas", "S3Cas", "Tagged", "cas_for"]
