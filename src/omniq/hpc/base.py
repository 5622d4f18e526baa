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
  jobs no longer needed are cancelled, running ones leave on their own when idle.
- **Closing.** ``close()`` cancels every job of the pool (by its unique job name too, so a job
  submitted a moment ago is not missed); so do closing ``oq`` and interpreter exit. A process
  killed outright (a kernel restarted) cannot: its jobs leave after ``idle_timeout``.
"""

from __future__ import annotations

import abc
import asyncio
import atexit
import contextlib
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


@dataclasses.dataclass(frozen=True)
class Job:
    """One job of a pool, as the scheduler last listed it.

    Attributes:
        id: As the scheduler names it (``"123"``, or ``"123_4"`` for an element of an array).
        state: The scheduler's word: ``PENDING``, ``RUNNING``, ``COMPLETING``, ...
        job_id: The id inside the job (``SLURM_JOB_ID``; differs for array elements), once
            it runs.
        reason: Why it waits (``Resources``, ``Priority``, ...), when it does.
        node: Where it runs.
        log: Its log file, once it started.
        stopping: Asked to leave (scale down): finishing its tasks first.
        name: The job name (``omniq-...``).

    Examples:
        >>> from omniq.hpc import Job
        >>> j = Job(id="41_0", state="RUNNING", job_id="42", node="c12")
        >>> j.active, Job(id="41_1", state="PENDING", stopping=True).active
        (True, False)
    """

    id: str  # as the scheduler names it ("123", or "123_4" for an element of an array)
    state: str  # PENDING, RUNNING, COMPLETING, ... (the scheduler's words)
    job_id: str | None = None  # the id inside the job (SLURM_JOB_ID; differs for array elements)
    reason: str = ""  # why it waits (Resources, Priority, ...), when it does
    node: str = ""  # where it runs
    log: str | None = None  # its log file (once it started)
    stopping: bool = False  # asked to leave (scale down): finishing its tasks first
    name: str = ""  # the job name (omniq-...)

    @property
    def active(self) -> bool:
        """Pending or running and not asked to leave: counts toward the pool's size.

        Examples:
            >>> from omniq.hpc import Job
            >>> Job(id="7", state="COMPLETED").active
            False
        """
        return not self.stopping and self.state in ("PENDING", "CONFIGURING", "RUNNING", "REQUEUED", "RESIZING")


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
def _core_of(oq: Any) -> Any:
    from ..core import AsyncOmniQ, OmniQ

    if isinstance(oq, OmniQ):
        return oq.core
    if isinstance(oq, AsyncOmniQ):
        return oq
    raise ConfigError(f"oq must be an OmniQ or AsyncOmniQ, got {type(oq).__name__}")


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name}={value!r} is not valid: expected an integer >= 1")
    return value


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name}={value!r} is not valid: expected an integer >= 0")
    return value


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
        self._core = _core_of(oq)
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
        if walltime_margin is None:
            margin = default_margin(self.walltime_seconds)
        elif (isinstance(walltime_margin, bool) or not isinstance(walltime_margin, (int, float))
              or not 0 < walltime_margin < min(self.walltime_seconds, 65536)):
            raise ConfigError(f"walltime_margin={walltime_margin!r} is not valid: expected seconds > 0 and "
                              f"below the walltime ({self.walltime_seconds} s) and 65536")
        else:
            margin = math.ceil(walltime_margin)
        self.walltime_margin = margin
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 0 < interval < math.inf:
            raise ConfigError(f"interval={interval!r} is not valid: expected seconds > 0")
        self.interval = float(interval)
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

        self._lock = threading.RLock()
        self._tracked: dict[str, Job] = {}  # id -> last known
        self._submitted_at: dict[str, float] = {}
        self._stopping: set[str] = set()
        self._listed: set[str] = set()  # ids seen in a listing at least once
        self._warned: set[str] = set()  # ids said to never start (logged once)
        self._mode: tuple[str, int, int] | None = None  # ("scale", n, n) | ("adapt", min, max)
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._quit = threading.Event()
        self._errors = 0
        self.closed = False
        self._link_close()
        atexit.register(_close_at_exit, weakref.ref(self))
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
        self._start_monitor()
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
            if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 0 < interval < math.inf:
                raise ConfigError(f"interval={interval!r} is not valid: expected seconds > 0")
            self.interval = float(interval)
        self._ensure_open()
        with self._lock:
            self._mode = ("adapt", lo, hi)
        self._start_monitor()
        self._wake.set()
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
        self._quit.set()
        self._wake.set()
        t = self._thread
        loop_thread = self._core.session.loop_thread
        if wait and t is not None and t is not threading.current_thread() and threading.get_ident() != loop_thread:
            t.join(timeout=30)  # (not from the OmniQ's loop: the monitor may be waiting on it)
        with self._lock:
            ids = list(self._tracked)
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
            self._tracked.clear()
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
            jobs = list(self._tracked.values())
        return {
            "name": self.name, "scheduler": self.scheduler, "log_dir": self.log_dir, "cores": self.cores,
            "walltime": self.walltime, "mode": self._mode, "closed": self.closed,
            "jobs": [dataclasses.asdict(j) for j in jobs],
        }

    def __repr__(self) -> str:
        with self._lock:
            jobs = list(self._tracked.values())
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
        now = time.monotonic()
        for i in ids:
            self._tracked[i] = Job(id=i, state="PENDING")
            self._submitted_at[i] = now
        log.info("%s pool %s: submitted %d job(s): %s", self.scheduler, self.name, len(ids), ", ".join(ids))
        return ids

    def _cancel(self, ids: Sequence[str], *, graceful: bool) -> None:
        if not ids:
            return
        self._run(self.cancel_command(list(ids), graceful=graceful), check=False)
        for i in ids:
            if graceful:
                self._stopping.add(i)
                j = self._tracked.get(i)
                if j is not None:
                    self._tracked[i] = dataclasses.replace(j, stopping=True)
            else:
                self._tracked.pop(i, None)
                self._stopping.discard(i)

    def _refresh(self) -> list[Job]:
        """List the pool's jobs now; forget those gone from the list."""
        with self._lock:
            if not self.spec.prepared:
                return []
            listed = self.parse_list(self._run(self.list_command()).stdout)
            now = time.monotonic()
            seen: dict[str, Job] = {}
            for j in listed:
                log_path = os.path.join(self.log_dir, f"{self.name}-{j.job_id}.log") if (
                    j.job_id and j.state not in ("PENDING",)) else None
                seen[j.id] = dataclasses.replace(j, log=log_path, stopping=j.id in self._stopping)
            for i in list(self._tracked):
                # gone; unless just submitted and not listed yet (kept a little while)
                if i not in seen and (i in self._listed or now - self._submitted_at.get(i, 0.0) > 10.0):
                    self._tracked.pop(i, None)
                    self._stopping.discard(i)
                    self._submitted_at.pop(i, None)
                    self._listed.discard(i)
            for i, j in seen.items():
                self._tracked[i] = j
                self._submitted_at.setdefault(i, now)
                self._listed.add(i)
            return list(self._tracked.values())

    def _reconcile(self, lo: int, hi: int, *, force: bool = False, tasks: tuple[int, int] | None = None) -> list[str]:
        """Bring the pool between ``lo`` and ``hi`` active jobs. ``force`` (scale): to exactly
        ``lo`` now. Otherwise: to what the tasks need (``tasks`` = (queued, running)), bounded."""
        jobs = [j for j in self._refresh() if j.active]
        have = len(jobs)
        if force:
            want = lo
        else:
            queued, running = tasks or (0, 0)
            need = math.ceil((queued + running) / self.cores) if queued > 0 else 0
            want = max(lo, min(hi, need)) if queued > 0 else lo
            if self._mode is not None and self._mode[0] == "scale":
                # scale(n): replace jobs that ended only while there is work for them
                want = hi if queued > 0 else min(have, hi)
        if have < want:
            return self._submit(want - have)
        if have > want:
            surplus = have - want
            order = sorted(jobs, key=lambda j: (j.state != "PENDING", -self._submitted_at.get(j.id, 0.0)))
            pending = [j.id for j in order if j.state == "PENDING"][:surplus]
            self._cancel(pending, graceful=False)
            if force:
                leaving = [j.id for j in order if j.state != "PENDING"][: surplus - len(pending)]
                self._cancel(leaving, graceful=True)
            return []
        for j in jobs:
            why = self.never_starts(j) if j.state == "PENDING" else None
            if why and j.id not in self._warned:
                self._warned.add(j.id)
                log.warning("%s pool %s: job %s will not start: %s", self.scheduler, self.name, j.id, why)
        return []

    def _waiting(self) -> tuple[int, int] | None:
        """(queued, running) tasks in the queues this pool serves, or None when unknown."""
        core = self._core
        loop = core.session.loop
        if not core.is_open or loop is None or loop.is_closed():
            return None
        coro = core.session.queue.counts()
        try:
            fut = asyncio.run_coroutine_threadsafe(coro, loop)
        except RuntimeError:
            coro.close()
            return None
        try:
            counts = fut.result(timeout=30)
        except Exception:
            fut.cancel()
            return None
        queued = running = 0
        for q, by in counts.items():
            if self.queues is None or q in self.queues:
                queued += int(by.get("queued", 0))
                running += int(by.get("running", 0))
        return queued, running

    def _tick(self) -> None:
        mode = self._mode
        if mode is None:
            return
        tasks = self._waiting()
        with self._lock:
            if self.closed:
                return
            self._reconcile(mode[1], mode[2], tasks=tasks)

    def _start_monitor(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = threading.Thread(target=self._monitor, name=f"omniq-hpc-{self.name}", daemon=True)
            self._thread.start()

    def _monitor(self) -> None:
        while not self._quit.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._quit.is_set():
                return
            try:
                self._tick()
                if self._errors:
                    log.warning("%s pool %s: the scheduler answers again", self.scheduler, self.name)
                self._errors = 0
            except Exception as exc:
                if self._errors == 0:
                    log.warning("%s pool %s: %s (will keep trying)", self.scheduler, self.name, exc)
                self._errors += 1

    def _link_close(self) -> None:
        """Closing the OmniQ closes this pool (after the OmniQ stored what it holds)."""
        from ..core import OmniQ

        ref = weakref.ref(self)

        def close_pool() -> None:
            pool = ref()
            if pool is not None and not pool.closed:
                pool.close(wait=False)

        if isinstance(self.oq, OmniQ):  # the facade (its close runs even when it never opened)
            before_sync = self.oq.close

            def close_sync(*args: Any, **kwargs: Any) -> Any:
                try:
                    return before_sync(*args, **kwargs)
                finally:
                    close_pool()

            setattr(self.oq, "close", close_sync)  # noqa: B010 (an instance's own close)
            return
        core = self._core
        before = core.close

        async def close(*args: Any, **kwargs: Any) -> Any:
            try:
                return await before(*args, **kwargs)
            finally:
                close_pool()

        core.close = close


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


def _close_at_exit(ref: weakref.ref[JobWorkers]) -> None:
    pool = ref()
    if pool is not None and not pool.closed:
        with contextlib.suppress(BaseException):
            pool.close(wait=False)


def _lines(text: str) -> Iterable[str]:
    return (line for line in text.splitlines() if line.strip())
