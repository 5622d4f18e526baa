"""Every notebook in notebooks/ runs top to bottom in a real kernel, fast, and shows what it
says it shows; notebooks are committed without outputs; binder/ installs the package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
MAX_SECONDS = 20  # each notebook's budget (kernel start included), per the contributing notes


def _cell(nb: Any, needle: str) -> Any:
    """The first code cell whose source contains ``needle``."""
    for c in nb.cells:
        if c.cell_type == "code" and needle in c.source:
            return c
    raise AssertionError(f"no cell contains {needle!r}")


# --- what each notebook must show ----------------------------------------------------------
def check_quickstart(nb: Any, v: Any) -> None:
    assert v.text_of(_cell(nb, "h.result(timeout=30)")).strip() == "50"
    assert v.text_of(_cell(nb, "squares = [")).strip() == "[1, 2, 5, 10, 17, 26, 37, 50, 65, 82]"
    assert v.text_of(_cell(nb, "r = oq.get_result")).startswith("succeeded 50 ")
    assert v.text_of(_cell(nb, "triple = make_scaler(3)")).strip() == "42"
    failure = v.text_of(_cell(nb, "bad = oq.submit(risky, 3)"))
    assert "type: ValueError" in failure and "message: x=3 is not allowed" in failure
    assert "Traceback (most recent call last)" in failure and ", line 3, in risky" in failure
    assert v.text_of(_cell(nb, "failed = oq.get_result")).strip() == "('failed', 'ValueError')"
    (bar,) = v.progress_of(nb, _cell(nb, "progress(handles"))
    assert bar["max"] == 10


def check_sweeps(nb: Any, v: Any) -> None:
    table = _cell(nb, "df = sw.to_pandas()")
    html = next(o for o in table.outputs if o["output_type"] == "execute_result")["data"]["text/html"]
    assert html.count("<tr") == 1 + 15  # header + one row per point
    assert v.text_of(table).count("succeeded") == 15
    plot = _cell(nb, "import matplotlib.pyplot")
    assert any("image/png" in o.get("data", {}) for o in plot.outputs)
    assert "points submitted again: 0 | done: True" in v.text_of(_cell(nb, "again = oq.sweep"))
    # the finished sweeps' bars were saved full (value == max)
    (bar,) = v.progress_of(nb, _cell(nb, 'sw = oq.sweep(train, grid, name="lr-scan")\nsw'))
    assert bar["value"] == bar["max"] == 15
    (cell_bar,) = v.progress_of(nb, _cell(nb, "%%omniq submit -n fit"))
    assert cell_bar["value"] == cell_bar["max"] == 6
    assert "fit: 6 succeeded; set score" in v.text_of(_cell(nb, "%omniq wait fit"))
    results = v.text_of(_cell(nb, "%omniq results fit"))
    assert len(results.strip().splitlines()) == 1 + 6
    score = v.text_of(_cell(nb, "score  # noqa"))
    assert score.startswith("[") and score.count(",") == 5
    printed = v.output_widget_text(nb, _cell(nb, "%%omniq submit -n fit"))["stdout"]
    assert printed.count("-> ") == 6


def check_magics(nb: Any, v: Any) -> None:
    submit = _cell(nb, "%%omniq submit -n job")
    assert "crunching 10 numbers" in v.output_widget_text(nb, submit)["stdout"]
    assert "job: succeeded; set total, length" in v.text_of(_cell(nb, "%omniq wait job"))
    assert v.text_of(_cell(nb, "total, length, job.result()")).strip() == "(55, 19.621416870348583, 5.5)"
    assert v.text_of(_cell(nb, "%omniq results job")).strip() == "5.5"
    assert v.text_of(_cell(nb, "p  # noqa")).strip() == "[1, 2, 4, 8, 1, 3, 9, 27]"
    assert len(v.text_of(_cell(nb, "%omniq results powers")).strip().splitlines()) == 1 + 8
    status = v.widget_models(nb)[v.displayed_widget(_cell(nb, "%omniq status"))]["value"]
    assert "Queues" in status and "Workers" in status
    assert "process" in v.text_of(_cell(nb, "%omniq workers"))
    assert "%%omniq submit -n NAME" in v.text_of(_cell(nb, "%omniq --help"))


def check_scheduling(nb: Any, v: Any) -> None:
    table = v.text_of(_cell(nb, 'pd.DataFrame(oq.schedules())[["name", "spec"'))
    assert "heartbeat" in table and "weekday-9am" in table and "Europe/Paris" in table
    assert int(v.text_of(_cell(nb, "runs so far")).split(":")[1]) >= 2
    assert v.text_of(_cell(nb, "runs while paused")).strip() == "runs while paused: 0"
    assert "True" in v.text_of(_cell(nb, 'pd.DataFrame(oq.schedules())[["name", "next_run"'))
    assert int(v.text_of(_cell(nb, "runs after resuming")).split(":")[1]) >= 1
    assert v.text_of(_cell(nb, "schedules left")).strip() == "schedules left: 0"


def check_results_on_s3(nb: Any, v: Any) -> None:
    assert v.text_of(_cell(nb, "cubes = [")).strip() == "[0, 1, 8, 27, 64, 125]"
    assert v.text_of(_cell(nb, "stored = fs.find")).startswith("6 result objects, e.g. runs/results/")
    lines = v.text_of(_cell(nb, "reader = OmniQ(")).splitlines()
    assert lines == ["[0, 1, 8, 27, 64, 125]", "submitted again: 0 | values: [0, 1, 8, 27]"]


CHECKS: dict[str, Callable[[Any, Any], None]] = {
    "quickstart": check_quickstart,
    "sweeps": check_sweeps,
    "magics": check_magics,
    "scheduling": check_scheduling,
    "results_on_s3": check_results_on_s3,
}


# --- fixtures --------------------------------------------------------------------------------
@pytest.fixture
def s3_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A moto S3 server; the kernel (and its workers) find it through the environment."""
    from tests.storage.cloud import moto_server

    with moto_server() as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        monkeypatch.setenv("OMNIQ_DEMO_BUCKET", "omniq-notebook-test")
        yield endpoint


