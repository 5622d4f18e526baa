"""The ``jupyter-server-proxy`` entry point: JupyterLab's launcher gets an "OmniQ dashboard"
tile that opens ``omniq dashboard`` in a Lab tab, on a port the proxy picks, behind Jupyter's
own login. The dashboard listens on a Unix socket the proxy names (mode 0600, jupyter-server-proxy
4.0 or later): no browser page can reach it through DNS rebinding, as it could a loopback port,
so it needs no token and accepts the public Host header the proxy forwards."""

from __future__ import annotations

import sys
from typing import Any


def setup() -> dict[str, Any]:
    """The server process description jupyter-server-proxy reads (its ``{unix_socket}`` and
    ``{base_url}`` are filled in by the proxy); storage comes from ``OMNIQ_*`` variables."""
    return {
        "command": [sys.executable, "-m", "omniq.cli", "dashboard", "--unix-socket", "{unix_socket}",
                    "--root-path", "{base_url}omniq-dashboard"],
        "unix_socket": True,
        "absolute_url": False,
        "timeout": 30,
        "new_browser_tab": False,
        "launcher_entry": {"enabled": True, "title": "OmniQ dashboard"},
    }
