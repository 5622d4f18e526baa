"""``%omniq status`` and ``%omniq workers`` as text, HTML and tables: queues by status,
workers and their heartbeats, the kernel's SLURM jobs, schedules, storage that is down; and the
thread that keeps a status widget current.
"""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ..core import OmniQ
from ..models import TaskStatus
from .slurm import slurm_status


def _pool_head(st: Mapping[str, Any]) -> str:
    mode = st.get("mode")
    how = ("" if mode is None else f"scale={mode[1]}, " if mode[0] == "scale" else f"adapt={mode[1]}:{mode[2]}, ")
    return (f"pool {st.get('name')} ({how}cores={st.get('cores')}, walltime {st.get('walltime')}; "
            f"logs {st.get('log_dir')})")


def _job_state(job: Mapping[str, Any]) -> str:
    state = str(job.get("state", "")).lower()
    if job.get("stopping"):
        state += ", leaving after its tasks"
    if job.get("reason") and state.startswith("pending"):
        state += f" ({job['reason']})"
    return state


def frame(rows: Sequence[Mapping[str, Any]]) -> Any:
    """``rows`` as a pandas DataFrame (a list without pandas)."""
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is in the notebook extra
        return list(rows)
    return pd.DataFrame(list(rows))


_STATUS_ORDER = [s.value for s in TaskStatus]


def _status_rows(health: Mapping[str, Any]) -> tuple[list[str], list[tuple[str, list[int]]]]:
    queues: Mapping[str, Mapping[str, int]] = health.get("queues") or {}
    cols = [s for s in _STATUS_ORDER if any(c.get(s) for c in queues.values())] or ["queued", "running"]
    return cols, [(q, [int(c.get(s, 0)) for s in cols]) for q, c in sorted(queues.items())]


def ago(ts: float | None) -> str:
    """``"12 s ago"`` for a timestamp; ``"-"`` for none."""
    if not ts:
        return "-"
    return f"{max(0.0, time.time() - ts):.0f} s ago"


def status_text(health: Mapping[str, Any], slurm: Sequence[Mapping[str, Any]] = ()) -> str:
    """``%omniq status`` outside a kernel; ``slurm``: :func:`slurm_status`."""
    cols, rows = _status_rows(health)
    w = max([5, *(len(q) for q, _ in rows)])
    lines = ["queue".ljust(w) + "".join(c.rjust(11) for c in cols)]
    lines += [q.ljust(w) + "".join(str(n).rjust(11) for n in ns) for q, ns in rows] or ["(no tasks)"]
    workers = health.get("workers") or []
    lines.append(f"\nworkers: {sum(1 for x in workers if x.get('alive'))} alive of {len(workers)}")
    for x in workers:
        short = f" SHORT of {x['missing']} (a child could not be replaced)" if x.get("missing") else ""
        job = f" job {x['job']}" if x.get("job") else ""
        lines.append(f"  {x.get('id')} {x.get('kind')} x{x.get('slots')}{job} "
                     f"{'alive' if x.get('alive') else 'gone'} heartbeat {ago(x.get('last_heartbeat'))}{short}")
    for st in slurm:
        jobs = st.get("jobs") or []
        lines.append(f"{st.get('scheduler', 'SLURM')} jobs: {len(jobs)}, {_pool_head(st)}")
        lines += [f"  {j.get('id')} {_job_state(j)}" + (f" on {j['node']}" if j.get("node") else "") for j in jobs]
    schedules = health.get("schedules") or []
    lines.append(f"schedules: {len(schedules)}")
    for s in schedules:
        lines.append(f"  {s.get('name')} {'paused' if s.get('paused') else 'active'} next {s.get('next_run')}"
                     f" last {s.get('last_outcome') or '-'}")
    down = [f"{part} {p.get('url')}: {p.get('error')}" for part, p in (health.get("storage") or {}).items()
            if not p.get("ok", True)]
    if down:
        lines.append("storage unreachable: " + "; ".join(down))
    overrun = health.get("leases_overrun") or []
    if overrun:
        lines.append(f"leases overrun in the last hour: {len(overrun)}")
    return "\n".join(lines)


