"""``%omniq`` and ``%%omniq``: OmniQ from notebook cells (``%load_ext omniq``).

Line magic subcommands: ``init``, ``status``, ``wait``, ``cancel``, ``results``,
``schedules``, ``workers``, ``dashboard`` (the web page, ``omniq.integrations.dashboard``);
cell magic: ``%%omniq submit``, which ships the cell body to a worker with the notebook
globals it uses and returns at once.

SLURM from a cell. ``%omniq workers --slurm N`` (or ``--adapt MIN:MAX``) starts the kernel's
:class:`~omniq.hpc.SlurmWorkers` on its OmniQ's storage; a later call rescales that same pool
(a new one only when a job option changes). The pool is closed with the OmniQ (``%omniq init``
of another one, unloading the extension) and at kernel exit; a kernel killed outright cannot
cancel them, and its jobs leave after ``idle_timeout`` without tasks. ``%omniq status`` lists
the kernel's SLURM jobs beside the workers' heartbeats.

How a cell travels. The cell is analysed with :mod:`ast` / :mod:`symtable` for the names it
reads before (or without) assigning them; each one found in the notebook namespace is shipped
(modules by name, to be imported on the worker; everything else by dill, in one piece so a
notebook class and its instances stay one class). A value that cannot be shipped is reported
by variable name *before* anything is submitted. The worker runs
``omniq.notebook.cells.CellCall`` (importable, so the payload holds data only) in a fresh
namespace and sends back the last expression's value, the ``--out`` variables and the cell's
stdout/stderr.

When outputs land. ``--out`` variables are written into the notebook namespace only between
cells (IPython's ``pre_run_cell`` / ``post_run_cell`` events) or by ``%omniq wait``: never by a
background thread while a cell runs, which would change a user's variables under their code.

Where the parts live. This module is the ``OmniQMagics`` class and the extension's entry
points; the subcommands' options and parsing are ``arguments.py``, the cell analysis and
shipping ``capture.py``, what a submission binds in the notebook (``CellHandle``, ``CellSweep``,
``CellJob``) ``handles.py``, SLURM from a cell ``slurm.py``, and ``%omniq status`` rendering
``status.py``.

Why no ``nest_asyncio``. Every blocking call goes through the ``OmniQ`` facade, which runs
the async core on its own event loop in its own thread (an anyio blocking portal). The
kernel's running loop is never re-entered, so there is nothing to patch: patching it would only
make unrelated libraries' re-entrancy bugs possible.
"""

from __future__ import annotations

import contextlib
import keyword
import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument

from .._futures import bulk
from ..core import OmniQ, TaskHandle
from ..errors import ConfigError, OmniQError, SerializationError, StorageError
from ..hpc import JobSystemError, SlurmWorkers
from ..models import TaskStatus
from ..sweep import Sweep
from .arguments import (
    ENQUEUE,
    HELP,
    SLURM,
    STORAGE,
    SUBMIT,
    TARGET,
    TIMEOUT,
    WORKERS,
    command,
    parse,
    unquote,
    variable_names,
    wants_help,
)
from .arguments import help_text as _help  # (tests/test_cli.py imports _help from here)
from .capture import (
    cell_globals,
    cell_identity,
    ship_globals,
    syntax_error_text,
    unshippable_message,
)
from .cells import CellCall, compile_cell
from .handles import (
    CellHandle,
    CellJob,
    CellSweep,
    deliver_output,
    finalize,
    show_handle_output,
    summary,
    watch_sweep,
)
from .slurm import changed_options, follow, slurm_request, slurm_status
from .status import ago, frame, refresh_status, status_html, status_text

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

__all__ = ["CellHandle", "OmniQMagics", "cell_globals", "cell_identity", "default_instance"]


