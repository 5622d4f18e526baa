"""Secrets kept out of messages, logs and reprs: URLs with their password or token masked, and
``storage_options`` with their secret values masked. Pure functions, no imports from OmniQ, so
the models (``OmniQConfig``'s repr) and storage alike can use them."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

#: ``storage_options`` keys whose values are secrets (compared in lower case)
SECRET_OPTIONS = frozenset({
    "key",
    "secret",
    "token",
    "password",
    "account_key",
    "sas_token",
    "connection_string",
    "client_secret",
    "credential",
    "session_token",
})


def masked(url: str) -> str:
    """``url`` with any password (or a NATS token) replaced by ``***``, for messages and logs;
    so are the values of ``password``, ``sslpassword``, ``token`` and ``secret`` query
    parameters (any case), which PostgreSQL and Redis URLs accept.

    Whatever its shape: the scheme is whatever comes before the first ``://`` (empty, unknown
    or garbled too), and the user info runs to the *last* ``@`` before the path, as URL parsers
    read it, so a password containing ``@`` is hidden whole. A string without ``://`` that
    still looks like ``user:password@host`` has everything from its first ``:`` to its last
    ``@`` hidden."""
    return re.sub(
        r"([?&;](?:ssl)?(?:password|token|secret)=)[^&;#]*",
        r"\1***",
        _masked_userinfo(url),
        flags=re.IGNORECASE,
    )


def _masked_userinfo(url: str) -> str:
    head, sep, rest = url.partition("://")
    if not sep:
        m = re.match(r"([^:@]*):(.*)@", url, re.DOTALL)  # the greedy ".*" runs to the last "@"
        return url if m is None else f"{m.group(1)}:***@{url[m.end():]}"
    scheme = head + sep
    m = re.match(r"([^/?#]*)@", rest, re.DOTALL)
    if m is None:
        # a password with "/", "?" or "#" in it (not valid unescaped, but it happens): hide
        # from the first ":" of the user info to the last "@"
        m = re.match(r"([^/?#@:]*:.*)@", rest, re.DOTALL)
        if m is None:
            return url
    userinfo = m.group(1)
    if ":" in userinfo:
        hidden = userinfo.split(":", 1)[0] + ":***"
    elif scheme.lower().startswith(("nats", "tls")):
        hidden = "***"  # nats://TOKEN@host: the token is the secret
    else:
        return url
    return f"{scheme}{hidden}@{rest[m.end():]}"


def masked_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with the values of secret keys (``SECRET_OPTIONS``) replaced by ``***``."""
    return {k: "***" if k.lower() in SECRET_OPTIONS else v for k, v in options.items()}
