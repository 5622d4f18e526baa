"""The joblib backend "omniq" (issue #16): joblib.Parallel and scikit-learn's n_jobs on OmniQ.

Process workers over SQLite files throughout; one warm pool per module (scikit-learn imports
once per child)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

joblib = pytest.importorskip("joblib")
from joblib import Parallel, delayed, parallel_config  # noqa: E402

from omniq import ConfigError, OmniQ, TaskError, TaskStatus  # noqa: E402
from omniq.joblib import OmniQBackend, call_key, register  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "scikit-learn" / "gridsearch.ipynb"

register()


# --- task functions ---------------------------------------------------------------------------------
class Oops(Exception):
    pass


def square(x):
    return x * x


def fail_on(x, bad):
    if x == bad:
        raise Oops(f"x={x}")
    return x


def logged(x, log_dir, fail_flag=None, seconds=0.02):
    """Records each execution as a file, so a test counts what really ran."""
    Path(log_dir, f"{x}-{time.time_ns()}-{os.getpid()}").touch()
    if fail_flag is not None and x == 7 and not os.path.exists(fail_flag):
        raise ValueError("seven fails until the flag exists")
    time.sleep(seconds)
    return 10 * x


def ran(log_dir):
    return sorted(int(p.name.split("-")[0]) for p in Path(log_dir).iterdir())


def nested_sum(n):
    """A Parallel call inside a task (through OmniQ where slots are free, else inline)."""
    return sum(Parallel(n_jobs=-1)(delayed(square)(i) for i in range(n)))


def slow_square(x, seconds=0.05):
    time.sleep(seconds)
    return x * x


def nested_slow(n, seconds=0.05):
    """A nested call worth spreading: ``n`` calls of ``seconds`` each."""
    return sum(Parallel(n_jobs=-1)(delayed(slow_square)(i, seconds) for i in range(n)))


# --- fixtures -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def url(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('joblib') / 'jl.db'}"


@pytest.fixture(scope="module")
def oq(url):
    with OmniQ(tasks=url, worker="process", concurrency=2) as q:
        yield q


def results_of(oq, since):
    """The final results of the tasks enqueued since ``since`` (what OmniQ recorded)."""
    ids = [e.task_id for e in oq.events(since=since, types=["enqueued"])]
    return [oq.get_result(t) for t in ids]


# --- Parallel ------------------------------------------------------------------------------------------
def test_parallel_runs_calls_as_omniq_tasks(oq):
    scale = 3
    since = time.time()
    with parallel_config(backend="omniq", oq=oq):
        out = Parallel(n_jobs=-1)(delayed(lambda v: v * scale)(i) for i in range(50))  # by value
    assert out == [3 * i for i in range(50)]
    rs = results_of(oq, since)
    assert rs and all(r.status is TaskStatus.SUCCEEDED for r in rs)
    assert sum(r.metadata["calls"] for r in rs) == 50  # batched: every call in some task


def test_batching_is_automatic_or_fixed(oq):
    since = time.time()
    with parallel_config(backend="omniq", oq=oq):
        assert Parallel(n_jobs=2)(delayed(square)(i) for i in range(2000)) == [i * i for i in range(2000)]
    auto = results_of(oq, since)
    assert len(auto) < 2000  # joblib's batch size negotiation grew the batches
    since = time.time()
    with parallel_config(backend="omniq", oq=oq, chunksize=25):
        assert Parallel(n_jobs=2)(delayed(square)(i) for i in range(100)) == [i * i for i in range(100)]
    calls = [r.metadata["calls"] for r in results_of(oq, since)]
    assert max(calls) == 25 and sum(calls) == 100  # (joblib splits the last batches finer)


def test_generator_return(oq):
    with parallel_config(backend="omniq", oq=oq):
        gen = Parallel(n_jobs=2, return_as="generator")(delayed(square)(i) for i in range(20))
        assert not isinstance(gen, list)
        assert list(gen) == [i * i for i in range(20)]
        unordered = Parallel(n_jobs=2, return_as="generator_unordered")(delayed(square)(i) for i in range(20))
        assert sorted(unordered) == [i * i for i in range(20)]


def test_exception_keeps_its_type(oq):
    with parallel_config(backend="omniq", oq=oq), pytest.raises(Oops, match="x=13") as info:
        Parallel(n_jobs=2)(delayed(fail_on)(i, 13) for i in range(40))
    assert isinstance(info.value.__cause__, TaskError)
    with parallel_config(backend="omniq", oq=oq), pytest.raises(ZeroDivisionError):
        Parallel(n_jobs=2)(delayed(divmod)(1, i) for i in range(3))


def test_nested_parallel_runs_in_the_worker(oq):
    with parallel_config(backend="omniq", oq=oq):
        assert Parallel(n_jobs=2)(delayed(nested_sum)(n) for n in range(6)) == [
            sum(i * i for i in range(n)) for n in range(6)
        ]


def test_nested_parallel_goes_through_omniq_when_slots_are_free(oq):
    """One outer call on a pool of two: the other slot is free, so the inner calls are shared
    between the waiting task (its lent slot) and OmniQ tasks, stored and visible as such."""
    deadline = time.monotonic() + 30  # earlier tests' tasks (backup copies too) have ended
    while any(c.get("running") for c in oq.health()["queues"].values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    since = time.time()
    with parallel_config(backend="omniq", oq=oq):
        assert Parallel(n_jobs=2)(delayed(nested_slow)(8) for _ in range(1)) == [sum(i * i for i in range(8))]
    rs = results_of(oq, since)
    inner = [r for r in rs if r.metadata.get("nested")]
    assert inner and all(r.status is TaskStatus.SUCCEEDED and r.name.endswith("slow_square") for r in inner)
    outer = [r for r in rs if not r.metadata.get("nested")]
    assert len(outer) == 1 and outer[0].name.endswith("nested_slow")
    assert all(r.metadata["calls"] >= 1 for r in inner) and sum(r.metadata["calls"] for r in inner) < 8


def test_nested_calls_keep_threads_when_tasks_are_signed(tmp_path, monkeypatch):
    """A process worker's child holds no signing key, so it could not make tasks a worker
    would run: with signing on, nested calls run on the worker's threads, and come out right."""
    monkeypatch.setenv("OMNIQ_SECRET_KEY", "n" * 40)
    with OmniQ(tasks=f"sqlite:///{tmp_path}/signed.db", worker="process", concurrency=2) as q:
        since = time.time()
        with parallel_config(backend="omniq", oq=q):
            # one outer call: the other slot is free, where an unsigned nested task would go
            got = Parallel(n_jobs=2)(delayed(nested_slow)(8) for _ in range(1))
        assert got == [sum(i * i for i in range(8))]
        rs = results_of(q, since)
        assert rs and all(r.status is TaskStatus.SUCCEEDED for r in rs)
        assert not [r for r in rs if r.metadata.get("nested")]


