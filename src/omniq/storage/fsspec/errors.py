"""Storage errors in plain words: what a filesystem or object-store failure means and how to fix
it, with credentials scrubbed from every message."""

from __future__ import annotations

import errno
import re
from typing import Any

from ...redact import SECRET_OPTIONS


def _names(exc: BaseException) -> set[str]:
    return {c.__name__ for c in type(exc).__mro__}


#: Protocols whose top-level namespace is a "container" (Azure), not a "bucket".
_CONTAINER_PROTOCOLS = frozenset({"abfs", "abfss", "az"})
#: What a person sets to give each store credentials, for the "access denied" message.
_CREDENTIALS_HINT = {
    "gs": "a service account (GOOGLE_APPLICATION_CREDENTIALS) or token in storage_options",
    "abfs": "connection_string, account_key, sas_token or a credential in storage_options",
}
_CREDENTIALS_HINT["gcs"] = _CREDENTIALS_HINT["gs"]
for _p in ("abfss", "az"):
    _CREDENTIALS_HINT[_p] = _CREDENTIALS_HINT["abfs"]


class BucketMissing(FileNotFoundError):
    """A write was refused because the bucket (or Azure container) itself does not exist."""


def bucket_missing(exc: BaseException) -> bool:
    """True when ``exc`` says the bucket/container is missing, not just one object."""
    if isinstance(exc, BucketMissing):
        return True
    text = str(exc)
    return (
        "NoSuchBucket" in text
        or "ContainerNotFound" in text
        or "specified bucket does not exist" in text.lower()
        or "specified container does not exist" in text.lower()
    )


def explain(
    exc: BaseException,
    *,
    bucket: str = "",
    endpoint: str | None = None,
    local: bool = False,
    protocol: str = "",
) -> str:
    """A sentence saying what went wrong, for a person who has to fix it."""
    names = _names(exc)
    text = str(exc) or type(exc).__name__
    if local:
        if isinstance(exc, PermissionError):
            return f"access denied: this user may not write there ({text})"
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return f"the disk is full ({text})"
        if isinstance(exc, OSError) and exc.errno == errno.EROFS:
            return f"the file system is read-only ({text})"
        return f"{type(exc).__name__}: {text}"
    text = text.split("\nRequestId:", 1)[0].strip()  # Azure appends request ids and times
    if "NoCredentialsError" in names or "PartialCredentialsError" in names:
        return (
            "no credentials found (set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile, "
            f"or key/secret in storage_options): {text}"
        )
    if "CredentialUnavailableError" in names or text.startswith("DefaultAzureCredential failed"):
        first = text.split("\n", 1)[0]
        return (
            "no credentials found (give connection_string, account_key or sas_token in "
            f"storage_options, or sign in for DefaultAzureCredential): {first}"
        )
    if (
        isinstance(exc, PermissionError)
        or "AccessDenied" in text
        or "ClientAuthenticationError" in names
        or text.startswith(("Forbidden", "Server failed to authenticate"))
        or "Invalid Credentials" in text
    ):
        how = _CREDENTIALS_HINT.get(protocol, "the access key and secret")
        return f"access denied: check the credentials ({how}) and that they may write here: {text}"
    word = "container" if protocol in _CONTAINER_PROTOCOLS else "bucket"
    if bucket_missing(exc) or (isinstance(exc, FileNotFoundError) and "bucket" in text.lower()):
        return f"the {word} {bucket!r} does not exist: create it first"
    if names & {
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ClientConnectorError",
        "ServerTimeoutError",
        "ConnectionError",
        "ServiceRequestError",  # azure-core: the request never got an answer
        "gaierror",
        "TimeoutError",
    }:
        where = f" {endpoint}" if endpoint else ""
        return f"cannot reach the endpoint{where}: {text}"
    return f"{type(exc).__name__}: {text}"


_SECRET_PATTERNS = [
    (re.compile(r"(AccountKey=)[^;\s]+", re.IGNORECASE), r"\1***"),
    (re.compile(r"(SharedAccessSignature=)[^;\s]+", re.IGNORECASE), r"\1***"),
    (re.compile(r"([?&]sig=)[^&\s'\"]+", re.IGNORECASE), r"\1***"),
]


def scrub(text: str, storage_options: dict[str, Any] | None = None) -> str:
    """``text`` without secrets: values of secret ``storage_options`` and the secret parts of
    Azure connection strings and SAS URLs."""
    for name, value in (storage_options or {}).items():
        if name.lower() in SECRET_OPTIONS and isinstance(value, str) and len(value) >= 6:
            text = text.replace(value, "***")
    for pattern, repl in _SECRET_PATTERNS:
        text = pattern.sub(repl, text)
    return text
