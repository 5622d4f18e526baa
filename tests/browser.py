"""Headless Chromium for the browser tests: Debian's package (``/usr/bin/chromium``, which
``.ci/run`` installs); no browser is ever downloaded. A helper module, not a test module."""

from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def chromium() -> str:
    """The path of Chromium, or skip the test saying how to install it."""
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip("Chromium not found at /usr/bin/chromium (Debian: apt-get install -y chromium; "
                ".ci/run installs it)")
