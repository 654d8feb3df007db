"""What convplan has to choose from: the registered convolution algorithms and the built-in
networks, as the documents `convplan algorithms --json` and `convplan networks --json` print and
GET /v1/algorithms and /v1/networks return."""

from __future__ import annotations

from functools import cache

from pydantic import BaseModel

from convplan.kernels import registry


class AlgorithmInfo(BaseModel):
    """A registered convolution algorithm: its layouts, what it does, which layers it can run
    and its workspace formula (`ConvAlgorithm.describe`)."""

    name: str
    input_layout: str
    output_layout: str
    summary: str
    supports: str
    workspace: str


class NetworkInfo(BaseModel):
    """A built-in network and where its architecture comes from."""

    name: str
    source: str


@cache
def registered_algorithms() -> tuple[AlgorithmInfo, ...]:
    """Every registered algorithm, in the registry's order."""
    return tuple(AlgorithmInfo.model_validate(a.describe()) for a in registry.all_algorithms())


@cache
def builtin_networks() -> tuple[NetworkInfo, ...]:
    """Every built-in network (`zoo.names`): the paper's networks, then the ONNX light models."""
    # imported here: its onnx and NetworkX imports are not for `convplan algorithms`
    from convplan.selector.network import zoo

    infos = []
    for name in zoo.names():
        light = zoo.PAPER_NETWORKS.get(name, name.removeprefix("onnx:"))
        infos.append(NetworkInfo(name=name, source="described in convplan (seeded weights)"
                                 if light is None else f"onnx light model {light}"))
    return tuple(infos)