@pytest.mark.parametrize("n_jobs", [2, -1])
def test_nested_parallel_cannot_deadlock_with_every_slot_busy(oq, n_jobs):
    """As many outer calls in flight as the pool has slots (and more queued), each waiting for
    an inner call: they finish, their values right."""
    began = time.monotonic()
    with parallel_config(backend="omniq", oq=oq):
        got = Parallel(n_jobs=n_jobs)(delayed(nested_slow)(n, 0.02) for n in range(8))
    assert got == [sum(i * i for i in range(n)) for n in range(8)]
    assert time.monotonic() - began < 60


def test_nested_rules():
    """How many batches a nested call keeps going, and which storage a worker can reach."""
    from omniq.joblib import _inner_jobs, _reachable

    assert [_inner_jobs(-1, 0), _inner_jobs(-1, 3), _inner_jobs(None, 3), _inner_jobs(-2, 3)] == [1, 4, 4, 3]
    assert [_inner_jobs(2, 3), _inner_jobs(8, 1), _inner_jobs(1, 5)] == [2, 2, 1]
    assert _reachable("memory://") is None and _reachable("sqlite://:memory:") is None
    assert _reachable("redis://:secret@host:6379/0") is None  # never written into a payload
    assert _reachable("sqlite:///rel.db") == f"sqlite:///{os.path.abspath('rel.db')}"
    assert _reachable("sqlite:////abs/x.db") == "sqlite:////abs/x.db"


