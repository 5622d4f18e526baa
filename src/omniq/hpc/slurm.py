"""``SlurmWorkers``: ``omniq worker`` jobs on SLURM (``sbatch``, ``scancel``, ``squeue``, ``sinfo``).

Each job is ``sbatch --nodes=1 --ntasks=1 --cpus-per-task=<cores> --time=<walltime>
--signal=B:TERM@<margin>`` of a script that sources the pool's private environment file and
``exec``s ``omniq worker`` (so SLURM's walltime warning, sent to the batch shell only, reaches
the worker itself and not the tasks' processes). Several jobs at once are one job array. Jobs are
named ``omniq-<storage tag>-<hex>`` (unique per pool: ``squeue --name`` lists them, ``scancel
--name`` cancels them all; the tag lets ``omniq status`` on the same task queue find them) and log
to ``<log_dir>/<name>-<job id>.log``.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from ..config.sizes import parse_size
from ..errors import ConfigError, OmniQError
from .base import (
    Job,
    JobSystemError,
    JobWorkers,
    _lines,
    format_walltime,
    parse_walltime,
    storage_tag,
)


class SlurmWorkers(JobWorkers):
    """A pool of SLURM jobs, each running ``omniq worker`` with ``cores`` slots against ``oq``'s
    storage, in the same Python (``sys.executable``) unless ``python=`` says otherwise.

    Args:
        oq: The ``OmniQ`` or ``AsyncOmniQ`` whose storage the jobs serve.
        partition: The partition jobs go to; None: the cluster's default.
        account: The account charged; None: the user's default.
        memory: Memory per job (``"16GB"``, bytes): ``--mem``.
        gpus: GPUs per job, a count or ``"type:count"``: ``--gres=gpu:...``.
        job_extra: More sbatch options (``["--qos=long", "--constraint=a100"]``).
        cores: Worker slots per job (``--cpus-per-task``).
        walltime: Each job's time limit.
        idle_timeout: Seconds a job stays without tasks before leaving (None: until its
            walltime).
        worker: The kind of worker slots (``async``, ``thread``, ``process``, ``gevent``).
        queues: The queues jobs take from (default: ``oq``'s).
        env: Variables for the jobs (kept out of command lines).
        python: The interpreter jobs run (with omniq installed); None: this one.
        memory_limit: ``omniq worker --memory-limit`` (a task over it fails cleanly).
        walltime_margin: Seconds before the walltime at which a job stops taking tasks
            (default: a tenth of it, 30 s to 5 min).
        log_dir: The pool's folder (default ``<base_dir>/hpc/<name>``).
        name: The job name (``omniq-<tag>-<hex>`` by default).
        interval: Seconds between checks of queue depth and jobs.

    Raises:
        ConfigError: An argument is not valid, or the cluster cannot run such jobs (a
            partition that does not exist, a walltime over its limit, more cores, memory or
            GPUs than any of its nodes has); SLURM's commands are not on PATH; or jobs could
            not reach the storage. Each message names the argument.

    Examples:
        On a login node:

        ```python
        pool = SlurmWorkers(oq, partition="gpu", cores=4, gpus=1, walltime="02:00:00")
        pool.scale(4)                 # or pool.adapt(minimum=0, maximum=20)
        pool.jobs()                   # [Job(id='123_0', state='RUNNING', ...), ...]
        pool.close()                  # cancels every job it started
        ```

        What the pool submits, without a cluster (a subclass that runs no SLURM command):

        >>> import os, tempfile
        >>> from omniq import OmniQ
        >>> from omniq.hpc import SlurmWorkers
        >>> class Offline(SlurmWorkers):     # SLURM's commands built, none run: no cluster needed
        ...     commands = ()
        ...     def partitions(self):
        ...         return {}
        ...     def cluster_hosts(self):
        ...         return ["localhost"]
        >>> lab = tempfile.mkdtemp()
        >>> oq = OmniQ(tasks=f"sqlite:///{lab}/lab.db", concurrency=0)
        >>> pool = Offline(oq, partition="gpu", cores=4, gpus=1, walltime="02:00:00", name="demo",
        ...                log_dir=f"{lab}/logs")
        >>> pool.name, pool.walltime_margin, pool.grace
        ('omniq-demo', 300, 200)
        >>> pool.submit_command(pool.script, 3)  # doctest: +ELLIPSIS
        ['sbatch', '--parsable', '--job-name=omniq-demo', '--output=.../logs/%x-%j.log', '--time=02:00:00', '--nodes=1', '--ntasks=1', '--cpus-per-task=4', '--signal=B:TERM@300', '--chdir=...', '--partition=gpu', '--gres=gpu:1', '--array=0-2', '.../logs/job.sh']
        >>> pool.parse_submit("4242", 3)
        ['4242_0', '4242_1', '4242_2']
        >>> pool.cancel_command(["4242_0"], graceful=True), pool.cancel_all_command()
        (['scancel', '--batch', '--signal=TERM', '4242_0'], ['scancel', '--name=omniq-demo'])
        >>> pool.worker_command()[2:]
        ['omniq.cli', 'worker', '--worker', 'process', '-c', '4', '--grace', '200', '--idle-timeout', '300']
        >>> print(pool.job_script())  # doctest: +ELLIPSIS
        #!/bin/bash
        ...
        exec ... -m omniq.cli worker --worker process -c 4 --grace 200 --idle-timeout 300
        >>> pool.scale(0).jobs(), pool.logs(), pool.status()["mode"]  # nothing submitted
        ([], [], ('scale', 0, 0))
        >>> pool.close()
        >>> pool.closed
        True
        >>> oq.close()
    """

    scheduler = "SLURM"
    commands = ("sbatch", "squeue", "scancel", "sinfo")

    def __init__(
        self,
        oq: Any,
        *,
        partition: str | None = None,
        account: str | None = None,
        cores: int = 1,
        memory: int | str | None = None,
        gpus: int | str | None = None,
        walltime: Any = "01:00:00",
        idle_timeout: float | None = 300,
        worker: str = "process",
        queues: Sequence[str] | str | None = None,
        job_extra: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        python: str | None = None,
        memory_limit: int | str | None = None,
        walltime_margin: float | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        name: str | None = None,
        interval: float = 5.0,
    ) -> None:
        self.partition = _word("partition", partition)
        self.account = _word("account", account)
        self.memory_mb = None if memory is None else -(-parse_size(memory, "memory") // (1024 * 1024))  # type: ignore[operator]
        self.memory = memory
        self.gpus = _gpus(gpus)
        self.gpus_asked = gpus
        if isinstance(job_extra, str):
            job_extra = [job_extra]
        extra = []
        for item in job_extra:
            if not isinstance(item, str) or not item.strip():
                raise ConfigError(f"job_extra: {item!r} is not valid: expected sbatch options such as '--qos=long'")
            item = item.strip()
            if item.startswith("#SBATCH"):
                item = item[len("#SBATCH"):].strip()
            if not item.startswith("-") or "\n" in item:
                raise ConfigError(f"job_extra: {item!r} is not valid: expected sbatch options such as '--qos=long'")
            extra.extend(shlex.split(item))
        self.job_extra = extra
        self._partitions: dict[str, dict[str, Any]] | None = None
        super().__init__(
            oq, cores=cores, walltime=walltime, idle_timeout=idle_timeout, worker=worker, queues=queues,
            env=env, python=python, memory_limit=memory_limit, walltime_margin=walltime_margin,
            log_dir=log_dir, name=name, interval=interval,
        )

    # --- the three commands ---------------------------------------------------------------------
    def sbatch_options(self) -> list[str]:
        """The options every job of the pool is submitted with.

        Returns:
            ``--job-name``, ``--output``, ``--time``, ``--nodes=1``, ``--ntasks=1``,
            ``--cpus-per-task``, ``--signal=B:TERM@<margin>``, ``--chdir``, then
            ``--partition``, ``--account``, ``--mem``, ``--gres`` where given, then
            ``job_extra``.

        Examples:
            See :class:`SlurmWorkers`.
        """
        opts = [
            f"--job-name={self.name}",
            f"--output={os.path.join(self.log_dir, '%x-%j.log')}",
            f"--time={self.walltime}",
            "--nodes=1",
            "--ntasks=1",
            f"--cpus-per-task={self.cores}",
            f"--signal=B:TERM@{self.walltime_margin}",
            f"--chdir={self.cwd}",
        ]
        if self.partition:
            opts.append(f"--partition={self.partition}")
        if self.account:
            opts.append(f"--account={self.account}")
        if self.memory_mb is not None:
            opts.append(f"--mem={self.memory_mb}M")
        if self.gpus:
            opts.append(f"--gres=gpu:{self.gpus}")
        return opts + self.job_extra

    def submit_command(self, script: str, count: int) -> list[str]:
        """``sbatch --parsable`` with the pool's options; a job array for ``count`` > 1.

        Args:
            script: The job script's path.
            count: How many jobs.

        Returns:
            The command.

        Examples:
            See :class:`SlurmWorkers`.
        """
        argv = ["sbatch", "--parsable", *self.sbatch_options()]
        if count > 1:
            argv.append(f"--array=0-{count - 1}")
        return [*argv, script]

    def parse_submit(self, stdout: str, count: int) -> list[str]:
        """The job ids sbatch made: ``123``, or ``123_0`` ... for the elements of an array.

        Args:
            stdout: ``sbatch --parsable``'s output (``"123"`` or ``"123;cluster"``).
            count: How many jobs were submitted.

        Returns:
            The ids.

        Raises:
            JobSystemError: The output is not a job id.

        Examples:
            See :class:`SlurmWorkers`.
        """
        first = next(iter(_lines(stdout)), "").strip().split(";")[0]
        if not first.isdigit():
            raise JobSystemError(f"sbatch answered {stdout.strip()!r}, not a job id")
        return [f"{first}_{i}" for i in range(count)] if count > 1 else [first]

    def cancel_command(self, ids: Sequence[str], *, graceful: bool) -> list[str]:
        """``scancel`` of ``ids``; ``graceful``: SIGTERM to the worker only (``--batch``).

        Args:
            ids: Job ids.
            graceful: Ask the workers to leave after their running tasks, instead of killing
                the jobs.

        Returns:
            The command.

        Examples:
            See :class:`SlurmWorkers`.
        """
        # graceful: SIGTERM to the batch shell (the worker, exec'd) only, not to the tasks'
        # processes: it stops taking tasks, lets running ones finish within its grace, leaves
        return ["scancel", *(["--batch", "--signal=TERM"] if graceful else []), *ids]

    def cancel_all_command(self) -> list[str]:
        """``scancel --name``: every job of the pool, also those submitted a moment ago.

        Returns:
            The command.

        Examples:
            See :class:`SlurmWorkers`.
        """
        return ["scancel", f"--name={self.name}"]

    def list_command(self) -> list[str]:
        """``squeue`` of the pool's jobs (array elements one by one), in ``SQUEUE_FORMAT``.

        Returns:
            The command.

        Examples:
            ``['squeue', '--noheader', '--array', '--name=omniq-demo', '--format=%i|%A|%T|%r|%N|%j']``
        """
        return ["squeue", "--noheader", "--array", f"--name={self.name}", f"--format={SQUEUE_FORMAT}"]

    def parse_list(self, stdout: str) -> list[Job]:
        """Jobs in ``squeue`` output (:func:`parse_squeue`).

        Args:
            stdout: The list command's output.

        Returns:
            The jobs.

        Examples:
            See :func:`parse_squeue`.
        """
        return parse_squeue(stdout)

    # --- cluster facts ---------------------------------------------------------------------------
    def partitions(self) -> dict[str, dict[str, Any]]:
        """What ``sinfo`` says of each partition: ``limit`` (time limit as written), ``default``,
        ``cpus`` / ``memory_mb`` (the most of any node), ``gres`` and ``hosts`` (node names and
        addresses). Empty when sinfo does not answer. Asked once per pool.

        Returns:
            partition name -> its facts.

        Examples:
            ``pool.partitions()["gpu"]["limit"]`` -> ``'2-00:00:00'``
        """
        if self._partitions is None:
            try:
                p = self._run(["sinfo", "--noheader", "--Node", "--format=%P|%l|%c|%m|%G|%N|%o|%n"],
                              timeout=30, check=False)
            except OmniQError:
                return {}
            out: dict[str, dict[str, Any]] = {}
            if p.returncode == 0:
                for line in _lines(p.stdout):
                    f = [x.strip() for x in line.split("|")]
                    if len(f) < 8:
                        continue
                    name = f[0].rstrip("*")
                    part = out.setdefault(name, {"limit": f[1], "default": f[0].endswith("*"), "cpus": 0,
                                                 "memory_mb": 0, "gres": set(), "hosts": set()})
                    part["cpus"] = max(part["cpus"], _leading_int(f[2]))
                    part["memory_mb"] = max(part["memory_mb"], _leading_int(f[3]))
                    if f[4] not in ("(null)", ""):
                        part["gres"].add(f[4])
                    part["hosts"].update(h for h in f[5:8] if h and h != "(null)")
            self._partitions = out
        return self._partitions

    def _partition(self) -> tuple[str, dict[str, Any]] | None:
        """The partition jobs go to (the one named, else the default), with its facts."""
        parts = self.partitions()
        name = self.partition or next((n for n, v in parts.items() if v["default"]), None)
        return (name, parts[name]) if name is not None and name in parts else None

    def cluster_hosts(self) -> list[str] | None:
        """Names and addresses of the partition's nodes, from ``sinfo`` (None: unknown).

        Returns:
            The hosts, sorted, or None.

        Examples:
            ``pool.cluster_hosts()`` -> ``['c01', 'c02', '10.0.0.11', ...]``
        """
        found = self._partition()
        return sorted(found[1]["hosts"]) if found is not None and found[1]["hosts"] else None

    def _validate(self) -> None:
        parts = self.partitions()
        if not parts:
            return  # sinfo said nothing: sbatch will
        if self.partition is not None and self.partition not in parts:
            raise ConfigError(f"partition={self.partition!r} is not a SLURM partition here: expected one of "
                              f"{', '.join(sorted(parts))}")
        found = self._partition()
        if found is None:
            return
        name, facts = found
        limit = facts["limit"]
        if limit and limit.lower() not in ("infinite", "unlimited", "n/a"):
            try:
                max_seconds = parse_walltime(limit)
            except ConfigError:
                max_seconds = None
            if max_seconds is not None and self.walltime_seconds > max_seconds:
                raise ConfigError(
                    f"walltime={self.walltime!r} is over partition {name}'s time limit of {limit} "
                    f"({format_walltime(max_seconds)}): jobs would wait forever; ask for at most that")
        if facts["cpus"] and self.cores > facts["cpus"]:
            raise ConfigError(f"cores={self.cores} is more than any node of partition {name} has "
                              f"({facts['cpus']} CPUs)")
        if facts["memory_mb"] and self.memory_mb is not None and self.memory_mb > facts["memory_mb"]:
            raise ConfigError(f"memory={self.memory!r} is more than any node of partition {name} has "
                              f"({facts['memory_mb']} MB)")
        if self.gpus and not any("gpu" in g for g in facts["gres"]):
            raise ConfigError(f"gpus={self.gpus_asked!r}: partition {name} has no GPUs "
                              f"(its nodes' generic resources: {', '.join(sorted(facts['gres'])) or 'none'})")

    def never_starts(self, job: Job) -> str | None:
        """Why a pending job will never start as asked (its squeue reason), or None.

        Args:
            job: A pending job as listed.

        Returns:
            ``"Reason (what to change)"`` for a reason in ``NEVER``, else None.

        Examples:
            ``PartitionTimeLimit (walltime over the partition's time limit)``
        """
        if job.reason in NEVER:
            return f"{job.reason} ({NEVER[job.reason]})"
        return None

    def submit_error(self, message: str) -> OmniQError:
        """sbatch's refusal as a ``ConfigError`` naming the argument at fault, when it is one.

        Args:
            message: What sbatch printed.

        Returns:
            A ``ConfigError`` (partition, account, walltime, resources, options) or else a
            ``JobSystemError``.

        Examples:
            ``"Invalid partition name specified"`` ->
            ``ConfigError("partition='gpu': SLURM refused the job: Invalid partition name specified")``
        """
        low = message.lower()
        if "partition" in low:
            return ConfigError(f"partition={self.partition!r}: SLURM refused the job: {message}")
        if "account" in low or "association" in low:
            return ConfigError(f"account={self.account!r}: SLURM refused the job: {message}")
        if "time limit" in low:
            return ConfigError(f"walltime={self.walltime!r}: SLURM refused the job: {message}")
        if "node configuration is not available" in low or "gres" in low or "memory" in low:
            return ConfigError(
                f"cores={self.cores}, memory={self.memory!r}, gpus={self.gpus!r}: no node can run such a job "
                f"(SLURM: {message})")
        if "invalid" in low or "unrecognized" in low or ("error" in low and "option" in low):
            return ConfigError(f"SLURM refused the job's options ({' '.join(self.sbatch_options())}): {message}")
        return JobSystemError(f"sbatch failed: {message}")


#: pending reasons that mean "never, as asked" (squeue %r), and what to change
NEVER = {
    "PartitionConfig": "more CPUs, memory or GPUs than the partition allows a job",
    "PartitionTimeLimit": "walltime over the partition's time limit",
    "PartitionNodeLimit": "more nodes than the partition allows",
    "BadConstraints": "constraints no node satisfies (job_extra)",
    "InvalidAccount": "the account is not valid",
    "InvalidQOS": "the QOS is not valid",
    "DependencyNeverSatisfied": "a dependency that can never be met (job_extra)",
}


SQUEUE_FORMAT = "%i|%A|%T|%r|%N|%j"


def parse_squeue(stdout: str) -> list[Job]:
    """Jobs in ``squeue --format=SQUEUE_FORMAT`` output.

    Args:
        stdout: ``squeue``'s output, one job per line.

    Returns:
        The jobs (lines with fewer than three fields are skipped).

    Examples:
        >>> from omniq.hpc.slurm import parse_squeue
        >>> out = ["41_0|42|RUNNING|None|c12|omniq-0badcafe-1a2b3c",
        ...        "41_1|41|PENDING|Resources|(null)|omniq-0badcafe-1a2b3c"]
        >>> [(j.id, j.state, j.job_id, j.reason, j.node) for j in parse_squeue(chr(10).join(out))]
        [('41_0', 'RUNNING', '42', '', 'c12'), ('41_1', 'PENDING', None, 'Resources', '')]
    """
    jobs = []
    for line in _lines(stdout):
        parts = [p.strip() for p in line.split("|", 5)]
        if len(parts) < 3:
            continue
        jid, raw, state = parts[0], parts[1], parts[2].upper()
        reason = parts[3] if len(parts) > 3 and parts[3] not in ("None", "(null)") else ""
        node = parts[4] if len(parts) > 4 and parts[4] not in ("(null)",) else ""
        name = parts[5] if len(parts) > 5 else ""
        # (a pending array element shows the array's id until it starts)
        job_id = raw if raw.isdigit() and state != "PENDING" else None
        jobs.append(Job(id=jid, state=state, job_id=job_id, reason=reason, node=node, name=name))
    return jobs


def omniq_jobs(*, tasks: str | None = None, user: str | None = None, timeout: float = 10.0,
               strict: bool = False) -> list[Job]:
    """The SLURM jobs of ``user`` (default: whoever runs this) whose name starts with ``omniq``
    (every pool's, from any process), as ``squeue`` lists them now; with ``tasks`` (a task queue
    URL), only those serving that queue (by the storage tag in their name: pools given their own
    ``name=`` are not found this way). Empty where SLURM's commands are missing or do not answer
    (for status displays, which must work without SLURM).

    Args:
        tasks: A task queue URL: only jobs serving it.
        user: Whose jobs; None: whoever runs this.
        timeout: Seconds to wait for ``squeue``.
        strict: Raise instead of returning an empty list when ``squeue`` fails.

    Returns:
        The jobs, as :func:`parse_squeue` reads them.

    Raises:
        JobSystemError: With ``strict``, ``squeue`` is missing, timed out or failed.

    Examples:
        >>> from omniq.hpc import omniq_jobs
        >>> jobs = omniq_jobs(tasks="sqlite:////home/me/lab.db")  # [] without SLURM
        >>> all(j.name.startswith("omniq-") for j in jobs)
        True
    """
    import getpass
    import subprocess

    tag = None
    if tasks is not None:
        tag = storage_tag(tasks)
        if tag is None:
            return []  # a queue no job can serve (memory://)
    try:
        who = user or getpass.getuser()
        p = subprocess.run(["squeue", "--noheader", "--array", f"--user={who}", f"--format={SQUEUE_FORMAT}"],
                           capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired, KeyError) as exc:
        if strict:
            raise JobSystemError(f"squeue did not answer: {exc}") from exc
        return []
    if p.returncode != 0:
        if strict:
            raise JobSystemError(f"squeue failed ({p.returncode}): {(p.stderr or p.stdout).strip()}")
        return []
    jobs = [j for j in parse_squeue(p.stdout) if j.name.lower().startswith("omniq")]
    if tag is not None:
        jobs = [j for j in jobs if f"-{tag}-" in j.name.lower()]
    return jobs


def _leading_int(text: str) -> int:
    digits = ""
    for c in text:
        if c not in "0123456789":  # (str.isdigit() takes "²", which int() refuses)
            break
        digits += c
    return int(digits) if digits else 0


def _word(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value.strip()):
        raise ConfigError(f"{name}={value!r} is not valid: expected a {name} name")
    return value.strip()


def _gpus(value: Any) -> str | None:
    if value is None or value == 0:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return str(value)
    if isinstance(value, str):
        kind, _, count = value.strip().rpartition(":")
        if count.isascii() and count.isdigit() and int(count) > 0 and (not kind or all(c.isalnum() or c in "-_." for c in kind)):
            return value.strip()
    raise ConfigError(f"gpus={value!r} is not valid: expected a number of GPUs >= 1, or 'type:count' such as 'a100:2'")
