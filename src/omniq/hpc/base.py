"""``JobWorkers``: a pool of batch jobs, each running ``omniq worker`` against an OmniQ's storage.

What a scheduler adds is small (``SlurmWorkers`` in ``slurm.py``): the command that submits
``count`` copies of the job script (an array where it can), the one that cancels jobs (at once,
or asking them to leave after their running tasks), the one that lists this pool's jobs, and
how to read their output. Everything else is scheduler-neutral:

- **Reaching storage** (``reach.py``). A job opens the same URLs as ``oq``: what no job could
  reach (``memory://``, in-memory SQLite, a path local to this machine on a cluster of several
  nodes, ``localhost`` there) is refused with a ``ConfigError``; what is risky (SQLite on a
  network filesystem) gets a ``StorageReachWarning``. Relative SQLite paths are made absolute.
- **What each job runs** (``jobspec.py``: ``JobSpec``, the pool's ``spec``). The ``omniq
  worker`` command, the job script, and the secrets: URLs (passwords included),
  ``storage_options``, ``OMNIQ_*`` variables of this process (``OMNIQ_SECRET_KEY``...) and
  ``env=`` go to the job through a file only the user can read (mode 0600) that the job script
  sources; never on a command line (``sbatch``'s, or ``omniq worker``'s, which other users see in
  ``ps``). The file is removed on ``close()``.
- **Logs.** One folder per pool (``<base_dir>/hpc/<name>/``, ``log_dir=`` to choose): the job
  script, and one log per job (``<name>-<job id>.log``: the worker's own lines, the tasks' stray
  output, the scheduler's messages).
- **Leaving.** A job runs ``omniq worker --idle-timeout S`` (it leaves after ``idle_timeout``
  seconds with no task) and asks the scheduler for SIGTERM ``walltime_margin`` seconds before its
  walltime; with ``--grace`` it then stops taking tasks, lets running ones finish for two thirds
  of the margin, and hands back the rest (queued again, for another job; not a failure, not a
  delivery). A job killed outright (``scancel``, a node lost) loses no task either: its tasks'
  leases lapse and they are delivered again.
- **scale / adapt.** ``scale(n)`` submits or cancels to reach ``n`` jobs now (pending ones are
  cancelled first; running ones are asked to leave after their tasks) and, while tasks wait,
  replaces jobs that ended (walltime, idle, killed). ``adapt(minimum, maximum)`` follows queue
  depth: while tasks are queued and the pool has fewer slots (jobs x ``cores``) than tasks
  (queued + running), it submits jobs up to ``maximum``; never fewer than ``minimum``; pending
  jobs no longer needed are cancelled, running ones leave on their own when idle. What the pool
  knows of its jobs and how many it wants is pure bookkeeping (``book.py``: ``JobBook``); a
  thread checks every ``interval`` seconds (``monitor.py``); the waiting tasks are counted
  through the OmniQ's loop (``link.py``).
- **Closing.** ``close()`` cancels every job of the pool (by its unique job name too, so a job
  submitted a moment ago is not missed); so do closing ``oq`` and interpreter exit (``link.py``).
  A process killed outright (a kernel restarted) cannot: its jobs leave after ``idle_timeout``.
"""

from __future__ import annotations

import abc
import dataclasses
import datetime as _dt
import math
import os
import re
import shlex
import subprocess
import threading
import time
import warnings
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Generic, TypeVar, cast, overload

from ..errors import ConfigError, OmniQError
from ..logs import get_logger
from .book import Job as Job
from .book import JobBook
from .jobspec import (
    JobSpec,
    check_env,
    check_idle_timeout,
    check_memory_limit,
    check_python,
    check_queues,
    check_worker,
    command_env,
)
from .link import close_at_exit, close_with, core_of, waiting
from .monitor import Monitor
from .reach import LOCAL_DIRS as LOCAL_DIRS
from .reach import LOOPBACK_HOSTS as LOOPBACK_HOSTS
from .reach import MEMORY_FS as MEMORY_FS
from .reach import NETWORK_FS as NETWORK_FS
from .reach import SERVER_SCHEMES as SERVER_SCHEMES
from .reach import WHAT_WORKS as WHAT_WORKS
from .reach import is_local_host, job_url, local_names, storage_tag
from .reach import mount_of as mount_of

