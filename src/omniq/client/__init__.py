"""The client: ``AsyncOmniQ`` (a thin orchestrator, ``orchestrator.py``), ``OmniQ`` (its sync
facade, ``facade.py``), task handles, and the components the orchestrator wires: ``intake``
(build, validate, buffer, flush), ``waiters`` (futures and result pickup) and the ``session``
they share. The public names are imported from ``omniq`` (or ``omniq.core``); this package
imports nothing itself, so its modules can be imported one by one.
"""
