"""Moved to :mod:`omniq.progress` (the progress model needs no notebook); these names stay
importable from here."""

from ..progress import QUEUED, DisplayHook, Failure, Snapshot, Throttle, Tracker, seed_running

__all__ = ["QUEUED", "DisplayHook", "Failure", "Snapshot", "Throttle", "Tracker", "seed_running"]