def test_nested_calls_keep_threads_when_workers_cannot_reach_the_storage():
    from joblib.parallel import ThreadingBackend

    from omniq.joblib import NestedBackend

    with OmniQ(tasks="memory://", worker="thread", concurrency=1) as q:
        backend = OmniQBackend(oq=q)
        backend.configure(n_jobs=1)
        assert isinstance(backend.get_nested_backend()[0], ThreadingBackend)
        backend.stop_call()
    with OmniQ(tasks="memory://", concurrency=0) as q:
        assert not isinstance(OmniQBackend(oq=q).get_nested_backend()[0], NestedBackend)


async def _claim_all(core, worker):
    return await core.session.queue.claim(worker, queues=None, limit=100, lease=600, now=time.time())


@pytest.mark.parametrize("stuck", ["queued", "claimed"])
def test_nested_call_does_not_wait_on_a_slot_that_never_runs_it(tmp_path, stuck):
    """A worker that says it has free slots but never runs the inner tasks (they stay queued, or
    it claimed them into a prefetch buffer behind a task that never ends): the waiting task
    takes back the queued ones (cancelled in OmniQ) and backs up the claimed ones itself."""
    from omniq.joblib import NestedBackend, _client
    from omniq.storage.base import WorkerInfo

    url = f"sqlite:///{tmp_path}/stuck.db"
    spec = {"urls": (url, url, url), "options": {"priority": 1}, "threads": None}
    client = _client(spec["urls"])
    core = client.core
    now = time.time()
    client._thread.call(core.session.queue.heartbeat, WorkerInfo(
        id="liar", kind="process", host="h", pid=1, slots=3, queues=None, started_at=now,
        last_heartbeat=now + 120, lease=600))
    stop = []

    def claimer():
        while not stop:
            client._thread.call(_claim_all, core, "liar")
            time.sleep(0.02)

    import threading

    t = threading.Thread(target=claimer, daemon=True)
    if stuck == "claimed":
        t.start()
    began = time.monotonic()
    try:
        with parallel_config(backend=NestedBackend(spec, nesting_level=1)):
            got = Parallel(n_jobs=-1)(delayed(slow_square)(i, 0.05) for i in range(6))
    finally:
        stop.append(1)
    assert got == [i * i for i in range(6)]
    assert time.monotonic() - began < 30
    tids = [e.task_id for e in client.events(types=["enqueued"])]
    assert tids  # some went to OmniQ (three free slots, it was told)
    statuses = {client.core.waiters.resolve_id(t): client.get_result(t) for t in tids}
    if stuck == "queued":
        assert all(r is not None and r.status is TaskStatus.CANCELLED for r in statuses.values())
    else:
        assert all(r is None for r in statuses.values())  # still held by the worker that lied


def test_private_instance_from_options(tmp_path):
    url = f"sqlite:///{tmp_path}/private.db"
    with parallel_config(backend="omniq", tasks=url, concurrency=2, priority=3):
        assert Parallel()(delayed(square)(i) for i in range(10)) == [i * i for i in range(10)]
    with OmniQ(tasks=url, concurrency=0) as reader:
        rs = results_of(reader, 0)
    assert rs and all(r.status is TaskStatus.SUCCEEDED for r in rs)


def test_n_jobs(oq):
    b = OmniQBackend(oq=oq)
    assert b.effective_n_jobs(-1) == 2  # the instance's slots
    assert b.effective_n_jobs(None) == 2
    assert b.effective_n_jobs(-2) == 2  # never 1: joblib would run the calls in the caller
    assert b.effective_n_jobs(5) == 5
    with pytest.raises(ValueError):
        b.effective_n_jobs(0)