def status_html(health: Mapping[str, Any], slurm: Sequence[Mapping[str, Any]] = ()) -> str:
    """``%omniq status`` as an HTML table (the widget's value); ``slurm``: :func:`slurm_status`."""
    e = html.escape
    cols, rows = _status_rows(health)
    td = 'style="padding:2px 10px;text-align:right"'
    out = ['<div class="omniq-status"><b>Queues</b><table><tr><th style="text-align:left">queue</th>']
    out += [f"<th {td}>{e(c)}</th>" for c in cols] + ["</tr>"]
    for q, ns in rows:
        out.append(f"<tr><td>{e(q)}</td>" + "".join(f"<td {td}>{n}</td>" for n in ns) + "</tr>")
    if not rows:
        out.append(f'<tr><td colspan="{len(cols) + 1}"><i>no tasks yet</i></td></tr>')
    out.append("</table>")
    workers = health.get("workers") or []
    out.append(f"<b>Workers</b> ({sum(1 for x in workers if x.get('alive'))} alive)<table>")
    out.append("<tr><th>id</th><th>kind</th><th>slots</th><th>alive</th><th>heartbeat</th></tr>")
    for x in workers:
        job = f" (job {e(str(x['job']))})" if x.get("job") else ""
        out.append(f"<tr><td>{e(str(x.get('id')))}{job}</td><td>{e(str(x.get('kind')))}</td>"
                   f"<td {td}>{x.get('slots')}"
                   + (f" <b style=\"color:#c00\">short {x['missing']}</b>" if x.get("missing") else "")
                   + f"</td><td>{'yes' if x.get('alive') else 'no'}</td>"
                   f"<td>{ago(x.get('last_heartbeat'))}</td></tr>")
    out.append("</table>")
    for st in slurm:
        jobs = st.get("jobs") or []
        out.append(f"<b>{e(str(st.get('scheduler', 'SLURM')))} jobs</b> ({len(jobs)}) "
                   f"<small>{e(_pool_head(st))}</small><table>")
        out.append("<tr><th>job</th><th>state</th><th>node</th></tr>")
        for j in jobs:
            out.append(f"<tr><td>{e(str(j.get('id')))}</td><td>{e(_job_state(j))}</td>"
                       f"<td>{e(str(j.get('node') or '-'))}</td></tr>")
        if not jobs:
            out.append('<tr><td colspan="3"><i>no jobs (they start when tasks wait)</i></td></tr>')
        out.append("</table>")
    schedules = health.get("schedules") or []
    out.append(f"<b>Schedules</b> ({len(schedules)})<table>")
    for s in schedules:
        out.append(f"<tr><td>{e(str(s.get('name')))}</td><td>{'paused' if s.get('paused') else 'active'}</td>"
                   f"<td>next {e(str(s.get('next_run')))}</td><td>last {e(str(s.get('last_outcome') or '-'))}</td></tr>")
    out.append("</table>")
    for part, p in (health.get("storage") or {}).items():
        if not p.get("ok", True):
            out.append(f'<div style="color:#b00">{e(part)} storage {e(str(p.get("url")))} unreachable: '
                       f"{e(str(p.get('error')))}</div>")
    overrun = health.get("leases_overrun") or []
    if overrun:
        out.append(f"<div>leases overrun in the last hour: {len(overrun)} (worker died or hung)</div>")
    out.append("</div>")
    return "".join(out)


def refresh_status(oq: OmniQ, box: Any, stop: threading.Event) -> None:
    """Keep a status widget current until stopped (a newer ``%omniq status``, ``init``,
    unload) or the instance closes: every second for ten minutes, then every ten seconds.
    Only sets the widget's value: no output from this thread."""
    started = time.monotonic()
    while not stop.wait(1.0 if time.monotonic() - started < 600 else 10.0):
        if not oq.core.is_open:
            return
        try:
            value = status_html(oq.health(), slurm=slurm_status())
        except Exception:
            return
        if value != box.value:
            box.value = value