def default_instance() -> OmniQ:
    """The instance used until ``%omniq init``: SQLite under the notebook's working directory
    (``.omniq/omniq.db``), process workers, one per core. ``OMNIQ_*`` variables still win."""
    env = os.environ
    return OmniQ(
        worker=None if {"OMNIQ_DEFAULT_WORKER", "OMNIQ_WORKER"} & env.keys() else "process",
        concurrency=None if "OMNIQ_CONCURRENCY" in env else (os.cpu_count() or 1),
    )


# --------------------------------------------------------------------------------------------
# the magics
# --------------------------------------------------------------------------------------------
@magics_class
class OmniQMagics(Magics):
    """``%omniq`` / ``%%omniq``. Holds the kernel's OmniQ instance and the jobs submitted from
    cells; applies finished ``--out`` variables between cells."""

    _LINE = ("init", "status", "wait", "cancel", "results", "schedules", "workers", "dashboard")

    def __init__(self, shell: InteractiveShell) -> None:
        super().__init__(shell)
        self._oq: OmniQ | None = None
        self._jobs: dict[str, CellJob] = {}
        self._status_stop: threading.Event | None = None
        self._slurm: SlurmWorkers | None = None
        self._ip = shell
        shell.events.register("pre_run_cell", self._between_cells)
        shell.events.register("post_run_cell", self._between_cells)

    # --- state ----------------------------------------------------------------------------------
    @property
    def oq(self) -> OmniQ:
        """The kernel's instance (``%omniq init``'s, or the default one), open."""
        if self._oq is None:
            self._oq = default_instance()
        return self._oq.open()

    @property
    def _in_kernel(self) -> bool:
        return getattr(self._ip, "kernel", None) is not None

    def close(self) -> None:
        """Unhook from the shell, stop live status updates, close the instance."""
        for event in ("pre_run_cell", "post_run_cell"):
            with contextlib.suppress(ValueError):
                self._ip.events.unregister(event, self._between_cells)
        self._stop_status()
        self._close_slurm()
        if self._oq is not None:
            self._oq.close()
            self._oq = None

    def _close_slurm(self) -> None:
        pool, self._slurm = self._slurm, None
        if pool is not None:
            pool.close(wait=False)

    # --- dispatch -------------------------------------------------------------------------------
    @line_cell_magic
    def omniq(self, line: str, cell: str | None = None) -> Any:
        """OmniQ from notebook cells. Subcommands (each takes --help)::

          %omniq init [--tasks URL] [--results URL] [--events URL] [--worker KIND]
                      [--concurrency N] [--queues A,B]
          %omniq status | %omniq schedules | %omniq workers | %omniq dashboard [--port N]
          %omniq wait NAME [--timeout S] | %omniq cancel NAME | %omniq results NAME
          %%omniq submit -n NAME [--sweep SPEC] [--out X,Y] [--queue Q] [--priority P]
                         [--retries R] [--timeout S] [--memory SIZE] [--wait]
        """
        sub, _, rest = line.strip().partition(" ")
        if sub in ("", "-h", "--help", "help"):
            print(self._overview())
            return None
        try:
            return self._dispatch(sub, rest, cell)
        except ConfigError as exc:  # a bad option value: say it like any other usage error
            raise UsageError(str(exc)) from None
        except StorageError as exc:  # a missing bucket, an unreachable server: its one line
            raise UsageError(str(exc)) from None
        except JobSystemError as exc:  # SLURM's controller down, a command timed out
            raise UsageError(str(exc)) from None

    def _dispatch(self, sub: str, rest: str, cell: str | None) -> Any:
        if cell is not None:
            if sub != "submit":
                raise UsageError(f"%%omniq {sub}: the cell magic has one subcommand, submit (%%omniq submit -n NAME ...)")
            return self._submit(rest, cell)
        if sub == "submit":
            if wants_help(rest):
                print(_help(self._cmd_submit))
                return None
            raise UsageError("submit runs a cell: write it as a cell magic, %%omniq submit -n NAME ... (two %)")
        if sub not in self._LINE:
            raise UsageError(f"%omniq {sub}: unknown subcommand; expected one of {', '.join(self._LINE)}, or submit (as %%omniq)")
        cmd = getattr(self, f"_cmd_{sub}")
        if wants_help(rest):
            print(_help(cmd))
            return None
        return cmd(parse(cmd, rest, f"%omniq {sub}"))

    def _overview(self) -> str:
        doc = getattr(self, "omniq").__doc__ or ""  # noqa: B009 (mypy and the magic decorator)
        parts = [doc.split("::")[0].strip().rstrip(".") + ":", ""]
        for sub in (*self._LINE, "submit"):
            usage = _help(getattr(self, f"_cmd_{sub}"), usage_only=True)
            parts.append("  " + usage.removeprefix("usage: "))
        parts.append("\n%omniq SUBCOMMAND --help (%%omniq submit --help) shows one subcommand's options.")
        return "\n".join(parts)

    # --- init -----------------------------------------------------------------------------------
    @command("omniq init", STORAGE, WORKERS, HELP)
    def _cmd_init(self, args: Any) -> OmniQ:
        """Start (or replace) this kernel's OmniQ: storage URLs and worker slots. A previous
        instance is closed first (its unstarted tasks stay queued)."""
        env = os.environ
        concurrency = args.concurrency
        if concurrency is None and "OMNIQ_CONCURRENCY" not in env:
            concurrency = os.cpu_count() or 1
        worker = args.worker or (None if {"OMNIQ_DEFAULT_WORKER", "OMNIQ_WORKER"} & env.keys() else "process")
        new = OmniQ(
            tasks=unquote(args.tasks), results=unquote(args.results), events=unquote(args.events),
            worker=worker, concurrency=concurrency, queues=unquote(args.queues),
        )
        new.open()  # if this fails, the previous instance stays in use
        self._stop_status()
        old, self._oq = self._oq, new
        self._close_slurm()  # its jobs served the old storage
        if old is not None:
            old.close()
        return new

    # --- submit ---------------------------------------------------------------------------------
    @command("omniq submit", SUBMIT, ENQUEUE, HELP)
    def _cmd_submit(self, args: Any) -> None:
        """Run this cell on a worker process and return at once. The cell takes the notebook
        variables it uses along (modules are imported on the worker); NAME is bound to a handle
        (a sweep with --sweep) and a progress widget shows the work and the cell's output."""

    def _submit(self, line: str, cell: str) -> Any:
        if wants_help(line):
            print(_help(self._cmd_submit))
            return None
        args = parse(self._cmd_submit, line, "%%omniq submit")
        name = unquote(args.name) or ""
        if not name.isidentifier() or keyword.iskeyword(name):
            raise UsageError(f"-n {args.name!r}: expected a valid Python variable name for the handle")
        outs = variable_names(args.out, "--out")
        if name in outs:
            raise UsageError(f"-n {name} and --out {name}: the handle and an output variable need different names")
        source = self._ip.transform_cell(cell)
        if "get_ipython()" in source and "get_ipython()" not in cell:
            raise UsageError("%%omniq submit: IPython magics and shell escapes (%, !) cannot run on a worker; "
                             "keep them in another cell")
        filename = f"<omniq cell {name}>"
        try:
            compile_cell(source, filename)  # a SyntaxError shows here, not on a worker
        except SyntaxError as exc:
            raise UsageError(syntax_error_text(exc, name)) from None
        grid: dict[str, Any] | None = None
        if args.sweep:
            from ..sweep import parse_sweep_spec

            try:
                grid = parse_sweep_spec(args.sweep, self._ip.user_ns)
            except Exception as exc:  # the spec's own error, said against the option
                raise UsageError(f"--sweep {args.sweep}: {exc}") from None
        ns = self._ip.user_ns
        hidden = set(getattr(self._ip, "user_ns_hidden", {}))
        needed = cell_globals(source)
        params = {p for key in (grid or ()) for p in key.split(",")}
        payload, _shipped = ship_globals(needed, ns, skip=hidden | params)
        options = {k: v for k, v in (("queue", args.queue), ("priority", args.priority),
                                     ("retries", args.retries), ("timeout", args.timeout)) if v is not None}
        if args.memory is not None:  # "4GB" or bytes; a bad size is a UsageError naming --memory
            from ..config.sizes import SIZE_TEXT, size_or_none

            options["memory_limit"] = size_or_none(unquote(args.memory))
            if options["memory_limit"] is None:
                raise UsageError(f"--memory {args.memory}: not a size; expected {SIZE_TEXT}")
        if "queue" in options:
            options["queue"] = unquote(options["queue"])
        call = CellCall(source, payload, outs, name)
        oq = self.oq
        try:
            job = self._start(oq, name, call, grid, outs, source, options)
        except SerializationError as exc:
            raise UsageError(unshippable_message(payload["values"], exc)) from None
        old = self._jobs.get(name)
        if old is not None and old is not job:
            old.applied = True  # a re-run replaces the earlier job's pending outputs
            old.stop_watching()
        self._jobs[name] = job
        ns[name] = job.handle
        if job.widget is not None:
            from IPython.display import display

            display(job.widget)
        if args.wait:
            self._wait(job, None)
        return None

    def _start(self, oq: OmniQ, name: str, call: CellCall, grid: dict[str, Any] | None,
               outs: Sequence[str], source: str, options: dict[str, Any]) -> CellJob:
        from .widgets import Progress

        if grid is not None:
            with bulk():  # no collector passes while 10,000 points' objects are made
                sw = CellSweep.start(oq, call, grid, name=name, identity=cell_identity(source, outs), **options)
                assert isinstance(sw, CellSweep)
                sw.outs = tuple(outs)
                job = CellJob(name, sw, outs, sw.progress())
                watch_sweep(job, sw)
                return job
        core = oq.core
        (task,) = core.build_tasks(call, [((), {})], **options)
        (fut,) = core.submit_tasks([task])
        handle = CellHandle(oq, task.id, task.queue, fut, name=name, outs=outs, source=source)
        job = CellJob(name, handle, outs, Progress(oq, [handle], title=name))
        handle.add_done_callback(lambda h: show_handle_output(job, h))
        return job

    # --- wait / results / cancel ----------------------------------------------------------------
    def _job(self, name: str) -> CellJob:
        name = unquote(name) or ""
        job = self._jobs.get(name)
        value = self._ip.user_ns.get(name)
        if job is not None and (value is None or value is job.handle):
            return job
        if isinstance(value, (Sweep, TaskHandle)):
            return CellJob(name, value, (), None)
        if job is not None:
            return job
        known = ", ".join(sorted(self._jobs)) or "none yet"
        raise UsageError(f"{name!r} is not a job: give a name from %%omniq submit -n (known: {known}) "
                         f"or a variable holding a sweep or task handle")

    @command("omniq wait", TARGET, TIMEOUT, HELP)
    def _cmd_wait(self, args: Any) -> None:
        """Block until NAME is done, bring its --out variables into the notebook and show the
        final progress (re-sent, so a saved notebook keeps the end state)."""
        self._wait(self._job(args.name), args.timeout)

    def _wait(self, job: CellJob, timeout: float | None) -> None:
        h = job.handle
        t0 = time.monotonic()
        try:
            if isinstance(h, TaskHandle):
                h.get(timeout)
            else:
                h.wait(timeout)
        except TimeoutError:
            raise TimeoutError(f"{job.name} is not done after {timeout} s; it keeps running "
                               f"(%omniq wait {job.name} again, or %omniq cancel {job.name})") from None
        deliver_output(job)
        self._apply(job)
        if job.widget is not None:
            finalize(job.widget)
        print(summary(job, time.monotonic() - t0))

    @command("omniq results", TARGET, HELP)
    def _cmd_results(self, args: Any) -> Any:
        """A sweep's table (a pandas DataFrame: parameters, --out variables, value, status,
        error, duration, in grid order); a single cell's value, or its TaskResult if it failed."""
        job = self._job(args.name)
        h = job.handle
        if isinstance(h, TaskHandle):
            try:
                r = h.get(timeout=0)
            except TimeoutError:
                print(f"{job.name} is still running; %omniq wait {job.name} blocks until it is done")
                return None
            if r.status is TaskStatus.SUCCEEDED:
                return h.result(0) if isinstance(h, CellHandle) else r.value
            return r
        return h.to_pandas()

    @command("omniq cancel", TARGET, HELP)
    def _cmd_cancel(self, args: Any) -> None:
        """Cancel NAME: queued runs never start, running ones are stopped."""
        job = self._job(args.name)
        n = job.handle.cancel()
        job.applied = True
        if job.is_sweep:
            print(f"{job.name}: cancelled {int(n)} unfinished point(s)")
        else:
            print(f"{job.name}: {'cancelled' if n else 'already finished'}")
        if job.widget is not None:
            with contextlib.suppress(Exception):
                finalize(job.widget)

    # --- status / schedules / workers -----------------------------------------------------------
    @command("omniq status", HELP)
    def _cmd_status(self, args: Any) -> Any:
        """Queues by status, workers and schedules; a widget that refreshes itself (text
        outside a kernel)."""
        oq = self.oq
        if not self._in_kernel:
            print(status_text(oq.health(), slurm=slurm_status(fresh=True)))
            return None
        import ipywidgets

        box = ipywidgets.HTML(value=status_html(oq.health(), slurm=slurm_status(fresh=True)))
        self._stop_status()
        stop = self._status_stop = threading.Event()
        threading.Thread(target=refresh_status, args=(oq, box, stop), name="omniq-status", daemon=True).start()
        from IPython.display import display

        display(box)
        return None

    def _stop_status(self) -> None:
        if self._status_stop is not None:
            self._status_stop.set()
            self._status_stop = None

    @command("omniq schedules", HELP)
    def _cmd_schedules(self, args: Any) -> Any:
        """Schedules with their next run (a DataFrame)."""
        return frame(self.oq.schedules())

    @command("omniq workers", SLURM, HELP)
    def _cmd_workers(self, args: Any) -> Any:
        """Workers seen by the task queue, with their last heartbeat (a DataFrame); a pool short
        of children says so. With --slurm N or --adapt MIN:MAX: worker jobs on SLURM instead
        (returns the pool; its jobs end with this kernel's OmniQ)."""
        request = slurm_request(args)
        if request is not None:
            return self._slurm_workers(*request)
        rows = []
        for w in self.oq.health()["workers"]:
            row = dict(w)
            row["last_heartbeat"] = ago(w.get("last_heartbeat"))
            row["started_at"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(w.get("started_at") or 0))
            if w.get("missing"):
                print(f"WARNING: worker {w['id']} is short of {w['missing']} of its {w['slots']} slots "
                      "(a child process could not be replaced; it keeps trying)", file=sys.stderr)
            rows.append(row)
        return frame(rows)

    @command("omniq dashboard", (
        argument("--port", type=int, default=8765, metavar="N", help="port (default 8765; 0: any free one)"),
        argument("--host", default="127.0.0.1", metavar="H",
                 help="address (default 127.0.0.1; any other needs a token, generated if not given)"),
        argument("--token", default=None, metavar="T", help="token the page requires (default: none on loopback)"),
        argument("--inline", action="store_true", help="show the page in the notebook (an IFrame), not a link"),
        argument("--stop", action="store_true", help="stop this kernel's dashboard"),
    ), HELP)
    def _cmd_dashboard(self, args: Any) -> Any:
        """Serve the web dashboard (queues, tasks, Retry / Cancel, sweeps) for this kernel's OmniQ
        and show its link; it runs on the instance's loop and ends with it. Needs the
        'dashboard' extra."""
        from ..integrations.dashboard.notebook import show

        return show(self.oq, host=unquote(args.host) or "127.0.0.1", port=args.port,
                    token=unquote(args.token), inline=args.inline, stop=args.stop)

    def _slurm_workers(self, mode: tuple[str, int, int], options: dict[str, Any]) -> SlurmWorkers:
        """Scale (or adapt) the kernel's SLURM pool, making it first when there is none for this
        OmniQ or a job option differs from the pool's."""
        oq = self.oq
        pool = self._slurm
        if pool is not None and (pool.closed or pool.oq is not oq):
            pool = self._slurm = None
        changed = [] if pool is None else changed_options(pool, options)
        if pool is not None and not changed:
            follow(pool, mode)
            return pool
        new = SlurmWorkers(oq, **options)  # a bad option: ConfigError naming it, nothing started
        try:
            follow(new, mode)  # refused by SLURM: the previous pool stays as it was
        except BaseException:
            new.close(wait=False)
            raise
        if pool is not None:
            print(f"omniq: new SLURM pool {new.name} ({', '.join(changed)}); the jobs of {pool.name} "
                  "leave after their running tasks", file=sys.stderr)
            try:
                pool.scale(0)  # pending jobs cancelled, running ones finish their tasks; closed with oq
            except OmniQError:
                pool.close(wait=False)
        self._slurm = new
        return new

    # --- between cells --------------------------------------------------------------------------
    def _between_cells(self, *_: Any) -> None:
        """Apply the --out variables of jobs that finished (IPython event hook)."""
        for job in list(self._jobs.values()):
            if not job.applied and job.done():
                try:
                    deliver_output(job)
                    self._apply(job)
                except Exception as exc:  # never break the user's next cell
                    job.applied = True
                    print(f"omniq: could not bring back {job.name}'s outputs: {exc}", file=sys.stderr)

    def _apply(self, job: CellJob) -> None:
        if job.applied:
            return
        job.applied = True
        ns = self._ip.user_ns
        h = job.handle
        if isinstance(h, CellHandle):
            r = h.get(0)
            if r.status is TaskStatus.SUCCEEDED:
                ns.update(h.outputs(0))
            return
        if isinstance(h, CellSweep):
            ns.update(h.outputs())


