"""Timing callables on a shared machine: interleaved rounds, a low percentile, and how much of
the time the timing thread actually ran.

Why interleaved: the candidates of one layer are compared with each other, so a burst of load
(another process, a frequency drop) must hit all of them alike. Timing them one after another
lets a burst land on one candidate and make it look slow (or make the others look fast); timing
them round-robin, one call of each per round, spreads the burst over all of them. The price:
each call finds the caches holding the other candidates' data, not its own, as a layer of a
network finds them holding the previous layer's, so small layers time somewhat slower than in
back-to-back calls.

Why a low percentile rather than the median: interference on a CPU only ever adds time (a
preempted or cache-polluted run is slower, never faster), so the low end of the samples is the
best estimate of the uncontended cost; the median moves with the load. Not the bare minimum:
with many samples one unusually lucky run would decide alone. `LOW_PERCENTILE` (the 10th, by
the lower nearest rank) is the minimum up to 10 samples and ignores the luckiest tenth beyond.

``cpu_share`` is the evidence of load: the timing thread's CPU time over the wall time of its
timed calls. The kernels neither sleep nor block (OpenBLAS's calling thread computes and then
spins for its workers), so on an idle machine it is ~1; below that the thread was waiting for a
core (see `convplan.profiles.measurement.MIN_CPU_SHARE`).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

#: The percentile of the samples kept as the time (see the module docstring).
LOW_PERCENTILE = 10


def median_time(fn: Callable[[], object], *, min_repeats: int = 5, max_repeats: int = 100,
                budget_s: float = 2.0, rel_spread: float = 0.05) -> float:
    """Median seconds of ``fn()`` after one warm-up call (for benchmarks of one callable).

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


def low_percentile(samples: Sequence[float], percentile: float = LOW_PERCENTILE) -> float:
    """The ``percentile``-th of ``samples`` by the lower nearest rank (never interpolated, so
    it is always a time that was observed)."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    return ordered[math.floor((len(ordered) - 1) * percentile / 100)]


def relative_iqr(samples: Sequence[float]) -> float:
    """The interquartile range of ``samples`` relative to their median (0 under 2 samples)."""
    median = statistics.median(samples) if samples else 0.0
    if len(samples) < 2 or median <= 0:
        return 0.0
    q1, _, q3 = statistics.quantiles(samples, n=4)
    return max(0.0, (q3 - q1) / median)


@dataclass(frozen=True)
class Timing:
    """One callable's timed calls: ``seconds`` is their `low_percentile`, ``spread`` their
    `relative_iqr`, ``cpu_share`` the timing thread's CPU time over their wall time."""

    samples: tuple[float, ...]
    cpu_s: float

    @property
    def seconds(self) -> float:
        return low_percentile(self.samples)

    @property
    def repeats(self) -> int:
        return len(self.samples)

    @property
    def spread(self) -> float:
        return relative_iqr(self.samples)

    @property
    def cpu_share(self) -> float:
        wall = sum(self.samples)
        return min(1.0, self.cpu_s / wall) if wall > 0 else 1.0


def interleaved(fns: Sequence[Callable[[], object]], budget_s: float, *, min_rounds: int = 3,
                max_rounds: int = 100, rel_change: float = 0.05, warm_up: bool = True
                ) -> list[Timing]:
    """Time ``fns`` round-robin: each round calls every one of them once (the order rotating
    from round to round, so none always follows the same neighbour), after one untimed warm-up
    call of each unless ``warm_up`` is False.

    At least ``min_rounds`` rounds, however small the budget; then it stops once no callable's
    low percentile moved by more than ``rel_change`` in the last round, once ``budget_s``
    seconds of rounds are spent (checked after every call, so it overruns by one call at most)
    or after ``max_rounds``. Returns one `Timing` per callable, in order.
    """
    if not fns:
        return []
    if min_rounds < 1 or max_rounds < min_rounds:
        raise ValueError(f"need 1 <= min_rounds <= max_rounds, got {min_rounds}, {max_rounds}")
    if warm_up:
        for fn in fns:
            fn()
    samples: list[list[float]] = [[] for _ in fns]
    cpu = [0.0] * len(fns)
    n = len(fns)
    clock, thread_clock = time.perf_counter, time.thread_time
    start = clock()
    previous: list[float] | None = None
    for round_ in range(max_rounds):
        spent = False
        for j in range(n):
            i = (round_ + j) % n
            c0, t0 = thread_clock(), clock()
            fns[i]()
            t1, c1 = clock(), thread_clock()
            samples[i].append(t1 - t0)
            cpu[i] += c1 - c0
            minimum = round_ >= min_rounds or (round_ + 1 == min_rounds and j == n - 1)
            if minimum and t1 - start > budget_s:   # every callable has its minimum
                spent = True
                break
        if spent:
            break
        if round_ + 1 >= min_rounds:
            now = [low_percentile(s) for s in samples]
            if previous is not None and all(abs(a - b) <= rel_change * a
                                            for a, b in zip(now, previous, strict=True)):
                break
            previous = now
    return [Timing(tuple(s), c) for s, c in zip(samples, cpu, strict=True)]


def retimed(fns: Sequence[Callable[[], object]], timings: Sequence[Timing], budget_s: float,
            outlier: Callable[[Timing], bool], **options: int | float) -> list[Timing]:
    """``timings`` with every ``outlier`` among them timed once more (interleaved among
    themselves, within ``budget_s`` scaled to their share of ``fns``): of its two timings the
    less spread one is kept."""
    again = [i for i, t in enumerate(timings) if outlier(t)]
    result = list(timings)
    if not again:
        return result
    share = budget_s * len(again) / len(fns)
    for i, timing in zip(again, interleaved([fns[i] for i in again], share, warm_up=False,
                                            **options), strict=True):  # type: ignore[arg-type]
        if timing.spread < result[i].spread:
            result[i] = timing
    return result
