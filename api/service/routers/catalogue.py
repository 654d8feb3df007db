"""GET /v1/algorithms and /v1/networks: what the service knows (`selector.catalogue`, the
documents `convplan algorithms --json` and `convplan networks --json` print), answered on the
event loop."""

from __future__ import annotations

from fastapi import APIRouter

from convplan.selector.catalogue import (
    AlgorithmInfo,
    NetworkInfo,
    builtin_networks,
    registered_algorithms,
)

router = APIRouter(tags=["catalogue"])


@router.get("/v1/algorithms", response_model=list[AlgorithmInfo])
async def algorithms() -> tuple[AlgorithmInfo, ...]:
    """The registered convolution algorithms: layouts, limits, workspace formula."""
    return registered_algorithms()


@router.get("/v1/networks", response_model=list[NetworkInfo])
async def networks() -> tuple[NetworkInfo, ...]:
    """The built-in networks (a request may also give a description or an ONNX file)."""
    return builtin_networks()
