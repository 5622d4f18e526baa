"""The dashboard in real headless Chromium (Debian's, driven by Playwright; see tests/browser.py):
the front page shows a queue, a task enqueued after the page opened appears without a reload,
a failed task's page shows its message and its Retry button runs it again, and a dashboard
with a token refuses a request without it. The front page's picture goes to
``test-artifacts/dashboard.png``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from omniq import OmniQ, TaskStatus
from tests.browser import CHROMIUM_ARGS, chromium
from tests.helpers import boom_once_then

from .conftest import Running

pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = chromium()
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    p = context.new_page()
    try:
        yield p
    except Exception:
        ARTIFACTS.mkdir(exist_ok=True)
        p.screenshot(path=str(ARTIFACTS / "dashboard-failure.png"), full_page=True)
        raise
    finally:
        context.close()


def test_the_front_page_shows_a_queue(oq: OmniQ, dashboard: Running, page: Any) -> None:
    tid = oq.enqueue(abs, args=(-1,), queue="emails")
    oq.get_result(tid, wait=True, timeout=30)
    response = page.goto(dashboard.url)
    assert response.status == 200
    row = page.locator('#queues tr[data-queue="emails"]')
    row.wait_for(timeout=10_000)
    assert row.get_by_role("link", name="1").count() == 1  # the succeeded count, a link to the list
    assert page.get_by_role("heading", name="Queues").is_visible()
    page.locator("#live-state", has_text="live").wait_for(timeout=10_000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)


def test_a_task_enqueued_after_the_page_opened_appears_without_reload(
        oq: OmniQ, dashboard: Running, page: Any) -> None:
    page.goto(f"{dashboard.base}/tasks")
    page.locator("#live-state", has_text="live").wait_for(timeout=10_000)
    page.evaluate("window.__sameDocument = true")
    tid = oq.enqueue(abs, args=(-5,), queue="later")
    page.locator(f'#task-list tr[data-id="{tid}"]').wait_for(timeout=10_000)
    assert page.evaluate("window.__sameDocument === true")  # no reload happened
    assert page.locator(f'tr[data-id="{tid}"] td').nth(2).inner_text() == "later"


def test_a_failed_task_shows_its_message_and_retry_runs_it_again(
        oq: OmniQ, dashboard: Running, page: Any, tmp_path: Path) -> None:
    tid = oq.enqueue(boom_once_then, args=(str(tmp_path / "marker"),))
    first = oq.get_result(tid, wait=True, timeout=30)
    assert first is not None and first.status is TaskStatus.FAILED
    page.goto(f"{dashboard.base}/tasks/{tid}")
    assert page.locator(".error-message").first.inner_text() == "RuntimeError: first attempt fails"
    assert page.get_by_role("button", name="Cancel").is_disabled()
    page.locator("#live-state", has_text="live").wait_for(timeout=10_000)
    page.get_by_role("button", name="Retry").click()
    page.get_by_role("status").filter(has_text="Queued again").wait_for(timeout=10_000)
    page.locator("#task-status", has_text="succeeded").wait_for(timeout=20_000)
    again = oq.get_result(tid, wait=True, timeout=30)
    assert again is not None and again.status is TaskStatus.SUCCEEDED and again.value == "ok"
    assert page.get_by_role("button", name="Retry").is_disabled()


def test_a_dashboard_with_a_token_refuses_a_request_without_it(
        db_url: str, oq: OmniQ, start: Callable[..., Running], page: Any) -> None:
    dash = start(["--tasks", db_url, "--port", "0", "--token", "s3cret-t0ken"])
    refused = page.goto(dash.base + "/")
    assert refused.status == 401
    assert page.get_by_role("heading", name="Token required").is_visible()
    assert page.locator("#queues, #live").count() == 0
    allowed = page.goto(dash.url)  # ?token=: then a cookie, and the token leaves the address bar
    assert allowed.status == 200 and page.get_by_role("heading", name="Overview").is_visible()
    assert "token" not in page.url
    assert page.goto(dash.base + "/tasks").status == 200


def test_a_storage_that_goes_away_shows_a_banner_live_and_it_goes_when_back(
        start: Callable[..., Running], page: Any) -> None:
    from tests.servers import PASSWORD, private_redis

    with private_redis() as server:
        url = server.url()
        with OmniQ(tasks=url, concurrency=0) as q:
            q.enqueue(abs, args=(-1,), queue="kept")
        dash = start(["--tasks", url, "--port", "0"])
        page.goto(dash.url)
        page.locator("#live-state", has_text="live").wait_for(timeout=10_000)
        page.evaluate("window.__sameDocument = true")
        banner = page.locator("#storage-banner")
        assert banner.is_hidden()
        server.stop(crash=True)
        banner.wait_for(state="visible", timeout=20_000)
        text = banner.inner_text()
        assert f"redis://:***@127.0.0.1:{server.port}/0" in text and PASSWORD not in text
        server.start()
        banner.wait_for(state="hidden", timeout=30_000)
        assert page.evaluate("window.__sameDocument === true")
        page.locator('#queues tr[data-queue="kept"]').wait_for(timeout=10_000)


@pytest.fixture
def notebook_page(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """``host(src)``: the URL of a page at http://localhost:PORT (another site than
    127.0.0.1, as Jupyter at localhost:8888 is) that frames ``src``, as ``%omniq dashboard
    --inline`` does."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def host(src: str) -> str:
        from omniq.integrations.dashboard.notebook import DashboardLink

        class Shown:  # what DashboardLink needs of a Dashboard
            url_with_token = src

        html = DashboardLink(Shown(), inline=True)._repr_html_()  # type: ignore[arg-type]
        (tmp_path / "nb.html").write_text(f"<!doctype html><html><body>{html}</body></html>")
        return f"http://localhost:{server.server_address[1]}/nb.html"

    try:
        yield host
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.mark.parametrize("token", [None, "inl1ne-t0ken"])
def test_inline_in_a_notebook_from_another_site_retry_and_the_live_stream_work(
        db_url: str, oq: OmniQ, start: Callable[..., Running], page: Any, tmp_path: Path,
        notebook_page: Callable[[str], str], token: str | None) -> None:
    """The IFrame's browser drops our SameSite=Lax cookies (a third-party frame): the CSRF form
    token needs no cookie, and with a token the style sheet, the script and the event stream
    carry it in their URLs."""
    dash = start(["--tasks", db_url, "--port", "0", *(["--token", token] if token else [])])
    tid = oq.enqueue(boom_once_then, args=(str(tmp_path / "marker"),))
    first = oq.get_result(tid, wait=True, timeout=30)
    assert first is not None and first.status is TaskStatus.FAILED
    src = f"{dash.base}/tasks/{tid}" + (f"?token={token}" if token else "")
    page.goto(notebook_page(src))
    frame = page.frame_locator("iframe")
    frame.locator("#live-state", has_text="live").wait_for(timeout=10_000)  # the script and /events ran
    display = frame.locator("header").evaluate("e => getComputedStyle(e).display")
    assert display == "flex"  # the style sheet applied
    frame.get_by_role("button", name="Retry").click()
    frame.get_by_role("status").filter(has_text="Queued again").wait_for(timeout=10_000)
    frame.locator("#task-status", has_text="succeeded").wait_for(timeout=20_000)
    again = oq.get_result(tid, wait=True, timeout=30)
    assert again is not None and again.status is TaskStatus.SUCCEEDED
