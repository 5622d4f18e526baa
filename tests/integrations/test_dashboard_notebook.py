"""``%omniq dashboard`` in a real kernel: it serves the kernel's OmniQ on that instance's loop,
shows its link, answers HTTP from the same kernel, is found again on a second call, and stops."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

pytestmark = pytest.mark.slow


def test_the_magic_serves_the_kernels_instance_and_shows_a_link(tmp_path: Path) -> None:
    db = tmp_path / "nb.db"
    cells = [
        "%load_ext omniq",
        f"oq = %omniq init --tasks sqlite:///{db} --worker thread --concurrency 1",
        "link = %omniq dashboard --port 0\nlink",
        "import httpx, re\n"
        "tid = oq.enqueue(abs, args=(-4,), queue='from-kernel'); oq.get_result(tid, wait=True, timeout=30)\n"
        "page = httpx.get(link.url, timeout=15)\n"
        "print(page.status_code, 'data-queue=\"from-kernel\"' in page.text)\n"
        "again = %omniq dashboard --port 0\n"
        "print(again.url == link.url)",
        "%omniq dashboard --stop\n"
        "import time; time.sleep(1.5)\n"
        "try:\n    httpx.get(link.url, timeout=3); print('still up')\n"
        "except httpx.HTTPError:\n    print('stopped')",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nbclient.NotebookClient(nb, timeout=120, resources={"metadata": {"path": str(tmp_path)}}).execute()
    shown = nb.cells[2].outputs[0]["data"]
    assert shown["text/plain"].startswith("OmniQ dashboard: http://127.0.0.1:")
    assert '<a href="http://127.0.0.1:' in shown["text/html"]
    printed = "".join(o.get("text", "") for o in nb.cells[3].outputs)
    assert printed.split() == ["200", "True", "True"], nb.cells[3].outputs
    assert "".join(o.get("text", "") for o in nb.cells[4].outputs).strip() == "stopped"
