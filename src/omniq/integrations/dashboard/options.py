"""The dashboard's option rules, shared by the command and the server (no Starlette here):
which hosts are loopback, which token a dashboard requires, whether the extra is installed."""

from __future__ import annotations

import importlib.util
import ipaddress
import secrets

TOKEN_ENV = "OMNIQ_DASHBOARD_TOKEN"
#: what a token may hold: it travels in URLs and a cookie (printable ASCII but ``;``, ``,``, ``"``, ``\\``)
TOKEN_CHARS = frozenset(chr(c) for c in range(0x21, 0x7F)) - set(';,"\\')
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the dashboard on this machine (127.0.0.0/8, ::1, localhost)."""
    name = host.strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def choose_token(host: str, token: str | None) -> str | None:
    """The token the dashboard requires: the one given; else none on loopback and a fresh one
    beyond it (as Jupyter does), since whoever reaches the port could retry and cancel tasks."""
    from ...errors import ConfigError

    if token is not None and not token.strip():
        if is_loopback(host):
            return None
        raise ConfigError(f"--token is empty: --host {host} is reachable beyond this machine, so a "
                          "token is required (leave --token out to have one generated)")
    if token is not None:
        bad = sorted({c for c in token if c not in TOKEN_CHARS})
        if bad:
            raise ConfigError(f"--token must not contain {''.join(bad)!r}: it travels in URLs and a cookie "
                              "(use letters, digits and punctuation but ; , \" \\ and spaces)")
        return token
    return None if is_loopback(host) else secrets.token_urlsafe(24)


def missing_extra() -> str | None:
    """Why the dashboard cannot run here (a missing package of the ``dashboard`` extra), or None."""
    for module in ("starlette", "uvicorn", "jinja2"):
        if importlib.util.find_spec(module) is None:
            return (f"the dashboard needs {module}, which is not installed: "
                    "pip install 'omniq[dashboard]'")
    return None
