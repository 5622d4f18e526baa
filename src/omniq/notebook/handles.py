"""What ``%%omniq submit`` binds in the notebook: ``CellHandle`` (one cell), ``CellSweep`` (a
``--sweep``), and ``CellJob``, the magics' record of a submission (its handle, its widget, the
``--out`` variables still to apply), with the helpers that show a finished task's remote output
under the widget and summarise the end of a ``%omniq wait``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from typing import Any

from ..core import OmniQ, TaskHandle
from ..models import TaskResult, TaskStatus
from ..sweep import Sweep
from .capture import envelope, split_remote_output

_NO_DEFAULT: Any = object()
_RECORD_FIELDS = ("value", "status", "error", "duration", "traceback")


class CellHandle(TaskHandle):
    """A ``%%omniq submit`` cell running on a worker: a ``TaskHandle`` whose ``result()`` is the
    cell's last expression (the runner's envelope is unwrapped) and ``outputs()`` the ``--out``
    variables."""

    __slots__ = ("name", "outs", "source")

    def __init__(self, oq: OmniQ, handle_id: str, queue: str, future: Any, *, name: str,
                 outs: Sequence[str], source: str) -> None:
        super().__init__(oq, handle_id, queue, future)
        self.name = name
        self.outs = tuple(outs)
        self.source = source

    def _env(self, timeout: float | None) -> dict[str, Any]:
        value = self._value(self.get(timeout))
        env = envelope(value)
        return env if env is not None else {"value": value, "outs": {}, "stdout": "", "stderr": ""}

    def result(self, timeout: float | None = None) -> Any:
        """The value of the cell's last expression (None if it ends with a statement)."""
        return self._env(timeout)["value"]

    def outputs(self, timeout: float | None = None) -> dict[str, Any]:
        """The ``--out`` variables the cell assigned."""
        return dict(self._env(timeout)["outs"])

    def add_done_callback(self, fn: Callable[[CellHandle], Any]) -> None:
        """Call ``fn(self)`` once the task is final (at once if it already is)."""
        self._future.add_done_callback(lambda _f: fn(self))

    def __repr__(self) -> str:
        state = self.status().value if self.done() else "pending"
        return f"<CellHandle {self.name!r} task={self.id} {state}>"


class CellSweep(Sweep):
    """A ``%%omniq submit --sweep`` cell: a :class:`~omniq.sweep.Sweep` whose records, values
    and table show each point's last expression as ``value`` and its ``--out`` variables as
    columns, instead of the runner's envelope."""

    outs: tuple[str, ...] = ()

    def _record(self, i: int, *, traceback: bool = False) -> dict[str, Any]:
        rec = super()._record(i, traceback=traceback)
        env = envelope(rec.get("value"))
        params = {k: rec.pop(k) for k in list(rec) if k not in _RECORD_FIELDS}
        outs = {o: env["outs"].get(o) if env is not None else None for o in self.outs}
        rec["value"] = env["value"] if env is not None else None
        return {**params, **{o: v for o, v in outs.items() if o not in params}, **rec}

    def values(self, default: Any = _NO_DEFAULT) -> list[Any]:
        """Each point's last-expression value, in grid order (see ``Sweep.values``)."""
        raw = super().values() if default is _NO_DEFAULT else super().values(default)
        return [env["value"] if (env := envelope(v)) is not None else v for v in raw]

    def outputs(self) -> dict[str, list[Any]]:
        """``--out`` variables as lists in grid order (None for points without a value)."""
        envs = []
        for i in range(len(self.points)):
            r = self.tracker.result(i)
            envs.append(envelope(r.value) if r is not None and r.status is TaskStatus.SUCCEEDED else None)
        return {out: [e["outs"].get(out) if e is not None else None for e in envs] for out in self.outs}

    def to_pandas(self) -> Any:
        """Parameters, ``--out`` columns, value, status, error, duration; grid order."""
        import pandas as pd

        records = self.results()
        columns = list(dict.fromkeys(k for r in records for k in r))
        return pd.DataFrame.from_records(records, columns=columns)


