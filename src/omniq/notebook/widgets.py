"""The live progress widget: one for a single handle, a map group, or a sweep.

Layout follows ``tqdm.notebook``: ``HBox([HTML(title), IntProgress, HTML(counts)])``, with a
failures ``Accordion`` (error type, message and traceback per failed task, the first 20) and an
``Output`` area below it where the cell magic appends a remote cell's stdout / stderr.

Threads: the widget is built (and displayed) in the caller's thread. Results arrive on OmniQ's
loop thread through future callbacks; they only mark the state dirty, and a daemon thread
renders at most ``1 / interval`` times a second, always once after the last change (see
:class:`~omniq.progress.Throttle`). Running counts come from in-process ``started``
events, never from polling tasks.

ipykernel tags messages sent from background threads with the *latest* cell, so a notebook
saved after the sweep ends may miss the final state: :meth:`Progress.finalize` renders and
re-sends every widget's state from the caller's thread (``%omniq wait`` calls it).

Outside a kernel (a script, a terminal) the same object writes a throttled text line to
stderr instead, so code using :class:`Progress` runs anywhere.
"""

from __future__ import annotations

import concurrent.futures as cf
import html
import sys
import threading
from collections.abc import Iterable
from typing import IO, Any

from ..errors import ConfigError
from ..progress import DisplayHook, Snapshot, Throttle, Tracker, seed_running
from ..sweep import SweepBase

__all__ = ["Progress", "in_kernel", "progress"]

MAX_FAILURES_SHOWN = 20


def in_kernel() -> bool:
    """True inside a Jupyter kernel (``get_ipython().kernel``), as tqdm decides; never imports
    IPython itself.

    Returns:
        Whether widgets can be shown here.

    Examples:
        >>> from omniq.notebook.widgets import in_kernel
        >>> in_kernel()          # a script or doctest: no kernel
        False
    """
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        ip = ipython.get_ipython()
    except Exception:
        return False
    return ip is not None and getattr(ip, "kernel", None) is not None


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds + 0.5)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


def _counts_text(snap: Snapshot) -> str:
    waiting = snap.queued + snap.pending
    parts = [f"{snap.finished}/{snap.total}", f"queued {waiting}", f"running {snap.running}",
             f"done {snap.succeeded}", f"failed {snap.failed}"]
    if snap.cancelled:
        parts.append(f"cancelled {snap.cancelled}")
    parts.append(f"{_clock(snap.elapsed)} elapsed")
    if not snap.complete:
        parts.append(f"ETA {_clock(snap.eta)}")
    return " · ".join(parts)


def _bar_style(snap: Snapshot) -> str:
    if snap.failed:
        return "danger"
    if snap.cancelled:  # stopped on purpose: not an error, not a success either
        return "warning" if snap.complete else ""
    return "success" if snap.complete and snap.total else ""


def _tracker_for(oq: Any, items: Any) -> tuple[Tracker, Any]:
    """A tracker for a sweep (its own), or for handles / futures (a new one)."""
    if isinstance(items, SweepBase):
        return items.tracker, items.oq
    if isinstance(items, Tracker):
        return items, oq
    if isinstance(items, cf.Future) or hasattr(items, "future"):
        items = [items]
    items = list(items)
    if oq is None and items and hasattr(items[0], "oq"):
        oq = items[0].oq
    core = getattr(oq, "core", oq)
    tracker = Tracker(core)
    slots = tracker.add_slots(len(items))
    ids: list[str] = []
    futures: list[cf.Future[Any]] = []
    for i, item in enumerate(items):
        fut = item if isinstance(item, cf.Future) else getattr(item, "future", None)
        if not isinstance(fut, cf.Future):
            raise TypeError(f"progress item {i} is {item!r}: expected a task handle, a future or a sweep")
        futures.append(fut)
        ids.append(getattr(item, "id", None) or f"#{i}")
    tracker.begin(slots, ids, ["queued"] * len(items))
    tracker.attach(slots, futures)
    if not tracker.complete:
        seed_running(tracker, oq, [i for i in ids if not i.startswith("#")])
    return tracker, oq


