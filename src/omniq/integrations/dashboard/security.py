"""What guards the dashboard: the token (every request, ``?token=`` once then a cookie, or in
every URL of a page whose cookie the browser drops, as in a notebook's IFrame), the Host header
when there is no token (a page elsewhere cannot reach a loopback dashboard through DNS
rebinding), and CSRF for the actions: a form token derived from a secret this process drew
(no cookie: a cookie is shared by every port of a host and dropped in a third-party IFrame),
plus the ``Sec-Fetch-Site`` / ``Origin`` / ``Referer`` checks."""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .options import is_loopback

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CSRF_FIELD = "csrf"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


def same(a: str | None, b: str | None) -> bool:
    """Constant-time equality of two secrets (False when either is missing)."""
    return a is not None and b is not None and hmac.compare_digest(a.encode(), b.encode())


def host_name(host_header: str) -> str:
    """``example.org`` from ``example.org:8765``, ``::1`` from ``[::1]:8765``."""
    if host_header.startswith("["):
        return host_header[1 : host_header.find("]")] if "]" in host_header else host_header
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


class Guard:
    """ASGI middleware in front of the whole app (pages, static files, the event stream).

    ``token``: None lets any request through that names a loopback Host (or one of
    ``allowed_hosts``; any with ``any_host``, on a Unix socket only a proxy that authenticates
    reaches); otherwise a request needs the token as ``?token=``, a cookie, or an
    ``Authorization: token T`` header, else 401. ``scope["state"]["csrf"]`` is the form token
    (an HMAC under this process's secret); ``scope["state"]["url_token"]`` is the token when it
    came in the URL without a cookie (the page then carries it in its own URLs)."""

    def __init__(self, app: ASGIApp, *, token: str | None, cookie_suffix: str,
                 allowed_hosts: frozenset[str] = LOOPBACK_HOSTS, cookie_path: str = "/",
                 any_host: bool = False) -> None:
        self.app = app
        self.any_host = any_host
        self.token = token
        self.allowed_hosts = allowed_hosts
        self.token_cookie = f"omniq_dashboard_token_{cookie_suffix}"
        self.secret = secrets.token_bytes(32)
        self.csrf = hmac.new(self.secret, b"omniq-dashboard-csrf", "sha256").hexdigest()
        self.cookie_path = cookie_path or "/"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope = self._unprefixed(scope)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        cookies = SimpleCookie()
        try:
            cookies.load(headers.get("cookie", ""))
        except Exception:  # a malformed Cookie header: as if none
            cookies = SimpleCookie()
        set_cookies: list[str] = []
        state = scope.setdefault("state", {})
        if self.token is None:
            name = host_name(headers.get("host", "")).lower()
            if not self.any_host and name not in self.allowed_hosts and not is_loopback(name):
                await _refuse(send, 403, "This dashboard answers only on loopback addresses "
                              "(127.0.0.1, localhost). Start it with --token to reach it from elsewhere.")
                return
        else:
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            given = (query.get("token") or [None])[0]
            auth = headers.get("authorization", "")
            header_token = auth.split(None, 1)[1].strip() if auth.lower().startswith(("token ", "bearer ")) else None
            cookie = cookies.get(self.token_cookie)
            has_cookie = same(cookie.value if cookie else None, self.token)
            if same(given, self.token):
                if not has_cookie:
                    set_cookies.append(self._cookie(self.token_cookie, self.token))
                    state["url_token"] = self.token
                    if scope.get("method") == "GET" and headers.get("sec-fetch-dest") == "document":
                        # a browser's own tab keeps the cookie: take the token out of its address
                        # bar and history, as Jupyter does (in an IFrame the page carries it)
                        await _redirect(send, _without_token(scope), set_cookies)
                        return
            elif not (same(header_token, self.token) or has_cookie):
                await _refuse(send, 401, "This dashboard requires a token: open the URL that "
                              "omniq dashboard printed (…/?token=…), or send "
                              "'Authorization: token T'.")
                return
        state["csrf"] = self.csrf

        async def send_with_cookies(message: Message) -> None:
            if message["type"] == "http.response.start" and set_cookies:
                message["headers"] = [*message.get("headers", []),
                                      *[(b"set-cookie", c.encode("latin-1")) for c in set_cookies]]
            await send(message)

        await self.app(scope, receive, send_with_cookies)

    def _unprefixed(self, scope: Scope) -> Scope:
        """A request that names the root path itself (the printed URL opened directly, not
        through the proxy that strips it) is served as the proxy's would be."""
        root = self.cookie_path.rstrip("/")
        path = scope.get("path", "")
        if not root or scope.get("root_path", "").rstrip("/") != root:
            return scope
        doubled = root + root  # (the server puts the root path in front of every path)
        if path != doubled and not path.startswith(doubled + "/"):
            return scope
        scope = dict(scope)
        scope["path"] = path[len(root):]
        raw = scope.get("raw_path")
        if isinstance(raw, bytes) and raw.startswith(root.encode()):
            scope["raw_path"] = raw[len(root):]
        return scope

    def _cookie(self, name: str, value: str) -> str:
        return f"{name}={value}; Path={self.cookie_path}; HttpOnly; SameSite=Lax"


def origin_ok(origin: str | None, referer: str | None, host: str | None,
              fetch_site: str | None = None) -> bool:
    """A POST comes from this dashboard's own pages: ``Sec-Fetch-Site`` (when the browser sends
    it) says same-origin (or none: typed by the user), an ``Origin`` (``null`` is refused: a
    sandboxed frame or a redirect from elsewhere) or else a ``Referer`` names this host. Without
    any of them (curl, a script) the form token alone decides."""
    if fetch_site is not None and fetch_site.strip().lower() not in ("same-origin", "none"):
        return False
    if origin is not None:
        if origin.strip().lower() == "null" or not host:
            return False
        return urlsplit(origin.strip()).netloc.lower() == host.lower()
    if referer:
        return bool(host) and urlsplit(referer).netloc.lower() == (host or "").lower()
    return True


def _without_token(scope: Scope) -> str:
    """A relative URL of this request without its ``token`` parameter (relative, so it holds
    behind a proxy that serves it under a prefix)."""
    raw = scope.get("raw_path") or scope.get("path", "/").encode()
    last = raw.decode("latin-1").split("?", 1)[0].rsplit("/", 1)[-1] or "."
    query = [p for p in scope.get("query_string", b"").decode("latin-1").split("&")
             if p and p.split("=", 1)[0] != "token"]
    target = f"./{last}" if last != "." else "./"
    return target + (f"?{'&'.join(query)}" if query else "")


async def _redirect(send: Send, location: str, set_cookies: list[str]) -> None:
    await send({"type": "http.response.start", "status": 302,
                "headers": [(b"location", location.encode("latin-1")), (b"content-length", b"0"),
                            (b"cache-control", b"no-store"),
                            *[(b"set-cookie", c.encode("latin-1")) for c in set_cookies]]})
    await send({"type": "http.response.body", "body": b""})


async def _refuse(send: Send, status: int, text: str) -> None:
    from html import escape

    body = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>OmniQ dashboard: "
            f"{status}</title></head><body><h1>{'Token required' if status == 401 else 'Forbidden'}</h1>"
            f"<p>{escape(text)}</p></body></html>").encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/html; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()),
                            *([(b"www-authenticate", b"Token")] if status == 401 else [])]})
    await send({"type": "http.response.body", "body": body})