log = get_logger("omniq.hpc")
_T = TypeVar("_T")


class JobSystemError(OmniQError, RuntimeError):
    """A scheduler command failed for a reason other than its input (controller unreachable,
    command timed out, output not understood).

    A bad argument is a ``ConfigError`` instead, naming it.

    Examples:
        >>> from omniq import OmniQError
        >>> from omniq.hpc import JobSystemError
        >>> issubclass(JobSystemError, OmniQError), issubclass(JobSystemError, RuntimeError)
        (True, True)
    """


class StorageReachWarning(UserWarning):
    """Jobs can open the storage, but something about it is risky on a cluster (SQLite over a
    network filesystem, a path that looks local to this machine).

    Issued by the pool's constructor; turn it into an error with
    ``warnings.simplefilter("error", StorageReachWarning)``.

    Examples:
        >>> from omniq.hpc import StorageReachWarning
        >>> issubclass(StorageReachWarning, UserWarning)
        True
    """


# ------------------------------------------------------------------------------ walltime
WALLTIME_TEXT = ("'MM', 'MM:SS', 'HH:MM:SS', 'D-HH', 'D-HH:MM' or 'D-HH:MM:SS' (as sbatch --time takes "
                 "it), a number of seconds, or a datetime.timedelta")
_DAYS = re.compile(r"(\d+)-(\d+)(?::(\d+)(?::(\d+))?)?", re.ASCII)  # (sbatch reads ASCII digits only)
_CLOCK = re.compile(r"(\d+)(?::(\d+)(?::(\d+))?)?", re.ASCII)


