"""``omniq dashboard`` over plain HTTP (httpx against the running command): pages, 404s, bad
filters, CSRF on actions, the token, the Host check, the event stream, a storage that goes
away and comes back (or is down at start), unreadable records, retries the storage refuses,
sweeps run again and paged, searches by name bounded. (The jupyter-server-proxy entry point and
the CSRF / token details: test_dashboard_security.py.)"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from omniq import OmniQ, TaskStatus
from omniq.integrations.dashboard.options import choose_token, is_loopback
from tests.helpers import square

from .conftest import Running

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def client(dash: Running, **kw: Any) -> httpx.Client:
    return httpx.Client(base_url=dash.base, timeout=15, **kw)


def failed_task(oq: OmniQ) -> str:
    tid = oq.enqueue(int, args=("not a number",))
    r = oq.get_result(tid, wait=True, timeout=30)
    assert r is not None and r.status is TaskStatus.FAILED
    return tid


def test_front_page_shows_queues_with_counts_by_status(oq: OmniQ, dashboard: Running) -> None:
    tid = oq.enqueue(abs, args=(-3,), queue="emails")
    oq.get_result(tid, wait=True, timeout=30)
    with client(dashboard) as c:
        r = c.get("/")
    assert r.status_code == 200
    row = re.search(r'<tr data-queue="emails">(.*?)</tr>', r.text, re.S)
    assert row is not None, r.text
    assert 'status=succeeded">1</a>' in row.group(1)
    assert "Workers" in r.text and "Schedules" in r.text and "Recent failures" in r.text


def test_unknown_task_id_is_a_404_page_not_a_traceback(dashboard: Running) -> None:
    with client(dashboard) as c:
        r = c.get("/tasks/0000nosuchtask")
        other = c.get("/no/such/page")
    assert r.status_code == 404
    assert "No task 0000nosuchtask" in r.text and "Traceback" not in r.text
    assert r.headers["content-type"].startswith("text/html")
    assert other.status_code == 404 and "Nothing at /no/such/page" in other.text


def test_a_failed_task_page_shows_function_args_error_and_timeline(oq: OmniQ, dashboard: Running) -> None:
    tid = failed_task(oq)
    with client(dashboard) as c:
        r = c.get(f"/tasks/{tid}")
    assert r.status_code == 200
    text = r.text
    assert "ValueError" in text
    assert "invalid literal for int() with base 10: &#39;not a number&#39;" in text
    assert "(&#39;not a number&#39;,)" in text  # the args repr, escaped
    assert '<pre class="traceback">' in text
    for event in ("enqueued", "started", "failed"):
        assert f"<strong>{event}</strong>" in text
    retry = re.search(r"<button[^>]*>Retry</button>", text)
    cancel = re.search(r"<button[^>]*>Cancel</button>", text)
    assert retry is not None and "disabled" not in retry.group(0)
    assert cancel is not None and "disabled" in cancel.group(0)  # a final task cannot be cancelled


def test_actions_need_the_csrf_token_and_a_same_origin(oq: OmniQ, dashboard: Running) -> None:
    tid = failed_task(oq)
    with client(dashboard) as c:
        page = c.get(f"/tasks/{tid}")
        token = CSRF.search(page.text)
        assert token is not None
        # no token, a wrong token, the right token from a foreign page: refused, nothing done
        assert c.post(f"/tasks/{tid}/retry").status_code == 403
        assert c.post(f"/tasks/{tid}/retry", data={"csrf": "x" * 32}).status_code == 403
        foreign = c.post(f"/tasks/{tid}/retry", data={"csrf": token.group(1)},
                         headers={"origin": "http://evil.example"})
        assert foreign.status_code == 403 and "CSRF" in foreign.text
        assert oq.status(tid) is TaskStatus.FAILED
        # a GET does not act either
        assert c.get(f"/tasks/{tid}/retry").status_code in (404, 405)
        ok = c.post(f"/tasks/{tid}/retry", data={"csrf": token.group(1)},
                    headers={"origin": dashboard.base})
    assert ok.status_code == 303 and ok.headers["location"].endswith(f"/tasks/{tid}?done=retried")
    final = oq.get_result(tid, wait=True, timeout=30)
    assert final is not None and final.attempts >= 2  # it ran again (and failed again)


def test_the_task_list_filters_and_pages_with_before(oq: OmniQ, dashboard: Running) -> None:
    ids = [oq.enqueue(abs, args=(-i,), queue="paged") for i in range(5)]
    for tid in ids:
        oq.get_result(tid, wait=True, timeout=30)
    with client(dashboard) as c:
        first = c.get("/tasks", params={"queue": "paged", "limit": 2})
        shown = re.findall(r'<tr data-id="([^"]+)">', first.text)
        assert shown == ids[::-1][:2]  # newest first
        older = re.search(r'href="(/tasks\?[^"]*before=[^"]+)" rel="next"', first.text)
        assert older is not None
        second = c.get(older.group(1).replace("&amp;", "&"))
        assert re.findall(r'<tr data-id="([^"]+)">', second.text) == ids[::-1][2:4]
        none = c.get("/tasks", params={"queue": "paged", "status": "failed"})
        assert "No task matches." in none.text


@pytest.mark.parametrize(("query", "named"), [
    ({"status": "bogus"}, "status=&#39;bogus&#39; is not valid: expected one of pending, queued"),
    ({"limit": "0"}, "limit=&#39;0&#39; is not valid: expected a whole number from 1 to 1000"),
])
def test_a_bad_filter_is_a_400_naming_it(dashboard: Running, query: dict[str, str], named: str) -> None:
    with client(dashboard) as c:
        r = c.get("/tasks", params=query)
    assert r.status_code == 400 and named in r.text


def test_the_sweep_page_is_a_table_of_points(oq: OmniQ, dashboard: Running) -> None:
    sw = oq.sweep(square, grid={"x": [1, 2, 3]}, name="squares")
    sw.wait(timeout=60)
    with client(dashboard) as c:
        r = c.get("/sweeps/squares")
        missing = c.get("/sweeps/nosuchsweep")
    assert r.status_code == 200
    rows = re.findall(r"<tr><td><code>(\d)</code></td>.*?<code class=\"repr\">(\d+)</code>", r.text, re.S)
    assert rows == [("1", "1"), ("2", "4"), ("3", "9")]
    assert missing.status_code == 404 and "nosuchsweep" in missing.text


def test_schedules_pause_and_resume_from_the_front_page(oq: OmniQ, dashboard: Running) -> None:
    sid = oq.schedule(abs, interval=3600, args=(-1,), name="hourly-abs")
    with client(dashboard) as c:
        page = c.get("/")
        assert "hourly-abs" in page.text
        token = CSRF.search(page.text)
        assert token is not None
        r = c.post(f"/schedules/{sid}/pause", data={"csrf": token.group(1)})
        assert r.status_code == 303
        assert [s["paused"] for s in oq.schedules() if s["id"] == sid] == [True]
        assert ">Resume</button>" in c.get("/").text
        c.post(f"/schedules/{sid}/resume", data={"csrf": token.group(1)})
    assert [s["paused"] for s in oq.schedules() if s["id"] == sid] == [False]


def test_the_event_stream_names_a_task_enqueued_after_it_opened(oq: OmniQ, dashboard: Running) -> None:
    with client(dashboard) as c, c.stream("GET", "/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        assert next(lines).startswith("retry:")
        tid = oq.enqueue(abs, args=(-7,), queue="live")
        deadline = time.monotonic() + 15
        seen = ""
        for line in lines:
            seen += line + "\n"
            if line.startswith("data:") and tid in line:
                break
            assert time.monotonic() < deadline, seen
    assert "event: tasks" in seen


def test_a_token_is_required_on_every_request(db_url: str, oq: OmniQ, start: Callable[..., Running]) -> None:
    dash = start(["--tasks", db_url, "--port", "0", "--token", "T0ken-abc"])
    assert dash.url.endswith("/?token=T0ken-abc")
    with client(dash) as c:
        for path in ("/", "/tasks", "/static/dashboard.js", "/events", "/tasks/whatever"):
            assert c.get(path).status_code == 401, path
        assert c.get("/?token=wrong").status_code == 401
        assert c.post("/tasks/x/retry").status_code == 401
        assert c.get("/", headers={"authorization": "token T0ken-abc"}).status_code == 200
        first = c.get("/?token=T0ken-abc")
        assert first.status_code == 200 and "omniq_dashboard_token_" in first.headers["set-cookie"]
        assert c.get("/tasks").status_code == 200  # the cookie from then on


def test_beyond_loopback_a_token_is_generated_and_printed(db_url: str, oq: OmniQ,
                                                          start: Callable[..., Running]) -> None:
    dash = start(["--tasks", db_url, "--host", "0.0.0.0", "--port", "0"])
    assert "?token=" in dash.url
    token = dash.url.split("?token=", 1)[1]
    assert len(token) >= 24
    port = dash.base.rsplit(":", 1)[1]
    with httpx.Client(timeout=15) as c:
        assert c.get(f"http://127.0.0.1:{port}/").status_code == 401
        assert c.get(f"http://127.0.0.1:{port}/?token={token}").status_code == 200


def test_an_empty_token_beyond_loopback_is_refused(db_url: str, oq: OmniQ) -> None:
    out = subprocess.run([sys.executable, "-m", "omniq.cli", "dashboard", "--tasks", db_url,
                          "--host", "0.0.0.0", "--token", ""], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "--token is empty" in out.stderr and "Traceback" not in out.stderr
    assert choose_token("127.0.0.1", "") is None and choose_token("localhost", None) is None
    assert is_loopback("::1") and not is_loopback("0.0.0.0") and not is_loopback("example.org")


def test_without_a_token_only_loopback_host_names_are_served(dashboard: Running) -> None:
    port = dashboard.base.rsplit(":", 1)[1]
    with client(dashboard) as c:
        rebound = c.get("/", headers={"host": f"evil.example:{port}"})
        assert rebound.status_code == 403 and "loopback" in rebound.text
        assert c.get("/", headers={"host": f"localhost:{port}"}).status_code == 200


def test_a_missing_sqlite_file_or_a_taken_port_is_named(tmp_path: Any, db_url: str, oq: OmniQ) -> None:
    gone = f"sqlite:///{tmp_path / 'typo.db'}"
    out = subprocess.run([sys.executable, "-m", "omniq.cli", "dashboard", "--tasks", gone, "--port", "0"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "typo.db" in out.stderr and "does not exist" in out.stderr
    assert not (tmp_path / "typo.db").exists()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "omniq.cli", "dashboard", "--tasks", db_url,
                              "--port", str(port)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and f"127.0.0.1:{port}" in out.stderr and "--port" in out.stderr


def test_import_omniq_does_not_import_the_dashboard() -> None:
    code = ("import sys, omniq, omniq.cli; omniq.cli.build_parser(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('starlette', 'uvicorn', 'jinja2') "
            "or m.startswith('omniq.integrations.dashboard.app')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_a_storage_that_goes_away_shows_a_masked_banner_and_recovers(start: Callable[..., Running]) -> None:
    from tests.servers import PASSWORD, private_redis

    with private_redis() as server:
        url = server.url()
        with OmniQ(tasks=url, concurrency=0) as q:
            q.enqueue(abs, args=(-1,), queue="kept")
        dash = start(["--tasks", url, "--port", "0"])
        with client(dash) as c:
            assert c.get("/").status_code == 200
            server.stop(crash=True)
            deadline = time.monotonic() + 20  # the dashboard probes its storage every 2 s
            while (r := c.get("/")).status_code != 503:
                assert time.monotonic() < deadline, r.text
                time.sleep(0.5)
            banner = re.search(r'<div id="storage-banner"[^>]*>(.*?)</div>', r.text, re.S)
            assert banner is not None and "hidden" not in banner.group(0)
            assert f"redis://:***@127.0.0.1:{server.port}/0" in banner.group(1)
            assert PASSWORD not in r.text
            server.start()
            deadline = time.monotonic() + 30
            while (r := c.get("/")).status_code != 200:
                assert time.monotonic() < deadline, r.text
                time.sleep(0.5)
            assert 'data-queue="kept"' in r.text
            assert re.search(r'<div id="storage-banner"[^>]*hidden', r.text)


@pytest.mark.parametrize(("options", "named"), [
    ({"port": -1}, "--port -1 is not valid: expected 0-65535"),
    ({"port": 70000}, "--port 70000 is not valid"),
    ({"host": "0.0.0.0", "token": " "}, "--token is empty"),
])
def test_the_notebook_entry_names_a_bad_option(oq: OmniQ, options: dict[str, Any], named: str) -> None:
    from omniq.errors import ConfigError
    from omniq.integrations.dashboard.notebook import show

    with pytest.raises(ConfigError, match=named):
        show(oq, **options)


def test_the_listening_socket_is_tcp_so_kept_alive_responses_are_not_delayed(oq: OmniQ) -> None:
    """asyncio disables Nagle only on accepted sockets whose proto says TCP: a socket made with
    proto 0 made every response on a kept-alive connection wait ~40 ms for a delayed ACK."""
    from omniq.integrations.dashboard import Dashboard

    dash = Dashboard(oq.core, port=0)
    dash.bind()
    assert dash.sock is not None
    try:
        assert dash.sock.proto == socket.IPPROTO_TCP
        assert dash.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert dash.port > 0 and dash.url == f"http://127.0.0.1:{dash.port}/"
    finally:
        dash.sock.close()


def test_cancel_and_a_retry_that_does_not_apply_say_what_happened(oq: OmniQ, dashboard: Running) -> None:
    waiting = oq.enqueue(abs, args=(-1,), delay=3600)  # pending for an hour
    done = oq.enqueue(abs, args=(-2,))
    oq.get_result(done, wait=True, timeout=30)
    with client(dashboard) as c:
        page = c.get(f"/tasks/{waiting}")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        token = CSRF.search(page.text)
        assert token is not None
        form = {"csrf": token.group(1)}
        r = c.post(f"/tasks/{waiting}/cancel", data=form, follow_redirects=True)
        assert r.status_code == 200 and "Cancelled." in r.text
        assert oq.status(waiting) is TaskStatus.CANCELLED
        again = c.post(f"/tasks/{done}/retry", data=form, follow_redirects=True)
        assert "Not retried: only a failed, cancelled or expired task can be retried." in again.text
        assert c.post("/tasks/0000nosuchtask/retry", data=form).status_code == 404
        assert c.post(f"/tasks/{done}/explode", data=form).status_code == 404
    assert oq.status(done) is TaskStatus.SUCCEEDED


def leave_mark(path: str) -> str:
    """What unpickling a ``Trap`` calls: a file that says someone loaded it."""
    with open(path, "w") as f:
        f.write("unpickled")
    return path


class Trap:
    """An argument whose unpickling runs code (``leave_mark``): the dashboard must show it
    without loading it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (leave_mark, (self.path,))


