"""What guards ``omniq dashboard`` (real processes over a SQLite file, plain HTTP): the Host
check behind a ``--root-path`` on a port, the Unix socket jupyter-server-proxy serves it on, the
CSRF form token (a secret of the process, not a cookie) with the Origin / Sec-Fetch-Site checks,
and the token carried in a page's URLs when no cookie came with it."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from omniq import OmniQ, TaskStatus

from .conftest import Running

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def failed_task(oq: OmniQ) -> str:
    tid = oq.enqueue(int, args=("not a number",))
    r = oq.get_result(tid, wait=True, timeout=30)
    assert r is not None and r.status is TaskStatus.FAILED
    return tid


def form_token(c: httpx.Client, path: str, **kw: Any) -> str:
    page = c.get(path, **kw)
    m = CSRF.search(page.text)
    assert m is not None, page.text
    return m.group(1)


def test_with_a_root_path_on_a_port_a_rebound_host_is_refused(db_url: str, oq: OmniQ,
                                                              start: Callable[..., Running]) -> None:
    """DNS rebinding: a page at rebind.evil.example whose name now points at 127.0.0.1 must not
    read a loopback dashboard, --root-path or not (only a Unix socket is out of its reach)."""
    dash = start(["--tasks", db_url, "--port", "0", "--root-path", "/user/ada/omniq-dashboard"])
    port = urlsplit(dash.url).port
    assert "/user/ada/omniq-dashboard" in "".join(dash.lines)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=15) as c:
        rebound = c.get("/", headers={"host": f"rebind.evil.example:{port}"})
        assert rebound.status_code == 403
        proxied = c.get("/tasks")  # as a proxy that strips the prefix asks
        assert proxied.status_code == 200 and 'href="/user/ada/omniq-dashboard/tasks"' in proxied.text
        # the URL it printed answers when opened directly, and so do the links of its page
        assert dash.url == f"http://127.0.0.1:{port}/user/ada/omniq-dashboard/"
        direct = c.get(dash.url)
        assert direct.status_code == 200
        for link in re.findall(r'(?:href|src)="(/user/ada/omniq-dashboard/[^"]*)"', direct.text):
            assert c.get(link.replace("&amp;", "&")).status_code == 200, link


def test_the_jupyter_server_proxy_entry_point_serves_a_unix_socket_under_its_prefix(
        db_url: str, oq: OmniQ, tmp_path: Path) -> None:
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="jupyter_serverproxy_servers") if e.name == "omniq-dashboard"]
    spec = ep.load()()
    assert spec["unix_socket"] is True and "{port}" not in " ".join(spec["command"])
    path = str(tmp_path / "dash.sock")
    command = [a.replace("{unix_socket}", path).replace("{base_url}", "/user/ada/") for a in spec["command"]]
    proc = subprocess.Popen([*command, "--tasks", db_url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={k: v for k, v in os.environ.items() if not k.startswith("OMNIQ_")})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert path in line and "/user/ada/omniq-dashboard" in line, line
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        transport = httpx.HTTPTransport(uds=path)
        with httpx.Client(transport=transport, base_url="http://lab.example.org", timeout=15) as c:
            r = c.get("/tasks")  # the proxy strips its prefix and keeps the public Host
    finally:
        proc.terminate()
        proc.wait(20)
        assert proc.stdout is not None
        proc.stdout.close()
    assert r.status_code == 200
    assert 'href="/user/ada/omniq-dashboard/tasks"' in r.text
    assert 'src="/user/ada/omniq-dashboard/static/dashboard.js"' in r.text
    assert not os.path.exists(path)  # removed when it stopped


def test_a_post_from_a_null_or_cross_site_origin_is_refused(oq: OmniQ, dashboard: Running) -> None:
    tid = failed_task(oq)
    with httpx.Client(base_url=dashboard.base, timeout=15) as c:
        form = {"csrf": form_token(c, f"/tasks/{tid}")}
        for headers in ({"origin": "null"},
                        {"sec-fetch-site": "cross-site"},
                        {"sec-fetch-site": "same-site", "origin": "http://localhost:8888"},
                        {"sec-fetch-site": "cross-site", "referer": f"{dashboard.base}/"}):
            r = c.post(f"/tasks/{tid}/retry", data=form, headers=headers)
            assert r.status_code == 403 and "CSRF" in r.text, headers
        assert oq.status(tid) is TaskStatus.FAILED
        ok = c.post(f"/tasks/{tid}/retry", data=form,
                    headers={"sec-fetch-site": "same-origin", "origin": dashboard.base})
    assert ok.status_code == 303


def test_the_form_token_is_the_process_own_not_any_cookie(db_url: str, oq: OmniQ, dashboard: Running,
                                                        start: Callable[..., Running]) -> None:
    """A value the attacker picks (planted as a cookie, cookies being shared by every port of a
    host) or another dashboard's form token does not pass."""
    tid = failed_task(oq)
    other = start(["--tasks", db_url, "--port", "0"])
    port = dashboard.base.rsplit(":", 1)[1]
    planted = "a" * 32
    with httpx.Client(base_url=dashboard.base, timeout=15) as c:
        c.cookies.set(f"omniq_dashboard_csrf_{port}", planted)
        assert c.post(f"/tasks/{tid}/retry", data={"csrf": planted}).status_code == 403
        with httpx.Client(base_url=other.base, timeout=15) as o:
            foreign = form_token(o, f"/tasks/{tid}")
        assert c.post(f"/tasks/{tid}/retry", data={"csrf": foreign}).status_code == 403
        assert oq.status(tid) is TaskStatus.FAILED
        own = form_token(c, f"/tasks/{tid}")
        assert own != foreign
        page = c.get(f"/tasks/{tid}")
        assert "omniq_dashboard_csrf" not in page.headers.get("set-cookie", "")
        assert c.post(f"/tasks/{tid}/retry", data={"csrf": own}).status_code == 303


