"""What guards the dashboard: the token (every request, ``?token=`` once then a cookie), the
Host header when there is no token (a page elsewhere cannot reach a loopback dashboard through
DNS rebinding), and CSRF for the actions (a double-submit cookie, plus the Origin check)."""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlsplit

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
    ``allowed_hosts``; any with ``any_host``, behind a proxy that authenticates); otherwise a request needs the token as ``?token=``, a cookie, or an
    ``Authorization: token T`` header, else 401. Every response without a CSRF cookie gets one;
    its value is put in ``scope["state"]["csrf"]`` for the forms."""

    def __init__(self, app: ASGIApp, *, token: str | None, cookie_suffix: str,
                 allowed_hosts: frozenset[str] = LOOPBACK_HOSTS, cookie_path: str = "/",
                 any_host: bool = False) -> None:
        self.app = app
        self.any_host = any_host
        self.token = token
        self.allowed_hosts = allowed_hosts
        self.token_cookie = f"omniq_dashboard_token_{cookie_suffix}"
        self.csrf_cookie = f"omniq_dashboard_csrf_{cookie_suffix}"
        self.cookie_path = cookie_path or "/"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        cookies = SimpleCookie()
        try:
            cookies.load(headers.get("cookie", ""))
        except Exception:  # a malformed Cookie header: as if none
            cookies = SimpleCookie()
        set_cookies: list[str] = []
        if self.token is None:
            if not self.any_host and host_name(headers.get("host", "")).lower() not in self.allowed_hosts:
                await _refuse(send, 403, "This dashboard answers only on loopback addresses "
                              "(127.0.0.1, localhost). Start it with --token to reach it from elsewhere.")
                return
        else:
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            given = (query.get("token") or [None])[0]
            auth = headers.get("authorization", "")
            header_token = auth.split(None, 1)[1].strip() if auth.lower().startswith(("token ", "bearer ")) else None
            cookie = cookies.get(self.token_cookie)
            if same(given, self.token):
                set_cookies.append(self._cookie(self.token_cookie, self.token))
            elif not (same(header_token, self.token) or same(cookie.value if cookie else None, self.token)):
                await _refuse(send, 401, "This dashboard requires a token: open the URL that "
                              "omniq dashboard printed (…/?token=…), or send "
                              "'Authorization: token T'.")
                return
        csrf = cookies.get(self.csrf_cookie)
        csrf_value = csrf.value if csrf is not None and len(csrf.value) >= 16 else None
        if csrf_value is None:
            csrf_value = secrets.token_urlsafe(24)
            set_cookies.append(self._cookie(self.csrf_cookie, csrf_value))
        scope.setdefault("state", {})["csrf"] = csrf_value

        async def send_with_cookies(message: Message) -> None:
            if message["type"] == "http.response.start" and set_cookies:
                message["headers"] = [*message.get("headers", []),
                                      *[(b"set-cookie", c.encode("latin-1")) for c in set_cookies]]
            await send(message)

        await self.app(scope, receive, send_with_cookies)

    def _cookie(self, name: str, value: str) -> str:
        return f"{name}={value}; Path={self.cookie_path}; HttpOnly; SameSite=Lax"


def origin_ok(origin: str | None, referer: str | None, host: str | None) -> bool:
    """A POST's Origin (or, without one, its Referer) names this dashboard's own host."""
    source = origin if origin and origin != "null" else referer
    if not source:
        return True  # (old browsers, curl): the CSRF token alone decides
    return bool(host) and urlsplit(source).netloc.lower() == (host or "").lower()


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
