"""``%omniq workers --slurm N`` / ``--adapt MIN:MAX`` and SLURM jobs in ``%omniq status`` (issue #18).

Option checks run anywhere (the real parser, no kernel). The rest (``@pytest.mark.slow``) runs
in a real kernel (nbclient + ipykernel) against a real single-node SLURM started privately for
this module (``tests/slurm.py``), skipped, saying why, where it cannot start.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.magic_arguments import parse_argstring

from omniq import OmniQ
from omniq.notebook.magics import OmniQMagics, slurm_request, status_html, status_text
from tests.slurm import PrivateSlurm, SlurmUnavailable


def _request(line: str) -> Any:
    return slurm_request(parse_argstring(OmniQMagics._cmd_workers, line))


# --------------------------------------------------------------------------- no SLURM needed
@pytest.mark.parametrize(("line", "expected"), [
    ("", None),
    ("--slurm 2", (("scale", 2, 2), {})),
    ("--slurm 0", (("scale", 0, 0), {})),
    ("--adapt 0:10", (("adapt", 0, 10), {})),
    ("--adapt 3:3", (("adapt", 3, 3), {})),
    ("--slurm 4 --partition gpu --walltime 02:00:00 --cores 8 --gpus 2",
     (("scale", 4, 4), {"partition": "gpu", "walltime": "02:00:00", "cores": 8, "gpus": 2})),
    ("--adapt 0:4 --gpus a100:1 --walltime '1-00:00:00'",
     (("adapt", 0, 4), {"gpus": "a100:1", "walltime": "1-00:00:00"})),
])
def test_slurm_options_parse(line: str, expected: Any) -> None:
    assert _request(line) == expected


@pytest.mark.parametrize(("line", "message"), [
    ("--slurm -1", "--slurm -1: expected a number of jobs >= 0"),
    ("--slurm two", "--slurm two: expected a number of jobs >= 0"),
    ("--slurm 1.5", "--slurm 1.5: expected a number of jobs >= 0"),
    ("--slurm ²", "--slurm ²: expected a number of jobs >= 0"),  # str.isdigit() says yes; int() no
    ("--adapt 4", "--adapt 4: expected MIN:MAX, two whole numbers"),
    ("--adapt 5:2", "--adapt 5:2: MAX is below MIN; expected MIN:MAX"),
    ("--adapt 0:0", "--adapt 0:0: expected MIN:MAX"),
    ("--adapt a:b", "--adapt a:b: expected MIN:MAX"),
    ("--adapt -1:3", "argument --adapt: expected one argument"),  # argparse: "-1:3" looks like an option
    ("--adapt=-1:3", "--adapt -1:3: expected MIN:MAX"),
    ("--slurm 2 --adapt 0:4", "--slurm 2 and --adapt 0:4: give one"),
    ("--cores 4", "--cores: job options need --slurm N or --adapt MIN:MAX"),
    ("--partition gpu --gpus 1", "--partition --gpus: job options need --slurm N"),
    ("--slurm 1 --cores 0", "--cores 0: expected a number of CPUs per job >= 1"),
    ("--slurm 1 --cores many", "--cores many: expected a number of CPUs per job >= 1"),
    ("--slurm 1 --walltime 1:99", "--walltime 1:99: expected 'MM', 'MM:SS', 'HH:MM:SS'"),
    ("--slurm 1 --walltime soon", "--walltime soon: expected 'MM', 'MM:SS', 'HH:MM:SS'"),
])
def test_bad_slurm_options_are_one_line_errors_naming_the_option(line: str, message: str) -> None:
    with pytest.raises(UsageError) as info:
        _request(line)
    text = str(info.value)
    assert text.startswith(message), text
    assert "\n" not in text and "Traceback" not in text


@pytest.fixture
def magics(tmp_path: Path) -> Iterator[OmniQMagics]:
    """``OmniQMagics`` on a stand-in shell (no kernel) with a real, submit-only OmniQ."""
    shell = SimpleNamespace(events=SimpleNamespace(register=lambda *a: None, unregister=lambda *a: None),
                            user_ns={}, user_ns_hidden={}, transform_cell=lambda c: c, kernel=None)
    m = OmniQMagics(shell)  # type: ignore[arg-type]
    m._oq = OmniQ(tasks=f"sqlite:///{tmp_path}/q.db", concurrency=0)
    try:
        yield m
    finally:
        m.close()


def test_without_slurm_the_magic_says_what_is_missing(magics: OmniQMagics, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UsageError, match=r"^SlurmWorkers needs SLURM's commands on this machine; .*sbatch"):
        magics.omniq("workers --slurm 2")
    assert magics._slurm is None


def test_a_memory_queue_is_refused_naming_the_url(magics: OmniQMagics) -> None:
    magics._oq = OmniQ(tasks="memory://", concurrency=0)
    with pytest.raises(UsageError, match=r"tasks URL 'memory://' is this process's memory: jobs on the cluster "
                                         r"cannot reach it\. Jobs need .*postgresql://"):
        magics.omniq("workers --adapt 0:2")


def test_status_shows_slurm_jobs_beside_workers() -> None:
    health = {"queues": {"default": {"queued": 3}}, "workers": [], "schedules": [], "storage": {}}
    pools = [{"name": "omniq-0badcafe-123456", "cores": 2, "walltime": "01:00:00", "log_dir": "/logs",
              "mode": ("scale", 2, 2), "jobs": [
                  {"id": "41_0", "state": "RUNNING", "node": "c12", "reason": "", "stopping": False},
                  {"id": "41_1", "state": "PENDING", "node": "", "reason": "Resources", "stopping": False},
                  {"id": "40", "state": "RUNNING", "node": "c3", "reason": "", "stopping": True}]}]
    text = status_text(health, slurm=pools)
    assert "SLURM jobs: 3, pool omniq-0badcafe-123456 (scale=2, cores=2, walltime 01:00:00; logs /logs)" in text
    assert "  41_0 running on c12" in text and "  41_1 pending (Resources)" in text
    assert "  40 running, leaving after its tasks on c3" in text
    page = status_html(health, slurm=pools)
    assert "<b>SLURM jobs</b> (3)" in page and "<td>41_1</td><td>pending (Resources)</td>" in page
    assert "SLURM" not in status_text(health) and "SLURM" not in status_html(health)  # no pool, no section


# --------------------------------------------------------------------------- a real SLURM, a real kernel
@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateSlurm]:
    s = PrivateSlurm()
    try:
        s.start()
    except SlurmUnavailable as exc:
        pytest.skip(f"no private SLURM here: {exc}")
    try:
        with pytest.MonkeyPatch.context() as mp:
            for k, v in s.env().items():
                mp.setenv(k, v)  # the kernels started here inherit it
            yield s
    finally:
        s.stop()


def _wait(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def _named(cluster: PrivateSlurm, name: str) -> list[tuple[str, str, str]]:
    return [j for j in cluster.jobs() if j[2] == name]


WAIT_RUNNING = ("import time\nt0 = time.time()\n"
                "while sum(j.state == 'RUNNING' for j in pool.jobs()) < {n} and time.time() - t0 < 60:\n"
                "    time.sleep(0.2)\n"
                "print(sorted(j.state for j in pool.jobs()))")


@pytest.mark.slow
def test_slurm_workers_from_a_notebook(cluster: PrivateSlurm, execute: Any, nbview: Any, workdir: Path) -> None:
    nb = execute([
        "%load_ext omniq",
        "%omniq init --tasks sqlite:///lab.db --concurrency 0",  # no local slots: work runs in jobs
        "pool = %omniq workers --slurm 1 --walltime 00:10:00 --cores 1\nprint(pool.name, len(pool.jobs()))",
        "%%omniq submit -n where --out jid\nimport os\njid = os.environ.get('SLURM_JOB_ID')",
        "%omniq wait where --timeout 120",
        "print(jid is not None and jid in {j.job_id for j in pool.jobs()})",
        # a second call rescales the same pool
        "again = %omniq workers --slurm 2\nprint(again is pool, len(pool.jobs()))",
        WAIT_RUNNING.format(n=2),
        # (a second status stops the first one's refreshes: its saved state is this moment's)
        "%omniq status\n%omniq status",
        # bad input: one line naming the option; the pool is left as it was
        "%omniq workers --slurm 1 --partition nope",
        "%omniq workers --slurm 1 --partition short --walltime 00:10:00",
        "%omniq workers --slurm 1 --cores 64",
        "%omniq workers --adapt 2:1",
        "%omniq workers --slurm 3 --walltime 1:99",
        "m = get_ipython().magics_manager.registry['OmniQMagics']\nprint(m._slurm is pool, len(pool.jobs()))",
        "ad = %omniq workers --adapt 0:2\nprint(ad is pool, 'adapt=0:2' in repr(ad))",
        # a job option that differs: a new pool; the old one's jobs leave after their tasks
        "p2 = %omniq workers --slurm 1 --walltime 00:20:00\nprint(p2 is not pool, p2.walltime)",
        "t0 = time.time()\nwhile pool.jobs() and time.time() - t0 < 60:\n    time.sleep(0.2)\nprint(pool.jobs())",
        # another OmniQ: the pools of the first one are closed with it
        "%omniq init --tasks sqlite:///other.db --concurrency 0\nprint(pool.closed, p2.closed)",
        "p3 = %omniq workers --slurm 1\nprint(p3.name, p3.urls['tasks'].endswith('/other.db'))",
    ], allow_errors=True, timeout=180)
    text = [nbview.text_of(c).strip() for c in nb.cells]
    name = text[2].split()[0]
    assert re.fullmatch(r"omniq-[0-9a-f]{8}-[0-9a-f]{6}", name) and text[2].endswith(" 1"), text[2]
    assert "where: succeeded; set jid" in text[4]
    assert text[5] == "True", "the cell ran inside the SLURM job"
    assert text[6] == "True 2"
    assert text[7] == "['RUNNING', 'RUNNING']"
    # %omniq status: the kernel's SLURM jobs (id, state) beside the workers' heartbeats
    status = nbview.widget_models(nb)[nbview.displayed_widget(nb.cells[8])]["value"]
    assert "<b>Workers</b>" in status and "<b>SLURM jobs</b> (2)" in status and name in status
    assert len(re.findall(r"<td>\d+(?:_\d+)?</td><td>running</td><td>localhost</td>", status)) == 2, status
    # bad input
    errors = [nbview.usage_error(nb.cells[i]).strip() for i in range(9, 14)]
    assert errors[0].startswith("partition='nope' is not a SLURM partition here: expected one of omniqtest, short")
    assert errors[1].startswith("walltime='00:10:00' is over partition short's time limit of 5:00")
    assert errors[2].startswith("cores=64 is more than any node of partition omniqtest has")
    assert errors[3].startswith("--adapt 2:1: MAX is below MIN")
    assert errors[4].startswith("--walltime 1:99: expected 'MM'")
    assert all("\n" not in e and "Traceback" not in e for e in errors), errors
    assert text[14] == "True 2"
    assert text[15] == "True True"
    assert "new SLURM pool" in text[16] and "--walltime 00:20:00 (was 00:10:00)" in text[16]
    assert "True 00:20:00" in text[16]
    assert text[17].endswith("[]"), "the old pool's jobs left"
    assert text[18] == "True True"
    assert not _named(cluster, name)
    p3 = text[19].split()[0]
    assert text[19].endswith("True") and p3 != name
    # the notebook is over and its kernel shut down: its pool's jobs are gone
    _wait(lambda: not _named(cluster, p3), 30, "the kernel's jobs to be cancelled at its exit")
    assert not [j for j in cluster.jobs() if j[2].startswith("omniq-")]
    assert os.path.isdir(workdir / ".omniq" / "hpc" / name)  # logs kept where the user can open them