def test_without_a_cookie_a_page_carries_the_token_in_its_urls(db_url: str, oq: OmniQ,
                                                               start: Callable[..., Running]) -> None:
    """As in a notebook's IFrame from another site, where the browser drops our cookie: the
    style sheet, the script, the links, the forms and the redirect after an action all carry
    ``token=``, so each request they make is let in."""
    tid = failed_task(oq)
    dash = start(["--tasks", db_url, "--port", "0", "--token", "T0k+en/x"])
    q = "token=T0k%2Ben%2Fx"
    with httpx.Client(base_url=dash.base, timeout=15) as c:
        page = c.get(f"/tasks/{tid}", params={"token": "T0k+en/x"})
        assert page.status_code == 200
        text = page.text
        assert f'href="/static/dashboard.css?{q}"' in text and f'src="/static/dashboard.js?{q}"' in text
        assert f'action="/tasks/{tid}/retry?{q}"' in text and f'href="/tasks?{q}"' in text
        assert 'data-token="T0k+en/x"' in text
        c.cookies.clear()  # what an IFrame's browser does (it drops the cookie each time)
        assert c.get(f"/static/dashboard.css?{q}").status_code == 200
        c.cookies.clear()
        assert c.get("/static/dashboard.css").status_code == 401
        form = {"csrf": CSRF.search(text).group(1)}  # type: ignore[union-attr]
        r = c.post(f"/tasks/{tid}/retry?{q}", data=form)
        assert r.status_code == 303 and r.headers["location"].endswith(f"?done=retried&{q}")
        # with the cookie, URLs stay clean
        c.get(f"/?{q}")
        assert "token=" not in c.get(f"/tasks/{tid}").text


@pytest.mark.parametrize("token", ["a;b=c", "caf\u00e9", 'quo"te'])
def test_a_token_that_cannot_travel_in_a_cookie_is_refused_at_start(db_url: str, token: str) -> None:
    out = subprocess.run([sys.executable, "-m", "omniq.cli", "dashboard", "--tasks", db_url, "--port", "0",
                          "--token", token], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--token must not contain" in out.stderr and "Traceback" not in out.stderr


def test_a_host_beyond_loopback_on_127_0_0_2_prints_a_url_that_answers(db_url: str, oq: OmniQ,
                                                                      start: Callable[..., Running]) -> None:
    dash = start(["--tasks", db_url, "--host", "127.0.0.2", "--port", "0"])
    deadline = time.monotonic() + 10
    with httpx.Client(timeout=15) as c:
        while True:
            r = c.get(dash.url)
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert r.status_code == 200, r.text


def test_a_tab_opening_the_token_url_is_sent_on_without_it(db_url: str, oq: OmniQ,
                                                           start: Callable[..., Running]) -> None:
    dash = start(["--tasks", db_url, "--port", "0", "--token", "T0ken-abc"])
    with httpx.Client(base_url=dash.base, timeout=15) as c:
        r = c.get("/tasks?status=failed&token=T0ken-abc", headers={"sec-fetch-dest": "document"})
        assert r.status_code == 302 and r.headers["location"] == "./tasks?status=failed"
        assert "omniq_dashboard_token_" in r.headers["set-cookie"]
        assert c.get("/tasks?status=failed").status_code == 200  # the cookie
        c.cookies.clear()
        home = c.get("/?token=T0ken-abc", headers={"sec-fetch-dest": "document"})
        assert home.status_code == 302 and home.headers["location"] == "./"
        framed = c.get("/?token=T0ken-abc", headers={"sec-fetch-dest": "iframe"})
        assert framed.status_code == 200  # an IFrame may keep no cookie: no redirect