def test_bad_input_is_named(oq, url):
    closed = OmniQ(tasks=url, concurrency=0)
    with pytest.raises(ConfigError, match=r"oq=.*not open"):
        parallel_config(backend="omniq", oq=closed)
    with pytest.raises(ConfigError, match="'flavour'"):
        parallel_config(backend="omniq", oq=oq, flavour="mint")
    with pytest.raises(ConfigError, match=r"oq= and OmniQ options \(tasks"):
        parallel_config(backend="omniq", oq=oq, tasks=url)
    with pytest.raises(ConfigError, match="retries"):
        parallel_config(backend="omniq", oq=oq, retries=-1)
    with pytest.raises(ConfigError, match="name"):
        parallel_config(backend="omniq", oq=oq, name="")
    with pytest.raises(ConfigError, match="oq="):
        parallel_config(backend="omniq", oq="sqlite:///x.db")
    with parallel_config(backend="omniq", oq=oq), pytest.raises(TypeError, match="not callable"):
        Parallel(n_jobs=2)([(42, (1,), {})])


def test_load_ext_registers_the_backend():
    ipython = pytest.importorskip("IPython")
    from joblib.parallel import BACKENDS

    from omniq import load_ipython_extension, unload_ipython_extension

    BACKENDS.pop("omniq", None)
    ip = ipython.core.interactiveshell.InteractiveShell.instance()
    try:
        load_ipython_extension(ip)
        assert BACKENDS["omniq"] is OmniQBackend
    finally:
        unload_ipython_extension(ip)
        register()


def test_without_oq_the_kernels_instance_is_used(tmp_path):
    ipython = pytest.importorskip("IPython")
    from omniq import load_ipython_extension, unload_ipython_extension

    ip = ipython.core.interactiveshell.InteractiveShell.instance()
    url = f"sqlite:///{tmp_path}/kernel.db"
    load_ipython_extension(ip)
    try:
        ip.run_line_magic("omniq", f"init --tasks {url} --worker process --concurrency 2")
        kernel_oq = ip.magics_manager.registry["OmniQMagics"]._oq
        since = time.time()
        with parallel_config(backend="omniq"):
            assert Parallel()(delayed(square)(i) for i in range(6)) == [i * i for i in range(6)]
        assert results_of(kernel_oq, since)  # the tasks went to %omniq init's instance
    finally:
        unload_ipython_extension(ip)
        register()


def test_progress_outside_a_kernel_is_a_text_line(oq, capsys):
    with parallel_config(backend="omniq", oq=oq, progress=True):
        Parallel(n_jobs=2)(delayed(square)(i) for i in range(8))
    err = capsys.readouterr().err
    assert "joblib" in err and "failed 0" in err


# --- resumable calls --------------------------------------------------------------------------------
def test_named_call_reruns_nothing_already_done(url, tmp_path):
    log = tmp_path / "log"
    log.mkdir()
    flag = tmp_path / "flag"

    def run():
        # a new instance each time: a new kernel on the same storage. (The error is caught
        # inside, so the instance closes draining: calls still running when the first run
        # failed finish and are stored; closed without draining they would be handed back and
        # run again, at least once as always.)
        with OmniQ(tasks=url, worker="process", concurrency=2) as q, \
                parallel_config(backend="omniq", oq=q, name="resume"):
            try:
                return Parallel(n_jobs=-1)(delayed(logged)(i, str(log), str(flag)) for i in range(20))
            except ValueError as e:
                return e

    assert "seven" in str(run())
    first = ran(log)
    assert 7 in first
    flag.touch()
    assert run() == [10 * i for i in range(20)]
    second = ran(log)
    # every call ran exactly once successfully; 7 ran twice (it failed once); the calls that
    # succeeded in the first run were not run again
    assert sorted(set(second)) == list(range(20))
    assert second.count(7) == 2 and all(second.count(i) == 1 for i in range(20) if i != 7)
    t0 = time.monotonic()
    assert run() == [10 * i for i in range(20)]
    assert ran(log) == second  # a third run executes nothing
    assert time.monotonic() - t0 < 10


