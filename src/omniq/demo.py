"""What ``omniq demo`` runs: a small parameter grid of a real numeric computation."""

from __future__ import annotations

import math
import random


def estimate_pi(samples: int, seed: int) -> float:
    """Monte Carlo estimate of pi from ``samples`` random points (deterministic per seed)."""
    rng = random.Random(seed)
    inside = 0
    for _ in range(samples):
        x, y = rng.random(), rng.random()
        if x * x + y * y <= 1.0:
            inside += 1
    return 4.0 * inside / samples


def error_of(estimate: float) -> float:
    return abs(estimate - math.pi)
