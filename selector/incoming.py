"""Plans that come in (`convplan run --plan`, `/v1/run`, a compiled plan's header): a plan
document read as a `PlanSpec`, and `check_plan`, which refuses a plan that does not fit the
network it is given. Outside `planning` so that running a plan never imports the planner."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from convplan.kernels import registry

from .network import Name, Network, NetworkError, ShapeMap, load_json, quoted


class PlanError(NetworkError):
    """A plan that cannot run on the network it is given: the message says why."""


class PlanSpec(BaseModel):
    """What running a plan needs of a plan document (`convplan run --plan`, `/v1/run`): the
    algorithm of every convolution, optionally the layout of other layers, the thread count
    and the network's name. A whole plan document validates (its other keys are kept).
    Whether it fits a network (every convolution, known algorithms ...) is `check_plan`'s."""

    model_config = ConfigDict(extra="allow", strict=True)
    network: Name | None = Field(None, description="The network the plan was made for.")
    assignment: Annotated[dict[Name, Annotated[str, Field(max_length=64)]],
                          Field(max_length=100_000)] = Field(
        description="Conv layer name -> algorithm name, for every convolution.")
    layouts: Annotated[dict[Name, Literal["NCHW", "NHWC"]], Field(max_length=100_000)] = Field(
        default_factory=dict, description="Other layer name -> layout (NCHW or NHWC).")
    threads: Annotated[StrictInt, Field(ge=1, le=4096)] | None = None
    inputs: ShapeMap | None = Field(
        None, description="The input shapes the plan was made for (a plan without them, "
                          "written before plans recorded them, is not checked for shapes).")

    def run_threads(self, given: int | None = None) -> int | None:
        """The thread count to run the plan with: ``given``, else the one its costs were
        measured with, at most this machine's cores (None: neither, all cores)."""
        if given is None and self.threads is not None:
            return min(self.threads, os.cpu_count() or 1)
        return given


def plan_spec(data: Any, what: str = "the plan") -> PlanSpec:
    """A `PlanSpec` from a `Plan`, JSON text or parsed data; PlanError saying what is wrong.
    A `Plan` is validated as its JSON would be (only what running needs of it)."""
    if isinstance(data, PlanSpec):
        return data
    if not isinstance(data, str | bytes | Mapping):
        from .planning.documents import Plan  # a Plan exists: the planner is loaded

        if isinstance(data, Plan):
            data = data.model_dump(mode="json", include={"network", "assignment", "layouts",
                                                         "threads", "inputs"})
    if isinstance(data, str | bytes):
        try:
            data = load_json(data, what)
        except NetworkError as error:
            raise PlanError(str(error)) from None
    if not isinstance(data, Mapping):
        raise PlanError(f"{what} is not a plan: expected a JSON object with an \"assignment\" "
                        "(conv layer name -> algorithm name)")
    try:
        return PlanSpec.model_validate(data)
    except ValidationError as error:
        problems = []
        for e in error.errors(include_url=False, include_input=False)[:5]:
            where = ".".join(str(p)[:60] for p in e["loc"]) or "(top level)"
            problems.append(f"{where}: {e['msg'][:300]}")
        more = f" (and {error.error_count() - 5} more)" if error.error_count() > 5 else ""
        raise PlanError(f"{what} is not a valid plan: " + "; ".join(problems) + more) from None


def plan_file(path: str | os.PathLike[str]) -> PlanSpec:
    """The plan a JSON file holds (`plan_spec`), or a PlanError naming the file."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise PlanError(f"cannot read plan {path}: {error.strerror}") from None
    return plan_spec(data, f"plan {path}")


def _names(names: Any, limit: int = 5) -> str:
    names = sorted(names)
    listed = ", ".join(quoted(n) for n in names[:limit])
    return listed + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _shapes_text(inputs: Mapping[str, Any]) -> str:
    return ", ".join(f"{name}={'x'.join(str(d) for d in shape)}"
                     for name, shape in list(inputs.items())[:8])


def check_inputs(network: Network, inputs: Mapping[str, Any] | None) -> None:
    """PlanError unless a plan made for ``inputs`` (input name -> shape; None: not recorded)
    is made for the shapes ``network`` was loaded with: its costs and memory are those of
    its shapes (another batch needs a plan of its own)."""
    if inputs is None:
        return
    given = {name: [int(d) for d in shape] for name, shape in inputs.items()}
    have = {name: list(shape) for name, shape in network.inputs.items()}
    if given != have:
        raise PlanError(f"the plan was made for inputs {_shapes_text(given)}, but "
                        f"{quoted(network.name)} is loaded for {_shapes_text(have)}; make a "
                        "plan for these shapes (convplan plan --batch / --input-shape)")


def check_plan(network: Network, assignment: Mapping[str, str],
               layouts: Mapping[str, str] | None = None, *, made_for: str | None = None,
               inputs: Mapping[str, Any] | None = None) -> None:
    """PlanError unless the plan fits ``network`` exactly: made for it (when the plan names its
    network) and for its input shapes (when the plan records them, `check_inputs`), an
    algorithm for every convolution and for nothing else, layouts only for its other layers
    and only ones they run in, and only known algorithms."""
    if made_for is not None and made_for != network.name:
        raise PlanError(f"the plan was made for network {quoted(made_for)}, not "
                        f"{quoted(network.name)}")
    check_inputs(network, inputs)
    kinds = {n.name: n for n in network.nodes}
    convs = {n.name for n in network.conv_nodes}
    unknown = set(assignment) - set(kinds)
    if unknown:
        raise PlanError(f"the plan assigns algorithms to layers {quoted(network.name)} "
                        f"does not have: {_names(unknown)}")
    not_conv = set(assignment) - convs
    if not_conv:
        raise PlanError(f"the plan assigns algorithms to layers that are not convolutions: "
                        f"{_names(not_conv)}")
    missing = convs - set(assignment)
    if missing:
        raise PlanError(f"the plan assigns no algorithm to convolution(s) {_names(missing)}")
    known = {a.name for a in registry.all_algorithms()}
    for layer, name in assignment.items():
        if name not in known:
            raise PlanError(f"layer {quoted(layer)}: unknown algorithm {quoted(name)}")
    for layer, layout in (layouts or {}).items():
        if layer not in kinds:
            raise PlanError(f"the plan gives a layout to layer {quoted(layer)}, which "
                            f"{quoted(network.name)} does not have")
        if layer in convs:
            raise PlanError(f"the plan gives a layout to convolution {quoted(layer)}; a "
                            "convolution runs in its algorithm's layout")
        if layout not in kinds[layer].operator.layouts:
            runs_in = ", ".join(kinds[layer].operator.layouts)
            raise PlanError(f"layer {quoted(layer)}: {kinds[layer].op} does not run in "
                            f"{quoted(layout)} (only {runs_in})")
