"""GET /healthz: whether heavy requests can be served; open even behind an API key."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ..deps import PoolDep
from ..errors import RETRY, retry_after
from ..schemas import Health

router = APIRouter(tags=["service"])


@router.get("/healthz", response_model=Health,
            responses={503: {"model": Health, "description": "Unhealthy: no worker can make "
                                                             "progress (`detail` says why).",
                             "headers": RETRY}})
async def healthz(request: Request, pool: PoolDep) -> Any:
    """Whether heavy requests can be served (some worker process alive and within its
    deadline), and how busy the slots are; never needs the API key, costs nothing."""
    healthy, why, counts = pool.health()
    health = Health(status="ok" if healthy else "unhealthy", version=request.app.version,
                    slots=pool.slots, busy=pool.busy, waiting=pool.waiting,
                    workers=counts, replaced=pool.replaced,  # type: ignore[arg-type]
                    error=None if healthy else "unhealthy", detail=None if healthy else why)
    return JSONResponse(health.model_dump(exclude_none=True),
                        status_code=200 if healthy else 503,
                        headers=None if healthy else retry_after(request))