def _full_doc() -> str:
    """``%omniq?``: the overview plus every subcommand's help."""
    head = (OmniQMagics.omniq.__doc__ or "").rstrip()
    subs = [_help(getattr(OmniQMagics, f"_cmd_{sub}")) for sub in (*OmniQMagics._LINE, "submit")]
    return head + "\n\n" + "\n\n".join(subs) + "\n"


# --------------------------------------------------------------------------------------------
# extension entry points (omniq.load_ipython_extension delegates here)
# --------------------------------------------------------------------------------------------
def load_ipython_extension(ip: InteractiveShell) -> None:
    """Register the magics on ``ip`` (a reload replaces the previous instance)."""
    unload_ipython_extension(ip)
    if "usage: %omniq init" not in (OmniQMagics.omniq.__doc__ or ""):
        OmniQMagics.omniq.__doc__ = _full_doc()
    ip.register_magics(OmniQMagics(ip))


def unload_ipython_extension(ip: InteractiveShell) -> None:
    """Unhook the magics from ``ip`` and close their OmniQ instance."""
    mm = ip.magics_manager
    old = mm.registry.pop(OmniQMagics.__name__, None)
    if isinstance(old, OmniQMagics):
        old.close()
        for kind in ("line", "cell"):
            if getattr(mm.magics[kind].get("omniq"), "__self__", None) is old:
                del mm.magics[kind]["omniq"]