def test_named_call_adopts_work_in_flight(url, tmp_path):
    """A second process (a restarted kernel) running the same named call while the first's
    tasks are still queued or running adopts them: each call runs once."""
    log = tmp_path / "log"
    log.mkdir()
    with OmniQ(tasks=url, worker="process", concurrency=1) as q1, \
            OmniQ(tasks=url, worker="process", concurrency=1) as q2:
        import threading

        out = {}

        def run(name, q):
            with parallel_config(backend="omniq", oq=q, name="in-flight"):
                out[name] = Parallel(n_jobs=2)(delayed(logged)(i, str(log)) for i in range(8))

        a = threading.Thread(target=run, args=("a", q1))
        a.start()
        time.sleep(0.3)
        run("b", q2)
        a.join(60)
    assert out["a"] == out["b"] == [10 * i for i in range(8)]
    assert ran(log) == list(range(8))


KILLED_RUN = """
import sys
from joblib import Parallel, delayed, parallel_config
from omniq import OmniQ
from omniq.joblib import register
from tests.test_joblib import logged
register()
url, log = sys.argv[1], sys.argv[2]
with OmniQ(tasks=url, worker="process", concurrency=2, lease=2) as q, \\
        parallel_config(backend="omniq", oq=q, name="killed"):
    Parallel(n_jobs=-1)(delayed(logged)(i, log, None, 0.3) for i in range(16))
"""


def test_named_call_resumes_after_its_process_is_killed(tmp_path):
    """A kernel killed mid-call (kill -9, its workers with it): the same call in a new process
    on the same storage runs only what had not finished -- stored fits are not run again, the
    ones running at the kill are delivered again once their lease lapses."""
    import signal
    import subprocess

    url = f"sqlite:///{tmp_path}/killed.db"
    log = tmp_path / "log"
    log.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, url, str(log)], cwd=REPO,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while len(ran(log)) < 6 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    with OmniQ(tasks=url, concurrency=0) as reader:
        done_before = {r.key for r in reader.find_results("killed/") if r.status is TaskStatus.SUCCEEDED}
    first = ran(log)
    assert done_before and len(done_before) < 16
    # (its own lease is longer: a 2 s lease that lapses under a loaded machine while its task
    # runs here delivers that task twice, which the exact bound below would count)
    with OmniQ(tasks=url, worker="process", concurrency=2, lease=8) as q, \
            parallel_config(backend="omniq", oq=q, name="killed"):
        out = Parallel(n_jobs=-1)(delayed(logged)(i, str(log), None, 0.3) for i in range(16))
    assert out == [10 * i for i in range(16)]
    again = ran(log)
    assert sorted(set(again)) == list(range(16))
    # what ran now: at most the calls not stored before the kill (nothing stored ran again)
    assert 0 < len(again) - len(first) <= 16 - len(done_before)


def test_call_key_is_stable_and_looks_through_wrappers():
    from sklearn.utils.parallel import delayed as sk_delayed

    f1, a1, k1 = delayed(square)(3)
    assert call_key("n", [(f1, a1, k1)]) == call_key("n", [delayed(square)(3)])
    assert call_key("n", [(f1, a1, k1)]) != call_key("n", [delayed(square)(4)])
    assert call_key("n", [(f1, a1, k1)]) != call_key("m", [(f1, a1, k1)])
    w, args, kwargs = sk_delayed(square)(3)
    w.with_config_and_warning_filters({"assume_finite": False}, [("ignore", None, Warning, None, 0)])
    w2, _, _ = sk_delayed(square)(3)
    w2.with_config_and_warning_filters({"assume_finite": False}, [])  # other warning filters
    assert call_key("n", [(w, args, kwargs)]) == call_key("n", [(w2, args, kwargs)])


