"""OmniQ in Jupyter: ``%load_ext omniq`` (``magics.py``, with its option parsing in
``arguments.py``, the cell analysis in ``capture.py``, the notebook's handles in ``handles.py``,
SLURM from a cell in ``slurm.py`` and the status views in ``status.py``), live progress widgets
(``widgets.py``) and the worker side of ``%%omniq submit`` (``cells.py``).

Importing this package imports no IPython. The names below stay importable from here: task
payloads stored before ``cells.py`` existed name ``omniq.notebook.CellCall``.
"""

from .cells import STDERR_MARK, STDOUT_MARK, CellCall, compile_cell, run_cell

__all__ = ["STDERR_MARK", "STDOUT_MARK", "CellCall", "compile_cell", "run_cell"]
