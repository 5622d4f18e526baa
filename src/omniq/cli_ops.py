"""The operator's commands: ``omniq tasks | show | retry | cancel | purge | schedules``.

What Flower's task list, ``celery inspect`` / ``celery control revoke`` and ``rq info`` /
``rq requeue`` / ``rq empty`` do for Celery and RQ, over ``oq.tasks()`` / ``task()`` /
``retry()`` / ``cancel()`` / ``purge()`` / ``schedules()``. Each command opens a storage-only
``OmniQ`` (no workers) on ``--tasks/--results/--events`` like ``omniq worker``, never creates
a storage it does not find, prints a table (or ``--json``: a list of objects, each with at
least ``id`` and ``status``), and exits 1 naming any id it does not know, without a traceback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

_CONFIG_HELP = ("YAML config file (keys as in OmniQConfig); OMNIQ_* variables and flags override it. "
                "Put URLs with passwords here or in OMNIQ_* variables, not in flags: flags show in ps")
_STATUSES = "pending, queued, running, succeeded, failed, cancelled, expired"  # (TaskStatus's)


def missing_local_storage(urls: Sequence[str]) -> tuple[str, str] | None:
    """The first ``sqlite://`` file or ``file://`` directory among ``urls`` that does not
    exist, as (url, path); opening it would create it."""
    for url in dict.fromkeys(urls):
        low = url.lower()
        if low.startswith("sqlite://"):
            from .storage.sqlite import parse_url

            path = parse_url(url)
            if path != ":memory:" and not os.path.exists(path):
                return url, path
        elif low.startswith("file://"):
            path = url[len("file://"):].split("?", 1)[0] or "/"
            if not os.path.exists(path):
                return url, path
    return None


class Refused(Exception):
    """A command cannot run (storage missing or down): its message goes to stderr, exit 1."""


@contextmanager
def opened(args: argparse.Namespace) -> Iterator[Any]:
    """A storage-only OmniQ on the command's URLs (``Refused`` when one cannot be used)."""
    from .core import OmniQ
    from .errors import StorageError
    from .redact import masked

    oq = OmniQ(tasks=args.tasks, results=args.results, events=args.events, concurrency=0,
               config=args.config)
    core = oq.core
    missing = missing_local_storage((core.tasks_url, core.results_url, core.events_url))
    if missing:  # a read-only look creates nothing: a typo'd path is named, not made
        raise Refused(f"no storage at {masked(missing[0])}: {missing[1]} does not exist (check the URL; "
                      "a worker or an OmniQ creates it on first use)")
    try:
        oq.open()
    except StorageError as exc:
        raise Refused(str(exc)) from exc
    try:
        yield oq
    finally:
        oq.close()


