"""Soak, short: ~25 s of continuous submit/complete with 2 process workers on SQLite.

Runs ``benchmarks/soak.py`` in a fresh interpreter (so nothing else in the test process adds
to its memory or descriptors) and reads its JSON report. After a warm-up (the first quarter),
the owning process and the worker children must hold their file descriptors exactly
(``--fd 0``: any growth at all fails) and their RSS within ``RSS_MB`` (max of the last
quarter against max of the second quarter, and the second half's regression slope over that
half). The 10-minute run is ``uv run python benchmarks/soak.py --minutes 10``; its last result
is in ``benchmarks/results/soak.md``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parents[1] / "benchmarks" / "soak.py"
SECONDS = 25
RSS_MB = 15  # measured growth after warm-up: < 0.2 MB (10-minute run: +0.08 MB)


@pytest.mark.slow
@pytest.mark.parametrize("worker", ["process", "thread"])
def test_short_soak_has_no_fd_growth_and_bounded_rss(tmp_path: Path, worker: str) -> None:
    report = tmp_path / "soak.json"
    proc = subprocess.run(
        [sys.executable, str(SOAK), "--seconds", str(SECONDS), "--interval", "1",
         "--url", f"sqlite:///{tmp_path}/soak.db", "--worker", worker,
         "--rss-mb", str(RSS_MB), "--fd", "0", "--json", str(report)],
        capture_output=True, text=True, timeout=SECONDS + 120,
    )
    print(proc.stdout[-3000:])
    assert report.exists(), proc.stderr[-3000:]
    data = json.loads(report.read_text())
    info, verdict = data["info"], data["verdict"]
    assert info["tasks"] > 1000 and info["failed"] == 0, info
    checks = {c["metric"]: c for c in verdict["checks"]}
    assert checks["fds"]["growth"] <= 0, checks["fds"]
    assert checks["rss_mb"]["ok"], checks["rss_mb"]
    if worker == "process":
        assert all(s["children"] == 2 for s in data["samples"]), "a worker child died or leaked"
        assert checks["child_fds"]["growth"] <= 0, checks["child_fds"]
        assert checks["child_rss_mb"]["ok"], checks["child_rss_mb"]
    assert verdict["ok"], verdict
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
