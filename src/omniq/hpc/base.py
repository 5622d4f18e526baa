"""``JobWorkers``: a pool of batch jobs, each running ``omniq worker`` against an OmniQ's storage.

What a scheduler adds is small (``SlurmWorkers`` in ``slurm.py``): the command that submits
``count`` copies of the job script (an array where it can), the one that cancels jobs (at once,
or asking them to leave after their running tasks), the one that lists this pool's jobs, and
how to read their output. Everything else lives here:

- **Reaching storage.** A job opens the same URLs as ``oq``. A ``memory://`` store or
  ``sqlite://:memory:`` lives in this process: refused (``ConfigError`` naming the URL and what
  would work). A relative SQLite path is made absolute. A path on a filesystem local to this
  machine (``tmpfs``, ``/tmp``) is refused when the cluster has nodes other than this machine, and
  SQLite on a network filesystem (NFS, Lustre, ...) gets a ``StorageReachWarning``: its WAL
  locking works only among processes of one host. ``localhost`` in a server URL is refused on a
  cluster of several hosts (each node would dial itself).
- **Secrets.** URLs (passwords included), ``storage_options``, ``OMNIQ_*`` variables of this
  process (``OMNIQ_SECRET_KEY``...) and ``env=`` go to the job through a file only the user can
  read (mode 0600) that the job script sources; never on a command line (``sbatch``'s, or
  ``omniq worker``'s, which other users see in ``ps``). The file is removed on ``close()``.
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
import hashlib
import json
import math
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from ..config import settings
from ..config.sizes import parse_size
from ..errors import ConfigError, OmniQError
from ..logs import get_logger
from ..storage.base import masked

log = get_logger("omniq.hpc")


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


# ------------------------------------------------------------------------------ storage reach
LOOPBACK_HOSTS = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "::1", "0.0.0.0", ""})
NETWORK_FS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "sshfs", "9p", "afs", "ceph", "fuse.ceph",
    "glusterfs", "fuse.glusterfs", "lustre", "gpfs", "beegfs", "fuse.beegfs", "panfs", "wekafs",
    "fuse.juicefs", "virtiofs", "fuse.s3fs", "fuse.gcsfuse",
})
MEMORY_FS = frozenset({"tmpfs", "ramfs", "devtmpfs"})
LOCAL_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run")
SERVER_SCHEMES = frozenset({"postgresql", "postgres", "redis", "rediss", "nats", "tls"})
WHAT_WORKS = ("a SQLite file or a file:// folder on a filesystem the compute nodes share (e.g. "
              "sqlite:////home/me/lab.db), or postgresql://, redis:// or nats:// on a host they reach")


def mount_of(path: str) -> tuple[str, str]:
    """``(mount point, filesystem type)`` holding ``path`` (its nearest existing ancestor), from
    /proc/mounts; ``("", "")`` where that cannot be read. Says whether jobs on other nodes can
    see a file (a network filesystem) and whether SQLite's locking is safe there.

    Args:
        path: A file or folder path; it need not exist.

    Returns:
        ``(mount point, filesystem type)``, e.g. ``("/home", "nfs4")``.

    Examples:
        >>> from omniq.hpc.base import mount_of
        >>> mount_of("/no/such/dir/lab.db")[0]  # the nearest existing ancestor: /
        '/'
    """
    p = os.path.realpath(path)
    while not os.path.exists(p) and p != os.path.dirname(p):
        p = os.path.dirname(p)
    best = ("", "")
    try:
        with open("/proc/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 3:
                    continue
                mnt = fields[1].replace("\\040", " ")
                if (p == mnt or p.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[0]):
                    best = (mnt, fields[2])
    except OSError:
        pass
    return best


def local_names() -> set[str]:
    """Names and addresses of this machine (to tell whether a URL's host, or a cluster's
    nodes, are this machine).

    Returns:
        Lower-case host names (short and qualified), aliases and addresses, loopback included.

    Examples:
        >>> from omniq.hpc.base import local_names
        >>> {"localhost", "127.0.0.1"} <= local_names()
        True
    """
    names = {"localhost", "127.0.0.1", "::1"}
    for get in (socket.gethostname, socket.getfqdn):
        with contextlib.suppress(OSError):
            n = get()
            names.update({n.lower(), n.split(".")[0].lower()})
    with contextlib.suppress(OSError):
        _, aliases, addrs = socket.gethostbyname_ex(socket.gethostname())
        names.update(a.lower() for a in aliases)
        names.update(addrs)
    return names


def is_local_host(host: str, names: set[str] | None = None) -> bool:
    """Whether ``host`` is this machine (loopback, or one of ``names``, default
    :func:`local_names`): a server URL naming it is unreachable from other nodes.

    Args:
        host: A host name or address (IPv6 in brackets or not).
        names: This machine's names; None looks them up.

    Returns:
        True for loopback (``localhost``, ``127.x``, ``::1``) or one of ``names``.

    Examples:
        >>> from omniq.hpc.base import is_local_host
        >>> is_local_host("localhost"), is_local_host("127.0.1.1"), is_local_host("db.lab", {"vm"})
        (True, True, False)
    """
    h = host.strip("[]").lower()
    return h in LOOPBACK_HOSTS or h.startswith("127.") or h in (names if names is not None else local_names())


def job_url(role: str, url: str, *, cluster_local: bool | None) -> tuple[str, list[str]]:
    """The URL a job should open for ``role`` (relative SQLite paths made absolute), and warnings;
    a ``ConfigError`` naming the URL when a job could not reach it at all.

    Args:
        role: ``"tasks"``, ``"results"`` or ``"events"``, for messages.
        url: The URL as this process opens it.
        cluster_local: True when every node of the cluster is this machine, False when some
            is not, None when unknown.

    Returns:
        ``(url for the jobs, warnings)``; the warnings are texts for ``StorageReachWarning``.

    Raises:
        ConfigError: The store lives in this process (``memory://``, in-memory SQLite), is on
            a filesystem local to this machine while the cluster has other nodes, or names
            ``localhost`` on such a cluster.

    Examples:
        >>> from omniq.hpc.base import job_url
        >>> job_url("tasks", "redis://db.lab:6379/0", cluster_local=False)
        ('redis://db.lab:6379/0', [])
        >>> job_url("tasks", "sqlite:////shared/lab.db", cluster_local=True)
        ('sqlite:////shared/lab.db', [])
        >>> from omniq import ConfigError
        >>> try:
        ...     job_url("tasks", "memory://", cluster_local=True)
        ... except ConfigError as e:
        ...     print(str(e).startswith("tasks URL 'memory://' is this process's memory"))
        True"""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    shown = masked(url)
    if scheme == "memory":
        raise ConfigError(
            f"{role} URL {shown!r} is this process's memory: jobs on the cluster cannot reach it. "
            f"Jobs need {WHAT_WORKS}")
    if scheme in ("sqlite", "file"):
        path, _, query = rest.partition("?")
        if scheme == "sqlite" and (path in (":memory:", "", "/:memory:") or path.startswith((":memory:", "/:memory:"))):
            raise ConfigError(
                f"{role} URL {shown!r} is an in-memory SQLite database of this process: jobs on the "
                f"cluster cannot reach it. Jobs need {WHAT_WORKS}")
        if scheme == "sqlite":
            path = path[1:] if path.startswith("/") else path  # sqlite:///rel.db -> rel.db, ////abs -> /abs
        path = os.path.abspath(os.path.expanduser(path))
        new = f"{scheme}://{'/' if scheme == 'sqlite' else ''}{path}" + (f"?{query}" if query else "")
        return new, _path_warnings(role, url, path, scheme, cluster_local)
    if scheme in SERVER_SCHEMES and sep:
        try:
            host = urlsplit(url).hostname or ""
        except ValueError:
            host = ""
        if is_local_host(host) and cluster_local is False:
            raise ConfigError(
                f"{role} URL {shown!r} names {host or 'this machine'}, which each compute node reads "
                f"as itself: use this machine's name or address as the nodes reach it "
                f"(e.g. {socket.getfqdn()}), or a server on the cluster's network")
        if is_local_host(host) and cluster_local is None:
            return url, [f"{role} URL {shown!r} names {host or 'this machine'}: jobs on other nodes "
                         f"cannot reach it there (fine when the cluster is this machine)"]
    return url, []


def _path_warnings(role: str, url: str, path: str, scheme: str, cluster_local: bool | None) -> list[str]:
    if cluster_local:
        return []  # one host: any path works, SQLite's locking included
    shown = masked(url)
    mnt, fstype = mount_of(path)
    local_dir = any(path == d or path.startswith(d + "/") for d in LOCAL_DIRS)
    if fstype in MEMORY_FS or local_dir:
        what = f"{mnt or path} ({fstype or 'local'})"
        if cluster_local is False:
            raise ConfigError(
                f"{role} URL {shown!r} is on {what}, local to this machine: jobs on other nodes "
                f"would each see their own, empty copy. Jobs need {WHAT_WORKS}")
        return [f"{role} URL {shown!r} is on {what}, local to this machine: jobs on other nodes "
                f"would not see it"]
    if scheme == "sqlite" and (fstype in NETWORK_FS or fstype.startswith("fuse")):
        return [f"{role} URL {shown!r} is SQLite on {fstype} ({mnt}): SQLite's locking (WAL) is safe "
                f"only among processes of one host, so jobs on several nodes may see 'database is "
                f"locked' or corrupt it. For many nodes use postgresql://, redis:// or nats://"]
    if fstype and fstype not in NETWORK_FS and cluster_local is False and not fstype.startswith("fuse"):
        return [f"{role} URL {shown!r} is on {mnt} ({fstype}), which looks local to this machine: "
                f"jobs on other nodes see it only if it is shared with them"]
    return []


def storage_tag(url: str) -> str | None:
    """Eight hex digits naming the task queue ``url`` (as jobs open it), carried in job names
    (``omniq-<tag>-<hex>``) so ``omniq status`` on that queue finds its jobs among the user's.
    Derived from the URL without its password (job names are public); SQLite and ``file://``
    by their resolved path. None for a queue no job could serve (``memory://``).

    Args:
        url: A task queue URL.

    Returns:
        Eight hex digits, or None.

    Examples:
        >>> from omniq.hpc import storage_tag
        >>> tag = storage_tag("postgresql://me:secret@db.lab/queue")
        >>> len(tag), tag == storage_tag("postgresql://me:other@db.lab/queue")
        (8, True)
        >>> storage_tag("memory://") is None
        True
    """
    try:
        url, _ = job_url("tasks", url, cluster_local=True)
    except ConfigError:
        return None
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if scheme in ("sqlite", "file"):
        path = rest.partition("?")[0]
        key = f"{scheme}:{os.path.realpath(path[1:] if scheme == 'sqlite' else path)}"
    else:
        key = masked(url).rstrip("/")
    return hashlib.sha256(key.encode()).hexdigest()[:8]


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
        self.cores = _positive_int("cores", cores)
        self.walltime_seconds = parse_walltime(walltime)
        self.walltime = walltime if isinstance(walltime, str) else format_walltime(self.walltime_seconds)
        self.walltime = self.walltime.strip()
        if idle_timeout is not None and (isinstance(idle_timeout, bool) or not isinstance(idle_timeout, (int, float))
                                         or not 0 < idle_timeout < math.inf):
            raise ConfigError(f"idle_timeout={idle_timeout!r} is not valid: expected seconds > 0, or None (never)")
        self.idle_timeout = idle_timeout
        if worker not in settings.WORKER_KINDS:
            raise ConfigError(f"worker={worker!r} is not valid: expected one of {', '.join(settings.WORKER_KINDS)}")
        self.worker = worker
        if isinstance(queues, str):
            queues = [q.strip() for q in queues.split(",") if q.strip()]
        if queues is not None:
            queues = list(queues)
            bad = [q for q in queues if not isinstance(q, str) or not q or "," in q or q != q.strip()]
            if bad or not queues:
                raise ConfigError(f"queues={queues!r} is not valid: expected queue names (strings without commas)")
        self.queues: list[str] | None = queues if queues is not None else cfg.queues
        self.env = self._check_env(env)
        self.python = self._check_python(python)
        self.memory_limit = self._check_memory_limit(memory_limit)
        if walltime_margin is None:
            margin = default_margin(self.walltime_seconds)
        elif (isinstance(walltime_margin, bool) or not isinstance(walltime_margin, (int, float))
              or not 0 < walltime_margin < min(self.walltime_seconds, 65536)):
            raise ConfigError(f"walltime_margin={walltime_margin!r} is not valid: expected seconds > 0 and "
                              f"below the walltime ({self.walltime_seconds} s) and 65536")
        else:
            margin = math.ceil(walltime_margin)
        self.walltime_margin = margin
        self.grace = max(1, int(margin * 2 / 3))  # running tasks' time to finish; the rest: hand back, exit
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 0 < interval < math.inf:
            raise ConfigError(f"interval={interval!r} is not valid: expected seconds > 0")
        self.interval = float(interval)
        if name is not None and (not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9._-]{1,60}", name)):
            raise ConfigError(f"name={name!r} is not valid: expected letters, digits, '.', '_' or '-' (at most 60)")
        self.cwd = os.getcwd()

        # the storage, as jobs will open it (refusing what they cannot reach)
        roles = (("tasks", self._core.tasks_url), ("results", self._core.results_url),
                 ("events", self._core.events_url))
        for role, url in roles:  # what no job can reach, whatever the cluster
            job_url(role, url, cluster_local=True)
        self._check_commands()
        self._validate()
        cluster_local = self._cluster_is_local()
        self.urls: dict[str, str] = {}
        notes: list[str] = []
        for role, url in roles:
            self.urls[role], w = job_url(role, url, cluster_local=cluster_local)
            notes.extend(w)
        for note in dict.fromkeys(notes):
            warnings.warn(note, StorageReachWarning, stacklevel=3)
        # the name says omniq and which task queue the jobs serve (omniq status finds them by it)
        if name is None:
            name = f"omniq-{storage_tag(self.urls['tasks'])}-{os.urandom(3).hex()}"
        elif "omniq" not in name.lower():
            name = f"omniq-{name}"
        self.name = name
        self.log_dir = os.path.abspath(os.fspath(log_dir) if log_dir is not None
                                       else os.path.join(cfg.base_dir, "hpc", name))
        self._storage_env = self._storage_variables()

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
        self._prepared = False
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
            if self._prepared:
                argvs = [self.cancel_all_command()] + ([self.cancel_command(ids, graceful=False)] if ids else [])
                for argv in argvs:
                    try:
                        self._run(argv, timeout=30, check=False)
                    except OmniQError as exc:
                        log.warning("%s pool %s: %s", self.scheduler, self.name, exc)
            if wait and self._prepared:
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    try:
                        if not self.parse_list(self._run(self.list_command(), timeout=30).stdout):
                            break
                    except OmniQError:
                        break
                    time.sleep(0.5)
            self._tracked.clear()
            with contextlib.suppress(OSError):
                os.unlink(self.env_file)

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

    # --- files -----------------------------------------------------------------------------------
    @property
    def env_file(self) -> str:
        """The pool's private environment file (mode 0600; URLs and secrets for its jobs).

        Examples:
            ``<log_dir>/worker.env``; see :class:`~omniq.hpc.SlurmWorkers`.
        """
        return os.path.join(self.log_dir, "worker.env")

    @property
    def script(self) -> str:
        """The job script every job of the pool runs.

        Examples:
            ``<log_dir>/job.sh``; see :class:`~omniq.hpc.SlurmWorkers`.
        """
        return os.path.join(self.log_dir, "job.sh")

    def worker_command(self) -> list[str]:
        """``omniq worker`` as a job runs it (no URL: those come from the environment file).

        Returns:
            The command.

        Examples:
            See :class:`~omniq.hpc.SlurmWorkers`.
        """
        cmd = [self.python, "-m", "omniq.cli", "worker", "--worker", self.worker, "-c", str(self.cores),
               "--grace", str(self.grace)]
        if self.idle_timeout is not None:
            cmd += ["--idle-timeout", f"{self.idle_timeout:g}"]
        if self.queues:
            cmd += ["--queues", ",".join(self.queues)]
        if self.memory_limit is not None:
            cmd += ["--memory-limit", str(self.memory_limit)]
        return cmd

    def job_script(self) -> str:
        """The job script: source the private environment file, then become ``omniq worker``
        (``exec``: the scheduler's signals reach the worker itself).

        Returns:
            The script's text.

        Examples:
            See :class:`~omniq.hpc.SlurmWorkers`.
        """
        return "\n".join([
            "#!/bin/bash",
            f"# OmniQ worker job of pool {self.name} ({self.scheduler}); options are on the submit",
            "# command line. It leaves after idle_timeout without tasks, or near its walltime",
            "# (SIGTERM: stops taking tasks, hands back what it cannot finish).",
            f"# storage URLs and secrets: {self.env_file} (mode 0600, removed on close)",
            "set -e",
            f". {shlex.quote(self.env_file)}",
            'echo "omniq job ${SLURM_JOB_ID:-${PBS_JOBID:-${LSB_JOBID:-?}}} on $(hostname) at $(date \'+%F %T\')" >&2',
            "exec " + shlex.join(self.worker_command()),
            "",
        ])

    def import_path(self) -> list[str]:
        """Folders this process imports from that its interpreter would not (the notebook's
        folder, ``sys.path`` additions): the job puts them on ``PYTHONPATH``, so tasks whose
        functions live in modules import them there too. Only for the same interpreter.

        Returns:
            The folders (empty when the jobs run another interpreter).

        Examples:
            See :class:`~omniq.hpc.SlurmWorkers`.
        """
        if self.python != os.path.abspath(sys.executable):
            return []
        import site

        own = {sys.prefix, sys.base_prefix, sys.exec_prefix}
        with contextlib.suppress(Exception):
            own.update(site.getsitepackages())
        with contextlib.suppress(Exception):
            own.add(site.getusersitepackages())
        own = {os.path.abspath(p) for p in own if p}
        out: list[str] = []
        for entry in sys.path:
            p = os.path.abspath(entry or self.cwd)
            if not os.path.isdir(p) or p in out or any(p == o or p.startswith(o + os.sep) for o in own):
                continue
            out.append(p)
        return out

    def _storage_variables(self) -> dict[str, str]:
        cfg = self._core.config
        out = {k: v for k, v in os.environ.items() if k.startswith("OMNIQ_")}  # secret keys, log level...
        out["OMNIQ_TASK_QUEUE_TYPE"] = self.urls["tasks"]
        for role, var in (("results", "OMNIQ_RESULT_STORAGE_TYPE"), ("events", "OMNIQ_EVENT_STORAGE_TYPE")):
            if self.urls[role] != self.urls["tasks"]:
                out[var] = self.urls[role]
            else:
                out.pop(var, None)
        out["OMNIQ_LEASE"] = f"{cfg.lease:g}"
        out.pop("OMNIQ_CONCURRENCY", None)
        out.pop("OMNIQ_QUEUES", None)
        if cfg.storage_options:
            try:
                out["OMNIQ_STORAGE_OPTIONS"] = json.dumps(dict(cfg.storage_options))
            except (TypeError, ValueError) as exc:
                raise ConfigError(
                    f"storage_options cannot travel to {self.scheduler} jobs ({exc}): give the jobs "
                    "their credentials through env= or the usual variables instead") from exc
        else:
            out.pop("OMNIQ_STORAGE_OPTIONS", None)
        out.update(self.env)
        return out

    def _prepare(self) -> None:
        """The log folder (0700), the environment file (0600) and the job script."""
        if self._prepared:
            return
        try:
            os.makedirs(self.log_dir, mode=0o700, exist_ok=True)
            lines = [f"# OmniQ {self.scheduler} pool {self.name}: environment of its jobs (secrets: keep 0600)"]
            lines += ["unset OMNIQ_RESULT_STORAGE_TYPE OMNIQ_EVENT_STORAGE_TYPE OMNIQ_STORAGE_OPTIONS"]
            lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(self._storage_env.items())]
            path = self.import_path()
            if path and "PYTHONPATH" not in self.env:
                lines.append(f"export PYTHONPATH={shlex.quote(os.pathsep.join(path))}"
                             '"${PYTHONPATH:+:$PYTHONPATH}"')
            tmp = f"{self.env_file}.{os.getpid()}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write("\n".join(lines) + "\n")
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.env_file)
            with open(self.script, "w") as f:
                f.write(self.job_script())
            os.chmod(self.script, 0o700)
        except OSError as exc:
            raise ConfigError(f"log_dir={self.log_dir!r} cannot hold the pool's files: {exc}") from exc
        self._prepared = True

    # --- internals: commands -------------------------------------------------------------------------
    def _check_commands(self) -> None:
        import shutil

        missing = [c for c in self.commands if shutil.which(c) is None]
        if missing:
            raise ConfigError(
                f"{type(self).__name__} needs {self.scheduler}'s commands on this machine; "
                f"{', '.join(missing)} not found on PATH (run where you would run them: a login node)")

    def _subprocess_env(self) -> dict[str, str]:
        # OMNIQ_* (URLs, secret keys) travel in the 0600 file, not in the scheduler's copy of
        # the submitting environment
        return {k: v for k, v in os.environ.items() if not k.startswith("OMNIQ_")}

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

    def _check_env(self, env: Mapping[str, str] | None) -> dict[str, str]:
        if env is None:
            return {}
        if not isinstance(env, Mapping):
            raise ConfigError(f"env={env!r} is not valid: expected a mapping of variable names to strings")
        out = {}
        for k, v in env.items():
            if not isinstance(k, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
                raise ConfigError(f"env: {k!r} is not a valid variable name")
            if not isinstance(v, (str, int, float)) or isinstance(v, bool):
                raise ConfigError(f"env[{k!r}]={v!r} is not valid: expected a string")
            out[k] = str(v)
        return out

    def _check_python(self, python: str | None) -> str:
        if python is None:
            return sys.executable
        if not isinstance(python, (str, os.PathLike)) or not os.fspath(python).strip():
            raise ConfigError(f"python={python!r} is not valid: expected the path of a Python interpreter")
        path = os.fspath(python)
        if os.sep not in path:
            import shutil

            found = shutil.which(path)
            if found is None:
                raise ConfigError(f"python={python!r} is not on PATH: give the interpreter's full path")
            path = found
        if not os.access(path, os.X_OK):
            raise ConfigError(f"python={python!r} is not an executable here (jobs run it with omniq installed)")
        return os.path.abspath(path)

    def _check_memory_limit(self, value: Any) -> str | None:
        if value is None:
            return None
        parse_size(value, "memory_limit")  # a ConfigError naming it when not a size
        return str(value)

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
            if not self._prepared:
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
