"""The four reference plans every plan document carries (DESIGN.md, Selection): fastest per layer
ignoring memory, im2col everywhere, greedy per layer under the cap (cuDNN-style selection), and
the lowest memory; each with its time and its peak as the memory model predicts it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from convplan.selector.lowering import NETWORK_LAYOUT

from .ilp import Candidate, evaluate
from .problem import Caps, PlanContext


def _choice_where(context: PlanContext, pick: Callable[[str, list[Candidate]], int]
                  ) -> dict[str, int]:
    return {n: pick(n, cs) for n, cs in context.problem.candidates.items()}


def _network_layout_outputs(context: PlanContext, choice: dict[str, int]) -> dict[str, int]:
    """Baselines ignore layouts; a network output must still come out in NCHW."""
    p = context.problem
    for t in p.outputs:
        node = p.producer[t]
        if node is not None and t in p.four_d and \
                p.candidates[node][choice[node]].output_layout != NETWORK_LAYOUT:
            options = [j for j, c in enumerate(p.candidates[node])
                       if c.output_layout == NETWORK_LAYOUT]
            choice[node] = min(options, key=lambda j: p.candidates[node][j].time_s)
    return choice


def baselines(context: PlanContext, caps: Caps, *, solver: str = "cbc",
              time_limit_s: float = 60.0) -> dict[str, dict[str, Any]]:
    """The four reference plans, each with time (its costs plus transforms), predicted peak and
    placed arena."""
    p, cap = context.problem, caps.memory

    def fastest(_: str, cs: list[Candidate]) -> int:
        return min(range(len(cs)), key=lambda j: cs[j].time_s)

    def im2col(_: str, cs: list[Candidate]) -> int:
        names = [c.name for c in cs]
        return names.index("im2col") if "im2col" in names else names.index("NCHW")

    min_prepared = sum(min(c.prepared_bytes for c in cs) for cs in p.candidates.values())

    def greedy(n: str, cs: list[Candidate]) -> int:
        """cuDNN's way: per layer, the fastest candidate whose workspace fits what the cap
        leaves at that step (ignoring the rest of the network's choices)."""
        room = None if cap is None else cap - p.fixed_bytes[n] - min_prepared
        fits = [j for j, c in enumerate(cs) if room is None or c.workspace_bytes <= room]
        if not fits:
            return min(range(len(cs)), key=lambda j: cs[j].workspace_bytes)
        return min(fits, key=lambda j: cs[j].time_s)

    choices = {"fastest": _choice_where(context, fastest),
               "im2col": _choice_where(context, im2col),
               "greedy": _choice_where(context, greedy)}
    out: dict[str, dict[str, Any]] = {}
    for name, choice in choices.items():
        out[name] = summary(context, _network_layout_outputs(context, choice), caps)
    lowest = context.lowest(solver, time_limit_s)
    out["lowest_memory"] = summary(context, lowest.choice, caps)
    return out


def summary(context: PlanContext, choice: Mapping[str, int], caps: Caps) -> dict[str, Any]:
    """Time, predicted peak, placed arena, and what `run` needs to execute it."""
    time_s, _, _ = evaluate(context.problem, choice)
    algorithms, layouts = context.assignment(choice)
    return {"time_s": time_s, "peak_bytes": context.predicted_peak(choice),
            "arena_bytes": context.arena_bytes(choice), "fits_cap": caps.met_by(context, choice),
            "assignment": algorithms, "layouts": layouts}
