"""A pool's jobs as its scheduler last listed them, and how many the pool wants: its bookkeeping.

``JobWorkers`` (``base.py``) runs the scheduler's commands and tells its ``JobBook`` what they
did (jobs submitted, cancelled, listed); the book keeps what is known of each job and decides
(``JobBook.plan``, ``wanted``) how many jobs to submit and which to cancel. No subprocess, no
thread, no clock of its own (the time is handed in), so it is tested without a scheduler
(``tests/test_hpc_book.py``); the pool's lock guards it.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Sequence

#: seconds a job just submitted may be missing from the listing before it counts as gone (the
#: scheduler may not list it yet)
UNLISTED_GRACE = 10.0


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


def wanted(lo: int, hi: int, *, have: int, cores: int, tasks: tuple[int, int] | None, force: bool = False,
           scaling: bool = False) -> int:
    """How many active jobs a pool wants, between ``lo`` and ``hi``.

    ``force`` (``scale(n)`` called now): exactly ``lo``. Kept at a scale (``scaling``): ``hi``
    while tasks are queued, else no more than it has (jobs that ended are replaced only while
    there is work for them). Adapting: enough slots (jobs x ``cores``) for the queued and
    running tasks while some are queued, bounded; ``lo`` when none are.

    Args:
        lo: Jobs at least (``minimum``; ``n`` for a scale).
        hi: Jobs at most (``maximum``; ``n`` for a scale).
        have: Active jobs now (see :attr:`Job.active`).
        cores: Worker slots per job.
        tasks: ``(queued, running)`` tasks in the pool's queues; None: unknown (as none).
        force: Reach ``lo`` now, whatever the tasks.
        scaling: The pool keeps a scale (``scale(n)``) rather than adapting.

    Returns:
        The number of active jobs wanted.

    Examples:
        >>> from omniq.hpc.book import wanted
        >>> wanted(0, 20, have=2, cores=4, tasks=(30, 8))  # 38 tasks on 4 slots a job
        10
        >>> wanted(1, 20, have=3, cores=4, tasks=(0, 8)), wanted(4, 4, have=2, cores=1, tasks=(0, 0), scaling=True)
        (1, 2)
    """
    if force:
        return lo
    queued, running = tasks or (0, 0)
    if scaling:
        return hi if queued > 0 else min(have, hi)
    if queued == 0:
        return lo
    return max(lo, min(hi, math.ceil((queued + running) / cores)))


@dataclasses.dataclass(frozen=True)
class Plan:
    """What bringing a pool to its size takes (at most one of the first three is not empty).

    Attributes:
        submit: Jobs to submit.
        cancel: Jobs (pending) to cancel at once.
        leave: Jobs (running) to ask to leave after their running tasks.
        check: Pending jobs of a pool at its size: ask the scheduler whether they will ever start.

    Examples:
        >>> from omniq.hpc.book import Plan
        >>> Plan(submit=2)
        Plan(submit=2, cancel=(), leave=(), check=())
    """

    submit: int = 0
    cancel: tuple[str, ...] = ()
    leave: tuple[str, ...] = ()
    check: tuple[Job, ...] = ()


class JobBook:
    """What a pool knows of its jobs: each one as last listed (or as just submitted), when it
    was submitted, which were asked to leave, which were ever listed, and which were said never
    to start (so that is logged once).

    Examples:
        >>> from omniq.hpc import Job
        >>> from omniq.hpc.book import JobBook
        >>> book = JobBook()
        >>> book.submitted(["7_0"], now=100.0)
        >>> book.submitted(["7_1"], now=101.0)
        >>> book.plan(list(book.jobs.values()), 1, 1, cores=1, tasks=None, force=True)
        Plan(submit=0, cancel=('7_1',), leave=(), check=())
        >>> book.cancelled(["7_1"], graceful=False)
        >>> [j.id for j in book.merge([Job(id="7_0", state="RUNNING", job_id="8")], now=101.0,
        ...                           log_dir="/logs", name="omniq-x")]
        ['7_0']
        >>> book.jobs["7_0"].log
        '/logs/omniq-x-8.log'
    """

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}  # id -> last known
        self.submitted_at: dict[str, float] = {}
        self.stopping: set[str] = set()  # asked to leave after their running tasks
        self.listed: set[str] = set()  # ids seen in a listing at least once
        self.warned: set[str] = set()  # ids said to never start (logged once)

    def submitted(self, ids: Iterable[str], now: float) -> None:
        """The scheduler accepted these jobs (pending until it lists them).

        Args:
            ids: The new jobs' ids.
            now: The time (``time.monotonic()``).
        """
        for i in ids:
            self.jobs[i] = Job(id=i, state="PENDING")
            self.submitted_at[i] = now

    def cancelled(self, ids: Iterable[str], *, graceful: bool) -> None:
        """These jobs were cancelled: gone at once, or (``graceful``) leaving after their tasks.

        Args:
            ids: The jobs' ids.
            graceful: Asked to leave (still listed, no longer counted) rather than killed.
        """
        for i in ids:
            if graceful:
                self.stopping.add(i)
                j = self.jobs.get(i)
                if j is not None:
                    self.jobs[i] = dataclasses.replace(j, stopping=True)
            else:
                self.jobs.pop(i, None)
                self.stopping.discard(i)

    def merge(self, listed: Iterable[Job], *, now: float, log_dir: str, name: str) -> list[Job]:
        """Take the scheduler's listing of the pool's jobs: forget those gone from it (a job just
        submitted is kept ``UNLISTED_GRACE`` seconds until listed), note each one's log file
        once it started.

        Args:
            listed: The jobs as the list command gave them.
            now: The time (``time.monotonic()``).
            log_dir: The pool's folder (its jobs' logs).
            name: The pool's job name (a log is ``<name>-<job id>.log``).

        Returns:
            Every job the pool has now.
        """
        seen: dict[str, Job] = {}
        for j in listed:
            log_path = os.path.join(log_dir, f"{name}-{j.job_id}.log") if (
                j.job_id and j.state not in ("PENDING",)) else None
            seen[j.id] = dataclasses.replace(j, log=log_path, stopping=j.id in self.stopping)
        for i in list(self.jobs):
            if i not in seen and (i in self.listed or now - self.submitted_at.get(i, 0.0) > UNLISTED_GRACE):
                self.jobs.pop(i, None)
                self.stopping.discard(i)
                self.submitted_at.pop(i, None)
                self.listed.discard(i)
        for i, j in seen.items():
            self.jobs[i] = j
            self.submitted_at.setdefault(i, now)
            self.listed.add(i)
        return list(self.jobs.values())

    def plan(self, jobs: Sequence[Job], lo: int, hi: int, *, cores: int, tasks: tuple[int, int] | None,
             force: bool = False, scaling: bool = False) -> Plan:
        """What brings the pool to :func:`wanted` active jobs: submit the missing ones; for a
        surplus, cancel pending jobs first (the newest first) and, when ``force``, ask running
        ones to leave; at its size, check the pending ones.

        Args:
            jobs: The pool's jobs as just listed (inactive ones are not counted).
            lo: Jobs at least.
            hi: Jobs at most.
            cores: Worker slots per job.
            tasks: ``(queued, running)`` tasks, or None.
            force: Reach ``lo`` now (``scale``).
            scaling: The pool keeps a scale.

        Returns:
            The :class:`Plan`.
        """
        active = [j for j in jobs if j.active]
        have = len(active)
        want = wanted(lo, hi, have=have, cores=cores, tasks=tasks, force=force, scaling=scaling)
        if have < want:
            return Plan(submit=want - have)
        if have > want:
            surplus = have - want
            order = sorted(active, key=lambda j: (j.state != "PENDING", -self.submitted_at.get(j.id, 0.0)))
            pending = [j.id for j in order if j.state == "PENDING"][:surplus]
            leaving = [j.id for j in order if j.state != "PENDING"][: surplus - len(pending)] if force else []
            return Plan(cancel=tuple(pending), leave=tuple(leaving))
        return Plan(check=tuple(j for j in active if j.state == "PENDING"))

    def warn_once(self, job_id: str) -> bool:
        """True the first time a job is said never to start (log it then), False after.

        Args:
            job_id: The job's id.

        Returns:
            Whether this is the first time.
        """
        if job_id in self.warned:
            return False
        self.warned.add(job_id)
        return True
