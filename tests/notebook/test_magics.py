"""``%omniq`` / ``%%omniq`` through a real kernel (nbclient + ipykernel), process workers and
SQLite in a temporary working directory, as a notebook user runs them."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("nbclient")


def _seconds(cell: Any) -> float:
    """How long a cell took in the kernel (nbclient records the timestamps)."""
    t = cell.metadata["execution"]
    start = dt.datetime.fromisoformat(t["iopub.execute_input"].replace("Z", "+00:00"))
    end = dt.datetime.fromisoformat(t["shell.execute_reply"].replace("Z", "+00:00"))
    return (end - start).total_seconds()


def test_submit_returns_at_once_and_wait_brings_out_back(execute: Any, nbview: Any, workdir: Path) -> None:
    nb = execute([
        "%load_ext omniq",
        "import math, time\nbase = 10\ndata = {'xs': [3, 4]}\ndef helper(v):\n    return v * 2",
        # the cell sleeps 1.5 s on the worker; the submitting cell must not
        "%%omniq submit -n job --out y,z\n"
        "time.sleep(1.5)\n"
        "print('hello from the worker', base)\n"
        "import sys; print('a warning', file=sys.stderr)\n"
        "y = helper(base) + math.floor(2.5)\n"
        "z = math.hypot(*data['xs'])\n"
        "y * 100",
        "print('y' in globals(), 'z' in globals())",
        "%omniq wait job",
        "print(y, z, job.result(), type(job).__name__)",
        "%omniq results job",
        "import os\noq = get_ipython().magics_manager.registry['OmniQMagics'].oq\n"
        "print(oq.config.default_worker, oq.config.concurrency == os.cpu_count())",
    ])
    submit, check_early, wait, check, results = nb.cells[2:7]
    assert _seconds(submit) < 1.2, "the submit cell blocked on the work"
    assert nbview.text_of(check_early).strip() == "False False"  # never applied mid-work
    assert "job: succeeded; set y, z" in nbview.text_of(wait)
    assert nbview.text_of(check).strip() == "22 5.0 2200 CellHandle"
    assert nbview.text_of(results).strip() == "2200"
    # the cell's stdout/stderr appear under the widget, not as loose cell output
    out = nbview.output_widget_text(nb, submit)
    assert out["stdout"] == "hello from the worker 10\n"
    assert out["stderr"] == "a warning\n"
    assert "hello from the worker" not in nbview.text_of(submit)
    (bar,) = nbview.progress_of(nb, submit)
    assert bar["value"] == bar["max"] == 1 and bar["bar_style"] == "success"
    # the default instance: SQLite under the notebook's working directory, a worker per core
    assert (workdir / ".omniq" / "omniq.db").exists()
    assert nbview.text_of(nb.cells[7]).strip() == "process True"


def test_a_sweep_over_a_50mb_global_stores_it_once(execute: Any, nbview: Any, workdir: Path) -> None:
    """Before: the cell's globals were pickled into every point's payload (20 points over a
    20 MB global wrote 421 MB plus WAL). Now the global is one blob, whatever the points."""
    nb = execute([
        "%load_ext omniq",
        "%omniq init --tasks sqlite:///lab.db --worker process --concurrency 2",
        "import numpy as np\ndata = np.arange(6_250_000, dtype='float64')  # 50 MB",
        '%%omniq submit -n big --sweep "i=range(12)" --out s\ns = float(data[i * 1000]) + data.nbytes',
        "%omniq wait big",
        "print(s == [float(i * 1000) + data.nbytes for i in range(12)])",
        "import sqlite3\ndb = sqlite3.connect('lab.db')\n"
        "print(db.execute('SELECT count(*), sum(size) FROM omniq_blobs').fetchone())",
    ], timeout=300)
    assert nbview.text_of(nb.cells[5]).strip() == "True"
    count, stored = eval(nbview.text_of(nb.cells[6]).strip())
    assert count == 1 and 50_000_000 <= stored < 51_000_000
    size = sum(f.stat().st_size for f in workdir.glob("lab.db*") if f.is_file())
    size += sum(f.stat().st_size for f in workdir.glob("lab.db-blobs/*/*"))
    assert size < 1.5 * 50_000_000, f"{size} bytes on disk for one 50 MB global"


def test_out_is_applied_between_cells_not_mid_cell(execute: Any, nbview: Any) -> None:
    nb = execute([
        "%load_ext omniq",
        "%%omniq submit -n job --out y\nimport time\ntime.sleep(0.5)\ny = 41 + 1",
        # the job finishes while this cell runs: y must not appear under the running code
        "import time\nwhile not job.done():\n    time.sleep(0.02)\ntime.sleep(0.2)\nprint('y' in globals())",
        "print(y)",
    ])
    assert nbview.text_of(nb.cells[2]).strip() == "False"
    assert nbview.text_of(nb.cells[3]).strip() == "42"


def test_sweep_out_comes_back_as_lists_in_grid_order(execute: Any, nbview: Any) -> None:
    nb = execute([
        "%load_ext omniq",
        "offset = 100",
        # later points finish first (shorter sleeps), so completion order != grid order
        '%%omniq submit -n fit --sweep "b=[3, 1, 2]; a=range(2)" --out s,label\n'
        "import time\n"
        "time.sleep(0.05 * (8 - 2 * b - a))\n"
        "print('point', b, a)\n"
        "s = offset + 10 * b + a\n"
        "label = f'{b}-{a}'",
        "%omniq wait fit --timeout 60",
        "print(s)\nprint(label)\nprint(type(fit).__name__, fit.submitted)",
        "df = %omniq results fit\nprint(df[['b', 'a', 's', 'label', 'status']].to_string(index=False))",
    ])
    submit, wait, check, table = nb.cells[2:6]
    assert "fit: 6 succeeded; set s, label" in nbview.text_of(wait)
    lines = nbview.text_of(check).splitlines()
    assert lines[0] == "[130, 131, 110, 111, 120, 121]"
    assert lines[1] == "['3-0', '3-1', '1-0', '1-1', '2-0', '2-1']"
    assert lines[2] == "CellSweep 6"
    rows = [r.split() for r in nbview.text_of(table).strip().splitlines()]
    assert rows[0] == ["b", "a", "s", "label", "status"]
    assert [r[:3] for r in rows[1:]] == [["3", "0", "130"], ["3", "1", "131"], ["1", "0", "110"],
                                         ["1", "1", "111"], ["2", "0", "120"], ["2", "1", "121"]]
    (bar,) = nbview.progress_of(nb, submit)
    assert bar["value"] == bar["max"] == 6
    printed = nbview.output_widget_text(nb, submit)["stdout"]
    assert "[b=3, a=1] point 3 1" in printed and printed.count("point") == 6


def test_values_come_back_as_instances_of_the_kernels_own_classes(execute: Any, nbview: Any) -> None:
    """A notebook class travels to the worker by value; what comes back into the kernel is an
    instance of the kernel's class, not of a copy (issue 22, item 1)."""
    nb = execute([
        "%load_ext omniq",
        "from dataclasses import dataclass\n"
        "@dataclass\nclass Model:\n    w: float\n"
        "    class Part:\n        pass\n"
        "def make(w):\n    return Model(w)",
        "%%omniq submit -n mk --out model,parts\nmodel = make(2.5)\nparts = {'p': [Model.Part()], 't': (Model(1.0),)}\nmodel",
        '%%omniq submit -n sw --sweep "w=[1.0, 2.0]" --out m\nm = Model(w)',
        "%omniq wait mk\n%omniq wait sw",
        "print(isinstance(model, Model), model == Model(2.5), type(model) is Model)\n"
        "print(isinstance(parts['p'][0], Model.Part), parts['t'][0] == Model(1.0))\n"
        "print(mk.result() == Model(2.5), mk.outputs()['model'] == Model(2.5))\n"
        "print(m == [Model(1.0), Model(2.0)], all(isinstance(x, Model) for x in m))\n"
        "print([r['m'] == Model(r['w']) for r in sw.results()])",
    ])
    lines = nbview.text_of(nb.cells[5]).splitlines()
    assert lines == ["True True True", "True True", "True True", "True True", "[True, True]"], lines


