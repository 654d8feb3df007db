"""GET /v1/algorithms and /v1/networks: what the service knows, answered on the event loop."""

from __future__ import annotations

from functools import cache
from typing import Any

from fastapi import APIRouter

from convplan.kernels import registry
from convplan.selector.network import zoo

from ..schemas import AlgorithmInfo, NetworkInfo

router = APIRouter(tags=["catalogue"])


@cache
def _algorithm_rows() -> list[dict[str, Any]]:
    return [a.describe() for a in registry.all_algorithms()]


@cache
def _network_rows() -> list[dict[str, str]]:
    rows = []
    for name in zoo.names():
        light = zoo.PAPER_NETWORKS.get(name, name.removeprefix("onnx:"))
        rows.append({"name": name, "source": "described in convplan (seeded weights)"
                     if light is None else f"onnx light model {light}"})
    return rows


@router.get("/v1/algorithms", response_model=list[AlgorithmInfo])
async def algorithms() -> list[dict[str, Any]]:
    """The registered convolution algorithms: layouts, limits, workspace formula."""
    return _algorithm_rows()


@router.get("/v1/networks", response_model=list[NetworkInfo])
async def networks() -> list[dict[str, str]]:
    """The built-in networks (a request may also give a description or an ONNX file)."""
    return _network_rows()
