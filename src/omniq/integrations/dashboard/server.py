"""Serving the dashboard with uvicorn: from ``omniq dashboard`` (its own loop) or beside an
open ``OmniQ`` in a notebook (on that instance's loop, ended with it)."""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import stat
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from ...client.orchestrator import AsyncOmniQ


def _bind_unix(sock: socket.socket, path: str) -> None:
    """Bind ``sock`` to the Unix socket ``path``, for this user only; a stale socket file left
    there is replaced."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)  # a socket left by a dashboard that died
    old = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)


class Dashboard:
    """The app over ``oq`` and the server that serves it. ``bind()`` takes the port (so the URL
    is known before serving; port 0 picks a free one), ``serve()`` runs until ``stop()``.
    ``unix_socket``: listen on that Unix socket instead (mode 0600), as jupyter-server-proxy
    asks: no browser page can reach it, so any Host header is accepted there."""

    def __init__(self, oq: AsyncOmniQ, *, host: str = "127.0.0.1", port: int = 8765,
                 token: str | None = None, root_path: str = "", unix_socket: str | None = None) -> None:
        self.oq = oq
        self.unix_socket = unix_socket
        self.host = host
        self.port = port
        self.token = token
        self.root_path = root_path.rstrip("/")
        self.sock: socket.socket | None = None
        self.server: Any = None
        self.app: Any = None

    def bind(self) -> None:
        """Listen on ``host:port`` (``OSError`` when it is taken), or on the Unix socket."""
        if self.unix_socket is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            bind = functools.partial(_bind_unix, sock, self.unix_socket)
        else:
            family = socket.AF_INET6 if ":" in self.host.strip("[]") else socket.AF_INET
            # proto IPPROTO_TCP, not 0: asyncio turns Nagle off only on accepted sockets that say
            # they are TCP (with proto 0 every kept-alive response waited ~40 ms for a delayed ACK)
            sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            bind = functools.partial(sock.bind, (self.host.strip("[]"), self.port))
        try:
            bind()
        except OSError:
            sock.close()
            raise
        sock.listen(128)
        sock.setblocking(False)
        self.sock = sock
        self.port = 0 if self.unix_socket is not None else int(sock.getsockname()[1])

    @property
    def url(self) -> str:
        """The address to open (this machine's name when listening on every interface), under
        the root path: served there directly too, as through the proxy that strips it."""
        if self.unix_socket is not None:
            return f"http://localhost{self.root_path}/"
        host = self.host.strip("[]")
        if host in ("0.0.0.0", "::", ""):
            host = socket.gethostname()
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}{self.root_path}/"

    @property
    def url_with_token(self) -> str:
        return self.url if self.token is None else f"{self.url}?token={quote(self.token)}"

    async def serve(self) -> None:
        """Serve until ``stop()`` (or SIGINT / SIGTERM when on the main thread)."""
        import uvicorn

        from .app import create_app

        if self.sock is None:
            self.bind()
        self.app = create_app(self.oq, token=self.token, cookie_suffix=str(self.port),
                              root_path=self.root_path, behind_proxy=self.unix_socket is not None)
        # log_config=None: uvicorn leaves the process's logging alone (a notebook's too)
        config = uvicorn.Config(self.app, lifespan="on", log_level="warning", access_log=False,
                                log_config=None, root_path=self.root_path, timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        assert self.sock is not None
        try:
            await self.server.serve(sockets=[self.sock])
        finally:
            self.sock.close()
            self.sock = None
            if self.unix_socket is not None:
                with contextlib.suppress(OSError):
                    os.unlink(self.unix_socket)

    def stop(self) -> None:
        """Ask the server to finish (thread-safe enough: uvicorn polls the flag)."""
        if self.server is not None:
            self.server.should_exit = True
