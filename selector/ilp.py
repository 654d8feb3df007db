"""The ILP's former address, kept for what imports it from here (api/batch.py,
api/service/work.py, bench/planner.py; tests/test_packaging.py looks for this file): the ILP
lives in `convplan.selector.planning.ilp`."""

from .planning.ilp import SOLVERS, Infeasible, PlanningError, solve

__all__ = ["SOLVERS", "Infeasible", "PlanningError", "solve"]