# --- scikit-learn -----------------------------------------------------------------------------------
def test_gridsearch_matches_sequential(oq):
    sklearn = pytest.importorskip("sklearn")  # noqa: F841
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV

    X, y = make_classification(n_samples=150, n_features=8, random_state=0)
    grid = {"C": [0.01, 0.1, 1.0, 10.0]}
    serial = GridSearchCV(LogisticRegression(max_iter=500), grid, cv=5, n_jobs=1).fit(X, y)
    since = time.time()
    with parallel_config(backend="omniq", oq=oq):
        par = GridSearchCV(LogisticRegression(max_iter=500), grid, cv=5, n_jobs=2).fit(X, y)
    assert par.best_params_ == serial.best_params_
    assert par.best_score_ == serial.best_score_
    rs = results_of(oq, since)
    fits = [r for r in rs if r.name.endswith("_fit_and_score")]
    assert fits and all(r.status is TaskStatus.SUCCEEDED for r in fits)
    assert sum(r.metadata["calls"] for r in fits) == 4 * 5  # every fit is (part of) an OmniQ task


def test_cross_val_score_and_forest_with_all_cores(oq):
    pytest.importorskip("sklearn")
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import cross_val_score

    X, y = make_classification(n_samples=150, n_features=8, random_state=1)
    model = RandomForestClassifier(n_estimators=8, random_state=0, n_jobs=-1)
    serial = cross_val_score(model, X, y, cv=3, n_jobs=1)
    since = time.time()
    with parallel_config(backend="omniq", oq=oq):
        par = cross_val_score(model, X, y, cv=3, n_jobs=-1)  # the forest's trees: nested
        forest = RandomForestClassifier(n_estimators=8, random_state=0, n_jobs=-1).fit(X, y)
    assert list(par) == list(serial)
    assert forest.score(X, y) > 0.9
    names = {r.name for r in results_of(oq, since)}
    assert any(n.endswith("_fit_and_score") for n in names)
    assert any(n.endswith("_parallel_build_trees") for n in names)  # the forest's own n_jobs


def test_named_gridsearch_resumes(url, tmp_path):
    pytest.importorskip("sklearn")
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV

    X, y = make_classification(n_samples=120, n_features=6, random_state=2)
    grid = {"C": [0.1, 1.0, 10.0]}

    def fit():
        with OmniQ(tasks=url, worker="process", concurrency=2) as q:
            since = time.time()
            with parallel_config(backend="omniq", oq=q, name="grid"):
                g = GridSearchCV(LogisticRegression(max_iter=300), grid, cv=3, n_jobs=-1).fit(X, y)
            started = q.events(since=since, types=["started"])
        return g, started

    g1, started1 = fit()
    g2, started2 = fit()
    # 3 candidates x 3 folds, then nothing (scikit-learn 1.7, the newest on Python 3.10, sends
    # its 9 fits as 10 tasks: the count is scikit-learn's, the resume is ours)
    assert len(started1) >= 9 and started2 == []
    assert g2.best_params_ == g1.best_params_ and g2.best_score_ == g1.best_score_


# --- the notebook -------------------------------------------------------------------------------------
def test_gridsearch_notebook_runs_with_its_widget(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("ipywidgets")
    pytest.importorskip("sklearn")
    for key in list(os.environ):
        if key.startswith("OMNIQ_"):
            monkeypatch.delenv(key)
    kdir = tmp_path / "jupyter" / "kernels" / "omniq-joblib-test"
    kdir.mkdir(parents=True)
    (kdir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "omniq tests", "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    work = tmp_path / "work"
    work.mkdir()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for c in nb.cells:  # committed without outputs
        assert c.cell_type != "code" or (c.outputs == [] and c.execution_count is None)
    t0 = time.monotonic()
    nbclient.NotebookClient(nb, kernel_name="omniq-joblib-test", timeout=120, store_widget_state=True,
                            resources={"metadata": {"path": str(work)}}).execute()
    took = time.monotonic() - t0

    def text(needle):
        cell = next(c for c in nb.cells if c.cell_type == "code" and needle in c.source)
        return "".join(o.get("text", "") or o.get("data", {}).get("text/plain", "") for o in cell.outputs)

    assert "best: {'C': " in text("search.fit(")
    assert "same as n_jobs=1: True" in text("serial = GridSearchCV")
    assert "fits run again: 0" in text("again = GridSearchCV")
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    bars = [m["state"] for m in state.values() if m.get("model_name") == "IntProgressModel"]
    assert bars and any(b["value"] == b["max"] > 0 for b in bars)  # a full bar was saved
    assert took < 90