def _run(name: str, body: Callable[[Any, argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        from .errors import StorageError

        try:
            with opened(args) as oq:
                return body(oq, args)
        except (Refused, StorageError) as exc:
            print(f"omniq {name}: {exc}", file=sys.stderr)
            return 1

    return command


# --- output ------------------------------------------------------------------------------------------
def _when(t: float | None) -> str:
    if t is None:
        return "-"
    return dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def _seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 0.01:
        return f"{s * 1000:.1f}ms"
    return f"{s * 1000:.0f}ms" if s < 1 else f"{s:.1f}s"


def _plain(obj: Any) -> Any:
    """JSON-ready: msgspec Structs as dicts, enums as their values, datetimes as ISO text."""
    import msgspec

    return msgspec.to_builtins(obj, enc_hook=str)


def _print_json(rows: list[dict[str, Any]]) -> None:
    print(json.dumps(rows, indent=2, default=str))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*r).rstrip() for r in [header, *rows])


def _statuses(values: Sequence[str] | None) -> list[str] | None:
    """``--status failed --status queued`` or ``--status failed,queued``."""
    if not values:
        return None
    return [s for v in values for s in (p.strip() for p in v.split(",")) if s]


# --- commands ----------------------------------------------------------------------------------------
def tasks(oq: Any, args: argparse.Namespace) -> int:
    page = oq.tasks(status=_statuses(args.status), queue=args.queue, name=args.name, limit=args.limit,
                    before=args.before)
    if args.json:
        _print_json([_plain(s) for s in page])
        return 0
    if not page:
        print("(no tasks)")
        return 0
    rows = [[s.id, s.status.value, s.queue, s.name or "-", str(s.attempts), _when(s.created),
             _seconds(s.duration), s.sweep or ""] for s in page]
    print(_table(["ID", "STATUS", "QUEUE", "NAME", "ATTEMPTS", "CREATED", "DURATION", "SWEEP"], rows))
    if len(page) == args.limit:
        print(f"\n(more: omniq tasks --before {page[-1].id} ...)")
    return 0


def show(oq: Any, args: argparse.Namespace) -> int:
    from .errors import TaskNotFound

    found, unknown = [], []
    for tid in args.ids:
        try:
            found.append(oq.task(tid))
        except TaskNotFound as exc:
            unknown.append(tid)
            print(f"omniq show: {exc}", file=sys.stderr)
    if args.json:
        _print_json([{k: v for k, v in _plain(d).items() if k != "result"} for d in found])
    elif found:
        print("\n\n".join(_detail_text(d) for d in found))
    return 1 if unknown else 0


def _detail_text(d: Any) -> str:
    lines = [
        f"id:        {d.id}",
        f"name:      {d.name or '-'}",
        f"status:    {d.status.value}",
        f"queue:     {d.queue}   priority: {d.priority}   attempts: {d.attempts}",
        f"created:   {_when(d.created)}   started: {_when(d.started)}   finished: {_when(d.finished)}"
        f"   duration: {_seconds(d.duration)}",
        f"args:      {d.args}",
        f"kwargs:    {d.kwargs}",
    ]
    optional = (
        ("key", d.key or None),
        ("sweep", d.sweep or None),
        ("depends", ", ".join(d.depends_on) or None),
        ("value", d.value),
        ("error", None if d.error_type is None else f"{d.error_type}: {d.error_message}"),
    )
    lines += [f"{label + ':':<11}{v}" for label, v in optional if v is not None]
    if d.traceback:
        lines += ["traceback:", *("  " + line for line in d.traceback.rstrip().splitlines())]
    if d.events:
        lines.append("events:")
        for e in d.events:
            extra = " ".join(x for x in (e.worker and f"worker={e.worker}", e.detail) if x)
            lines.append(f"  {_when(e.timestamp)}  {e.type!s:<10} {extra}".rstrip())
    return "\n".join(lines)


def retry(oq: Any, args: argparse.Namespace) -> int:
    from .errors import ConfigError, TaskNotFound

    ids = list(dict.fromkeys(args.ids))
    if args.failed:
        ids += [s.id for s in _all(oq, "failed", args.queue) if s.id not in ids]
    elif args.queue is not None:
        print("omniq retry: --queue goes with --failed (retry every failed task of a queue)", file=sys.stderr)
        return 2
    if not ids and not args.failed:
        print("omniq retry: give task ids, or --failed for every failed task", file=sys.stderr)
        return 2
    if not ids:
        print("[]" if args.json else "(no failed tasks)")
        return 0
    rows, bad = [], 0
    for tid in ids:
        try:
            done = oq.retry(tid)
        except (TaskNotFound, ConfigError) as exc:  # unknown; its key or large values are gone
            print(f"omniq retry: {exc}", file=sys.stderr)
            bad += 1
            continue
        status = oq.status(tid)
        rows.append({"id": tid, "status": status.value, "retried": done})
        if not done:
            bad += 1
        if not args.json:
            print(f"{tid}  queued again" if done else f"{tid}  is {status.value}: not retried "
                  "(only failed, cancelled and expired tasks are)")
    if args.json:
        _print_json(rows)
    return 1 if bad else 0


def _all(oq: Any, status: str, queue: str | None) -> Iterator[Any]:
    """Every task with ``status`` (in ``queue``), page by page."""
    before = None
    while True:
        page = oq.tasks(status=status, queue=queue, limit=1000, before=before)
        yield from page
        if len(page) < 1000:
            return
        before = page[-1].id


def cancel(oq: Any, args: argparse.Namespace) -> int:
    from .errors import ConfigError

    rows, bad = [], 0
    for tid in dict.fromkeys(args.ids):
        try:
            before = oq.status(tid)
        except ConfigError:
            print(f"omniq cancel: no task {tid} in this storage (never stored, or purged)", file=sys.stderr)
            bad += 1
            continue
        hit = oq.cancel(tid)
        now = oq.status(tid)
        rows.append({"id": tid, "status": now.value, "cancelled": hit})
        if not hit:
            bad += 1
        if not args.json:
            if not hit:
                print(f"{tid}  is {before.value}: nothing to cancel")
            elif before.value == "running":
                print(f"{tid}  was running: asked to stop (its worker ends it)")
            else:
                print(f"{tid}  cancelled")
    if args.json:
        _print_json(rows)
    return 1 if bad else 0


def purge(oq: Any, args: argparse.Namespace) -> int:
    counts = oq.purge(older_than=args.older_than, statuses=_statuses(args.status))
    if args.json:
        print(json.dumps(counts))
    else:
        age = args.older_than + ("s" if args.older_than[-1:].isdigit() else "")
        print(f"purged {counts['tasks']} tasks, {counts['results']} results, {counts['events']} events, "
              f"{counts['blobs']} blobs (tasks that finished more than {age} ago)")
    return 0


def schedules(oq: Any, args: argparse.Namespace) -> int:
    from .errors import ConfigError

    bad = 0
    for ids, act, verb in ((args.pause, oq.pause_schedule, "paused"), (args.resume, oq.resume_schedule, "resumed")):
        for given in ids or ():
            try:
                done = act(given)  # an id or a name
            except ConfigError as exc:
                print(f"omniq schedules: {exc}", file=sys.stderr)
                done = None
            if done:
                print(f"{given}  {verb}", file=sys.stderr if args.json else sys.stdout)
            else:
                if done is False:
                    print(f"omniq schedules: no schedule {given} (give its id or name; see omniq schedules)",
                          file=sys.stderr)
                bad += 1
    rows = oq.schedules()
    out = [{**r, "status": "paused" if r["paused"] else "active"} for r in rows]
    if args.json:
        _print_json(out)
    elif not (args.pause or args.resume):
        if not out:
            print("(no schedules)")
        else:
            print(_table(["ID", "NAME", "STATUS", "SPEC", "NEXT RUN", "LAST RUN", "QUEUE"], [
                [r["id"], r["name"], r["status"], r["spec"], _dtext(r["next_run"]), _dtext(r["last_run"]),
                 r["queue"]] for r in out]))
    return 1 if bad else 0


def _dtext(v: Any) -> str:
    return "-" if v is None else v.strftime("%Y-%m-%d %H:%M:%S %Z").strip()


# --- the parsers --------------------------------------------------------------------------------------
def _storage_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, metavar="YAML", help=_CONFIG_HELP)
    p.add_argument("--tasks", default=None, metavar="URL",
                   help="task queue URL (default from config/env: OMNIQ_TASK_QUEUE_TYPE)")
    p.add_argument("--results", default=None, metavar="URL",
                   help="result storage URL (default from config/env, else --tasks)")
    p.add_argument("--events", default=None, metavar="URL",
                   help="event storage URL (default from config/env, else --tasks)")