def test_arguments_are_shown_without_unpickling_them(oq: OmniQ, dashboard: Running, tmp_path: Any) -> None:
    mark = tmp_path / "mark"
    tid = oq.enqueue(repr, args=(Trap(str(mark)),), delay=3600)  # pending: no worker loads it
    assert not mark.exists()
    with client(dashboard) as c:
        r = c.get(f"/tasks/{tid}")
        listed = c.get("/tasks")
    assert r.status_code == 200 and listed.status_code == 200
    assert "&lt;object tests.integrations.test_dashboard_http.leave_mark&gt;" in r.text
    assert not mark.exists()
    oq.cancel(tid)


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_dashboard_cleanly(db_url: str, oq: OmniQ, start: Callable[..., Running],
                                              sig: str) -> None:
    import signal

    dash = start(["--tasks", db_url, "--port", "0"])
    with client(dash) as c, c.stream("GET", "/events") as stream:  # an open page does not hold it
        next(stream.iter_lines())
        dash.proc.send_signal(getattr(signal, sig))
        assert dash.proc.wait(20) == 0
    dash.reader.join(10)
    assert "Traceback" not in "".join(dash.lines)


@pytest.mark.parametrize(("args", "named"), [
    (["--root-path", "dash"], "--root-path 'dash' is not valid"),
    (["--port", "99999"], "'99999' is not a port: expected 0-65535"),
])
def test_bad_options_exit_2_naming_them(db_url: str, oq: OmniQ, args: list[str], named: str) -> None:
    out = subprocess.run([sys.executable, "-m", "omniq.cli", "dashboard", "--tasks", db_url, *args],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and named in out.stderr and "Traceback" not in out.stderr


def test_a_retry_the_storage_refuses_is_a_409_naming_why(oq: OmniQ, dashboard: Running, tmp_path: Any) -> None:
    from tests.helpers import boom_once_then

    marker = str(tmp_path / "m")
    first = oq.enqueue(boom_once_then, args=(marker,), key="point-1")
    oq.get_result(first, wait=True, timeout=30)
    second = oq.enqueue(boom_once_then, args=(marker,), key="point-1")  # a new task takes the key
    assert oq.get_result(second, wait=True, timeout=30).status is TaskStatus.SUCCEEDED
    with client(dashboard) as c:
        token = CSRF.search(c.get(f"/tasks/{first}").text)
        assert token is not None
        r = c.post(f"/tasks/{first}/retry", data={"csrf": token.group(1)})
    assert r.status_code == 409 and "Traceback" not in r.text
    assert f"task {second} with the same key" in r.text
    assert oq.status(first) is TaskStatus.FAILED


def test_pausing_an_unknown_or_a_paused_schedule_says_so(oq: OmniQ, dashboard: Running) -> None:
    sid = oq.schedule(abs, interval=3600, args=(-1,), name="hourly-abs")
    oq.pause_schedule(sid)
    with client(dashboard) as c:
        token = CSRF.search(c.get(f"/tasks/{failed_task(oq)}").text)
        assert token is not None
        form = {"csrf": token.group(1)}
        nope = c.post("/schedules/nope/pause", data=form)
        assert nope.status_code == 404 and "No schedule nope" in nope.text
        again = c.post(f"/schedules/{sid}/pause", data=form, follow_redirects=True)
        assert again.status_code == 200 and "The schedule was already paused." in again.text


def test_one_unreadable_result_record_is_no_storage_down(oq: OmniQ, dashboard: Running, db_url: str) -> None:
    import sqlite3

    bad = failed_task(oq)
    good = oq.enqueue(abs, args=(-2,))
    oq.get_result(good, wait=True, timeout=30)
    with sqlite3.connect(db_url.removeprefix("sqlite:///")) as con:
        con.execute("UPDATE omniq_results SET result=X'c1' WHERE task_id=?", (bad,))
    with client(dashboard) as c:
        front = c.get("/")
        listed = c.get("/tasks")
        one = c.get(f"/tasks/{bad}")
    for r in (front, listed, one):
        assert r.status_code == 200, r.text
        assert re.search(r'<div id="storage-banner"[^>]*hidden', r.text)
    assert f'data-id="{bad}"' in listed.text and f'data-id="{good}"' in listed.text
    assert "unreadable result record" in one.text


def test_an_event_time_no_clock_can_show_does_not_break_the_task_page(oq: OmniQ, dashboard: Running,
                                                                      db_url: str) -> None:
    import sqlite3

    tid = failed_task(oq)
    with sqlite3.connect(db_url.removeprefix("sqlite:///")) as con:
        con.execute("INSERT INTO omniq_events (task_id, type, timestamp) VALUES (?, 'retried', 1e18)", (tid,))
    with client(dashboard) as c:
        r = c.get(f"/tasks/{tid}")
    assert r.status_code == 200 and "? (1e+18)" in r.text


def test_a_sweep_point_run_again_counts_once_on_the_front_page(tmp_path: Any, start: Callable[..., Running]) -> None:
    from tests.helpers import boom_once_then

    url = f"sqlite:///{tmp_path / 'sw.db'}"
    grid = {"marker_path": [str(tmp_path / "a"), str(tmp_path / "b")]}
    with OmniQ(tasks=url, worker="thread", concurrency=1) as q:
        q.sweep(boom_once_then, grid=grid, name="twice").wait(timeout=60)
        assert len(q.tasks(status="failed")) == 2
    with OmniQ(tasks=url, concurrency=0) as q:  # no worker: the points run again stay queued
        q.sweep(boom_once_then, grid=grid, name="twice")
        assert len(q.tasks(status="queued")) == 2
        dash = start(["--tasks", url, "--port", "0"])
        with client(dash) as c:
            page = c.get("/").text
    row = re.search(r'<a href="/sweeps/twice">twice</a></td>\s*<td><progress max="(\d+)" value="(\d+)"', page)
    assert row is not None, page
    assert row.groups() == ("2", "0")  # two points, both waiting again (not 4, two of them failed)


def test_a_big_sweep_page_is_paged_and_its_parameters_cut(tmp_path: Any, start: Callable[..., Running]) -> None:
    url = f"sqlite:///{tmp_path / 'big.db'}"
    with OmniQ(tasks=url, concurrency=0) as q:  # no worker: every point queued
        q.sweep(abs, grid={"x": list(range(-250, 0)), "blob": ["y" * 20_000]}, name="big")
        dash = start(["--tasks", url, "--port", "0"])
        with client(dash) as c:
            first = c.get("/sweeps/big")
            assert first.status_code == 200
            assert len(re.findall(r"<tr><td><code>", first.text)) == 200
            assert "y" * 200 not in first.text and len(first.text) < 300_000
            assert "Points 1-200 of 250." in first.text
            nxt = re.search(r'href="(/sweeps/big\?offset=200)" rel="next"', first.text)
            assert nxt is not None
            second = c.get(nxt.group(1))
    assert len(re.findall(r"<tr><td><code>", second.text)) == 50


def test_recent_failures_are_ordered_by_when_they_failed(oq: OmniQ, dashboard: Running) -> None:
    late = oq.enqueue(int, args=("late",), delay=1.5)  # created first, fails last
    early = oq.enqueue(int, args=("early",))
    for tid in (early, late):
        r = oq.get_result(tid, wait=True, timeout=30)
        assert r is not None and r.status is TaskStatus.FAILED
    with client(dashboard) as c:
        page = c.get("/").text
    section = page[page.index('id="h-failures"'):]
    shown = re.findall(r'href="/tasks/([^"]+)"><code>', section)
    assert shown[:2] == [late, early]


def test_a_task_id_is_url_encoded_in_links(oq: OmniQ, dashboard: Running, db_url: str) -> None:
    import anyio

    from omniq.core import AsyncOmniQ
    from omniq.models import Task
    from omniq.serialization import dumps_call

    odd = "x?y#z"  # a record another program wrote

    async def plant() -> None:
        q = AsyncOmniQ(tasks=db_url, concurrency=0)
        await q.open()
        try:
            await q.session.queue.enqueue([Task(id=odd, payload=dumps_call(abs, (-1,), {}), name="abs",
                                                queue="odd", status=TaskStatus.PENDING,
                                                created_at=time.time(), eta=time.time() + 3600)])
        finally:
            await q.close()

    anyio.run(plant)
    with client(dashboard) as c:
        listed = c.get("/tasks", params={"queue": "odd"})
        assert 'href="/tasks/x%3Fy%23z"' in listed.text, listed.text
        assert c.get("/tasks/x%3Fy%23z").status_code == 200


@pytest.mark.slow
def test_a_storage_down_at_start_shows_the_banner_then_recovers(start: Callable[..., Running]) -> None:
    from tests.servers import private_redis

    with private_redis() as server:
        url = server.url()
        with OmniQ(tasks=url, concurrency=0) as q:
            q.enqueue(abs, args=(-1,), queue="kept")
        server.stop(crash=True)
        dash = start(["--tasks", url, "--port", "0"])  # serves instead of exiting
        with client(dash) as c:
            r = c.get("/")
            assert r.status_code == 503 and f"127.0.0.1:{server.port}" in r.text
            assert re.search(r'<div id="storage-banner"(?![^>]*hidden)', r.text)
            server.start()
            deadline = time.monotonic() + 30
            while (r := c.get("/")).status_code != 200:
                assert time.monotonic() < deadline, r.text
                time.sleep(0.5)
            assert 'data-queue="kept"' in r.text
    assert "Traceback" not in "".join(dash.lines)


def test_a_search_by_a_name_nothing_matches_reads_a_bounded_number_of_tasks(
        tmp_path: Any, start: Callable[..., Running]) -> None:
    from omniq.integrations.dashboard.views import NAME_SCAN

    url = f"sqlite:///{tmp_path / 'many.db'}"
    with OmniQ(tasks=url, concurrency=0) as q:
        q.map(abs, range(NAME_SCAN + 100))
        dash = start(["--tasks", url, "--port", "0"])
        with client(dash) as c:
            first = c.get("/tasks", params={"name": "nomatch"})
            assert first.status_code == 200
            assert f"No more matches in the last {NAME_SCAN:,} tasks looked at." in first.text
            further = re.search(r'href="(/tasks\?[^"]*before=[^"]+)" rel="next">Look further', first.text)
            assert further is not None, first.text
            rest = c.get(further.group(1).replace("&amp;", "&"))
            assert "No task matches." in rest.text and 'rel="next"' not in rest.text
            found = c.get("/tasks", params={"name": "abs", "limit": 25})
            assert len(re.findall(r'<tr data-id="', found.text)) == 25 and "Older</a>" in found.text
