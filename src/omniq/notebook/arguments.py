"""The ``%omniq`` subcommands' arguments: the option stacks they share (storage, workers,
enqueue options, SLURM jobs, submit), the decorator that applies them, and parsing a line into
them with every failure a one-line ``UsageError``.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from IPython.core.error import UsageError
from IPython.core.magic_arguments import (
    ArgDecorator,
    argument,
    magic_arguments,
    parse_argstring,
)
from IPython.utils.process import arg_split

F = TypeVar("F", bound=Callable[..., Any])

HELP = (argument("-h", "--help", action="store_true", help="show this help and do nothing else"),)
TARGET = (argument("name", metavar="NAME", help="a name given to %%%%omniq submit -n, or a variable holding a sweep or handle"),)
TIMEOUT = (argument("--timeout", type=float, default=None, metavar="S", help="give up after S seconds"),)
STORAGE = (
    argument("--tasks", metavar="URL", help="task queue URL (default: sqlite under ./.omniq)"),
    argument("--results", metavar="URL", help="result storage URL, e.g. s3://bucket/runs (default: as --tasks)"),
    argument("--events", metavar="URL", help="event storage URL (default: as --tasks)"),
)
WORKERS = (
    argument("--worker", metavar="KIND", choices=("process", "thread", "async", "gevent"),
             help="worker kind: process (default), thread, async or gevent"),
    argument("--concurrency", "-c", type=int, metavar="N", help="worker slots in this kernel (default: one per core; 0 = submit only)"),
    argument("--queues", metavar="NAMES", help="queues this kernel's workers take from (default: all)"),
)
ENQUEUE = (
    argument("--queue", "-q", default=None, metavar="Q", help="queue to submit to (default: 'default')"),
    argument("--priority", "-p", type=int, default=None, metavar="P", help="higher runs first (default 0)"),
    argument("--retries", "-r", type=int, default=None, metavar="R", help="retries after the cell raises (default 0)"),
    argument("--timeout", type=float, default=None, metavar="S", help="stop a run after S seconds"),
    argument("--memory", default=None, metavar="SIZE",
             help="memory a run may use, e.g. 4GB or 512MB; over it, it fails naming the limit"),
)
SLURM = (
    argument("--slurm", metavar="N",
             help="keep N SLURM jobs running omniq worker on this kernel's storage (again: rescale "
                  "the same jobs; 0: none)"),
    argument("--adapt", metavar="MIN:MAX",
             help="SLURM jobs that follow the queue: at least MIN, at most MAX; idle ones leave"),
    argument("--partition", metavar="P", help="SLURM partition of the jobs (default: the cluster's)"),
    argument("--walltime", metavar="T", help="each job's time limit, e.g. 02:00:00 (default 01:00:00)"),
    argument("--cores", metavar="C", help="CPUs and worker slots per job (default 1)"),
    argument("--gpus", metavar="G", help="GPUs per job: a count, or type:count such as a100:2"),
)
SUBMIT = (
    argument("-n", "--name", required=True, metavar="NAME",
             help="bind the handle (a sweep with --sweep) to this notebook variable"),
    argument("--sweep", "-s", metavar="SPEC",
             help='run the cell once per grid point, e.g. "lr=[1e-3, 1e-2]; seed=range(3)"'),
    argument("--out", "-o", metavar="NAMES",
             help="variables brought back into the notebook when the work is done "
                  "(lists in grid order with --sweep)"),
    argument("--wait", "-w", action="store_true", help="block until the work is done"),
)


def command(name: str, *stacks: Sequence[ArgDecorator]) -> Callable[[F], F]:
    """``magic_arguments`` with argument stacks applied in the order given."""

    def deco(func: F) -> F:
        for d in reversed([d for s in stacks for d in s]):
            func = d(func)
        return magic_arguments(name)(func)

    return deco


def variable_names(value: str | None, option: str) -> list[str]:
    """``--out X,Y`` as variable names; a name that is not one is a ``UsageError``."""
    if not value:
        return []
    names = [n.strip() for n in value.strip("'\"").split(",") if n.strip()]
    bad = [n for n in names if not n.isidentifier() or keyword.iskeyword(n)]
    if bad:
        raise UsageError(f"{option} {value!r}: {', '.join(map(repr, bad))} is not a valid variable name")
    return names


def help_text(cmd: Any, *, usage_only: bool = False) -> str:
    """A subcommand's argparse help as plain text ("usage: %omniq wait ..."), without the
    reST ``::`` IPython puts in docstrings; ``submit`` reads as the cell magic it is."""
    parser = cmd.parser
    text = parser.format_usage() if usage_only else parser.format_help()
    text = text.replace("::\n\n  %", "usage: %", 1).strip()
    return text.replace("usage: %omniq submit", "usage: %%omniq submit", 1)


_NEGATIVE_VALUE = re.compile(r"(--(?:adapt|slurm|cores|gpus|priority|retries|timeout))\s+(-\d\S*)")


def parse(cmd: Any, rest: str, usage: str) -> Any:
    """``parse_argstring`` whose every failure is a ``UsageError``: argparse reports bad options
    itself, but splitting the line (shlex) raises ``ValueError`` on an unbalanced quote or a
    trailing backslash. A negative value (``--adapt -1:3``, ``--priority -2``) is joined to its
    option first: argparse would take it for an option and not say what is valid."""
    rest = _NEGATIVE_VALUE.sub(r"\1=\2", rest)
    try:
        return parse_argstring(cmd, rest)
    except ValueError as exc:
        raise UsageError(
            f"{usage}: cannot split the arguments {rest.strip()!r} ({exc}): "
            "an unbalanced quote (\' or \") or a trailing backslash"
        ) from None


def wants_help(rest: str) -> bool:
    """Whether a subcommand's arguments ask for its help (``-h`` / ``--help``)."""
    try:
        tokens = arg_split(rest, strict=False)
    except ValueError:
        return False
    return "-h" in tokens or "--help" in tokens


def unquote(value: str | None) -> str | None:
    """An option's value without surrounding whitespace and one pair of matching quotes."""
    if value is None:
        return None
    v = value.strip()
    if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
        v = v[1:-1]
    return v
