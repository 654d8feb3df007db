"""`Measurement`: what one candidate costs (time and workspace), and where the number came from."""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Literal

Source = Literal["measured", "imported", "analytic"]
SOURCES: tuple[Source, ...] = ("measured", "imported", "analytic")


@dataclass(frozen=True)
class Measurement:
    """The cost of one candidate for one request.

    ``source`` tells a plan whether to trust the number ("measured" on this machine) or to
    flag it: "imported" (measured elsewhere, or at least not here: it came from
    `convplan profiles import`, whatever fingerprint the file claimed) or "analytic" (the
    fallback model). ``origin`` says where an imported number came from
    (``imported:<file>@<digest>``); it is empty for the other sources. ``repeats`` is how many
    timed runs the median came from (0 for an estimate); ``spread`` is their interquartile range
    relative to the median (0 for an estimate), a hint of how noisy the number is.
    """

    time_s: float
    workspace_bytes: int
    source: Source = "measured"
    repeats: int = 0
    spread: float = 0.0
    origin: str = ""

    def __post_init__(self) -> None:
        # Checked here so that nothing nonsensical reaches the store (or comes out of an import).
        set_ = object.__setattr__
        for name in ("time_s", "spread"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Real) \
                    or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
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
