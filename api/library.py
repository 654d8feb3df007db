"""The Python interface `import convplan` offers: plan a network, run a plan and compile one,
the same jobs `convplan plan`, `convplan run --plan` and `convplan compile` do, with the same
checks and the same documents."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from convplan.selector.compiled import Header, compile_plan, is_compiled
from convplan.selector.network import CompiledPlanError, Network, network_of
from convplan.selector.planning import Plan, PlanRequest, check_plan, plan_network, plan_spec
from convplan.selector.runner import RunReport, run_network, run_plan, run_session
from convplan.selector.session import Session

#: Input name -> shape, for a network named by name or path (`load_network`).
ShapesGiven = Mapping[str, Any] | None


def _network(network: Network | str | Path, batch: int | None = None,
             input_shapes: ShapesGiven = None) -> Network:
    """A `Network` as given, or loaded from a name or path (`network_of`)."""
    return network_of(network, batch=batch, input_shapes=input_shapes)[0]


def plan(network: Network | str | Path, memory_cap: int | str | None = None, *,
         arena_cap: int | str | None = None, threads: int | None = None, solver: str = "cbc",
         time_limit_s: float = 60.0, measure: bool = True, budget_s: float = 0.3,
         db: str | Path | None = None, batch: int | None = None,
         input_shapes: ShapesGiven = None) -> Plan:
    """The fastest plan whose predicted peak fits ``memory_cap`` (bytes, or ``"24MiB"``) and
    whose arena fits ``arena_cap``, for the network's input shapes (a name or path loaded for
    ``batch`` / ``input_shapes``): costs measured on this machine where the cost store
    (``db``, default ``$CONVPLAN_DB`` or the user cache) lacks them, or estimated with
    ``measure=False``. The `Plan` (its ``model_dump(mode="json")`` is what `convplan plan
    --out` writes); an infeasible cap is a `PlanningError` naming the lowest achievable value
    of that cap; a bad option a ValueError saying which."""
    request = PlanRequest(cap=memory_cap, arena_cap=arena_cap, threads=threads,
                          solver=solver, time_limit_s=time_limit_s, measure=measure,
                          budget_s=budget_s, db=str(db) if db is not None else None)
    return plan_network(_network(network, batch, input_shapes), request)


def run(network: Network | str | Path, plan: Plan | Mapping[str, Any] | None = None,
        inputs: Mapping[str, np.ndarray] | None = None, *, threads: int | None = None,
        repeat: int = 1, check: bool = False, batch: int | None = None,
        input_shapes: ShapesGiven = None) -> RunReport:
    """Run ``network`` under ``plan`` (a `Plan` or a plan document; None: the default
    algorithm per layer) on ``inputs`` (seeded random ones if None), measuring its peak;
    ``check`` compares the outputs with onnxruntime. A plan made for another network is
    refused (`run_plan`), as is one made for other input shapes. A name or path is loaded
    for this run (for ``batch`` / ``input_shapes``) and each weight held once; a `Network`
    given is left unchanged (its originals stay beside any prepared copy). A compiled plan
    (a .cvplan file) runs as compiled: no ``plan``, ``check``, ``batch`` or ``input_shapes``."""
    if not isinstance(network, Network) and is_compiled(network):
        if plan is not None or check or batch is not None or input_shapes:
            raise CompiledPlanError(f"{network} is a compiled plan: it carries its plan and "
                                    "shapes (and the check needs the original model)")
        with Session.from_compiled(network, threads=threads) as session:
            return run_session(session, inputs, repeat=repeat)
    net, owned = network_of(network, batch=batch, input_shapes=input_shapes)
    if plan is None:
        return run_network(net, inputs, threads=threads, repeat=repeat, check=check,
                           owned=owned)
    spec = plan_spec(plan)     # made for this network and the shapes it is loaded for
    check_plan(net, spec.assignment, spec.layouts, made_for=spec.network, inputs=spec.inputs)
    return run_plan(net, spec, inputs, threads=threads, repeat=repeat, check=check,
                    owned=owned)


def compile(network: Network | str | Path, path: str | Path,
            plan: Plan | Mapping[str, Any] | None = None, *, algorithm: str | None = None,
            threads: int | None = None, batch: int | None = None,
            input_shapes: ShapesGiven = None) -> Header:
    """Write ``network`` with ``plan`` (checked as `run` checks it; None: one ``algorithm``,
    or the default per layer) to ``path`` as a compiled plan, which `Session(path)` and
    `run(path)` run without planning, preparing or ONNX, their weights memory-mapped
    read-only. The file's header. A name or path is loaded for the compile alone (each
    original goes once written); a `Network` given is left unchanged."""
    net, owned = network_of(network, batch=batch, input_shapes=input_shapes)
    return compile_plan(net, path, plan, algorithm=algorithm, threads=threads, owned=owned)
