"""The plan document: what `convplan plan --json` prints, `/v1/plan` returns and `run --plan`
reads. The choice per layer with every candidate it considered (so anyone can check it), the
transforms, the solver's status, the prediction and the baselines. And the frontier document
(`Frontier`): what `convplan pareto --json` prints and `/v1/pareto` returns.

`Plan` and `Frontier` are the one models of them: the CLI dumps them, the service returns them
(its OpenAPI schemas are theirs), batch writes plans. Field names and order are the JSON
documents'."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .ilp import Candidate, Solution
from .problem import Caps, PlanContext

#: Where a plan's costs come from: all measured on this machine, all imported from another
#: store, all from the analytic model, or a mix.
CostsLabel = Annotated[Literal["measured", "imported", "analytic", "mixed"], Field(
    description="measured / imported / analytic: every cost has that source; mixed: some "
                "mix of them.")]


def costs_label(sources: Collection[str]) -> str:
    """The `CostsLabel` of costs from ``sources``: the one source they all have, else "mixed"."""
    return next(iter(sources)) if len(sources) == 1 else "mixed"


class CandidateDoc(BaseModel):
    """One option a layer had, with its cost (so anyone can check the choice)."""

    name: str
    algorithm: str | None
    input_layout: str
    output_layout: str
    time_s: float
    workspace_bytes: int
    prepared_bytes: int
    measured_workspace_bytes: int | None
    source: str

    @classmethod
    def of(cls, c: Candidate) -> CandidateDoc:
        return cls(name=c.name, algorithm=c.algorithm, input_layout=c.input_layout,
                   output_layout=c.output_layout, time_s=c.time_s,
                   workspace_bytes=c.workspace_bytes, prepared_bytes=c.prepared_bytes,
                   measured_workspace_bytes=c.measured_workspace_bytes, source=c.source)


class LayerDoc(BaseModel):
    """A layer's chosen candidate, and every candidate it had."""

    name: str
    op: str
    algorithm: str | None
    input_layout: str
    output_layout: str
    time_s: float
    workspace_bytes: int
    prepared_bytes: int
    candidates: list[CandidateDoc]


class TransformDoc(BaseModel):
    """A layout copy of ``tensor`` into ``into`` for layer ``for`` (a keyword in Python, so the
    attribute is ``for_``; the document's key stays ``for``)."""

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)
    tensor: str
    for_: str = Field(alias="for")
    into: str
    time_s: float
    bytes: int


class SolverDoc(BaseModel):
    name: str
    status: str
    optimal: bool
    solve_seconds: float


class PredictedDoc(BaseModel):
    """The memory model's prediction (``peak_bytes``: the promise) and the ILP's bound."""

    time_s: float
    peak_bytes: int
    model_bound_bytes: int
    arena_bytes: int = Field(description="The placed arena (what the executor allocates for "
                             "activations, copies and workspaces; part of peak_bytes).")
    max_live_bytes: int = Field(description="The most arena bytes alive at one step: the "
                                "lower bound of any placement.")


class BaselineDoc(BaseModel):
    """A reference plan (`baselines`): its time, predicted peak, and what `run` needs."""

    time_s: float
    peak_bytes: int
    arena_bytes: int
    fits_cap: bool = Field(description="Whether it meets the plan's caps (both, if given).")
    assignment: dict[str, str]
    layouts: dict[str, str]


class Plan(BaseModel):
    """The plan: what `convplan plan --json` prints and `/v1/run` (or `convplan run --plan`)
    executes."""

    network: str
    inputs: dict[str, list[int]] = Field(
        description="The shape of every input the plan was made for (`run --plan` refuses "
                    "other shapes: the costs and the memory are those of these).")
    machine: dict[str, Any]
    threads: int
    memory_cap_bytes: int | None = Field(description="The cap of the whole footprint.")
    arena_cap_bytes: int | None = Field(None, description="The cap of the arena alone.")
    costs: CostsLabel
    solver: SolverDoc
    predicted: PredictedDoc
    assignment: dict[str, str]
    layouts: dict[str, str]
    layers: list[LayerDoc]
    transforms: list[TransformDoc]
    baselines: dict[str, BaselineDoc]


def plan_document(context: PlanContext, solution: Solution, caps: Caps,
                  machine: Mapping[str, Any], threads: int,
                  baseline_plans: Mapping[str, Any] | None = None) -> Plan:
    """The `Plan` of ``solution``."""
    network, p = context.network, context.problem
    algorithms, layouts = context.assignment(solution.choice)
    profile = context.predictions.profile(algorithms, layouts)
    layers = []
    for node in network.nodes:
        options = p.candidates[node.name]
        c = options[solution.choice[node.name]]
        layers.append(LayerDoc(name=node.name, op=node.op, algorithm=c.algorithm,
                               input_layout=c.input_layout, output_layout=c.output_layout,
                               time_s=c.time_s, workspace_bytes=c.workspace_bytes,
                               prepared_bytes=c.prepared_bytes,
                               candidates=[CandidateDoc.of(o) for o in options]))
    transforms = [TransformDoc(tensor=t, for_=n, into=layout,
                               time_s=p.transform_time[t, layout], bytes=p.tensor_bytes[t])
                  for t, n, layout in solution.transforms]
    return Plan(
        network=network.name,
        inputs={name: list(shape) for name, shape in network.inputs.items()},
        machine=dict(machine),
        threads=threads,
        memory_cap_bytes=caps.memory,
        arena_cap_bytes=caps.arena,
        costs=costs_label(context.sources),
        solver=SolverDoc(name=solution.solver, status=solution.status,
                         optimal=solution.optimal, solve_seconds=solution.solve_seconds),
        predicted=PredictedDoc(time_s=solution.time_s, peak_bytes=profile.peak_bytes,
                               model_bound_bytes=solution.peak_bytes,
                               arena_bytes=profile.arena_bytes,
                               max_live_bytes=profile.max_live_bytes),
        assignment=algorithms,
        layouts=layouts,
        layers=layers,
        transforms=transforms,
        baselines={name: BaselineDoc.model_validate(row)
                   for name, row in (baseline_plans or {}).items()},
    )


class FrontierPoint(BaseModel):
    """The fastest plan under one cap of the sweep."""

    cap_bytes: int
    time_s: float
    peak_bytes: int = Field(description="The ILP's bound of the plan's peak.")
    predicted_peak_bytes: int = Field(description="The memory model's peak (the promise).")
    optimal: bool


class Frontier(BaseModel):
    """The time / peak-memory frontier: the fastest plan at each cap of a sweep from the lowest
    achievable peak to the fastest plan's (time falls as peak rises), and the baselines with no
    cap."""

    network: str
    threads: int
    costs: CostsLabel
    points: list[FrontierPoint]
    baselines: dict[str, BaselineDoc]
