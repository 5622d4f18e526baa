"""``JobSpec``: what each job of a pool runs, and the files that describe it.

A pool (``JobWorkers`` in ``base.py``) decides how many jobs run and when; a ``JobSpec`` says
what one job is, the same for all of them:

- **The command.** ``omniq worker`` with the pool's worker kind, slots, grace, idle timeout,
  queues and memory limit, run by the chosen interpreter; no URL and no secret on it (a command
  line is public in ``ps``).
- **The environment file.** The storage URLs, ``storage_options``, this process's ``OMNIQ_*``
  variables (secret keys...), ``env=``, and the folders this process imports from, written to
  ``<log_dir>/worker.env`` with mode 0600.
- **The job script.** ``<log_dir>/job.sh``: source the environment file, then ``exec`` the
  command (so the scheduler's signals reach the worker itself).

The argument checks of what a job carries (``worker=``, ``queues=``, ``idle_timeout=``,
``env=``, ``python=``, ``memory_limit=``) live here
too, and so does the environment the scheduler's own commands run with (without ``OMNIQ_*``:
those travel in the 0600 file, not in the scheduler's copy of the submitting environment).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from typing import Any, cast

from ..config import settings
from ..config.sizes import parse_size
from ..errors import ConfigError


def check_idle_timeout(idle_timeout: Any) -> float | None:
    """``idle_timeout=`` of a pool, checked: seconds > 0, or None (never).

    Args:
        idle_timeout: Seconds a job stays without tasks before leaving, or None.

    Returns:
        ``idle_timeout`` as given.

    Raises:
        ConfigError: Not a finite number of seconds > 0 (nor None).

    Examples:
        >>> from omniq.hpc.jobspec import check_idle_timeout
        >>> check_idle_timeout(300), check_idle_timeout(None)
        (300, None)
    """
    if idle_timeout is not None and (isinstance(idle_timeout, bool) or not isinstance(idle_timeout, (int, float))
                                     or not 0 < idle_timeout < math.inf):
        raise ConfigError(f"idle_timeout={idle_timeout!r} is not valid: expected seconds > 0, or None (never)")
    return idle_timeout


def check_worker(worker: Any) -> str:
    """``worker=`` of a pool, checked: a worker kind.

    Args:
        worker: ``async``, ``thread``, ``process`` or ``gevent``.

    Returns:
        ``worker`` as given.

    Raises:
        ConfigError: Another value; the message lists the kinds.

    Examples:
        >>> from omniq.hpc.jobspec import check_worker
        >>> check_worker("thread")
        'thread'
    """
    if worker not in settings.WORKER_KINDS:
        raise ConfigError(f"worker={worker!r} is not valid: expected one of {', '.join(settings.WORKER_KINDS)}")
    return cast(str, worker)


def check_queues(queues: Sequence[str] | str | None) -> list[str] | None:
    """``queues=`` of a pool, checked: queue names, as a list or one comma-separated string.

    Args:
        queues: The queues jobs take from, or None (the OmniQ's).

    Returns:
        The names as a list, or None.

    Raises:
        ConfigError: Empty, or a name that is not a string without commas or outer spaces.

    Examples:
        >>> from omniq.hpc.jobspec import check_queues
        >>> check_queues("a, b"), check_queues(("c",)), check_queues(None)
        (['a', 'b'], ['c'], None)
    """
    if isinstance(queues, str):
        queues = [q.strip() for q in queues.split(",") if q.strip()]
    if queues is not None:
        queues = list(queues)
        bad = [q for q in queues if not isinstance(q, str) or not q or "," in q or q != q.strip()]
        if bad or not queues:
            raise ConfigError(f"queues={queues!r} is not valid: expected queue names (strings without commas)")
    return queues


def check_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """``env=`` of a pool, checked: variable names and their values as strings.

    Args:
        env: Variables for the jobs, or None.

    Returns:
        The variables (numbers made strings); empty for None.

    Raises:
        ConfigError: Not a mapping, a name that is not a shell variable name, or a value
            that is not a string (or a number).

    Examples:
        >>> from omniq.hpc.jobspec import check_env
        >>> check_env({"OMP_NUM_THREADS": 4}), check_env(None)
        ({'OMP_NUM_THREADS': '4'}, {})
        >>> from omniq import ConfigError
        >>> try:
        ...     check_env({"1BAD": "x"})
        ... except ConfigError as e:
        ...     print(e)
        env: '1BAD' is not a valid variable name
    """
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


def check_python(python: str | os.PathLike[str] | None) -> str:
    """``python=`` of a pool, checked: the absolute path of an executable interpreter.

    Args:
        python: A path, a name on PATH, or None (this interpreter).

    Returns:
        The interpreter's absolute path.

    Raises:
        ConfigError: Empty, not on PATH, or not executable here.

    Examples:
        >>> import sys
        >>> from omniq.hpc.jobspec import check_python
        >>> check_python(None) == sys.executable
        True
        >>> from omniq import ConfigError
        >>> try:
        ...     check_python("no-such-python-here")
        ... except ConfigError as e:
        ...     print(e)
        python='no-such-python-here' is not on PATH: give the interpreter's full path
    """
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


def check_memory_limit(value: Any) -> str | None:
    """``memory_limit=`` of a pool, checked as a size; kept as given (``omniq worker
    --memory-limit`` reads it).

    Args:
        value: A size (``"4GB"``, bytes) or None.

    Returns:
        The size as text, or None.

    Raises:
        ConfigError: Not a size (the message names ``memory_limit``).

    Examples:
        >>> from omniq.hpc.jobspec import check_memory_limit
        >>> check_memory_limit("4GB"), check_memory_limit(None)
        ('4GB', None)
    """
    if value is None:
        return None
    parse_size(value, "memory_limit")  # a ConfigError naming it when not a size
    return str(value)


def command_env() -> dict[str, str]:
    """The environment the scheduler's commands run with: this process's, without ``OMNIQ_*``
    (URLs and secret keys travel to jobs in the pool's 0600 file, not in the copy of the
    submitting environment a scheduler keeps).

    Returns:
        The variables.

    Examples:
        >>> import os
        >>> from omniq.hpc.jobspec import command_env
        >>> os.environ["OMNIQ_SECRET_KEY"] = "s3cret"
        >>> "OMNIQ_SECRET_KEY" in command_env(), "PATH" in command_env()
        (False, True)
        >>> del os.environ["OMNIQ_SECRET_KEY"]
    """
    return {k: v for k, v in os.environ.items() if not k.startswith("OMNIQ_")}


@dataclasses.dataclass
class JobSpec:
    """What every job of a pool runs: its ``omniq worker`` command, its private environment
    file and its job script. The values are checked by the pool (:func:`check_env`,
    :func:`check_python`, :func:`check_memory_limit`); the storage and the files' folder are
    given by :meth:`locate` once the pool knows them.

    Attributes:
        scheduler: The scheduler, for messages and the files' comments.
        python: The interpreter jobs run (with omniq installed).
        worker: The kind of worker slots (``async``, ``thread``, ``process``, ``gevent``).
        cores: Worker slots per job.
        grace: Seconds running tasks get to finish once a job is asked to leave.
        idle_timeout: Seconds a job stays without tasks before leaving; None: until its walltime.
        queues: The queues jobs take from; None: all.
        memory_limit: ``omniq worker --memory-limit``, or None.
        env: Variables for the jobs.
        cwd: The folder jobs start in, and the one an empty ``sys.path`` entry means.
        lease: The lease jobs' workers claim tasks with.
        storage_options: The storage's options (travel in the environment file).
        urls: ``{"tasks": ..., "results": ..., "events": ...}`` as jobs open them.
        name: The pool's job name.
        log_dir: The pool's folder (job script, environment file, logs).
        storage_env: The variables the environment file exports (set by :meth:`locate`).
        prepared: True once :meth:`prepare` wrote the files.

    Examples:
        >>> import os, tempfile
        >>> from omniq.hpc.jobspec import JobSpec
        >>> spec = JobSpec(python="/opt/py/bin/python", worker="thread", cores=2, grace=20,
        ...                idle_timeout=60, queues=["gpu"])
        >>> spec.worker_command()
        ['/opt/py/bin/python', '-m', 'omniq.cli', 'worker', '--worker', 'thread', '-c', '2', '--grace', '20', '--idle-timeout', '60', '--queues', 'gpu']
        >>> folder = tempfile.mkdtemp()
        >>> spec.locate(urls={"tasks": "sqlite:////lab/q.db", "results": "sqlite:////lab/q.db",
        ...                   "events": "sqlite:////lab/q.db"}, name="omniq-demo", log_dir=folder)
        >>> spec.storage_env["OMNIQ_TASK_QUEUE_TYPE"], spec.script == os.path.join(folder, "job.sh")
        ('sqlite:////lab/q.db', True)
        >>> spec.prepare()
        >>> oct(os.stat(spec.env_file).st_mode & 0o777), open(spec.script).read() == spec.job_script()
        ('0o600', True)
        >>> spec.remove_env_file(); os.path.exists(spec.env_file)
        False
    """

    python: str
    scheduler: str = "batch"
    worker: str = "process"
    cores: int = 1
    grace: int = 1
    idle_timeout: float | None = None
    queues: list[str] | None = None
    memory_limit: str | None = None
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    cwd: str = dataclasses.field(default_factory=os.getcwd)
    lease: float = settings.LEASE
    storage_options: Mapping[str, Any] | None = None
    urls: dict[str, str] = dataclasses.field(default_factory=dict)
    name: str = ""
    log_dir: str = ""
    storage_env: dict[str, str] = dataclasses.field(default_factory=dict)
    prepared: bool = False

    def locate(self, *, urls: Mapping[str, str], name: str, log_dir: str) -> None:
        """Give the storage jobs open and the pool's name and folder; the environment file's
        variables are read now (this process's ``OMNIQ_*`` among them).

        Args:
            urls: ``tasks``, ``results`` and ``events`` URLs, as jobs open them.
            name: The pool's job name.
            log_dir: The pool's folder.

        Raises:
            ConfigError: ``storage_options`` cannot be written as JSON.

        Examples:
            See :class:`JobSpec`.
        """
        self.urls = dict(urls)
        self.name = name
        self.log_dir = log_dir
        self.storage_env = self.storage_variables()

    @property
    def env_file(self) -> str:
        """The pool's private environment file (mode 0600; URLs and secrets for its jobs).

        Examples:
            ``<log_dir>/worker.env``; see :class:`JobSpec`.
        """
        return os.path.join(self.log_dir, "worker.env")

    @property
    def script(self) -> str:
        """The job script every job of the pool runs.

        Examples:
            ``<log_dir>/job.sh``; see :class:`JobSpec`.
        """
        return os.path.join(self.log_dir, "job.sh")

    def worker_command(self) -> list[str]:
        """``omniq worker`` as a job runs it (no URL: those come from the environment file).

        Returns:
            The command.

        Examples:
            See :class:`JobSpec`.
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
            See :class:`JobSpec`.
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
            >>> from omniq.hpc.jobspec import JobSpec
            >>> JobSpec(python="/another/python").import_path()
            []
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

    def storage_variables(self) -> dict[str, str]:
        """The variables the environment file exports: this process's ``OMNIQ_*``, the URLs
        (results and events only when they differ from tasks), the lease, ``storage_options``
        as JSON, then ``env``; not this process's concurrency or queues.

        Returns:
            The variables.

        Raises:
            ConfigError: ``storage_options`` cannot be written as JSON.

        Examples:
            >>> from omniq.hpc.jobspec import JobSpec
            >>> spec = JobSpec(python="python3", lease=60, env={"A": "1"},
            ...                urls={"tasks": "redis://db/0", "results": "redis://db/0", "events": "redis://db/0"})
            >>> {k: v for k, v in spec.storage_variables().items() if k in ("OMNIQ_TASK_QUEUE_TYPE", "OMNIQ_LEASE", "A")}
            {'OMNIQ_TASK_QUEUE_TYPE': 'redis://db/0', 'OMNIQ_LEASE': '60', 'A': '1'}
        """
        out = {k: v for k, v in os.environ.items() if k.startswith("OMNIQ_")}  # secret keys, log level...
        out["OMNIQ_TASK_QUEUE_TYPE"] = self.urls["tasks"]
        for role, var in (("results", "OMNIQ_RESULT_STORAGE_TYPE"), ("events", "OMNIQ_EVENT_STORAGE_TYPE")):
            if self.urls[role] != self.urls["tasks"]:
                out[var] = self.urls[role]
            else:
                out.pop(var, None)
        out["OMNIQ_LEASE"] = f"{self.lease:g}"
        out.pop("OMNIQ_CONCURRENCY", None)
        out.pop("OMNIQ_QUEUES", None)
        if self.storage_options:
            try:
                out["OMNIQ_STORAGE_OPTIONS"] = json.dumps(dict(self.storage_options))
            except (TypeError, ValueError) as exc:
                raise ConfigError(
                    f"storage_options cannot travel to {self.scheduler} jobs ({exc}): give the jobs "
                    "their credentials through env= or the usual variables instead") from exc
        else:
            out.pop("OMNIQ_STORAGE_OPTIONS", None)
        out.update(self.env)
        return out

    def prepare(self) -> None:
        """Write the log folder (0700), the environment file (0600) and the job script, once.

        Raises:
            ConfigError: ``log_dir`` cannot hold them.

        Examples:
            See :class:`JobSpec`.
        """
        if self.prepared:
            return
        try:
            os.makedirs(self.log_dir, mode=0o700, exist_ok=True)
            lines = [f"# OmniQ {self.scheduler} pool {self.name}: environment of its jobs (secrets: keep 0600)"]
            lines += ["unset OMNIQ_RESULT_STORAGE_TYPE OMNIQ_EVENT_STORAGE_TYPE OMNIQ_STORAGE_OPTIONS"]
            lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(self.storage_env.items())]
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
        self.prepared = True

    def remove_env_file(self) -> None:
        """Remove the environment file (its secrets leave with the jobs); no error if absent.

        Examples:
            See :class:`JobSpec`.
        """
        with contextlib.suppress(OSError):
            os.unlink(self.env_file)