def test_unshippable_global_is_named_and_nothing_is_submitted(execute: Any, nbview: Any) -> None:
    nb = execute([
        "%load_ext omniq",
        "import threading, socket\nlock = threading.Lock()\nsock = socket.socket()\nfine = 3",
        "%%omniq submit -n bad\nwith lock:\n    total = fine + 1",
        "%%omniq submit -n bad2\nsock.connect(('127.0.0.1', 9))",
        "print('bad' in globals(), 'bad2' in globals())\n"
        "oq = get_ipython().magics_manager.registry['OmniQMagics'].oq\n"
        "print(oq.health()['queues'])",
    ], allow_errors=True)
    err = nbview.usage_error(nb.cells[2])
    assert "'lock'" in err and "_thread.lock" in err and "Nothing was submitted" in err
    assert "'fine'" not in err
    err2 = nbview.usage_error(nb.cells[3])
    assert "'sock'" in err2 and "socket" in err2
    assert nbview.text_of(nb.cells[4]).splitlines() == ["False False", "{}"]


def test_help_and_usage_errors(execute: Any, nbview: Any) -> None:
    nb = execute([
        "%load_ext omniq",
        "%omniq --help",
        "%%omniq submit --help\nprint('never runs')",
        "%omniq wait --help",
        "%omniq init -h",
        "%omniq frobnicate",
        "%omniq wait nobody",
        "%%omniq submit --out x\nx = 1",
        "%%omniq submit -n j --sweep \"lr=[1, 2\"\nx = 1",
        "%omniq init --tasks ftp://example.com/queue",
        "%%omniq submit -n j --timeout -1\nx = 1",
        "%%omniq submit -n j --out j\nj = 1",
        "%%omniq submit -n j\nx = (",
    ], allow_errors=True)
    overview = nbview.text_of(nb.cells[1])
    for sub in ("init", "status", "wait", "cancel", "results", "schedules", "workers", "dashboard"):
        assert f"%omniq {sub}" in overview
    assert "%%omniq submit -n NAME" in overview
    submit_help = nbview.text_of(nb.cells[2])
    assert submit_help.startswith("usage: %%omniq submit")
    for opt in ("--sweep", "--out", "--queue", "--priority", "--retries", "--timeout", "--wait"):
        assert opt in submit_help
    assert "never runs" not in submit_help
    assert nbview.text_of(nb.cells[3]).startswith("usage: %omniq wait")
    init_help = nbview.text_of(nb.cells[4])
    for opt in ("--tasks", "--results", "--events", "--worker", "--concurrency", "--queues"):
        assert opt in init_help
    for i, needle in ((5, "unknown subcommand"), (6, "'nobody' is not a job"),
                      (7, "the following arguments are required: -n/--name"), (8, "--sweep"),
                      (9, "ftp://example.com/queue"), (10, "timeout=-1.0 is not valid"),
                      (11, "need different names")):
        assert needle in nbview.usage_error(nb.cells[i]), i
    # a syntax error is reported in the kernel, before anything is sent, in a few lines
    syntax = nbview.usage_error(nb.cells[12])
    assert "SyntaxError at line 1 of the cell" in syntax and "Nothing was submitted" in syntax
    assert "x = (" in syntax and "Traceback" not in syntax and len(syntax.splitlines()) <= 3