class Progress:
    """Live progress of tasks: a widget in a kernel, a text line on stderr elsewhere.

    ``items``: a task handle, a list of handles or futures (a map group), or a sweep.
    ``total`` overrides the bar's length (when more work will join later). ``mode`` is
    ``"auto"`` (widget in a kernel), ``"widget"`` or ``"text"``; ``interval`` is the shortest
    time between two updates. Updates start at once; display it to see it.

    Args:
        oq: The ``OmniQ`` the items run on (for running counts); None: the handles' own.
        items: A task handle, a list of handles or futures, a sweep, or a ``Tracker``.
        title: Shown before the bar.
        total: The bar's length; None: the number of items.
        mode: ``"auto"``, ``"widget"`` or ``"text"``.
        interval: Seconds between two updates at least (text to a file that is not a
            terminal: 2 s).
        file: Where the text line goes; None: stderr.

    Attributes:
        tracker: The :class:`~omniq.progress.Tracker` it shows.
        mode: ``"widget"`` or ``"text"``, as decided.
        updates: Renders so far.

    Raises:
        ConfigError: ``mode`` is not one of the three.
        TypeError: An item is not a handle, a future or a sweep.

    Examples:
        >>> import concurrent.futures as cf, io
        >>> from omniq import TaskResult, TaskStatus
        >>> from omniq.notebook.widgets import Progress
        >>> futures = [cf.Future(), cf.Future()]
        >>> p = Progress(None, futures, title="demo", mode="text", file=io.StringIO())
        >>> for f, tid in zip(futures, "ab"):
        ...     f.set_result(TaskResult(task_id=tid, status=TaskStatus.SUCCEEDED))
        >>> p.finalize()
        <Progress 'demo' 2/2 · queued 0 · running 0 · done 2 · failed 0 · 0:00 elapsed>
        >>> p.close()
    """

    def __init__(
        self,
        oq: Any,
        items: Any,
        *,
        title: str = "",
        total: int | None = None,
        mode: str = "auto",
        interval: float = 0.1,
        file: IO[str] | None = None,
    ) -> None:
        if mode not in ("auto", "widget", "text"):
            raise ConfigError(f"mode={mode!r} is not valid: expected 'auto', 'widget' or 'text'")
        self.tracker, self._oq = _tracker_for(oq, items)
        self.title = title
        self.total = total
        self.mode = "widget" if mode == "widget" or (mode == "auto" and in_kernel()) else "text"
        self.updates = 0  # renders so far (tests and benchmarks read it)
        self._file = file
        self._failures_shown: tuple[Any, ...] = ()
        self._text_width = 0
        self._text_final = False
        self._lock = threading.Lock()
        if self.mode == "widget":
            self._build()
        heartbeat: float | None = 1.0
        if self.mode == "text":
            self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
            if not self._tty:  # a log file: a line on changes, at most every 2 s, and the last
                interval, heartbeat = max(interval, 2.0), None
        self._throttle = Throttle(self._render, interval=interval, heartbeat=heartbeat)
        self._remove = self.tracker.add_listener(self._throttle.poke)
        self._throttle.flush()
        if not self.tracker.complete:
            self._throttle.poke()  # start the heartbeat (elapsed / ETA keep moving)

    # --- building ------------------------------------------------------------------------------
    @property
    def _stream(self) -> IO[str]:
        return self._file if self._file is not None else sys.stderr

    def _build(self) -> None:
        import ipywidgets as w

        self.label = w.HTML(value=html.escape(self.title))
        self.bar = w.IntProgress(min=0, max=1, value=0, layout=w.Layout(flex="2"))
        self.counts = w.HTML(value="")
        self.row = w.HBox([self.label, self.bar, self.counts], layout=w.Layout(display="inline-flex", flex_flow="row wrap"))
        self.failures = w.Accordion(children=[], layout=w.Layout(display="none"))
        self.failures_note = w.HTML(value="", layout=w.Layout(display="none"))
        self.output = w.Output()
        self.widget = w.VBox([self.row, self.failures, self.failures_note, self.output])

    # --- rendering (throttled thread, or the caller's thread in finalize) ---------------------
    def _render(self) -> bool:
        """Bring the display up to date; True while work is still going."""
        with self._lock:
            snap = self.tracker.snapshot(MAX_FAILURES_SHOWN)
            self.updates += 1
            if self.mode == "widget":
                self._render_widget(snap)
            else:
                self._render_text(snap)
            return not snap.complete

    def _render_widget(self, snap: Snapshot) -> None:
        total = self.total if self.total is not None else snap.total
        self.bar.max = max(total, 1)
        self.bar.value = min(snap.finished, self.bar.max)
        self.bar.bar_style = _bar_style(snap)
        self.counts.value = html.escape(_counts_text(snap))
        if snap.failures != self._failures_shown:
            self._render_failures(snap)

    def _render_failures(self, snap: Snapshot) -> None:
        import ipywidgets as w

        old = {f.slot: child for f, child in zip(self._failures_shown, self.failures.children)}
        children, titles = [], []
        for f in snap.failures:
            err = f.error
            head = f"{err.type}: {err.message}" if err is not None else f.status
            body = err.traceback if err is not None and err.traceback else head
            child = old.get(f.slot)
            if child is None or child.value != _pre(body):
                child = w.HTML(value=_pre(body))
            children.append(child)
            titles.append(_short(f"{f.label} — {head}" if f.label else head, 160))
        self.failures.children = children
        self.failures.titles = tuple(titles)
        self.failures.layout.display = "" if children else "none"
        more = snap.failed + snap.cancelled - len(children)
        self.failures_note.value = (
            f"<i>… and {more} more without a value (see <code>.failed()</code>)</i>" if more > 0 else ""
        )
        self.failures_note.layout.display = "" if more > 0 else "none"
        self._failures_shown = snap.failures

    def _render_text(self, snap: Snapshot) -> None:
        if self._text_final:
            return
        total = self.total if self.total is not None else snap.total
        width = 20
        filled = int(width * snap.finished / total) if total else width
        bar = "#" * filled + "." * (width - filled)
        line = f"{self.title + ': ' if self.title else ''}[{bar}] {_counts_text(snap)}"
        stream = self._stream
        if self._tty:
            pad = " " * max(0, self._text_width - len(line))
            stream.write(f"\r{line}{pad}" + ("\n" if snap.complete else ""))
            self._text_width = len(line)
        else:
            stream.write(line + "\n")
        stream.flush()
        self._text_final = snap.complete

    # --- public ------------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """Counts right now (not throttled).

        Returns:
            A :class:`~omniq.progress.Snapshot`.

        Examples:
            >>> import concurrent.futures as cf, io
            >>> from omniq import TaskResult, TaskStatus
            >>> from omniq.notebook.widgets import Progress
            >>> futures = [cf.Future(), cf.Future()]
            >>> p = Progress(None, futures, title="demo", mode="text", file=io.StringIO())
            >>> p.snapshot().queued, p.snapshot().total
            (2, 2)
        """
        return self.tracker.snapshot(MAX_FAILURES_SHOWN)

    def finalize(self) -> Progress:
        """Render the current state now, from the caller's thread, and re-send every widget's
        state, so the cell that calls it (``%omniq wait``) records the end state.

        Returns:
            This display.

        Examples:
            See :class:`Progress`.
        """
        self.tracker.sync()
        self._throttle.flush()
        return self.resend()

    def resend(self) -> Progress:
        """Re-send the state of every widget in the tree (no-op in text mode).

        Returns:
            This display.

        Examples:
            ``p.resend()`` in the cell whose saved output should hold the widget's state.
        """
        if self.mode == "widget":
            for widget in self._widgets():
                widget.send_state()
            # Output's empty ``msg_id`` is left out: nbclient's Output mimic (0.10, 0.11)
            # raises on that key when a notebook runs headless; front ends ignore it anyway.
            self.output.send_state(key=[k for k in self.output.keys if k != "msg_id"])
        return self

    def _widgets(self) -> list[Any]:
        return [self.widget, self.row, self.label, self.bar, self.counts, self.failures,
                *self.failures.children, self.failures_note]

    def append_stdout(self, text: str) -> None:
        """Show remote stdout text under the bar (stdout itself in text mode).

        Args:
            text: The text.

        Examples:
            >>> import concurrent.futures as cf, io
            >>> from omniq import TaskResult, TaskStatus
            >>> from omniq.notebook.widgets import Progress
            >>> futures = [cf.Future(), cf.Future()]
            >>> p = Progress(None, futures, title="demo", mode="text", file=io.StringIO())
            >>> p.append_stdout("loss 0.25\\n")
            loss 0.25
        """
        if self.mode == "widget":
            self.output.append_stdout(text)
        else:
            sys.stdout.write(text)

    def append_stderr(self, text: str) -> None:
        """Show remote stderr text or a traceback under the bar (stderr in text mode).

        Args:
            text: The text.

        Examples:
            ``p.append_stderr(traceback_text)``; as :meth:`append_stdout`.
        """
        if self.mode == "widget":
            self.output.append_stderr(text)
        else:
            self._stream.write(text)

    def close(self) -> None:
        """Stop updating (the tracker and its results stay).

        Examples:
            See :class:`Progress`.
        """
        self._remove()
        self._throttle.close()

    def display(self) -> Progress:
        """Show it in the current cell (``IPython.display``); in text mode write the line now.

        Returns:
            This display.

        Examples:
            ``progress(handles).display()`` in a notebook cell.
        """
        self._ipython_display_()
        return self

    def _ipython_display_(self) -> None:
        if self.mode == "widget":
            from IPython.display import display

            display(self.widget)
        else:
            self._text_final = False
            self._throttle.flush()

    def __repr__(self) -> str:
        s = self.snapshot()
        return f"<Progress {self.title!r} {_counts_text(s)}>"


def _pre(text: str) -> str:
    return f"<pre style='white-space: pre-wrap; font-size: 0.85em'>{html.escape(text)}</pre>"


def _short(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def progress(obj: Any, oq: Any = None, **options: Any) -> Progress:
    """The progress display for a sweep (its own, cached), a task handle, or a list of
    handles / futures.

    Args:
        obj: A sweep, a task handle, or a list of handles / futures.
        oq: The ``OmniQ`` they run on; None: the handles' own.
        **options: For :class:`Progress` (``title``, ``total``, ``mode``, ``interval``,
            ``file``); the title defaults to ``"N tasks"`` or ``"task ID"``.

    Returns:
        The display (a sweep's is made once and kept).

    Examples:
        >>> import io
        >>> from omniq import OmniQ
        >>> from omniq.notebook.widgets import progress
        >>> with OmniQ(tasks="memory://", worker="thread", concurrency=1) as oq:
        ...     handles = oq.map(abs, [-1, -2])
        ...     _ = [h.result(timeout=30) for h in handles]
        ...     p = progress(handles, mode="text", file=io.StringIO())
        ...     print(p.title, p.finalize().snapshot().succeeded)
        ...     p.close()
        2 tasks 2
    """
    if isinstance(obj, SweepBase):
        return obj.progress(**options)
    if isinstance(obj, Iterable) and not isinstance(obj, (str, bytes)):
        obj = list(obj)
        options.setdefault("title", f"{len(obj)} tasks")
    else:
        options.setdefault("title", f"task {getattr(obj, 'id', '')}".strip())
    return Progress(oq, obj, **options)


#: How a sweep shows itself in a notebook (``AsyncOmniQ.display``): this widget, in a kernel.
DISPLAY = DisplayHook(make=Progress, active=in_kernel)
