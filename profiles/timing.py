"""Timing a callable: warm up, then repeat until the median is stable or the budget is spent."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_time(fn: Callable[[], object], *, min_repeats: int = 5, max_repeats: int = 100,
                budget_s: float = 2.0, rel_spread: float = 0.05) -> float:
    """Median seconds of ``fn()`` after one warm-up call.

    Repeats at least ``min_repeats`` times, then stops once the median moved by less than
    ``rel_spread`` over the last repeats, or after ``max_repeats`` calls or ``budget_s`` seconds.
    """
    fn()
    times: list[float] = []
    start = time.perf_counter()
    previous = None
    while len(times) < max_repeats:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= min_repeats:
            median = statistics.median(times)
            stable = previous is not None and abs(median - previous) <= rel_spread * median
            if stable or time.perf_counter() - start > budget_s:
                break
            previous = median
    return statistics.median(times)
