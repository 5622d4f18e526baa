"""Parameter sweeps: a grid of keyword arguments -> one task per point -> a table of results.

``oq.sweep(fn, grid, name="exp1")`` runs ``fn(**point)`` for every point of ``grid`` and returns
a :class:`Sweep` at once (an :class:`AsyncSweep` from ``AsyncOmniQ``). Usable without Jupyter;
in a notebook the sweep displays as a live progress widget.

Grids
    * a dict of iterables: the cartesian product in key order, the last key varying fastest:
      ``{"lr": [0.1, 0.01], "seed": range(3)}`` -> 6 points. A value that is a ``str``,
      ``bytes``, a mapping or not iterable is one fixed value (``{"model": "resnet"}``).
    * :func:`zipped` axes advance together instead of multiplying:
      ``zipped(lr=[0.1, 0.01], momentum=[0.9, 0.99])`` -> 2 points. Use one as the whole grid,
      or as a value in a dict grid (its key is only a label):
      ``{"opt": zipped(lr=[...], momentum=[...]), "seed": range(3)}``.
    * a list of dicts: the points as given.
    * :func:`parse_sweep_spec` turns the cell magic's ``"lr=[1e-3, 1e-2]; seed=range(3)"``
      into a dict grid, safely (no ``eval``).

Keys and resuming
    Each point is stored under ``key = f"{name}/{identity[:16]}/{params[:16]}"`` (hex
    digests; see :func:`point_key`), so ``find_results(key_prefix=f"{name}/")`` lists a
    sweep's points. The identity (:func:`function_identity`) digests the function's code
    (with nested functions), defaults and closure values, and, for a function defined in
    ``__main__`` (a notebook), the ``__main__`` functions it calls. Other global *data* is not
    part of it: pass it as a parameter or closure value, or change the sweep name, when it
    changes. Starting a sweep looks up stored results with one ``find_results`` call, keeps
    points whose latest result succeeded, and submits the rest (missing, failed, cancelled,
    expired) as one batch. Points still in flight from an earlier start *in this process* are
    followed, not submitted twice.

    The key is also each point's task key (``TaskQueue.enqueue``): a point whose key a task
    still holds — pending, queued or running, say from an earlier process that died or from
    another process running the same sweep right now — is not stored again; the sweep adopts
    that task and counts it as it finishes. Only a point that was running when its worker died
    can run twice (delivered again once its lease lapses). ``submitted`` counts the tasks this
    object handed to the queue, ``adopted`` those of them that followed a task already there.

Records
    ``results()`` and ``failed()`` return one dict per point, in grid order: the parameters
    plus ``value``, ``status``, ``error`` (``"Type: message"`` or None) and ``duration``
    (seconds or None); ``failed()`` adds the remote ``traceback``. A parameter named like one
    of those four appears as ``param_<name>``.

Sync and async
    ``retry_failed()`` resubmits failed, cancelled and expired points *in place* and returns
    the same sweep, so ``sw.retry_failed().wait()`` reads well and a displayed widget keeps
    tracking. On an :class:`AsyncSweep`, ``start``, ``wait``, ``retry_failed`` and ``cancel``
    are coroutines; the reading methods (``results``, ``failed``, ``values``, ``counts``,
    ``done``, ``to_pandas``) are plain methods on both, since they do no I/O (as
    ``AsyncTaskHandle.done()``). All logic lives in ``SweepBase``; the two classes differ only
    in how they wait and call the queue.

Modules
    ``grid.py`` (grids and the spec parser), ``identity.py`` (function identity, digests and
    keys), ``handles.py`` (``SweepBase``, ``Sweep``, ``AsyncSweep``). This package imports
    nothing from ``omniq.notebook``: a sweep shows itself through the client's display hook
    (``AsyncOmniQ.display``, see ``omniq.progress``).
"""

from .grid import Zipped, expand_grid, parse_sweep_spec, zipped
from .handles import RESULT_FIELDS, AsyncSweep, Sweep, SweepBase, latest_results
from .identity import Canon, function_identity, identity_digest, params_digest, point_key

__all__ = [
    "RESULT_FIELDS",
    "AsyncSweep",
    "Canon",
    "Sweep",
    "SweepBase",
    "Zipped",
    "expand_grid",
    "function_identity",
    "identity_digest",
    "latest_results",
    "params_digest",
    "parse_sweep_spec",
    "point_key",
    "zipped",
]
