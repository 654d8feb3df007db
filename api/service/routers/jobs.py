"""POST /v1/profile and GET /v1/jobs/{id}: profiling jobs, run one at a time in their own
process, polled by id."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from convplan.selector.network import zoo

from .. import work
from ..deps import JobsDep, JsonBody, PoolDep, SettingsDep
from ..errors import ERRORS
from ..schemas import CostOptions, Job, JobCreated, ProfileBody
from ..work import ServiceError
from ..workers import validate_task

router = APIRouter(tags=["jobs"])


@router.post("/v1/profile", status_code=202, response_model=JobCreated, responses=ERRORS,
             dependencies=[JsonBody])
async def profile(body: ProfileBody, request: Request, response: Response, pool: PoolDep,
                  jobs: JobsDep, settings: SettingsDep) -> JobCreated:
    """Start measuring every cost a plan of the network needs (kept in the cost store);
    poll GET /v1/jobs/{id}. The network is built first (in a worker), so a bad one is
    refused here as /v1/plan refuses it, and takes no job."""
    if isinstance(body.network, str) and body.network not in zoo.names():
        raise ServiceError(404, "unknown_network", f"unknown network {body.network!r}; "
                           f"built in: {', '.join(zoo.names())}")
    work.plan_request(CostOptions(threads=body.threads).model_dump(), settings)
    source = work.source(body.network, body.shapes())
    jobs.check_room()
    if source[0] != "builtin" or body.shapes():     # (a built-in name was checked; its
                                                    # shapes may still be refused)
        await pool.run(validate_task, source, settings)
    job = jobs.submit((source, body.threads, body.budget_s))
    url = str(request.url_for("job", job_id=job.id).path)
    response.headers["Location"] = url
    return JobCreated(id=job.id, status=job.status, url=url)


@router.get("/v1/jobs/{job_id}", response_model=Job, name="job",
            responses={k: v for k, v in ERRORS.items() if k in (404, 422)})
async def job(job_id: str, jobs: JobsDep) -> Job:
    """A job's status, progress and (when finished) its result or error."""
    found = jobs.get(job_id)
    if found is None:
        raise ServiceError(404, "unknown_job", f"no job {job_id!r} (jobs are kept in "
                           "memory; the oldest finished ones are dropped)")
    return found
