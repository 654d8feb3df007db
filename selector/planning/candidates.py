"""Candidates: every way each layer can run, and what profiling must measure to price it.

The one enumeration of the selection problem (DESIGN.md, Selection: (algorithm, input layout,
output layout) per convolution, a layout per other operator, both transforms per 4-D tensor).
Each `Option` carries the cost request that prices it, so what profiling measures
(`requests_for`) and what the ILP chooses among (`problem.build_problem`) are one list and
cannot disagree.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from convplan.kernels import ConvSpec, registry
from convplan.kernels.arena import aligned
from convplan.kernels.spec import LAYOUTS, Layout
from convplan.profiles.measurement import Measurement
from convplan.profiles.profiler import request_key
from convplan.profiles.requests import ConvRequest, CostRequest, OpRequest, TransformRequest
from convplan.selector.network import Network, Node

from .ilp import Candidate


@dataclass(frozen=True)
class Option:
    """One candidate of one layer before it is priced: what it is, and the request whose
    measurement gives its time (and measured workspace)."""

    request: CostRequest
    name: str                       # the algorithm (conv) or the layout (other operators)
    algorithm: str | None
    input_layout: Layout
    output_layout: Layout
    workspace_bytes: int            # predicted: what the memory promise counts
    prepared_bytes: int = 0
    preparing_bytes: int = 0        # while prepared: its copy and the transient
    arena_bytes: int = 0            # its workspaces in the arena (each aligned)

    def priced(self, m: Measurement) -> Candidate:
        """The ILP's candidate, with ``m`` (this option's request, measured or estimated)."""
        return Candidate(self.name, self.algorithm, self.input_layout, self.output_layout,
                         m.time_s, self.workspace_bytes, self.prepared_bytes,
                         m.workspace_bytes, m.source, self.preparing_bytes, self.arena_bytes)


def conv_options(spec: ConvSpec, bias: bool = False) -> list[Option]:
    """Every applicable algorithm of one convolution, in registration order: each fixes the
    layer's input and output layouts."""
    return [Option(ConvRequest(spec, a.name), a.name, a.name, a.input_layout, a.output_layout,
                   a.workspace_bytes(spec), a.prepared_bytes(spec, bias),
                   (a.prepared_bytes(spec, bias=False) if a.prepare_copies(spec) else 0)
                   + a.prepare_extra_bytes(spec),
                   arena_workspace_bytes(a.workspace_shapes(spec).values(), spec.itemsize))
            for a in registry.applicable(spec)]


def arena_workspace_bytes(shapes: Iterable[Sequence[int]], itemsize: int = 4) -> int:
    """What workspaces of ``shapes`` take in the arena: one buffer each, aligned."""
    return sum(aligned(int(np.prod(shape, dtype=np.int64)) * itemsize) for shape in shapes)


def op_options(network: Network, node: Node) -> list[Option]:
    """Every layout another operator runs in (NCHW only when no input has a layout); an output
    without a layout is NCHW."""
    shapes = [network.shapes[t] for t in node.inputs]
    has_4d = any(len(s) == 4 for s in shapes)
    layouts: list[Layout] = list(node.operator.layouts) if has_4d else ["NCHW"]
    workspace = node.operator.workspace_bytes(shapes, 4)
    outputs_4d = all(len(network.shapes[t]) == 4 for t in node.outputs)
    return [Option(OpRequest.of(node.operator, shapes, layout), layout, None, layout,
                   layout if outputs_4d else "NCHW", workspace, arena_bytes=arena_workspace_bytes(
                       node.operator.workspace_shapes(shapes, layout).values()))
            for layout in layouts]


@dataclass(frozen=True)
class Candidates:
    """A network's candidates per layer and its transforms, each with its cost request."""

    options: dict[str, list[Option]]                            # layer -> its options
    transforms: dict[tuple[str, Layout], TransformRequest]      # (4-D tensor, into) -> request

    def requests(self) -> list[CostRequest]:
        """Every request once (identical specs share one), in first-seen order."""
        out: dict[tuple[str, str, str], CostRequest] = {}
        for options in self.options.values():
            for option in options:
                out.setdefault(request_key(option.request), option.request)
        for request in self.transforms.values():
            out.setdefault(request_key(request), request)
        return list(out.values())


def enumerate_candidates(network: Network) -> Candidates:
    """The candidates of every layer of ``network`` (in its order) and both layout transforms
    of every 4-D tensor."""
    options = {node.name: conv_options(network.conv_spec(node), "bias" in node.weights)
               if node.op == "conv" else op_options(network, node) for node in network.nodes}
    transforms = {(t, into): TransformRequest(shape, src, into)
                  for t, shape in network.shapes.items() if len(shape) == 4
                  for src in LAYOUTS for into in LAYOUTS if src != into}
    return Candidates(options, transforms)


def requests_for(network: Network) -> list[CostRequest]:
    """Everything a plan of ``network`` needs measured (identical specs appear once)."""
    return enumerate_candidates(network).requests()
