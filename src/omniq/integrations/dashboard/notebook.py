"""``%omniq dashboard``: the dashboard served beside a notebook's ``OmniQ``, on that instance's
own event loop (so it ends when the instance closes), one per instance. The magic is a thin
call into :func:`show`."""

from __future__ import annotations

import html
import time
import weakref
from typing import TYPE_CHECKING, Any

from ...errors import ConfigError
from .options import choose_token, missing_extra

if TYPE_CHECKING:
    from ...client.facade import OmniQ
    from .server import Dashboard

_RUNNING: weakref.WeakKeyDictionary[Any, Dashboard] = weakref.WeakKeyDictionary()
START_TIMEOUT = 15.0


class DashboardLink:
    """What the magic returns: the URL, shown as a link (or, ``inline``, the page in an IFrame)."""

    def __init__(self, dashboard: Dashboard, *, inline: bool = False, height: int = 640) -> None:
        self.dashboard = dashboard
        self.url = dashboard.url_with_token
        self.inline = inline
        self.height = height

    def stop(self) -> None:
        """Stop serving (the instance stays open)."""
        self.dashboard.stop()

    def __repr__(self) -> str:
        return f"OmniQ dashboard: {self.url}"

    def _repr_html_(self) -> str:
        url = html.escape(self.url, quote=True)
        link = f'<a href="{url}" target="_blank" rel="noopener">OmniQ dashboard: {html.escape(self.url)}</a>'
        if not self.inline:
            return link
        return (f'{link}<br><iframe src="{url}" title="OmniQ dashboard" width="100%" '
                f'height="{int(self.height)}" style="border:1px solid #ccc"></iframe>')


def running(oq: OmniQ) -> Dashboard | None:
    """The dashboard serving ``oq`` now, if any."""
    dash = _RUNNING.get(oq.core)
    if dash is None or dash.server is None or dash.server.should_exit or dash.sock is None:
        return None
    return dash


def start(oq: OmniQ, *, host: str = "127.0.0.1", port: int = 8765, token: str | None = None) -> Dashboard:
    """Serve the dashboard for the open ``oq`` on its loop (or return the one already serving it)."""
    problem = missing_extra()
    if problem:
        raise ConfigError(problem)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"--port {port!r} is not valid: expected 0-65535 (0 picks a free one)")
    current = running(oq)
    if current is not None:
        return current
    from .server import Dashboard

    core = oq.open().core
    dash = Dashboard(core, host=host, port=port, token=choose_token(host, token))
    try:
        dash.bind()
    except OSError as exc:
        raise ConfigError(f"--port {port}: cannot listen on {host}:{port} ({exc.strerror or exc}); "
                          "choose another port (0 picks a free one)") from None
    session = core.session
    session.call_soon(lambda: session.spawn(dash.serve()))
    deadline = time.monotonic() + START_TIMEOUT
    while not (dash.server is not None and dash.server.started):
        if time.monotonic() > deadline:
            dash.stop()
            raise ConfigError(f"the dashboard did not start within {START_TIMEOUT:g} s")
        time.sleep(0.02)
    _RUNNING[core] = dash
    return dash


def show(oq: OmniQ, *, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
         inline: bool = False, stop: bool = False) -> DashboardLink | None:
    """The magic's work: start (or find) the dashboard and return its link; ``stop`` ends it."""
    if stop:
        dash = running(oq)
        if dash is not None:
            dash.stop()
        return None
    return DashboardLink(start(oq, host=host, port=port, token=token), inline=inline)
