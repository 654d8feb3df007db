"""The Python interface `import convplan` offers: plan a network and run a plan, the same jobs
`convplan plan` and `convplan run --plan` do, with the same checks and the same documents."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from convplan.selector.network import Network, load_network
from convplan.selector.planning import Plan, PlanRequest, plan_network
from convplan.selector.runner import RunReport, run_network, run_plan


def _network(network: Network | str | Path) -> Network:
    return network if isinstance(network, Network) else load_network(network)


def plan(network: Network | str | Path, memory_cap: int | str | None = None, *,
         threads: int | None = None, solver: str = "cbc", time_limit_s: float = 60.0,
         measure: bool = True, budget_s: float = 0.3, db: str | Path | None = None
         ) -> Plan:
    """The fastest plan whose predicted peak fits ``memory_cap`` (bytes, or ``"24MiB"``):
    costs measured on this machine where the cost store (``db``, default ``$CONVPLAN_DB`` or
    the user cache) lacks them, or estimated with ``measure=False``. The `Plan` (its
    ``model_dump(mode="json")`` is what `convplan plan --out` writes); an infeasible cap is
    a `PlanningError` naming the lowest achievable peak; a bad option a ValueError saying
    which."""
    request = PlanRequest(cap=memory_cap, threads=threads, solver=solver,
                          time_limit_s=time_limit_s, measure=measure, budget_s=budget_s,
                          db=str(db) if db is not None else None)
    return plan_network(_network(network), request)


def run(network: Network | str | Path, plan: Plan | Mapping[str, Any] | None = None,
        inputs: Mapping[str, np.ndarray] | None = None, *, threads: int | None = None,
        repeat: int = 1, check: bool = False) -> RunReport:
    """Run ``network`` under ``plan`` (a `Plan` or a plan document; None: the default
    algorithm per layer) on ``inputs`` (seeded random ones if None), measuring its peak;
    ``check`` compares the outputs with onnxruntime. A plan made for another network is
    refused (`run_plan`). A name or path is loaded for this run and each weight held once; a
    `Network` given is left unchanged (its originals stay beside any prepared copy)."""
    net, owned = _network(network), not isinstance(network, Network)
    if plan is None:
        return run_network(net, inputs, threads=threads, repeat=repeat, check=check,
                           owned=owned)
    return run_plan(net, plan, inputs, threads=threads, repeat=repeat, check=check,
                    owned=owned)
