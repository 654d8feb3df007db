"""Plans: the selection problem of a real network, solved under a cap, with its baselines.

By job (imports point down this list):
    ilp         the selection problem, its ILP rows each beside its `evaluate` term, `solve`
    candidates  the one enumeration: each layer's candidates with their cost requests
    problem     `build_problem`: the priced `Problem` in a `PlanContext` (lowerings cached)
    baselines   fastest, im2col everywhere, greedy under the cap, lowest memory
    documents   the plan document (`Plan` and its parts, `plan_document`) and the frontier's
    solving     `make_plan` (held to the memory model) and the Pareto frontier, `make_frontier`
    jobs        `PlanRequest`, `plan_network`, `pareto_network`, `smallest_peak`,
                `parse_bytes`: what the CLI, service and batch call
Plans that come in (`PlanSpec`, `check_plan`) are `convplan.selector.incoming`'s, re-exported
here: running a plan does not import the planner.
"""

from convplan.selector.incoming import PlanError, PlanSpec, check_plan, plan_file, plan_spec

from .baselines import baselines
from .candidates import Candidates, Option, enumerate_candidates, requests_for
from .documents import (
    BaselineDoc,
    CandidateDoc,
    CostsLabel,
    Frontier,
    FrontierPoint,
    LayerDoc,
    Plan,
    PredictedDoc,
    SolverDoc,
    TransformDoc,
    costs_label,
    plan_document,
)
from .ilp import (
    SOLVERS,
    Candidate,
    Infeasible,
    PlanningError,
    Problem,
    Solution,
    evaluate,
    minimum_arena,
    minimum_peak,
    solve,
)
from .jobs import (
    PlanRequest,
    cost_function,
    pareto_network,
    parse_bytes,
    plan_network,
    profiler_for,
    smallest_peak,
)
from .problem import (
    Caps,
    CostFunction,
    PlanContext,
    build_problem,
    fixed_bytes,
)
from .solving import make_frontier, make_plan, pareto

__all__ = [
    "SOLVERS",
    "BaselineDoc",
    "Candidate",
    "CandidateDoc",
    "Candidates",
    "Caps",
    "CostFunction",
    "CostsLabel",
    "Frontier",
    "FrontierPoint",
    "Infeasible",
    "LayerDoc",
    "Option",
    "Plan",
    "PlanContext",
    "PlanError",
    "PlanRequest",
    "PlanSpec",
    "PlanningError",
    "PredictedDoc",
    "Problem",
    "Solution",
    "SolverDoc",
    "TransformDoc",
    "baselines",
    "build_problem",
    "check_plan",
    "cost_function",
    "costs_label",
    "enumerate_candidates",
    "evaluate",
    "fixed_bytes",
    "make_frontier",
    "make_plan",
    "minimum_arena",
    "minimum_peak",
    "pareto",
    "pareto_network",
    "parse_bytes",
    "plan_document",
    "plan_file",
    "plan_network",
    "plan_spec",
    "profiler_for",
    "requests_for",
    "smallest_peak",
    "solve",
]
