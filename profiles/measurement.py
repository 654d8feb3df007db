"""`Measurement`: what one candidate costs (time and workspace), and where the number came from."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Source = Literal["measured", "analytic"]
SOURCES: tuple[Source, ...] = ("measured", "analytic")


@dataclass(frozen=True)
class Measurement:
    """The cost of one candidate for one request.

    ``source`` tells a plan whether to trust the number ("measured" on this machine) or to
    flag it ("analytic": the fallback model). ``repeats`` is how many timed runs the median
    came from (0 for an estimate); ``spread`` is their interquartile range relative to the
    median (0 for an estimate), a hint of how noisy the number is.
    """

    time_s: float
    workspace_bytes: int
    source: Source = "measured"
    repeats: int = 0
    spread: float = 0.0

    def __post_init__(self) -> None:
        if not (isinstance(self.time_s, int | float) and math.isfinite(self.time_s)
                and self.time_s >= 0):
            raise ValueError(f"time_s must be a finite number >= 0, got {self.time_s!r}")
        if isinstance(self.workspace_bytes, bool) or not isinstance(self.workspace_bytes, int) \
                or self.workspace_bytes < 0:
            raise ValueError(f"workspace_bytes must be an integer >= 0, got "
                             f"{self.workspace_bytes!r}")
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        if isinstance(self.repeats, bool) or not isinstance(self.repeats, int) \
                or self.repeats < 0:
            raise ValueError(f"repeats must be an integer >= 0, got {self.repeats!r}")
        if not (isinstance(self.spread, int | float) and math.isfinite(self.spread)
                and self.spread >= 0):
            raise ValueError(f"spread must be a finite number >= 0, got {self.spread!r}")