def test_storage_errors_are_one_line_not_a_traceback(execute: Any, nbview: Any) -> None:
    """``%omniq init`` on storage that cannot be opened says so in its line (issue 22, item 8)."""
    nb = execute([
        "%load_ext omniq",
        "%omniq init --tasks sqlite:////proc/nope/x.db --concurrency 0",
        "%%omniq submit -n j\ny = [1,\nz = 2",
        "print('j' in globals())",
    ], allow_errors=True)
    err = nbview.usage_error(nb.cells[1])
    assert "sqlite:////proc/nope/x.db" in err and "cannot create" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not nbview.errors_of(nb.cells[1]) or all(
        e["ename"] == "UsageError" for e in nbview.errors_of(nb.cells[1]))
    syntax = nbview.usage_error(nb.cells[2])
    assert "SyntaxError" in syntax and "Traceback" not in syntax
    assert nbview.text_of(nb.cells[3]).strip() == "False"


def test_failure_shows_output_and_traceback_under_the_widget(execute: Any, nbview: Any) -> None:
    nb = execute([
        "%load_ext omniq",
        "%%omniq submit -n boom\nprint('before the error')\nx = 1\nraise ValueError(f'bad value {x}')",
        "%omniq wait boom",
        "r = %omniq results boom\nprint(r.status.value, r.error.type)",
    ])
    submit = nb.cells[1]
    out = nbview.output_widget_text(nb, submit)
    assert out["stdout"] == "before the error\n"
    assert "ValueError: bad value 1" in out["stderr"]
    assert 'File "<omniq cell boom>", line 3' in out["stderr"]
    assert "raise ValueError(f'bad value {x}')" in out["stderr"]  # the cell's line, shown
    assert "omniq/workers/child.py" not in out["stderr"]  # the worker's frames are trimmed
    assert "boom: failed (ValueError: bad value 1)" in nbview.text_of(nb.cells[2])
    assert nbview.text_of(nb.cells[3]).strip() == "failed ValueError"
    (bar,) = nbview.progress_of(nb, submit)
    assert bar["value"] == bar["max"] == 1 and bar["bar_style"] == "danger"


