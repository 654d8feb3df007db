"""Assignments that need no measurements: one algorithm everywhere, or the least memory.

The tests and the benchmarks run networks under them; the plan document's reference plans are
`planning.baselines`, priced from measured costs."""

from __future__ import annotations

from convplan.kernels import registry

from .network import Network


def uniform_assignment(network: Network, algorithm: str) -> dict[str, str]:
    """``algorithm`` for every convolution it can run (others are left to the default)."""
    chosen = registry.get(algorithm)
    return {n.name: algorithm for n in network.conv_nodes if chosen.supports(network.conv_spec(n))}


def lowest_memory_assignment(network: Network) -> dict[str, str]:
    """Per convolution, the applicable algorithm with the smallest workspace plus prepared
    weights (ties: registration order)."""
    out = {}
    for node in network.conv_nodes:
        spec = network.conv_spec(node)
        bias = "bias" in node.weights
        best = min(registry.applicable(spec),
                   key=lambda a: a.workspace_bytes(spec) + a.prepared_bytes(spec, bias))
        out[node.name] = best.name
    return out
