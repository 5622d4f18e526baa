"""A ``%%omniq submit --sweep`` cell run again in a new kernel after the first one was killed
mid-run: the points still queued or running are adopted, not submitted again, so no point runs
twice (issue #14 B). Real kernels, real process workers, SQLite under the notebook's folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

POINTS = 12

CELL = f"""%%omniq submit -n grid --sweep "i=range({POINTS})" --out v
import os, time
with open(os.path.join(OUT, f"{{i}}.start"), "a") as f:
    f.write(f"{{os.getpid()}}\\n")
time.sleep(0.5)
with open(os.path.join(OUT, f"{{i}}.runs"), "a") as f:  # one line per run that ended
    f.write(f"{{os.getpid()}}\\n")
v = i * 10"""

# returns once some points are done (their results stored) and both running points have just
# started, so the kill that follows lands while neither is recording its run
SOME_DONE = """
import os, time
deadline = time.time() + 120
while time.time() < deadline:
    names = os.listdir(OUT)
    done = {n.split(".")[0] for n in names if n.endswith(".runs")}
    starts = [os.stat(os.path.join(OUT, n)).st_mtime for n in names
              if n.endswith(".start") and n.split(".")[0] not in done]
    if (len(done) >= 3 and grid.counts().get("succeeded", 0) == len(done) and starts
            and all(time.time() - t < 0.15 for t in starts)):
        break
    time.sleep(0.005)
print(sorted(done))
"""


def test_a_sweep_cell_run_again_after_its_kernel_was_killed_runs_no_point_twice(
    kernel_name: str, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jupyter_client.manager import start_new_kernel

    monkeypatch.setenv("OMNIQ_LEASE", "2")  # the dead kernel's running points come back soon
    out = workdir / "runs"
    out.mkdir()
    setup = ["%load_ext omniq", "%omniq init --worker process --concurrency 2", f"OUT = {str(out)!r}"]

    def kernel() -> tuple[Any, Any, list[str]]:
        km, kc = start_new_kernel(kernel_name=kernel_name, cwd=str(workdir))
        return km, kc, []

    def run(kc: Any, printed: list[str], code: str, timeout: float = 120) -> None:
        def hook(msg: dict[str, Any]) -> None:
            if msg["msg_type"] == "stream":
                printed.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                printed.append(f"{msg['content']['ename']}: {msg['content']['evalue']}")

        reply = kc.execute_interactive(code, timeout=timeout, output_hook=hook)
        assert reply["content"]["status"] == "ok", (code, printed)

    km, kc, printed = kernel()
    try:
        for code in [*setup, CELL, SOME_DONE]:
            run(kc, printed, code)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)  # killed: no close, no flush, its workers die with it
    done_before = printed[-1].strip()
    assert len(list(out.glob("*.runs"))) < POINTS, done_before

    km, kc, printed = kernel()
    try:
        for code in [*setup, CELL, "%omniq wait grid --timeout 120",
                     "print(grid.counts(), v)"]:
            run(kc, printed, code, timeout=180)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert printed[-1].strip() == f"{{'succeeded': {POINTS}}} {[i * 10 for i in range(POINTS)]}", printed
    runs = {int(p.stem): len(p.read_text().splitlines()) for p in out.glob("*.runs")}
    assert runs == {i: 1 for i in range(POINTS)}, (done_before, runs)
