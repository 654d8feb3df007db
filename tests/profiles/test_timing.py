"""Costs you can trust on a shared machine: the interleaved timer keeps the low value, a burst
of load hits every candidate alike, outliers are timed again, and a measurement taken while
other processes hold the cores is flagged."""

from __future__ import annotations

import multiprocessing
import multiprocessing.queues
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from hypothesis import given
from hypothesis import strategies as st

from convplan.kernels import ConvSpec, blas
from convplan.profiles.measurement import MIN_CPU_SHARE, OUTLIER_SPREAD, Measurement
from convplan.profiles.requests import ConvRequest, measure_together
from convplan.profiles.timing import (
    LOW_PERCENTILE,
    Timing,
    interleaved,
    low_percentile,
    relative_iqr,
    retimed,
)


def spin(seconds: float) -> None:
    """Busy for ``seconds`` of wall time (on the CPU all along, as a kernel is)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


class Calls:
    """A callable counting its calls, busy ``base`` seconds, ``slow`` seconds on the calls
    that ``slowed(i)`` picks (i: this callable's call number, from 0 for the warm-up)."""

    def __init__(self, base: float, slow: float = 0.0,
                 slowed: Callable[[int], bool] = lambda i: False,
                 clock: list[int] | None = None) -> None:
        self.base, self.slow, self.slowed, self.calls = base, slow, slowed, 0
        self.clock = clock       # a call counter shared by several callables

    def __call__(self) -> None:
        n = self.calls if self.clock is None else self.clock[0]
        self.calls += 1
        if self.clock is not None:
            self.clock[0] += 1
        spin(self.slow if self.slowed(n) else self.base)


# -- the statistics --------------------------------------------------------------------------
@given(st.lists(st.floats(0, 1e3, allow_nan=False), min_size=1, max_size=60))
def test_low_percentile_is_an_observed_value_at_the_low_end(samples: list[float]) -> None:
    low = low_percentile(samples)
    assert low in samples
    ordered = sorted(samples)
    below = sum(s < low for s in samples)
    assert below <= len(samples) * LOW_PERCENTILE / 100     # at most a tenth are lower
    if len(samples) <= 10:
        assert low == ordered[0]                             # the minimum up to 10 samples


def test_low_percentile_and_spread_on_known_samples() -> None:
    assert low_percentile([5.0, 1.0, 3.0]) == 1.0
    assert low_percentile([float(i) for i in range(1, 21)]) == 2.0     # not the luckiest run
    assert relative_iqr([1.0]) == 0.0
    assert relative_iqr([2.0, 2.0, 2.0, 2.0]) == 0.0
    assert relative_iqr([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(3.0 / 3.0)
    with pytest.raises(ValueError):
        low_percentile([])


# -- the interleaved timer -------------------------------------------------------------------
def test_a_noisy_callable_keeps_its_low_value() -> None:
    """Every third call of ``noisy`` takes 15x longer (a preemption): the median would carry
    that, the kept time does not."""
    quiet = Calls(0.001)
    noisy = Calls(0.001, slow=0.015, slowed=lambda i: i % 3 == 1)
    timings = interleaved([quiet, noisy], budget_s=0.3, min_rounds=9)
    assert [t.repeats for t in timings] == [quiet.calls - 1, noisy.calls - 1]
    assert min(t.repeats for t in timings) >= 9
    kept = timings[1].seconds
    assert 0.001 <= kept < 0.004, timings[1].samples
    assert max(timings[1].samples) >= 0.015       # the slow calls were timed, and left out
    assert timings[1].spread > OUTLIER_SPREAD     # ...and they show in the spread


def test_a_burst_hits_every_candidate_alike() -> None:
    """A burst of load over four consecutive calls (whoever makes them) lands on both
    candidates when they are timed round-robin; timed one after the other, it would have
    landed on one of them only."""
    clock = [0]
    burst = range(8, 12)        # calls 0-1 are the warm-ups, then 2 per round
    a, b = (Calls(0.0005, slow=0.01, slowed=burst.__contains__, clock=clock) for _ in "ab")
    ta, tb = interleaved([a, b], budget_s=10.0, min_rounds=10, max_rounds=10)
    slow_a = sum(s >= 0.01 for s in ta.samples)
    slow_b = sum(s >= 0.01 for s in tb.samples)
    assert slow_a == slow_b == 2, (ta.samples, tb.samples)
    assert ta.seconds < 0.005 and tb.seconds < 0.005


def test_the_order_rotates_and_the_budget_stops_within_a_call() -> None:
    order: list[str] = []
    fns = [lambda n=n: order.append(n) for n in "abc"]
    interleaved(fns, budget_s=10.0, min_rounds=3, max_rounds=3, warm_up=False)
    assert order == list("abc" "bca" "cab")
    slow = Calls(0.02)
    [timing] = interleaved([slow], budget_s=0.05, min_rounds=2)
    assert 2 <= timing.repeats <= 4       # the budget ends it once the minimum is done


def test_outliers_and_only_they_are_timed_again() -> None:
    steady = Calls(0.001)
    erratic = Calls(0.001, slow=0.01, slowed=lambda i: 1 <= i <= 4)   # noisy first pass only
    fns = [steady, erratic]
    first = interleaved(fns, budget_s=0.2, min_rounds=8, max_rounds=8)
    assert first[1].spread > OUTLIER_SPREAD >= first[0].spread or \
        first[0].spread > OUTLIER_SPREAD      # a loaded machine may make steady noisy too
    calls = [f.calls for f in fns]
    again = retimed(fns, first, 0.2, lambda t: t.spread > OUTLIER_SPREAD, min_rounds=8,
                    max_rounds=8)
    for i, (before, after) in enumerate(zip(first, again, strict=True)):
        if before.spread > OUTLIER_SPREAD:
            assert fns[i].calls > calls[i]                  # timed again
            assert after.spread <= before.spread            # the less spread one is kept
        else:
            assert fns[i].calls == calls[i] and after is before
    assert again[1].spread < first[1].spread      # its second pass had no slow calls


# -- the load ---------------------------------------------------------------------------------
def _busy(until: float, ready: multiprocessing.queues.Queue) -> None:
    ready.put(os.getpid())
    while time.time() < until:
        pass


@contextmanager
def busy_cores(n: int, seconds: float = 60.0) -> Iterator[None]:
    """``n`` processes spinning on the CPU, each stopping by itself after ``seconds`` (and
    terminated when the block ends); the block starts once all of them spin."""
    ctx = multiprocessing.get_context("spawn")
    until = time.time() + seconds
    ready = ctx.Queue()
    procs = [ctx.Process(target=_busy, args=(until, ready), daemon=True) for _ in range(n)]
    for p in procs:
        p.start()
    try:
        for _ in procs:
            ready.get(timeout=seconds)
        yield
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.join(timeout=10)


def test_a_measurement_beside_busy_processes_on_every_core_is_flagged() -> None:
    """Two busy processes per core leave the measuring thread a third of a core or less (the
    scheduler shares a core fairly), so its CPU share falls well under `MIN_CPU_SHARE`.

    Robust by construction: it asserts the flag under load, never a speed, and more load from
    elsewhere only lowers the share further. (It does not assert the converse, that an idle
    machine's measurement is unflagged: a shared machine is never known to be idle.)"""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        (os.cpu_count() or 1)
    # Calls of ~10 ms or more on one thread: longer than a scheduler slice, so each of them
    # waits for the core. (A call shorter than a slice may slip between preemptions, and is
    # then not slowed either: the low percentile keeps such calls.)
    spec = ConvSpec(n=1, c=64, h=56, w=56, m=64, kh=3, kw=3, padding=1)
    requests = [ConvRequest(spec, name) for name in ("im2col", "kn2row")]
    with busy_cores(2 * cores):
        # A second of timing: the scheduler favours a task that just woke for a moment, which
        # a measurement of a few milliseconds could fit in.
        [timing] = interleaved([lambda: spin(0.002)], budget_s=1.0, min_rounds=500,
                                 max_rounds=500)
        with blas.threads(1):
            measured = measure_together(requests, budget_s=0.3)
    assert timing.cpu_share < MIN_CPU_SHARE, timing.cpu_share
    assert Measurement(timing.seconds, 0, cpu_share=timing.cpu_share).under_load
    for m in measured:
        assert m.cpu_share is not None and m.under_load and m.flagged, m
        assert m.load is not None and m.load >= 0


def test_the_load_rules() -> None:
    calm = Measurement(1e-3, 0, "measured", 5, 0.01, load=3.0, cpu_share=0.95)
    assert not calm.under_load and not calm.noisy and not calm.flagged
    assert Measurement(1e-3, 0, "measured", 5, 0.01, cpu_share=0.5).flagged
    assert Measurement(1e-3, 0, "measured", 5, OUTLIER_SPREAD * 2, cpu_share=1.0).noisy
    assert not Measurement(1e-3, 0, "measured", 5, 0.01).flagged    # not recorded: not flagged
    for bad in (-0.1, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValueError, match="cpu_share"):
            Measurement(1e-3, 0, cpu_share=bad)     # type: ignore[arg-type]
    assert Timing((0.5, 0.5), 0.5).cpu_share == 0.5
    assert Timing((0.5,), 2.0).cpu_share == 1.0     # several threads' worth: capped at 1
