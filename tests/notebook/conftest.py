"""Fixtures for the notebook layer: real ipykernel kernels driven by nbclient.

Every test here runs code in a real kernel (this venv's Python), in a temporary working
directory, so the default OmniQ instance (SQLite under ``.omniq/``) and its process workers are
the ones a user gets. Nothing about kernels or widgets is mocked: widget state is read from
what nbclient recorded off the kernel's comm messages (``store_widget_state=True``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("ipywidgets")

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


@pytest.fixture(scope="session")
def kernel_name(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``python3`` running this interpreter. If no such kernelspec is installed, write one into
    a temporary ``JUPYTER_PATH`` entry (never into the user's or system's Jupyter dirs)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec("python3")
        usable = bool(spec.argv) and spec.argv[0] in ("python", "python3", sys.executable)
    except NoSuchKernel:
        usable = False
    if usable:
        yield "python3"
        return
    root = tmp_path_factory.mktemp("jupyter")
    kdir = root / "kernels" / "omniq-test-python3"
    kdir.mkdir(parents=True)
    (kdir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (omniq tests)",
        "language": "python",
    }))
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.pathsep.join([str(root), *([old] if old else [])])
    try:
        yield "omniq-test-python3"
    finally:
        if old is None:
            os.environ.pop("JUPYTER_PATH", None)
        else:
            os.environ["JUPYTER_PATH"] = old


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The kernel's working directory; ``OMNIQ_*`` variables from the outer environment are
    cleared so the kernel gets the documented defaults."""
    for key in list(os.environ):
        if key.startswith("OMNIQ_"):
            monkeypatch.delenv(key)
    d = tmp_path / "work"
    d.mkdir()
    return d


Runner = Callable[..., Any]


@pytest.fixture
def execute(kernel_name: str, workdir: Path) -> Runner:
    """``execute(nb_or_cells, cwd=workdir, timeout=120, allow_errors=False)`` runs a notebook
    (or a list of cell sources) top to bottom in a fresh kernel and returns the executed
    notebook, with widget state saved in its metadata as Jupyter saves it."""

    def run(nb: Any, *, cwd: Path | None = None, timeout: int = 120, allow_errors: bool = False) -> Any:
        if isinstance(nb, list):
            nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in nb])
        client = nbclient.NotebookClient(
            nb,
            kernel_name=kernel_name,
            timeout=timeout,
            allow_errors=allow_errors,
            store_widget_state=True,
            resources={"metadata": {"path": str(cwd or workdir)}},
        )
        client.execute()
        return nb

    return run


# --- reading executed notebooks ------------------------------------------------------------
def text_of(cell: Any) -> str:
    """Everything a cell showed as text: streams, results' text/plain, errors."""
    parts = []
    for out in cell.get("outputs", []):
        kind = out["output_type"]
        if kind == "stream":
            parts.append(out["text"])
        elif kind in ("execute_result", "display_data"):
            parts.append(out.get("data", {}).get("text/plain", ""))
        elif kind == "error":
            parts.append(f"{out['ename']}: {out['evalue']}")
    return "".join(parts)


def errors_of(cell: Any) -> list[Any]:
    return [o for o in cell.get("outputs", []) if o["output_type"] == "error"]


def usage_error(cell: Any) -> str:
    """The message of the ``UsageError`` a cell raised. IPython shows a magic's UsageError as
    stderr text (no traceback), and the kernel still replies with status "error"."""
    text = "".join(o["text"] for o in cell.get("outputs", []) if o.get("name") == "stderr")
    assert text.startswith("UsageError: "), f"no UsageError in {cell.source[:60]!r}: {text!r}"
    return text.removeprefix("UsageError: ")


def widget_models(nb: Any, model_name: str | None = None) -> dict[str, dict[str, Any]]:
    """``model id -> state`` of the widgets saved in the notebook's metadata."""
    saved = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    return {
        mid: m["state"] for mid, m in saved.items()
        if model_name is None or m.get("model_name") == model_name
    }


def displayed_widget(cell: Any) -> str | None:
    """The model id of the first widget a cell displayed."""
    for out in cell.get("outputs", []):
        view = out.get("data", {}).get("application/vnd.jupyter.widget-view+json")
        if view:
            return str(view["model_id"])
    return None


def widget_tree(nb: Any, root: str) -> dict[str, dict[str, Any]]:
    """The models reachable from ``root`` through ``IPY_MODEL_`` references."""
    models = widget_models(nb)
    seen: dict[str, dict[str, Any]] = {}
    todo = [root]
    while todo:
        mid = todo.pop()
        if mid in seen or mid not in models:
            continue
        seen[mid] = models[mid]
        for v in models[mid].values():
            refs = v if isinstance(v, list) else [v]
            todo += [r[len("IPY_MODEL_"):] for r in refs if isinstance(r, str) and r.startswith("IPY_MODEL_")]
    return seen


def progress_of(nb: Any, cell: Any) -> list[dict[str, Any]]:
    """The IntProgress states inside the widget a cell displayed."""
    root = displayed_widget(cell)
    assert root is not None, f"cell displayed no widget: {cell.source[:80]!r}"
    full = widget_models(nb)
    tree = widget_tree(nb, root)
    return [s for mid, s in tree.items() if full[mid].get("_model_name") == "IntProgressModel"]


def output_widget_text(nb: Any, cell: Any) -> dict[str, str]:
    """``{"stdout": ..., "stderr": ...}`` appended to Output widgets under a cell's widget."""
    root = displayed_widget(cell)
    assert root is not None
    text = {"stdout": "", "stderr": ""}
    for state in widget_tree(nb, root).values():
        if state.get("_model_name") == "OutputModel":
            for o in state.get("outputs", []):
                if o.get("output_type") == "stream":
                    text[o["name"]] += o["text"]
                elif o.get("output_type") == "error":
                    text["stderr"] += "\n".join(o.get("traceback", []))
    return text


class NotebookView:
    """The readers above, handed to tests as the ``nbview`` fixture (tests do not import
    conftest modules)."""

    text_of = staticmethod(text_of)
    errors_of = staticmethod(errors_of)
    usage_error = staticmethod(usage_error)
    widget_models = staticmethod(widget_models)
    displayed_widget = staticmethod(displayed_widget)
    widget_tree = staticmethod(widget_tree)
    progress_of = staticmethod(progress_of)
    output_widget_text = staticmethod(output_widget_text)


@pytest.fixture
def nbview() -> type[NotebookView]:
    return NotebookView
