"""Robust wall-clock timing for grill evidence: warm-up, then the median of repeats.

A median over several repeats ignores the odd run a busy machine stretches (another process,
a page fault, an OpenMP wake-up), so thresholds on ratios of medians hold under load. Checks
whose verdict depends on these figures are recorded with `Evidence.check(..., timing=True)`.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def time_samples(fn: Callable[[], object], *, repeats: int = 5, warmup: int = 1) -> list[float]:
    """Seconds of each of `repeats` calls of `fn()`, after `warmup` untimed calls."""
    if repeats < 1:
        raise ValueError(f"repeats ({repeats}) must be >= 1")
    if warmup < 0:
        raise ValueError(f"warmup ({warmup}) must be >= 0")
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def median_time(fn: Callable[[], object], *, repeats: int = 5, warmup: int = 1) -> float:
    """Median seconds of `fn()` over `repeats` calls after `warmup` untimed calls."""
    return statistics.median(time_samples(fn, repeats=repeats, warmup=warmup))