def test_init_status_workers_schedules_cancel(execute: Any, nbview: Any, workdir: Path) -> None:
    nb = execute([
        "%load_ext omniq",
        "%omniq init --tasks sqlite:///lab.db --concurrency 1 --queues default,slow",
        "%%omniq submit -n long --queue slow\nimport time\ntime.sleep(30)",
        "import time\nt0 = time.time()\nwhile long.status().value != 'running' and time.time() - t0 < 20:\n"
        "    time.sleep(0.05)\nprint(long.status().value)",
        "%omniq cancel long",
        "print(long.get(10).status.value)",
        "%omniq status",
        "w = %omniq workers\nprint(list(w['kind']), list(w['slots']))",
        "s = %omniq schedules\nprint(type(s).__name__, len(s))",
        "first = get_ipython().magics_manager.registry['OmniQMagics'].oq\n"
        "%omniq init --tasks sqlite:///other.db --concurrency 0\n"
        "print(first.core.is_open, get_ipython().magics_manager.registry['OmniQMagics'].oq.core.is_open)",
    ])
    assert (workdir / "lab.db").exists()
    assert "<OmniQ open" in nbview.text_of(nb.cells[1])
    assert nbview.text_of(nb.cells[3]).strip() == "running"
    assert "long: cancelled" in nbview.text_of(nb.cells[4])
    assert nbview.text_of(nb.cells[5]).strip() == "cancelled"
    status_id = nbview.displayed_widget(nb.cells[6])
    status = nbview.widget_models(nb)[status_id]["value"]
    assert "Queues" in status and "slow" in status and "cancelled" in status and "Workers" in status
    assert nbview.text_of(nb.cells[7]).strip() == "['process'] [1]"
    assert nbview.text_of(nb.cells[8]).strip() == "DataFrame 0"
    assert nbview.text_of(nb.cells[9]).strip() == "False True"  # init closed the previous one


def test_sweep_resumes_after_kernel_restart(execute: Any, nbview: Any, workdir: Path) -> None:
    cells = [
        "%load_ext omniq",
        '%%omniq submit -n grid --sweep "k=range(4)" --out sq\nsq = k * k',
        "%omniq wait grid",
        "oq = get_ipython().magics_manager.registry['OmniQMagics'].oq\n"
        "print(grid.submitted, sq)\n"
        "print(oq.health()['queues']['default'])\n"
        "print(len(oq.events(types=['enqueued'])))",
    ]
    first = execute(cells)
    assert nbview.text_of(first.cells[3]).splitlines() == [
        "4 [0, 1, 4, 9]", "{'succeeded': 4}", "4"]
    # a new kernel on the same directory: the same cell finds every point done
    second = execute(cells)
    assert nbview.text_of(second.cells[3]).splitlines() == [
        "0 [0, 1, 4, 9]", "{'succeeded': 4}", "4"]
    (bar,) = nbview.progress_of(second, second.cells[1])
    assert bar["value"] == bar["max"] == 4
    # a changed cell is a different sweep: it runs again
    changed = [*cells[:1], cells[1] + "  # v2", *cells[2:]]
    third = execute(changed)
    assert nbview.text_of(third.cells[3]).splitlines()[0] == "4 [0, 1, 4, 9]"


