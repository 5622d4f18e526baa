"""notebooks/sweeps.ipynb in a real browser: JupyterLab on loopback, headless Chromium driven by
Playwright, "Run All Cells", and the progress bars must reach 100% on the page.

Uses Debian's Chromium (``/usr/bin/chromium``); no browser is ever downloaded. A screenshot of
the finished notebook is written to ``test-artifacts/sweeps.png`` at the repository root.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser import CHROMIUM_ARGS, chromium

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
BARS = ".widget-hprogress .progress-bar, .widget-vprogress .progress-bar"  # ipywidgets 8 IntProgress


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def jupyterlab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """JupyterLab serving a copy of notebooks/ on a free loopback port, token disabled, with
    its config, runtime, workspace and settings dirs in ``tmp_path``; yields the base URL."""
    pytest.importorskip("jupyterlab")
    for key in list(os.environ):
        if key.startswith("OMNIQ_"):
            monkeypatch.delenv(key)
    root = tmp_path / "notebooks"
    shutil.copytree(REPO / "notebooks", root)
    settings = tmp_path / "lab-settings" / "@jupyterlab"
    for ext, name, value in (
        ("apputils-extension", "notification", {"fetchNews": "false", "checkForUpdates": False}),
        ("notebook-extension", "tracker", {"autoStartDefaultKernel": True}),  # no kernel dialog
    ):
        (settings / ext).mkdir(parents=True)
        (settings / ext / f"{name}.jupyterlab-settings").write_text(json.dumps(value))
    port = _free_port()
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
    }
    log = (tmp_path / "jupyterlab.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "jupyterlab", "--no-browser",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
            "--IdentityProvider.token=", "--ServerApp.password=",
            f"--ServerApp.root_dir={root}",
            f"--LabApp.user_settings_dir={tmp_path / 'lab-settings'}",
            *(["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []),
        ],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "JupyterLab did not start:\n" + (tmp_path / "jupyterlab.log").read_text()[-3000:]
                    ) from None
                time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_sweeps_notebook_progress_reaches_100_percent_in_a_browser(jupyterlab: str) -> None:
    executable = chromium()
    sync_api = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "sweeps.png"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1800})
            try:
                bars, error_text = _run_all_and_wait(page, jupyterlab, shot)
            except Exception:
                page.screenshot(path=str(ARTIFACTS / "sweeps-failure.png"), full_page=True)
                raise
        finally:
            browser.close()
    assert len(bars) >= 2, bars
    for bar in bars:
        assert bar.get("width") == "100%" or (bar.get("max") and bar["value"] == bar["max"]), bars
    assert "Traceback" not in error_text and "Error" not in error_text, error_text
    assert shot.exists() and shot.stat().st_size > 10_000


def _wait_for_kernel(page: Any, base: str, timeout: float = 60) -> None:
    """Until the server has an idle kernel session for the notebook. Should JupyterLab still
    ask which kernel to start (it can, while kernel specs load), accept its proposal."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        accept = page.locator(".jp-Dialog .jp-mod-accept")
        if accept.count() and accept.first.is_visible():
            accept.first.click()
        with urllib.request.urlopen(f"{base}/api/sessions", timeout=5) as r:
            sessions = json.load(r)
        if any(s["path"].endswith("sweeps.ipynb") and s["kernel"]["execution_state"] == "idle"
               for s in sessions):
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=30_000)
            return
        time.sleep(0.25)
    raise AssertionError(f"no idle kernel for sweeps.ipynb after {timeout} s")


def _run_all_and_wait(page: Any, base: str, shot: Path) -> tuple[list[dict[str, Any]], str]:
    """Open sweeps.ipynb, run all cells, wait for full bars and an idle kernel, take the
    screenshot; the bars' final state and any stderr text shown."""
    page.goto(f"{base}/lab/tree/sweeps.ipynb", wait_until="domcontentloaded")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    _wait_for_kernel(page, base)
    page.click(".jp-Notebook")
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    # both sweeps (oq.sweep and %%omniq submit --sweep) show a bar; each must fill
    page.wait_for_function(
        """() => {
            const bars = [...document.querySelectorAll('.widget-hprogress .progress-bar, .widget-vprogress .progress-bar')];
            const full = bars.filter(b => b.tagName === 'PROGRESS'
                ? b.max > 0 && b.value === b.max
                : parseFloat(b.style.width) >= 100);
            return bars.length >= 2 && full.length === bars.length;
        }""",
        timeout=90_000,
    )
    # ... and every cell ran (the last one has an execution count, the kernel is idle)
    page.wait_for_function(
        """() => {
            const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')];
            return prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p.textContent));
        }""",
        timeout=60_000,
    )
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=30_000)
    bars = page.eval_on_selector_all(
        BARS,
        """els => els.map(b => b.tagName === 'PROGRESS'
            ? {value: b.value, max: b.max} : {width: b.style.width})""",
    )
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    error_text = "\n".join(errors.all_inner_texts())
    # scroll the first sweep's bar into view for the picture
    page.locator(".widget-hprogress").first.scroll_into_view_if_needed()
    page.screenshot(path=str(shot), full_page=False)
    # and the %%omniq submit --sweep cell: its bar with the points' output under it
    page.locator(".widget-hprogress").last.scroll_into_view_if_needed()
    page.screenshot(path=str(shot.with_name("sweeps-magic.png")), full_page=False)
    return bars, error_text