# --- tests -----------------------------------------------------------------------------------
def test_every_notebook_has_a_check() -> None:
    assert {p.stem for p in NOTEBOOKS} == set(CHECKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    for c in nb.cells:
        if c.cell_type == "code":
            assert c.outputs == [] and c.execution_count is None, c.source[:60]
    assert "widgets" not in nb.metadata


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, execute: Any, nbview: Any, workdir: Path, request: pytest.FixtureRequest) -> None:
    if path.stem == "results_on_s3":
        request.getfixturevalue("s3_environment")
    shutil.copy(path, workdir / path.name)  # run where a user would: next to the notebook
    nb = nbformat.read(workdir / path.name, as_version=4)
    t0 = time.monotonic()
    execute(nb, cwd=workdir)
    took = time.monotonic() - t0
    CHECKS[path.stem](nb, nbview)
    assert took < MAX_SECONDS, f"{path.name} took {took:.1f} s to run (budget {MAX_SECONDS} s)"


# --- binder ----------------------------------------------------------------------------------
def test_binder_files_are_complete() -> None:
    req = (REPO / "binder" / "requirements.txt").read_text().split()
    assert any(r.startswith("-e") or r.startswith(".") for r in req)
    assert ".[notebook,s3]" in " ".join(req)
    post = REPO / "binder" / "postBuild"
    assert os.access(post, os.X_OK), "binder/postBuild must be executable"
    subprocess.run(["bash", "-n", str(post)], check=True)


@pytest.mark.slow
def test_binder_requirements_install_the_package(tmp_path: Path) -> None:
    """What mybinder does: install binder/requirements.txt from the repository root into a
    fresh environment, run postBuild; then the package, its magics and the notebook extras
    import there."""
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not on PATH")
    venv = tmp_path / "venv"
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True, cwd=REPO)
    py = venv / "bin" / "python"
    subprocess.run(
        [uv, "pip", "install", "--quiet", "--python", str(py), "-r", "binder/requirements.txt"],
        check=True, cwd=REPO, timeout=600,
    )
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    env.pop("VIRTUAL_ENV", None)
    subprocess.run(["bash", "binder/postBuild"], check=True, cwd=REPO, env=env, timeout=120)
    code = (
        "import omniq, omniq.notebook.magics, omniq.notebook.widgets, omniq.sweep\n"
        "import ipykernel, ipywidgets, nbclient, pandas, matplotlib, s3fs\n"
        "from omniq import load_ipython_extension, unload_ipython_extension\n"
        "print(omniq.__file__)"
    )
    out = subprocess.run([str(py), "-c", code], check=True, cwd=tmp_path, env=env,
                         capture_output=True, text=True).stdout
    assert Path(out.strip()).is_relative_to(REPO / "src")  # editable: the repo's own source