def _age(text: str) -> str:
    from .client.admin import age_seconds
    from .errors import ConfigError

    try:
        age_seconds("--older-than", text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("--older-than=", "")) from None
    return text.strip()


def _limit(text: str) -> int:
    from .storage.checks import MAX_PAGE

    try:
        n = int(text)
    except ValueError:
        n = -1
    if not 1 <= n <= MAX_PAGE:
        raise argparse.ArgumentTypeError(f"{text!r} is not a page size: expected 1 to {MAX_PAGE}")
    return n


def _command(
    sub: Any, name: str, body: Callable[[Any, argparse.Namespace], int], *, help: str, description: str
) -> argparse.ArgumentParser:
    """Subcommand ``name``: its description shown as written, the storage options, and ``body``
    run on the storage they open."""
    p: argparse.ArgumentParser = sub.add_parser(
        name, help=help, formatter_class=argparse.RawDescriptionHelpFormatter, description=description
    )
    _storage_args(p)
    p.set_defaults(fn=_run(name, body))
    return p


def add_parsers(sub: Any) -> None:
    """The operator's subcommands, on ``omniq``'s subparsers."""
    t = _command(
        sub, "tasks", tasks, help="list tasks, newest first (like Flower's task list, rq info)",
        description="List tasks, newest first, one page at a time.\n\nexamples:\n"
                    "  omniq tasks --tasks sqlite:///lab.db\n"
                    "  omniq tasks --status failed --queue gpu --limit 20\n"
                    "  omniq tasks --before ID        (the next page: ID is the last id shown)")
    t.add_argument("--status", action="append", metavar="S",
                   help=f"only these statuses (repeat, or comma-separated): {_STATUSES}")
    t.add_argument("--queue", default=None, metavar="Q", help="only this queue")
    t.add_argument("--name", default=None, metavar="FN", help="only this function (its qualified name)")
    t.add_argument("--limit", type=_limit, default=50, metavar="N", help="at most N tasks (default 50)")
    t.add_argument("--before", default=None, metavar="ID", help="tasks older than this task id (paging)")
    t.add_argument("--json", action="store_true", help="a JSON list of task summaries")

    s = _command(
        sub, "show", show, help="one task in full: arguments, result or error with traceback, events",
        description="Show tasks in full (like celery result / rq's job view): the function, its\n"
                    "arguments (a short repr, read without unpickling anything), the result or the\n"
                    "error with its traceback, and the timeline of events.\n\nexample:\n"
                    "  omniq show 18ee6f0f36ff2242c2b97f14 --tasks sqlite:///lab.db")
    s.add_argument("ids", nargs="+", metavar="ID", help="task id(s)")
    s.add_argument("--json", action="store_true", help="a JSON list, one object per task")

    r = _command(
        sub, "retry", retry, help="run failed, cancelled or expired tasks again (like rq requeue)",
        description="Queue final tasks again under the same id (like `rq requeue`): their attempts\n"
                    "go on and their old result is removed; a succeeded, queued or running task is\n"
                    "left alone.\n\nexamples:\n"
                    "  omniq retry ID [ID ...]\n"
                    "  omniq retry --failed                every failed task\n"
                    "  omniq retry --failed --queue gpu    every failed task of one queue")
    r.add_argument("ids", nargs="*", metavar="ID", help="task id(s)")
    r.add_argument("--failed", action="store_true", help="every failed task (with --queue: of that queue)")
    r.add_argument("--queue", default=None, metavar="Q", help="with --failed: only this queue")
    r.add_argument("--json", action="store_true", help="a JSON list: id, status, retried")

    c = _command(
        sub, "cancel", cancel, help="cancel tasks (like celery control revoke --terminate)",
        description="Cancel tasks: a queued or pending one never runs, a running one is stopped by\n"
                    "its worker (like `celery control revoke --terminate`); dependents are cancelled\n"
                    "too.\n\nexample:\n  omniq cancel ID [ID ...]")
    c.add_argument("ids", nargs="+", metavar="ID", help="task id(s)")
    c.add_argument("--json", action="store_true", help="a JSON list: id, status, cancelled")

    p = _command(
        sub, "purge", purge, help="delete finished tasks, their results, events and blobs",
        description="Delete tasks that finished (succeeded, failed, cancelled, expired) more than\n"
                    "--older-than ago, with their results, events and the large values only they\n"
                    "used. Unlike `celery purge` / `rq empty`, waiting tasks are never touched\n"
                    "(cancel them first).\n\nexamples:\n"
                    "  omniq purge --older-than 7d\n"
                    "  omniq purge --older-than 12h --status failed --status cancelled")
    p.add_argument("--older-than", required=True, metavar="AGE", type=_age,
                   help="finished more than AGE ago: seconds, or a number with s, m, h, d or w (7d, 12h)")
    p.add_argument("--status", action="append", metavar="S",
                   help="only these final statuses (repeat, or comma-separated; default: all four)")
    p.add_argument("--json", action="store_true", help="the counts as JSON")

    sc = _command(
        sub, "schedules", schedules,
        help="list schedules; pause or resume one (like celery beat's schedule)",
        description="List schedules with their next and last runs; --pause / --resume take a\n"
                    "schedule's id or name (repeatable).\n\nexamples:\n"
                    "  omniq schedules\n  omniq schedules --pause nightly-report\n"
                    "  omniq schedules --resume nightly-report")
    sc.add_argument("--pause", action="append", metavar="ID", help="pause this schedule (id or name)")
    sc.add_argument("--resume", action="append", metavar="ID", help="resume this schedule (id or name)")
    sc.add_argument("--json", action="store_true", help="a JSON list of schedules")


__all__ = ["Refused", "add_parsers", "missing_local_storage", "opened"]