def test_interrupting_the_kernel_does_not_kill_submitted_work(kernel_name: str, workdir: Path) -> None:
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name=kernel_name, cwd=str(workdir))
    printed: list[str] = []

    def run(code: str) -> None:
        def hook(msg: dict[str, Any]) -> None:
            if msg["msg_type"] == "stream":
                printed.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                printed.append(f"{msg['content']['ename']}: {msg['content']['evalue']}")

        reply = kc.execute_interactive(code, timeout=60, output_hook=hook)
        assert reply["content"]["status"] == "ok", (code, printed)

    try:
        run("%load_ext omniq")
        run("%%omniq submit -n long\nimport time\ntime.sleep(3)\n'finished'")
        run("import time\nwhile long.status().value != 'running':\n    time.sleep(0.05)")
        busy = kc.execute("time.sleep(30)")  # the user's next cell; they press Stop
        time.sleep(1)
        km.interrupt_kernel()
        while kc.get_shell_msg(timeout=30)["parent_header"].get("msg_id") != busy:
            pass  # the interrupted cell has replied: the kernel takes requests again
        printed.clear()
        run("r = long.get(30)\nprint(r.status.value, r.value if r.ok else r.error)")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert "".join(printed).startswith("succeeded"), printed


# ------------------------------------------------------------------------------------------------
# argument parsing, without a kernel: every line either parses or is a UsageError
# ------------------------------------------------------------------------------------------------
from types import SimpleNamespace  # noqa: E402

from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from IPython.core.error import UsageError  # noqa: E402

from omniq.notebook import magics as magics_module  # noqa: E402
from tests.helpers import examples  # noqa: E402

MAGIC_EXAMPLES = examples(300)


class _Reached(Exception):
    """Raised by the stubs where parsing is over and real work (storage, workers) would begin."""

    def __init__(self, what: str, **seen: Any) -> None:
        super().__init__(what)
        self.seen = seen


def _stub(cmd: Any, sub: str) -> Any:
    def run(args: Any) -> None:
        if sub == "workers":  # the SLURM options' own checks run; starting jobs does not
            raise _Reached(sub, args=args, request=magics_module.slurm_request(args))
        raise _Reached(sub, args=args)

    run.parser = cmd.parser  # type: ignore[attr-defined]
    return run


class _NoOpen(magics_module.OmniQ):
    """``%omniq init`` builds the instance and checks its URLs (so its own checks run) but never
    connects to storage."""

    def open(self) -> Any:
        from omniq.storage.urls import open_backends

        c = self.core  # the URLs are checked as open() checks them, without connecting
        open_backends(c.tasks_url, c.results_url, c.events_url)
        raise _Reached("init", config=self.config)


