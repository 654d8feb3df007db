"""The plan document: what `convplan plan --json` prints, `/v1/plan` returns and `run --plan`
reads. The choice per layer with every candidate it considered (so anyone can check it), the
transforms, the solver's status, the prediction and the baselines."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .ilp import Candidate, Solution
from .problem import PlanContext


def _candidate_doc(c: Candidate) -> dict[str, Any]:
    return {"name": c.name, "algorithm": c.algorithm, "input_layout": c.input_layout,
            "output_layout": c.output_layout, "time_s": c.time_s,
            "workspace_bytes": c.workspace_bytes, "prepared_bytes": c.prepared_bytes,
            "measured_workspace_bytes": c.measured_workspace_bytes, "source": c.source}


def plan_document(context: PlanContext, solution: Solution, cap: int | None,
                  machine: Mapping[str, Any], threads: int,
                  baseline_plans: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The plan as JSON-ready data."""
    network, p = context.network, context.problem
    algorithms, layouts = context.assignment(solution.choice)
    layers = []
    for node in network.nodes:
        options = p.candidates[node.name]
        c = options[solution.choice[node.name]]
        layers.append({"name": node.name, "op": node.op, "algorithm": c.algorithm,
                       "input_layout": c.input_layout, "output_layout": c.output_layout,
                       "time_s": c.time_s, "workspace_bytes": c.workspace_bytes,
                       "prepared_bytes": c.prepared_bytes,
                       "candidates": [_candidate_doc(o) for o in options]})
    transforms = [{"tensor": t, "for": n, "into": layout,
                   "time_s": p.transform_time[t, layout], "bytes": p.tensor_bytes[t]}
                  for t, n, layout in solution.transforms]
    costs = next(iter(context.sources)) if len(context.sources) == 1 else "mixed"
    return {
        "network": network.name,
        "machine": dict(machine),
        "threads": threads,
        "memory_cap_bytes": cap,
        "costs": costs,
        "solver": {"name": solution.solver, "status": solution.status,
                   "optimal": solution.optimal, "solve_seconds": solution.solve_seconds},
        "predicted": {"time_s": solution.time_s,
                      "peak_bytes": context.predicted_peak(solution.choice),
                      "model_bound_bytes": solution.peak_bytes},
        "assignment": algorithms,
        "layouts": layouts,
        "layers": layers,
        "transforms": transforms,
        "baselines": dict(baseline_plans or {}),
    }
