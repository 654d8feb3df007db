"""Measuring what a run really allocates, with tracemalloc (which sees NumPy's buffers)."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable


def peak_allocation(run: Callable[[], object], repeats: int = 3) -> int:
    """Peak bytes allocated while ``run()`` executes, above what was allocated before it.

    The minimum over ``repeats`` calls: a one-off growth of some interpreter-wide table (seen:
    a 1.9 MB resize under pytest) is not the run's own allocation, and does not recur.
    The cyclic collector is paused meanwhile, so older garbage freed in the middle of a run
    cannot hide part of its peak; pausing costs nothing, where a full collection first took
    ~120 ms in a large process (a test session), far longer than most runs measured.
    """
    best = None
    collecting = gc.isenabled()
    gc.disable()
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        for _ in range(repeats):
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            run()
            peak = tracemalloc.get_traced_memory()[1] - before
            best = peak if best is None else min(best, peak)
    finally:
        if started:
            tracemalloc.stop()
        if collecting:
            gc.enable()
    return int(best or 0)
