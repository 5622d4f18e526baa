"""The thread that keeps a pool at its size: ``Monitor``.

``JobWorkers`` (``base.py``) decides what one check does (list the jobs, count the waiting
tasks, submit or cancel); the monitor only runs it in a daemon thread every ``interval``
seconds, or at once when woken (``adapt`` just called), until stopped (``close``). A failing
check is logged once, and so is the next one that works, rather than raised: the scheduler's
controller may be unreachable for a while, and the thread keeps trying.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ..logs import get_logger

log = get_logger("omniq.hpc")


class Monitor:
    """A daemon thread running ``tick`` every ``interval()`` seconds once started.

    Args:
        name: The thread's name.
        label: Who speaks in the log (``"SLURM pool omniq-..."``).

    Examples:
        >>> import threading
        >>> from omniq.hpc.monitor import Monitor
        >>> ticked = threading.Event()
        >>> m = Monitor("omniq-hpc-demo", "demo pool")
        >>> m.start(ticked.set, lambda: 60.0)
        >>> m.wake(); ticked.wait(10)
        True
        >>> m.stop(join=True)
    """

    def __init__(self, name: str, label: str) -> None:
        self.name = name
        self.label = label
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._quit = threading.Event()
        self._errors = 0  # ticks failed in a row

    def start(self, tick: Callable[[], None], interval: Callable[[], float]) -> None:
        """Run ``tick`` every ``interval()`` seconds from now on (nothing if it runs already).

        Args:
            tick: One check.
            interval: Seconds until the next check (read before each wait: it may change).
        """
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = threading.Thread(target=self._run, args=(tick, interval), name=self.name, daemon=True)
            self._thread.start()

    def wake(self) -> None:
        """Check now rather than at the end of the interval."""
        self._wake.set()

    def stop(self, *, join: bool, timeout: float = 30.0) -> None:
        """No more checks; with ``join``, wait for the one running to finish (not from inside it).

        Args:
            join: Wait for the thread (at most ``timeout`` seconds).
            timeout: Seconds.
        """
        self._quit.set()
        self._wake.set()
        t = self._thread
        if join and t is not None and t is not threading.current_thread():
            t.join(timeout=timeout)

    def _run(self, tick: Callable[[], None], interval: Callable[[], float]) -> None:
        while not self._quit.is_set():
            self._wake.wait(interval())
            self._wake.clear()
            if self._quit.is_set():
                return
            try:
                tick()
                if self._errors:
                    log.warning("%s: the scheduler answers again", self.label)
                self._errors = 0
            except Exception as exc:
                if self._errors == 0:
                    log.warning("%s: %s (will keep trying)", self.label, exc)
                self._errors += 1
