"""The ``jupyter-server-proxy`` entry point: JupyterLab's launcher gets an "OmniQ dashboard"
tile that opens ``omniq dashboard`` in a Lab tab, on a port the proxy picks, behind Jupyter's
own login (so the dashboard itself listens on loopback without a token)."""

from __future__ import annotations

import sys
from typing import Any


def setup() -> dict[str, Any]:
    """The server process description jupyter-server-proxy reads (its ``{port}`` and
    ``{base_url}`` are filled in by the proxy); storage comes from ``OMNIQ_*`` variables."""
    return {
        "command": [sys.executable, "-m", "omniq.cli", "dashboard", "--host", "127.0.0.1",
                    "--port", "{port}", "--root-path", "{base_url}omniq-dashboard"],
        "absolute_url": False,
        "timeout": 30,
        "new_browser_tab": False,
        "launcher_entry": {"enabled": True, "title": "OmniQ dashboard"},
    }