@pytest.fixture
def bare_magics(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``OmniQMagics`` on a stand-in shell: the real parsers and checks, no kernel, no storage."""
    shell = SimpleNamespace(
        events=SimpleNamespace(register=lambda *a: None, unregister=lambda *a: None),
        user_ns={"existing": 1},
        user_ns_hidden={},
        transform_cell=lambda cell: cell,
        kernel=None,
    )
    m = magics_module.OmniQMagics(shell)  # type: ignore[arg-type]
    cls = magics_module.OmniQMagics
    for sub in ("status", "schedules", "workers"):
        setattr(m, f"_cmd_{sub}", _stub(getattr(cls, f"_cmd_{sub}"), sub))

    # the real _start runs: the enqueue options are checked by build_tasks; nothing is stored
    core = magics_module.OmniQ(tasks="memory://", concurrency=0).core  # never opened

    def submit_tasks(tasks: Any) -> Any:
        raise _Reached("submit", tasks=tasks)

    def sweep_start(oq: Any, call: Any, grid: Any, *, name: str, identity: str, **options: Any) -> Any:
        core.build_tasks(call, [((), {})], **options)  # the options every point gets
        raise _Reached("submit", name=name, grid=grid, options=options)

    core.submit_tasks = submit_tasks  # type: ignore[method-assign]
    m._oq = SimpleNamespace(open=lambda: m._oq, core=core)
    monkeypatch.setattr(magics_module.CellSweep, "start", sweep_start)
    monkeypatch.setattr(magics_module, "OmniQ", _NoOpen)
    monkeypatch.delenv("OMNIQ_CONCURRENCY", raising=False)
    monkeypatch.delenv("OMNIQ_DEFAULT_WORKER", raising=False)
    return m


_OPTIONS = [
    "-n", "--name", "--sweep", "-s", "--out", "-o", "--wait", "-w", "--queue", "-q", "--priority",
    "-p", "--retries", "-r", "--timeout", "--tasks", "--results", "--events", "--worker",
    "--concurrency", "-c", "--queues", "-h", "--help", "--", "-", "--bogus", "-x", "--name=",
    "--slurm", "--adapt", "--partition", "--walltime", "--cores", "--gpus",
]
_VALUES = [
    "x", "job", "y,z", "a, b", "'x'", '"x"', "1", "-1", "0", "3.5", "nan", "inf", "-inf", "1e309",
    "99999999999999999999999", "class", "1abc", "x,", ",", "existing", "process", "thread", "gevent",
    "memory://", "sqlite://rel.db", "sqlite:///x.db?mode=ro", "mongodb://h/db", "redis://u:pw@h:1/0",
    "s3://bucket", "nope", '"lr=[1e-3, 1e-2]; seed=range(3)"', '"a=range(3)"', "a=[1,2]", '"a="',
    '"a=range(10**9)"', '"a=[1]; a=[2]"', "'", '"', "\\", "'unclosed", 'x"', "é", "\x00", " ", "",
    "0:2", "3:1", ":", "01:00:00", "a100:2",
]
_token = st.one_of(
    st.sampled_from(_OPTIONS),
    st.sampled_from(_VALUES),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12),
)
_args = st.lists(_token, max_size=8).map(" ".join)
_line_subs = st.sampled_from(["init", "status", "wait", "cancel", "results", "schedules", "workers",
                              "submit", "bogus", "help", "-h", ""])


def _check_usage_error(exc: UsageError, line: str) -> None:
    msg = str(exc)
    assert msg.strip(), f"empty UsageError for {line!r}"
    assert "Traceback" not in msg


@given(sub=_line_subs, rest=_args)
@example(sub="wait", rest='job "')
@example(sub="init", rest="--tasks 'sqlite:///x.db")
@example(sub="init", rest="--concurrency -3")
@example(sub="init", rest="--tasks mongodb://h/db")
@example(sub="status", rest="\\")
@settings(max_examples=MAGIC_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_line_magic_arguments_parse_or_raise_usage_error(bare_magics: Any, sub: str, rest: str) -> None:
    line = f"{sub} {rest}"
    try:
        bare_magics.omniq(line)
    except (_Reached, TimeoutError):
        pass
    except UsageError as exc:
        _check_usage_error(exc, line)


@given(rest=_args, cell=st.sampled_from(["y = 1", "y = existing + 1\ny", "print(1)"]))
@example(rest='-n job --out "y', cell="y = 1")
@example(rest="-n job --priority high", cell="y = 1")
@example(rest="-n job --timeout -1", cell="y = 1")
@example(rest="-n job --timeout nan", cell="y = 1")
@example(rest="-n job --retries -2", cell="y = 1")
@example(rest="-n job --queue ''", cell="y = 1")
@example(rest='-n job --sweep "a=range(10**9)"', cell="y = 1")
@example(rest="-n job --out job", cell="y = 1")
@settings(max_examples=MAGIC_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_cell_magic_arguments_parse_or_raise_usage_error(bare_magics: Any, rest: str, cell: str) -> None:
    line = f"submit {rest}"
    try:
        bare_magics.omniq(line, cell)
    except _Reached:
        pass
    except UsageError as exc:
        _check_usage_error(exc, line)


@given(sub=st.sampled_from(["init", "status", "wait", "bogus"]), rest=_args)
@settings(max_examples=examples(50), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_cell_magic_with_another_subcommand_is_a_usage_error(bare_magics: Any, sub: str, rest: str) -> None:
    with pytest.raises(UsageError, match="one subcommand, submit"):
        bare_magics.omniq(f"{sub} {rest}", "y = 1")


@pytest.mark.parametrize(
    ("line", "cell", "named"),
    [
        ("submit -n job --priority high", "y = 1", "--priority"),
        ("submit -n job --retries 1.5", "y = 1", "--retries"),
        ("submit -n job --timeout soon", "y = 1", "--timeout"),
        ("submit -n job --timeout -1", "y = 1", "timeout"),
        ("submit -n job --retries -1", "y = 1", "retries"),
        ("submit -n 1job", "y = 1", "-n"),
        ("submit -n job --out 'a,1b'", "y = 1", "--out"),
        ("submit -n job --sweep 'a='", "y = 1", "--sweep"),
        ('submit -n job --out "y', "y = 1", "quot"),
        ("submit --bogus 1 -n job", "y = 1", "--bogus"),
        ("init --concurrency many", None, "--concurrency"),
        ("init --worker fork", None, "--worker"),
        ("init --tasks mongodb://h/db", None, "mongodb"),
        ("init --concurrency -1", None, "concurrency"),
        ("wait job --timeout", None, "--timeout"),
        ('wait "job', None, "quot"),
        ("wait", None, "NAME"),
        ("frobnicate", None, "frobnicate"),
        ("workers --slurm many", None, "--slurm"),
        ("workers --adapt 4", None, "--adapt"),
        ("workers --adapt -1:3", None, "expected MIN:MAX"),  # negative: still says what is valid
        ("workers --slurm -2", None, ">= 0"),
        ("submit -n job --priority -2 --retries -1", "y = 1", "retries"),
        ("workers --cores 2", None, "--cores"),
        ("workers --slurm 1 --walltime 99:99", None, "--walltime"),
    ],
)
def test_usage_errors_name_the_bad_option(bare_magics: Any, line: str, cell: str | None, named: str) -> None:
    with pytest.raises(UsageError) as info:
        bare_magics.omniq(line, cell)
    assert named in str(info.value)


def test_status_shows_last_outcomes_unreachable_storage_and_overruns(tmp_path: Path) -> None:
    from omniq import OmniQ
    from omniq.notebook.magics import status_html, status_text
    from tests import helpers

    with OmniQ(tasks=f"sqlite:///{tmp_path}/st.db", worker="thread", concurrency=1) as oq:
        oq.schedule(helpers.square, interval=0.1, args=(2,), name="often")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            h = oq.health()
            if any(s["last_outcome"] == "succeeded" for s in h["schedules"]):
                break
            time.sleep(0.05)
    assert "often active" in status_text(h) and "last succeeded" in status_text(h)
    assert "last succeeded" in status_html(h)
    h["storage"]["results"] = {"url": "redis://h:1/0", "ok": False, "error": "ConnectionError: refused"}
    h["leases_overrun"] = [{"task_id": "t", "queue": "q", "worker": "w", "at": 0.0, "outcome": "requeued"}]
    text, page = status_text(h), status_html(h)
    assert "storage unreachable: results redis://h:1/0: ConnectionError: refused" in text
    assert "leases overrun in the last hour: 1" in text
    assert "redis://h:1/0 unreachable" in page and "leases overrun" in page


def test_a_generator_comes_back_as_the_list_it_yields(tmp_path: Path) -> None:
    """A cell ending in a generator expression (or setting one as --out) brings back its items
    instead of failing the task with "cannot serialize" (issue 22, item 10)."""
    from omniq import OmniQ
    from omniq.notebook import CellCall

    src = "gen = (i * i for i in range(4))\ndef g():\n    yield 'a'\n    yield 'b'\ng()"
    with OmniQ(tasks=f"sqlite:///{tmp_path}/g.db", worker="process", concurrency=1) as oq:
        env = oq.submit(CellCall(src, {"values": {}, "imports": {}}, ["gen"], "gen")).result(timeout=60)
    assert env["value"] == ["a", "b"] and env["outs"] == {"gen": [0, 1, 4, 9]}
