"""The dashboard's ASGI app: Starlette routes rendering Jinja2 templates (server-side HTML; a
small script of our own, ``static/dashboard.js``, listens to ``/events`` and swaps the page's
live region). Pages: ``/``, ``/tasks``, ``/tasks/<id>``, ``/sweeps/<name>``; actions are POSTs
carrying the CSRF token. Payloads are never unpickled: arguments and values are the safe reprs
of ``omniq.serialization.peek``."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, urlencode

import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ...errors import ConfigError, TaskNotFound
from ...models import FINAL_STATUSES, TaskStatus
from . import views
from .live import Hub
from .security import CSRF_FIELD, LOOPBACK_HOSTS, Guard, origin_ok, same
from .views import StorageDown, Unreadable, bounded

if TYPE_CHECKING:
    from ...client.orchestrator import AsyncOmniQ

HERE = Path(__file__).parent
RETRYABLE = frozenset({TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.EXPIRED})
NOTICES = {
    "retried": "Queued again: it keeps its id, its attempts go on.",
    "not-retried": "Not retried: only a failed, cancelled or expired task can be retried.",
    "cancelled": "Cancelled.",
    "not-cancelled": "Not cancelled: it had already finished.",
    "paused": "Schedule paused.",
    "resumed": "Schedule resumed.",
    "already-paused": "The schedule was already paused.",
    "already-resumed": "The schedule was not paused.",
}

#: no inline script or style runs (a task name cannot become code), no referrer leaves the site
#: (same-origin, not no-referrer: under no-referrer a browser sends ``Origin: null`` with our own
#: forms, which the CSRF check refuses)
PAGE_HEADERS = {
    "cache-control": "no-store",
    "content-security-policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'",
    "referrer-policy": "same-origin",
    "x-content-type-options": "nosniff",
}

_env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                          trim_blocks=True, lstrip_blocks=True)
_env.filters["pathpart"] = lambda v: quote(str(v), safe="")  # an id as one path segment
_env.globals.update(fmt_time=views.fmt_time, fmt_duration=views.fmt_duration, fmt_ago=views.fmt_ago,
                    STATUSES=views.STATUSES, PAGE_SIZES=views.PAGE_SIZES)


_OWN_URL = re.compile(r'(href|src|action)="([^"#]*)"')


def with_token(html: str, base: str, token: str) -> str:
    """The page with ``token=`` added to every URL of this dashboard it names (links, forms,
    style sheet, script): for a browser that keeps no cookie of ours (a notebook's IFrame from
    another site), every request the page makes then carries the token itself."""
    q = quote(token, safe="")

    def add(m: re.Match[str]) -> str:
        url = m.group(2)
        if not url.startswith(f"{base}/") or url.startswith("//"):
            return m.group(0)
        return f'{m.group(1)}="{url}{"&amp;" if "?" in url else "?"}token={q}"'

    return _OWN_URL.sub(add, html)


def create_app(oq: AsyncOmniQ, *, token: str | None = None, cookie_suffix: str = "8765",
               root_path: str = "", behind_proxy: bool = False) -> Any:
    """The dashboard over an open (or opening) ``oq``. ``token``: required on every request when
    set. ``behind_proxy``: accept any Host header (a proxy such as jupyter-server-proxy, which
    does its own authentication, forwards the public one). Returns an ASGI app."""
    front = views.Overview(oq)
    hub = Hub(oq, front)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        import anyio

        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            try:
                yield
            finally:
                front.close()
                tg.cancel_scope.cancel()

    def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        base = request.scope.get("root_path", "").rstrip("/")
        partial = request.headers.get("x-omniq-partial") == "1"
        down = context.pop("down", None) or list(hub.down.values())
        url_token = request.scope.get("state", {}).get("url_token")
        html = _env.get_template(template).render(
            base=base, partial=partial, csrf=request.scope.get("state", {}).get("csrf", ""),
            csrf_field=CSRF_FIELD, down=sorted(set(down)), storage=views.masked(oq.tasks_url),
            notice=NOTICES.get(request.query_params.get("done", "")), path=request.url.path,
            url_token=url_token, **context)
        if url_token:
            html = with_token(html, base, url_token)
        return HTMLResponse(html, status_code=status, headers=PAGE_HEADERS)

    def failed_page(request: Request, exc: StorageDown, title: str) -> HTMLResponse:
        return render(request, "error.html", 503, title=title, heading="Storage not answering",
                      message=f"{exc.url}: {exc.reason}", down=[exc.url], watch="all")

    async def home(request: Request) -> Response:
        data = await front.get()
        down = sorted({*data["down"], *hub.down.values()})
        return render(request, "index.html", 503 if down else 200, title="OmniQ dashboard",
                      watch="overview", now=time.time(), **{**data, "down": down})

    async def task_list(request: Request) -> Response:
        try:
            f = views.parse_filters(dict(request.query_params))
        except ConfigError as exc:
            return render(request, "error.html", 400, title="Bad filter", heading="Bad filter",
                          message=str(exc), watch="none")
        short = False
        try:
            if f["name"] is None:
                page = await bounded(oq, oq.tasks(status=f["status"], queue=f["queue"], limit=f["limit"],
                                                  before=f["before"]))
                next_before = page[-1].id if len(page) == f["limit"] else None
            else:
                page, next_before, short = await bounded(oq, views.tasks_named(oq, f))
        except StorageDown as exc:
            return failed_page(request, exc, "Tasks")
        except TaskNotFound:
            return render(request, "error.html", 404, title="Not found", heading="No such task",
                          message=f"before={f['before']!r}: no task with that id", watch="none")
        keep = {k: v for k, v in f.items() if v is not None and k != "before" and not (k == "limit" and v == 50)}
        older = f"?{urlencode({**keep, 'before': next_before})}" if next_before else None
        return render(request, "tasks.html", title="Tasks", tasks=page, filters=f, older=older,
                      scan_short=views.NAME_SCAN if short else None,
                      live_queue=f["queue"] or "",
                      newest=f"?{urlencode(keep)}" if f["before"] else None,
                      watch="none" if f["before"] else "all")

    async def task_detail(request: Request) -> Response:
        task_id = request.path_params["task_id"]
        try:
            t = await bounded(oq, oq.task(task_id))
        except TaskNotFound:
            return not_found(request, f"No task {task_id} in {views.masked(oq.tasks_url)}.")
        except StorageDown as exc:
            return failed_page(request, exc, f"Task {task_id}")
        first = t.events[0].timestamp if t.events else t.created
        timeline = [{"time": e.timestamp, "offset": e.timestamp - first, "type": e.type,
                     "worker": e.worker, "detail": e.detail} for e in t.events]
        return render(request, "task.html", title=f"Task {t.name or t.id}", t=t, timeline=timeline,
                      can_retry=t.status in RETRYABLE, can_cancel=t.status not in FINAL_STATUSES,
                      watch=f"task:{t.id}")

    async def sweep(request: Request) -> Response:
        name = request.path_params["name"]
        raw = request.query_params.get("offset") or "0"
        offset = int(raw) if raw.isdigit() and len(raw) < 10 else 0
        try:
            data = await views.sweep_page(oq, name, offset)
        except StorageDown as exc:
            return failed_page(request, exc, f"Sweep {name}")
        if data is None:
            return not_found(request, f"No sweep named {name!r} has points in this storage.")
        return render(request, "sweep.html", title=f"Sweep {name}", sweep=data, watch="all")

    async def checked_form(request: Request) -> dict[str, str]:
        """The POST's form fields, once its CSRF token and origin are checked (else 403)."""
        body = (await request.body()).decode("utf-8", "replace")
        form = {k: v[0] for k, v in parse_qs(body).items()}
        expected = request.scope.get("state", {}).get("csrf")
        h = request.headers
        if not same(form.get(CSRF_FIELD), expected) or not origin_ok(
                h.get("origin"), h.get("referer"), h.get("host"), h.get("sec-fetch-site")):
            raise HTTPException(403, "CSRF check failed: reload the page and try again.")
        return form

    def back(request: Request, path: str, done: str) -> RedirectResponse:
        base = request.scope.get("root_path", "").rstrip("/")
        url_token = request.scope.get("state", {}).get("url_token")
        extra = f"&token={quote(url_token, safe='')}" if url_token else ""
        return RedirectResponse(f"{base}{path}?done={done}{extra}", status_code=303)

    async def act(request: Request) -> Response:
        await checked_form(request)
        task_id, action = request.path_params["task_id"], request.path_params["action"]
        try:
            if action == "retry":
                ok = await bounded(oq, oq.retry(task_id))
                done = "retried" if ok else "not-retried"
            elif action == "cancel":
                ok = await bounded(oq, oq.cancel(task_id))
                done = "cancelled" if ok else "not-cancelled"
            else:
                return not_found(request, f"No action {action!r}: expected retry or cancel.")
        except TaskNotFound:
            return not_found(request, f"No task {task_id} in {views.masked(oq.tasks_url)}.")
        except StorageDown as exc:
            return failed_page(request, exc, f"Task {task_id}")
        except ConfigError as exc:  # (a later success holds its key, its blobs were swept)
            return conflict(request, f"Not {'retried' if action == 'retry' else 'cancelled'}", str(exc))
        return back(request, f"/tasks/{quote(task_id, safe='')}", done)

    async def schedule_action(request: Request) -> Response:
        await checked_form(request)
        sid, action = request.path_params["schedule_id"], request.path_params["action"]
        call = {"pause": oq.pause_schedule, "resume": oq.resume_schedule}.get(action)
        if call is None:
            return not_found(request, f"No action {action!r}: expected pause or resume.")
        try:
            changed = await bounded(oq, call(sid))
        except ConfigError as exc:  # an unknown id or name
            return not_found(request, f"No schedule {sid}: {exc}")
        except StorageDown as exc:
            return failed_page(request, exc, "Schedules")
        await front.refresh()  # the page it goes back to shows the change
        done = "paused" if action == "pause" else "resumed"
        return back(request, "/", done if changed else f"already-{done}")

    async def events(request: Request) -> Response:
        return StreamingResponse(hub.stream(request.query_params.get("watch", "")[:100]), media_type="text/event-stream",
                                 headers={"cache-control": "no-store", "x-accel-buffering": "no"})

    def conflict(request: Request, heading: str, message: str) -> HTMLResponse:
        return render(request, "error.html", 409, title="Conflict", heading=heading, message=message,
                      watch="none")

    def not_found(request: Request, message: str) -> HTMLResponse:
        return render(request, "error.html", 404, title="Not found", heading="Not found",
                      message=message, watch="none")

    async def http_error(request: Request, exc: Exception) -> Response:
        code = getattr(exc, "status_code", 500)
        if code == 404:
            return not_found(request, f"Nothing at {request.url.path}.")
        return render(request, "error.html", code, title=str(code), heading="Refused" if code == 403 else str(code),
                      message=str(getattr(exc, "detail", exc)), watch="none")

    async def unreadable(request: Request, exc: Exception) -> Response:
        return render(request, "error.html", 500, title="Unreadable record", heading="Unreadable record",
                      message=str(exc), watch="none")

    routes = [
        Route("/", home),
        Route("/tasks", task_list),
        Route("/tasks/{task_id}", task_detail),
        Route("/tasks/{task_id}/{action}", act, methods=["POST"]),
        Route("/schedules/{schedule_id}/{action}", schedule_action, methods=["POST"]),
        Route("/sweeps/{name:path}", sweep),
        Route("/events", events),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error, Unreadable: unreadable})
    app.state.hub = hub
    guarded = Guard(app, token=token, cookie_suffix=cookie_suffix, allowed_hosts=LOOPBACK_HOSTS,
                    cookie_path=root_path.rstrip("/") + "/", any_host=behind_proxy)
    return guarded
