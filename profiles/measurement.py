"""`Measurement`: what one candidate costs (time and workspace), and where the number came from."""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Literal

Source = Literal["measured", "imported", "analytic"]
SOURCES: tuple[Source, ...] = ("measured", "imported", "analytic")

#: A measurement whose timing thread ran less than this share of the timed wall time was taken
#: under load: for a fifth of the time or more it waited for a core that another process held
#: (the kernels never sleep, so on an idle machine the share is ~1; see `timing`).
MIN_CPU_SHARE = 0.8
#: A measurement whose samples' interquartile range exceeds this share of their median is an
#: outlier: re-timed once when measured, and dropped by `convplan profiles prune`.
OUTLIER_SPREAD = 0.25


@dataclass(frozen=True)
class Measurement:
    """The cost of one candidate for one request.

    ``source`` tells a plan whether to trust the number ("measured" on this machine) or to
    flag it: "imported" (measured elsewhere, or at least not here: it came from
    `convplan profiles import`, whatever fingerprint the file claimed) or "analytic" (the
    fallback model). ``origin`` says where an imported number came from
    (``imported:<file>@<digest>``); it is empty for the other sources. ``time_s`` is a low
    percentile of the timed runs (`convplan.profiles.timing`), ``repeats`` how many there were
    (0 for an estimate); ``spread`` is their interquartile range relative to their median (0 for
    an estimate), a hint of how noisy the number is.

    The machine's load while it was measured (None: not recorded, as for estimates and for
    costs stored before convplan recorded it): ``cpu_share`` is the timing thread's CPU time
    over the wall time of its timed calls (1: it never waited for a core), ``load`` the 1-minute
    load average per logical core (lagging, so context rather than evidence). `under_load` and
    `noisy` are the rules that flag a measurement to measure again (`profile --remeasure`) or
    to drop (`profiles prune`).
    """

    time_s: float
    workspace_bytes: int
    source: Source = "measured"
    repeats: int = 0
    spread: float = 0.0
    origin: str = ""
    load: float | None = None
    cpu_share: float | None = None

    @property
    def under_load(self) -> bool:
        """Taken while another process held the core: ``cpu_share`` below `MIN_CPU_SHARE`."""
        return self.cpu_share is not None and self.cpu_share < MIN_CPU_SHARE

    @property
    def noisy(self) -> bool:
        """Its timed runs spread more than `OUTLIER_SPREAD` around their median."""
        return self.spread > OUTLIER_SPREAD

    @property
    def flagged(self) -> bool:
        """Worth measuring again: `under_load` or `noisy`."""
        return self.under_load or self.noisy

    def __post_init__(self) -> None:
        # Checked here so that nothing nonsensical reaches the store (or comes out of an import).
        set_ = object.__setattr__
        for name in ("time_s", "spread"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Real) \
                    or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
            set_(self, name, float(value))
        for name in ("load", "cpu_share"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, Real) \
                    or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be None or a finite number >= 0, got {value!r}")
            set_(self, name, float(value))
        for name in ("workspace_bytes", "repeats"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Integral) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
            set_(self, name, int(value))
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        if not isinstance(self.origin, str):
            raise ValueError(f"origin must be a string, got {self.origin!r}")
        if (self.source == "imported") != self.origin.startswith("imported:"):
            raise ValueError(f"an imported cost needs an origin 'imported:...' and only an "
                             f"imported one has it (source {self.source!r}, origin "
                             f"{self.origin!r})")