class CellJob:
    """One ``%%omniq submit``: its handle, widget and the ``--out`` values still to apply."""

    def __init__(self, name: str, handle: TaskHandle | Sweep, outs: Sequence[str], widget: Any) -> None:
        self.name = name
        self.handle = handle
        self.outs = tuple(outs)
        self.widget = widget
        self.applied = not outs
        self._shown: set[str] = set()
        self._lock = threading.Lock()
        self.stop_watching: Callable[[], None] = lambda: None

    @property
    def is_sweep(self) -> bool:
        return not isinstance(self.handle, TaskHandle)

    def done(self) -> bool:
        return bool(self.handle.done())

    def show_output(self, result: TaskResult, label: str = "") -> None:
        """Put a finished task's remote stdout / stderr / traceback under the widget (once)."""
        with self._lock:  # held throughout, so `%omniq wait` never finalizes half an output
            self._show_output(result, label)

    def _show_output(self, result: TaskResult, label: str) -> None:
        if result.task_id in self._shown or self.widget is None:
            return
        self._shown.add(result.task_id)
        head = f"[{label}] " if label else ""
        if result.status is TaskStatus.SUCCEEDED:
            env = envelope(result.value)
            if env is None:
                return
            out, err, tb = env["stdout"], env["stderr"], ""
        else:
            if result.error is None:
                return
            tb, out, err = split_remote_output(result.error.traceback or f"{result.error}\n")
            if not result.error.traceback:
                tb = f"{result.error.type}: {result.error.message}\n"
        if out:
            self.widget.append_stdout(_prefixed(head, out))
        if err:
            self.widget.append_stderr(_prefixed(head, err))
        if tb and not self.is_sweep:  # a sweep's widget lists failed points with tracebacks
            self.widget.append_stderr(tb)


def _prefixed(head: str, text: str) -> str:
    """``text`` ending in a newline, each line led by ``head`` (a sweep point's parameters, so
    interleaved output from many points stays readable)."""
    lines = text.splitlines(keepends=True)
    return "".join(f"{head}{ln}" for ln in lines).rstrip("\n") + "\n"


def show_handle_output(job: CellJob, handle: CellHandle) -> None:
    """Done-callback of a cell's handle: show its remote output under the job's widget."""
    with contextlib.suppress(Exception):  # a callback on the loop thread must not raise
        job.show_output(handle.get(0))


def watch_sweep(job: CellJob, sw: Sweep) -> None:
    """Show each point's remote output under the widget as points finish. The tracker calls
    listeners on OmniQ's loop thread for every change, so the scan runs on a throttled thread
    instead (at most five times a second, once more after the last change): a sweep of
    thousands of points costs the loop nothing."""
    from .progress import Throttle

    def scan() -> bool:
        _show_points(job, sw)
        return False  # sleep until the next change

    throttle = Throttle(scan, interval=0.2, heartbeat=None)
    remove = sw.tracker.add_listener(throttle.poke)

    def stop() -> None:
        remove()
        throttle.close()

    job.stop_watching = stop
    throttle.poke()


def _show_points(job: CellJob, sw: Sweep) -> None:
    tracker = sw.tracker
    for i in tracker.slots_in(lambda st: st not in ("pending", "queued", "running")):
        r = tracker.result(i)
        if r is not None and r.task_id not in job._shown:
            job.show_output(r, ", ".join(f"{k}={v!r}" for k, v in sw.points[i].items()))


def deliver_output(job: CellJob) -> None:
    """Show remote output synchronously (the callbacks may not have run yet)."""
    h = job.handle
    if isinstance(h, TaskHandle):
        if h.done():
            job.show_output(h.get(0))
    else:
        _show_points(job, h)


def finalize(progress: Any) -> None:
    """Render now and re-send every widget's state from this cell (ipykernel tags messages sent
    from background threads with the latest cell, so a saved notebook needs the end state
    sent here)."""
    progress.finalize()


def summary(job: CellJob, waited: float) -> str:
    h = job.handle
    outs = f"; set {', '.join(job.outs)}" if job.outs else ""
    if isinstance(h, TaskHandle):
        r = h.get(0)
        if r.status is TaskStatus.SUCCEEDED:
            return f"{job.name}: succeeded{outs}"
        err = f" ({r.error})" if r.error else ""
        return f"{job.name}: {r.status.value}{err}"
    counts = h.counts()
    text = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    return f"{job.name}: {text}{outs}"
