"""SLURM from a cell: ``%omniq workers --slurm N`` / ``--adapt MIN:MAX`` and the job options
read into a request, the kernel's pool rescaled or replaced, and the pools listed for
``%omniq status``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from IPython.core.error import UsageError

from ..errors import ConfigError, OmniQError
from ..hpc import SlurmWorkers, parse_walltime
from ..hpc import pools as slurm_pools
from .arguments import unquote

_JOB_OPTIONS = ("partition", "walltime", "cores", "gpus")


def slurm_request(args: Any) -> tuple[tuple[str, int, int], dict[str, Any]] | None:
    """``%omniq workers``'s SLURM options as ``(("scale", n, n) | ("adapt", min, max), job
    options given)``; None without --slurm / --adapt. A bad value is a one-line UsageError
    naming the option and what is valid (before any job is submitted)."""
    slurm, adapt = unquote(args.slurm), unquote(args.adapt)
    given = {k: unquote(getattr(args, k)) or "" for k in _JOB_OPTIONS if getattr(args, k) is not None}
    if slurm is None and adapt is None:
        if given:
            opts = " ".join(f"--{k}" for k in given)
            raise UsageError(f"{opts}: job options need --slurm N or --adapt MIN:MAX "
                             "(%omniq workers --slurm 2 --cores 4)")
        return None
    if slurm is not None and adapt is not None:
        raise UsageError(f"--slurm {slurm} and --adapt {adapt}: give one (a fixed number of jobs, or "
                         "jobs that follow the queue)")
    if slurm is not None:
        n = _whole("--slurm", slurm, 0, "a number of jobs >= 0, e.g. --slurm 2 (0: none)")
        mode = ("scale", n, n)
    else:
        text = adapt or ""
        lo_text, sep, hi_text = text.partition(":")
        valid = "MIN:MAX, two whole numbers with 0 <= MIN <= MAX and MAX >= 1, e.g. --adapt 0:10"
        if not sep:
            raise UsageError(f"--adapt {text}: expected {valid}")
        lo = _whole("--adapt", lo_text, 0, valid, shown=text)
        hi = _whole("--adapt", hi_text, 1, valid, shown=text)
        if hi < lo:
            raise UsageError(f"--adapt {text}: MAX is below MIN; expected {valid}")
        mode = ("adapt", lo, hi)
    options: dict[str, Any] = {}
    for key, value in given.items():
        if key == "cores":
            options[key] = _whole("--cores", value, 1, "a number of CPUs per job >= 1, e.g. --cores 4")
        elif key == "gpus":
            options[key] = int(value) if value.isascii() and value.isdigit() else value  # a count, or type:count
        else:
            options[key] = value
    if "walltime" in options:  # said against the option here; the pool would say walltime=
        try:
            parse_walltime(options["walltime"])
        except ConfigError as exc:
            raise UsageError(f"--walltime {options['walltime']}: {str(exc).split(': ', 1)[1]}") from None
    return mode, options


def follow(pool: SlurmWorkers, mode: tuple[str, int, int]) -> None:
    """Apply a request's mode to ``pool``: ``scale(n)`` or ``adapt(min, max)``."""
    if mode[0] == "scale":
        pool.scale(mode[1])
    else:
        pool.adapt(minimum=mode[1], maximum=mode[2])


def _whole(option: str, text: str, minimum: int, valid: str, *, shown: str | None = None) -> int:
    t = text.strip()
    if not (t.isascii() and t.isdigit()) or int(t) < minimum:
        raise UsageError(f"{option} {shown if shown is not None else text}: expected {valid}")
    return int(t)


def changed_options(pool: SlurmWorkers, options: Mapping[str, Any]) -> list[str]:
    """The job options given that differ from ``pool``'s, as ``--cores 4 (was 1)``."""
    now = {"partition": pool.partition, "walltime": pool.walltime_seconds, "cores": pool.cores,
           "gpus": pool.gpus}
    was = {"partition": pool.partition, "walltime": pool.walltime, "cores": pool.cores, "gpus": pool.gpus_asked}
    out = []
    for key, value in options.items():
        asked: Any = value
        if key == "walltime":
            asked = parse_walltime(value)
        elif key == "gpus":
            asked = None if value in (0, "0") else str(value)
        if asked != now[key]:
            out.append(f"--{key} {value} (was {was[key] if was[key] is not None else 'unset'})")
    return out


def slurm_status(*, fresh: bool = False) -> list[dict[str, Any]]:
    """The SLURM pools this kernel started (``%omniq workers --slurm``, or ``SlurmWorkers`` in
    code) with their jobs, for ``%omniq status``. ``fresh``: ask ``squeue`` now (once per
    pool); otherwise the jobs the pools' own checks saw last (no command per refresh)."""
    out = []
    for pool in slurm_pools():
        if fresh:
            with contextlib.suppress(OmniQError):
                pool.jobs()
        st = pool.status()
        if st["jobs"] or (st["mode"] is not None and st["mode"] != ("scale", 0, 0)):
            out.append(st)
    return out
