"""CI says what it does: .ci/run runs the README's test command, and README, pyproject and
.ci/run name the same supported Pythons."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CI = (ROOT / ".ci" / "run").read_text()
README = (ROOT / "README.md").read_text()
PYPROJECT = (ROOT / "pyproject.toml").read_text()


def _quick_start() -> list[str]:
    section = README.split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert block, "README's Quick start has no bash block"
    return [ln.strip() for ln in block.group(1).splitlines() if ln.strip()]


def _commands(script: str) -> list[str]:
    """The script's lines that are commands (comments and blank lines dropped)."""
    return [ln.strip() for ln in script.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def test_quick_start_is_two_commands_and_ci_runs_its_test_command() -> None:
    lines = _quick_start()
    assert len(lines) == 2, lines
    setup, test = lines
    assert "uv sync --all-extras" in setup and test == "uv run pytest"
    commands = _commands(CI)
    # the default Python's environment is made as the README makes it, then its test command runs
    assert "uv sync --all-extras --quiet" in commands
    ran = [c for c in commands if c.startswith("run_suite ") and c.endswith(f" {test}")]
    assert len(ran) == 1, ran


def test_supported_pythons_agree() -> None:
    ci = re.search(r'^SUPPORTED="([\d. ]+)"', CI, re.MULTILINE)
    assert ci, "no SUPPORTED= line in .ci/run"
    supported = ci.group(1).split()
    classifiers = re.findall(r'"Programming Language :: Python :: (3\.\d+)"', PYPROJECT)
    assert classifiers == supported
    lowest = re.search(r'requires-python = ">=(3\.\d+)"', PYPROJECT)
    assert lowest and lowest.group(1) == supported[0]
    line = next(ln for ln in README.splitlines() if ln.startswith("Supported Pythons:"))
    assert re.findall(r"3\.\d+", line) == supported, line