def parse_walltime(value: Any, name: str = "walltime") -> int:
    """Seconds in a walltime: sbatch's forms (``"90"`` minutes, ``"01:30:00"``, ``"2-00:00:00"``),
    a number of seconds (at least 60: schedulers count in minutes), or a ``timedelta``.

    Args:
        value: The walltime.
        name: The argument's name, for the error message.

    Returns:
        Whole seconds (rounded up).

    Raises:
        ConfigError: Another form, a field out of range (``"1:99"``), or under a minute;
            the message names ``name`` and the valid forms.

    Examples:
        >>> from omniq.hpc import parse_walltime
        >>> parse_walltime("01:30:00"), parse_walltime("90"), parse_walltime("1-12"), parse_walltime(120)
        (5400, 5400, 129600, 120)
        >>> from omniq import ConfigError
        >>> try:
        ...     parse_walltime("1:99")
        ... except ConfigError as e:
        ...     print(str(e).split(":")[0])
        walltime='1
    """
    seconds: float | None = None
    if isinstance(value, _dt.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        m = _DAYS.fullmatch(text)
        if m:
            d, h, mi, s = (int(g) if g else 0 for g in m.groups())
            if h < 24 and mi < 60 and s < 60:
                seconds = ((d * 24 + h) * 60 + mi) * 60 + s
        else:
            m = _CLOCK.fullmatch(text)
            if m:
                parts = [int(g) for g in m.groups() if g is not None]
                if all(p < 60 for p in parts[1:]):
                    if len(parts) == 1:
                        seconds = parts[0] * 60
                    elif len(parts) == 2:
                        seconds = parts[0] * 60 + parts[1]
                    else:
                        seconds = (parts[0] * 60 + parts[1]) * 60 + parts[2]
    if seconds is None or not math.isfinite(seconds) or seconds < 60:
        raise ConfigError(f"{name}={value!r} is not valid: expected {WALLTIME_TEXT}, of at least a minute")
    return math.ceil(seconds)


def format_walltime(seconds: int) -> str:
    """``HH:MM:SS``, or ``D-HH:MM:SS`` from a day up (as ``sbatch --time`` takes it).

    Args:
        seconds: The walltime in seconds.

    Returns:
        The walltime as text.

    Examples:
        >>> from omniq.hpc.base import format_walltime
        >>> format_walltime(5400), format_walltime(172801)
        ('01:30:00', '2-00:00:01')
    """
    d, rest = divmod(int(seconds), 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return f"{d}-{h:02d}:{m:02d}:{s:02d}" if d else f"{h:02d}:{m:02d}:{s:02d}"


def default_margin(walltime: int) -> int:
    """Seconds before the walltime at which a job stops taking tasks: a tenth of it, from 30 s to
    5 min, and at most half of it. (SLURM may signal up to a minute early; never late.)

    Args:
        walltime: The job's walltime in seconds.

    Returns:
        The margin in seconds.

    Examples:
        >>> from omniq.hpc.base import default_margin
        >>> default_margin(60), default_margin(1200), default_margin(86400)
        (30, 120, 300)
    """
    return int(min(walltime / 2, min(300, max(30, walltime // 10))))


# ------------------------------------------------------------------------------ the pool
def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name}={value!r} is not valid: expected an integer >= 1")
    return value


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name}={value!r} is not valid: expected an integer >= 0")
    return value


def _interval(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ConfigError(f"interval={value!r} is not valid: expected seconds > 0")
    return float(value)


def _margin(value: Any, walltime: int) -> int:
    if value is None:
        return default_margin(walltime)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < min(walltime, 65536):
        raise ConfigError(f"walltime_margin={value!r} is not valid: expected seconds > 0 and "
                          f"below the walltime ({walltime} s) and 65536")
    return math.ceil(value)


class _FromSpec(Generic[_T]):
    """A pool's attribute that its ``JobSpec`` keeps (read and written through), so
    ``pool.cores`` and the jobs' command never disagree."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.field = name

    @overload
    def __get__(self, pool: None, owner: type | None = None) -> _FromSpec[_T]: ...
    @overload
    def __get__(self, pool: JobWorkers, owner: type | None = None) -> _T: ...
    def __get__(self, pool: JobWorkers | None, owner: type | None = None) -> _T | _FromSpec[_T]:
        return self if pool is None else cast(_T, getattr(pool.spec, self.field))

    def __set__(self, pool: JobWorkers, value: _T) -> None:
        setattr(pool.spec, self.field, value)


class JobWorkers(abc.ABC):
    """A pool of batch jobs, each running ``omniq worker`` against ``oq``'s storage with
    ``cores`` slots. Scheduler-neutral; see the module docstring. Subclasses give the commands
    (``submit_command``, ``parse_submit``, ``cancel_command``, ``cancel_all_command``,
    ``list_command``, ``parse_list``) and may check arguments against the cluster.

    Args:
        oq: The ``OmniQ`` or ``AsyncOmniQ`` whose storage the jobs serve.
        cores: Worker slots per job (the job asks for as many CPUs).
        walltime: Each job's time limit (see :func:`parse_walltime`).
        idle_timeout: Seconds a job stays without tasks before leaving; None: until its
            walltime.
        worker: The kind of worker slots: ``async``, ``thread``, ``process`` or ``gevent``.
        queues: The queues jobs take from (a list, or a comma-separated string); None: ``oq``'s.
        env: Variables for the jobs (kept out of command lines).
        python: The interpreter jobs run (with omniq installed); None: this one.
        memory_limit: ``omniq worker --memory-limit`` (``"4GB"``, bytes): a task over it
            fails cleanly.
        walltime_margin: Seconds before the walltime at which a job stops taking tasks; None:
            a tenth of it, 30 s to 5 min.
        log_dir: The pool's folder (job script, environment file, logs); None:
            ``<base_dir>/hpc/<name>``.
        name: The job name (``omniq-`` is prefixed when missing); None: ``omniq-<tag>-<hex>``.
        interval: Seconds between checks of queue depth and jobs.

    Attributes:
        name: The job name every job of the pool carries.
        log_dir: The pool's folder.
        urls: ``{"tasks": ..., "results": ..., "events": ...}`` as jobs open them.
        closed: True once :meth:`close` ran.

    Raises:
        ConfigError: An argument is not valid (named), the scheduler's commands are not on
            PATH, or jobs could not reach the storage (``memory://``, in-memory SQLite, a path
            local to this machine on a cluster of several nodes).

    Examples:
        :class:`~omniq.hpc.SlurmWorkers` is the SLURM subclass; see it for a run.
    """

    #: the scheduler, for messages
    scheduler = "batch"
    #: commands that must be on PATH
    commands: tuple[str, ...] = ()

    # what each job runs, kept by the pool's JobSpec (``pool.spec``)
    python: _FromSpec[str] = _FromSpec()
    worker: _FromSpec[str] = _FromSpec()
    cores: _FromSpec[int] = _FromSpec()
    grace: _FromSpec[int] = _FromSpec()
    idle_timeout: _FromSpec[float | None] = _FromSpec()
    queues: _FromSpec[list[str] | None] = _FromSpec()
    memory_limit: _FromSpec[str | None] = _FromSpec()
    env: _FromSpec[dict[str, str]] = _FromSpec()
    cwd: _FromSpec[str] = _FromSpec()
    urls: _FromSpec[dict[str, str]] = _FromSpec()
    name: _FromSpec[str] = _FromSpec()
    log_dir: _FromSpec[str] = _FromSpec()

    def __init__(
        self,
        oq: Any,
        *,
        cores: int = 1,
        walltime: Any = "01:00:00",
        idle_timeout: float | None = 300,
        worker: str = "process",
        queues: Sequence[str] | str | None = None,
        env: Mapping[str, str] | None = None,
        python: str | None = None,
        memory_limit: int | str | None = None,
        walltime_margin: float | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        name: str | None = None,
        interval: float = 5.0,
    ) -> None:
        self._core = core_of(oq)
        self.oq = oq
        cfg = self._core.config
        cores = _positive_int("cores", cores)
        self.walltime_seconds = parse_walltime(walltime)
        self.walltime = walltime if isinstance(walltime, str) else format_walltime(self.walltime_seconds)
        self.walltime = self.walltime.strip()
        idle_timeout = check_idle_timeout(idle_timeout)
        worker = check_worker(worker)
        queues = check_queues(queues)
        env = check_env(env)
        python = check_python(python)
        memory_limit = check_memory_limit(memory_limit)
        self.walltime_margin = margin = _margin(walltime_margin, self.walltime_seconds)
        self.interval = _interval(interval)
        if name is not None and (not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9._-]{1,60}", name)):
            raise ConfigError(f"name={name!r} is not valid: expected letters, digits, '.', '_' or '-' (at most 60)")
        # what each job runs (its command, environment file and script): located further down
        self.spec = JobSpec(
            python=python, scheduler=self.scheduler, worker=worker, cores=cores,
            grace=max(1, int(margin * 2 / 3)),  # running tasks' time to finish; the rest: hand back, exit
            idle_timeout=idle_timeout, queues=queues if queues is not None else cfg.queues,
            memory_limit=memory_limit, env=env, cwd=os.getcwd(), lease=cfg.lease,
            storage_options=cfg.storage_options)

        # the storage, as jobs will open it (refusing what they cannot reach)
        roles = (("tasks", self._core.tasks_url), ("results", self._core.results_url),
                 ("events", self._core.events_url))
        for role, url in roles:  # what no job can reach, whatever the cluster
            job_url(role, url, cluster_local=True)
        self._check_commands()
        self._validate()
        cluster_local = self._cluster_is_local()
        urls: dict[str, str] = {}
        notes: list[str] = []
        for role, url in roles:
            urls[role], w = job_url(role, url, cluster_local=cluster_local)
            notes.extend(w)
        for note in dict.fromkeys(notes):
            warnings.warn(note, StorageReachWarning, stacklevel=3)
        # the name says omniq and which task queue the jobs serve (omniq status finds them by it)
        if name is None:
            name = f"omniq-{storage_tag(urls['tasks'])}-{os.urandom(3).hex()}"
        elif "omniq" not in name.lower():
            name = f"omniq-{name}"
        self.spec.locate(urls=urls, name=name, log_dir=os.path.abspath(
            os.fspath(log_dir) if log_dir is not None else os.path.join(cfg.base_dir, "hpc", name)))

        self._lock = threading.RLock()  # guards the book and the mode
        self._book = JobBook()  # the jobs as last listed (book.py)
        self._mode: tuple[str, int, int] | None = None  # ("scale", n, n) | ("adapt", min, max)
        self._monitor = Monitor(f"omniq-hpc-{name}", f"{self.scheduler} pool {name}")  # runs _tick (monitor.py)
        self.closed = False
        close_with(self, oq)  # closing the OmniQ, or interpreter exit, closes the pool (link.py)
        close_at_exit(self)
        _POOLS.add(self)

    # --- what a scheduler gives ------------------------------------------------------------------
    @abc.abstractmethod
    def submit_command(self, script: str, count: int) -> list[str]:
        """argv submitting ``count`` copies of ``script`` (an array when ``count`` > 1, if it can).

        Args:
            script: The job script's path.
            count: How many jobs.

        Returns:
            The command, as a list of arguments.
        """

    @abc.abstractmethod
    def parse_submit(self, stdout: str, count: int) -> list[str]:
        """Ids of the jobs ``submit_command`` made (one per copy).

        Args:
            stdout: What the submit command printed.
            count: How many jobs it submitted.

        Returns:
            ``count`` job ids.

        Raises:
            JobSystemError: The output holds no job id.
        """

    @abc.abstractmethod
    def cancel_command(self, ids: Sequence[str], *, graceful: bool) -> list[str]:
        """argv cancelling ``ids``: at once, or (``graceful``) asking them to leave after their
        running tasks (SIGTERM to the worker only).

        Args:
            ids: Job ids.
            graceful: Ask the jobs' workers to leave instead of killing the jobs.

        Returns:
            The command.
        """

    @abc.abstractmethod
    def cancel_all_command(self) -> list[str]:
        """argv cancelling every job of this pool (by its job name).

        Returns:
            The command.
        """

    @abc.abstractmethod
    def list_command(self) -> list[str]:
        """argv listing this pool's jobs.

        Returns:
            The command; :meth:`parse_list` reads its output.
        """

    @abc.abstractmethod
    def parse_list(self, stdout: str) -> list[Job]:
        """Jobs in the list command's output.

        Args:
            stdout: What the list command printed.

        Returns:
            The jobs listed.
        """

    def cluster_hosts(self) -> list[str] | None:
        """Names and addresses of the nodes jobs may run on (None: unknown).

        Returns:
            The hosts, or None; the base class knows none.
        """
        return None

    def _validate(self) -> None:  # noqa: B027 (optional hook)
        """Scheduler-specific checks of the arguments (partitions, limits); ConfigError if bad."""

    def submit_error(self, message: str) -> OmniQError:
        """The error for a refused submission (a ConfigError when it is about the arguments).

        Args:
            message: What the submit command printed.

        Returns:
            The error to raise: here a ``JobSystemError``.
        """
        return JobSystemError(f"{self.scheduler} refused the job: {message}")

    def never_starts(self, job: Job) -> str | None:
        """Why ``job`` (pending) can never start as asked, or None (it may yet).

        Args:
            job: A pending job as listed.

        Returns:
            The reason in words, or None; the base class never knows one.
        """
        return None

    # --- public ----------------------------------------------------------------------------------
    def scale(self, jobs: int) -> JobWorkers:
        """Submit or cancel jobs to reach ``jobs`` now. Pending jobs are cancelled first; running
        ones are asked to leave once their running tasks are done (or handed back). While tasks
        wait, jobs that ended (walltime, idle, killed) are replaced to keep ``jobs``.

        Args:
            jobs: How many jobs (0 lets every job leave).

        Returns:
            This pool.

        Raises:
            ConfigError: ``jobs`` is not an integer >= 0, the pool is closed, the scheduler
                refused the jobs for their options, or accepted them but will never start
                them (they are cancelled).
            JobSystemError: A scheduler command failed otherwise.

        Examples:
            ``pool.scale(4)``: four jobs now; ``pool.scale(0)``: none. See
            :class:`~omniq.hpc.SlurmWorkers` for a run.
        """
        n = _count("jobs", jobs)
        self._ensure_open()
        with self._lock:
            self._mode = ("scale", n, n)
            new = self._reconcile(n, n, force=True)
            if new:  # a job the scheduler accepted but will never run is an error now, not a wait
                stuck = [(j, why) for j in self._refresh() if j.id in new and j.state == "PENDING"
                         for why in [self.never_starts(j)] if why]
                if stuck:
                    self._cancel(new, graceful=False)
                    self._mode = None
                    raise ConfigError(f"{self.scheduler} accepted the jobs but will never start them: "
                                      f"{stuck[0][1]}")
        self._monitor.start(self._tick, lambda: self.interval)
        return self

    def adapt(self, minimum: int = 0, maximum: int = 1, *, interval: float | None = None) -> JobWorkers:
        """Follow queue depth: while tasks are queued and the pool has fewer slots (jobs x cores)
        than tasks (queued + running), submit jobs, up to ``maximum``; keep at least ``minimum``.
        Jobs leave by themselves after ``idle_timeout`` without work; pending jobs no longer
        needed are cancelled.

        Args:
            minimum: Jobs kept whatever the queue holds.
            maximum: Jobs at most (at least 1, and at least ``minimum``).
            interval: Seconds between checks; None keeps the pool's.

        Returns:
            This pool.

        Raises:
            ConfigError: A bound or ``interval`` is not valid, or the pool is closed.

        Examples:
            ``pool.adapt(minimum=0, maximum=20)``. See :class:`~omniq.hpc.SlurmWorkers`.
        """
        lo = _count("minimum", minimum)
        hi = _count("maximum", maximum)
        if hi < max(lo, 1):
            raise ConfigError(f"maximum={maximum!r} is not valid: expected an integer >= max(minimum, 1) "
                              f"(minimum={minimum!r})")
        if interval is not None:
            self.interval = _interval(interval)
        self._ensure_open()
        with self._lock:
            self._mode = ("adapt", lo, hi)
        self._monitor.start(self._tick, lambda: self.interval)
        self._monitor.wake()
        return self

    def jobs(self) -> list[Job]:
        """The pool's jobs that are pending or running (id, state, node, log ...), as the
        scheduler lists them now.

        Returns:
            One :class:`Job` each; empty once closed.

        Raises:
            JobSystemError: The list command failed.

        Examples:
            ``pool.jobs()`` -> ``[Job(id='123_0', state='RUNNING', ...), ...]``. See
            :class:`~omniq.hpc.SlurmWorkers`.
        """
        if self.closed:
            return []
        return self._refresh()

    def logs(self) -> list[str]:
        """Paths of the pool's job logs, oldest first.

        Returns:
            ``<log_dir>/<name>-<job id>.log`` files; empty before any job started.

        Examples:
            ``print(open(pool.logs()[-1]).read())``. See :class:`~omniq.hpc.SlurmWorkers`.
        """
        try:
            names = [n for n in os.listdir(self.log_dir) if n.endswith(".log")]
        except OSError:
            return []
        paths = [os.path.join(self.log_dir, n) for n in names]
        return sorted(paths, key=lambda p: (os.path.getmtime(p), p))

    def close(self, *, wait: bool = True, timeout: float = 60.0) -> None:
        """Cancel every job this pool started (idempotent), and remove its environment file.

        Closing ``oq`` and interpreter exit close the pool too.

        Args:
            wait: Wait until the scheduler lists none of its jobs.
            timeout: Seconds to wait at most.

        Examples:
            ``pool.close()``, or ``with SlurmWorkers(oq, ...) as pool:``. See
            :class:`~omniq.hpc.SlurmWorkers`.
        """
        if self.closed:
            return
        self.closed = True
        _POOLS.discard(self)
        # (not joined from the OmniQ's loop: the monitor may be waiting on it)
        self._monitor.stop(join=wait and threading.get_ident() != self._core.session.loop_thread)
        with self._lock:
            ids = list(self._book.jobs)
            if self.spec.prepared:
                argvs = [self.cancel_all_command()] + ([self.cancel_command(ids, graceful=False)] if ids else [])
                for argv in argvs:
                    try:
                        self._run(argv, timeout=30, check=False)
                    except OmniQError as exc:
                        log.warning("%s pool %s: %s", self.scheduler, self.name, exc)
            if wait and self.spec.prepared:
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    try:
                        if not self.parse_list(self._run(self.list_command(), timeout=30).stdout):
                            break
                    except OmniQError:
                        break
                    time.sleep(0.5)
            self._book.jobs.clear()
            self.spec.remove_env_file()

    def __enter__(self) -> JobWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def status(self) -> dict[str, Any]:
        """For status displays: name, log folder, settings and the jobs last seen (no command run).

        Returns:
            ``name``, ``scheduler``, ``log_dir``, ``cores``, ``walltime``, ``mode``
            (``("scale", n, n)``, ``("adapt", min, max)`` or None), ``closed`` and ``jobs``
            (dicts of :class:`Job` fields).

        Examples:
            See :class:`~omniq.hpc.SlurmWorkers`.
        """
        with self._lock:
            jobs = list(self._book.jobs.values())
        return {
            "name": self.name, "scheduler": self.scheduler, "log_dir": self.log_dir, "cores": self.cores,
            "walltime": self.walltime, "mode": self._mode, "closed": self.closed,
            "jobs": [dataclasses.asdict(j) for j in jobs],
        }

    def __repr__(self) -> str:
        with self._lock:
            jobs = list(self._book.jobs.values())
        states: dict[str, int] = {}
        for j in jobs:
            key = "stopping" if j.stopping else j.state.lower()
            states[key] = states.get(key, 0) + 1
        what = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "no jobs"
        mode = "" if self._mode is None else (
            f" scale={self._mode[1]}" if self._mode[0] == "scale" else f" adapt={self._mode[1]}:{self._mode[2]}")
        return (f"<{type(self).__name__} {self.name}{' closed' if self.closed else ''}: {what}{mode}; "
                f"cores={self.cores} walltime={self.walltime} logs={self.log_dir}>")

    # --- what each job runs: the pool's JobSpec (jobspec.py) -----------------------------------------
    @property
    def env_file(self) -> str:
        """The pool's private environment file (mode 0600): ``<log_dir>/worker.env``."""
        return self.spec.env_file

    @property
    def script(self) -> str:
        """The job script every job of the pool runs: ``<log_dir>/job.sh``."""
        return self.spec.script

    def worker_command(self) -> list[str]:
        """``omniq worker`` as a job runs it (no URL: those come from the environment file)."""
        return self.spec.worker_command()

    def job_script(self) -> str:
        """The job script's text: source the environment file, then ``exec omniq worker``."""
        return self.spec.job_script()

    def import_path(self) -> list[str]:
        """Folders the jobs put on ``PYTHONPATH`` (see :meth:`JobSpec.import_path`)."""
        return self.spec.import_path()

    def _prepare(self) -> None:
        self.spec.prepare()

    # --- internals: commands -------------------------------------------------------------------------
    def _check_commands(self) -> None:
        import shutil

        missing = [c for c in self.commands if shutil.which(c) is None]
        if missing:
            raise ConfigError(
                f"{type(self).__name__} needs {self.scheduler}'s commands on this machine; "
                f"{', '.join(missing)} not found on PATH (run where you would run them: a login node)")

    def _subprocess_env(self) -> dict[str, str]:
        return command_env()

    def _run(self, argv: list[str], *, timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=self._subprocess_env(),
                               stdin=subprocess.DEVNULL)
        except FileNotFoundError as exc:
            raise ConfigError(f"{argv[0]} not found on PATH: {type(self).__name__} needs {self.scheduler}'s "
                              "commands on this machine") from exc
        except subprocess.TimeoutExpired as exc:
            raise JobSystemError(f"{argv[0]} did not answer within {timeout:g} s "
                                 f"({self.scheduler} controller busy or unreachable?)") from exc
        if check and p.returncode != 0:
            msg = (p.stderr or p.stdout).strip()
            raise JobSystemError(f"{shlex.join(argv[:1])} failed ({p.returncode}): {msg}")
        return p

    def _ensure_open(self) -> None:
        if self.closed:
            raise ConfigError(f"{self.name} is closed: make a new {type(self).__name__}")

    def _cluster_is_local(self) -> bool | None:
        hosts = self.cluster_hosts()
        if not hosts:
            return None
        names = local_names()
        return all(is_local_host(h, names) for h in hosts)

    # --- internals: jobs -------------------------------------------------------------------------
    def _submit(self, count: int) -> list[str]:
        if count <= 0:
            return []
        self._prepare()
        p = self._run(self.submit_command(self.script, count), check=False)
        if p.returncode != 0:
            raise self.submit_error((p.stderr or p.stdout).strip() or f"exit status {p.returncode}")
        ids = self.parse_submit(p.stdout, count)
        self._book.submitted(ids, time.monotonic())
        log.info("%s pool %s: submitted %d job(s): %s", self.scheduler, self.name, len(ids), ", ".join(ids))
        return ids

    def _cancel(self, ids: Sequence[str], *, graceful: bool) -> None:
        if not ids:
            return
        self._run(self.cancel_command(list(ids), graceful=graceful), check=False)
        self._book.cancelled(ids, graceful=graceful)

    def _refresh(self) -> list[Job]:
        """List the pool's jobs now; forget those gone from the list."""
        with self._lock:
            if not self.spec.prepared:
                return []
            listed = self.parse_list(self._run(self.list_command()).stdout)
            return self._book.merge(listed, now=time.monotonic(), log_dir=self.log_dir, name=self.name)

    def _reconcile(self, lo: int, hi: int, *, force: bool = False, tasks: tuple[int, int] | None = None) -> list[str]:
        """Bring the pool between ``lo`` and ``hi`` active jobs (see ``JobBook.plan``): submit,
        cancel, or check that pending jobs will start. Returns the ids submitted."""
        scaling = self._mode is not None and self._mode[0] == "scale"
        plan = self._book.plan(self._refresh(), lo, hi, cores=self.cores, tasks=tasks, force=force, scaling=scaling)
        self._cancel(plan.cancel, graceful=False)
        self._cancel(plan.leave, graceful=True)
        for j in plan.check:
            why = self.never_starts(j)
            if why and self._book.warn_once(j.id):
                log.warning("%s pool %s: job %s will not start: %s", self.scheduler, self.name, j.id, why)
        return self._submit(plan.submit)

    def _tick(self) -> None:
        mode = self._mode
        if mode is None:
            return
        tasks = waiting(self._core, self.queues)
        with self._lock:
            if self.closed:
                return
            self._reconcile(mode[1], mode[2], tasks=tasks)


_POOLS: weakref.WeakSet[JobWorkers] = weakref.WeakSet()


def pools() -> list[JobWorkers]:
    """The pools of this process that are not closed (for status displays: ``%omniq status``
    lists their jobs).

    Returns:
        The open pools.

    Examples:
        >>> from omniq.hpc import pools
        >>> [p.name for p in pools()]  # none made in this process
        []
    """
    return [p for p in list(_POOLS) if not p.closed]


def _lines(text: str) -> Iterable[str]:
    return (line for line in text.splitlines() if line.strip())
