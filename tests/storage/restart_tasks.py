"""Task functions for the server-restart tests (importable by reference in worker children)."""

from __future__ import annotations

import os
import time


def record_run(runs_dir: str, i: int, seconds: float) -> int:
    """Append one line per run to ``runs_dir/<i>`` (so a second run shows), then sleep."""
    with open(os.path.join(runs_dir, str(i)), "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(seconds)
    return i
