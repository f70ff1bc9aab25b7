"""The bulk-job endpoints: enqueue a tenant or user revocation, read one job, list recent ones.

Every endpoint needs ``revoker:revoke`` (a bearer token or a registered client, see
:mod:`revoker.api.auth`); who it is (a token's subject, ``client:<id>``) is the job's actor.
The jobs functions are synchronous (redis-py), so they run in the thread pool.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Final

from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from revoker import exceptions as exc
from revoker import jobs as bulk_jobs
from revoker.api.auth import REVOKE_SCOPE, authenticate
from revoker.api.bodies import PATH_IDS, JobQuery, bulk_revocation
from revoker.api.requests import path_id, read_json

if TYPE_CHECKING:
    from starlette.requests import Request

    from revoker.api.context import ApiContext
    from revoker.bulk import Scope
    from revoker.jobs import JobRecord

__all__ = ["ENQUEUE_PATHS", "enqueue", "get_job", "list_jobs", "routes"]

#: Where each scope's revocations are enqueued; the path parameter names the target.
ENQUEUE_PATHS: Final[dict[Scope, str]] = {
    scope: f"/jobs/{scope}s/{{{name}}}/revocations" for scope, name in PATH_IDS.items()
}


async def enqueue(context: ApiContext, scope: Scope, request: Request) -> Response:
    """Enqueue a revocation of the tenant or user the path names (202 with the job record)."""
    principal = await authenticate(context, request, scope=REVOKE_SCOPE)
    target = str(request.path_params[PATH_IDS[scope]])
    revocation = bulk_revocation(scope, target, await read_json(request), actor=principal.actor)
    job_id = await run_in_threadpool(bulk_jobs.enqueue, revocation, settings=context.settings)
    record = await _get_job(context, job_id)
    return JSONResponse(record.as_dict(), status_code=202, headers={"Location": f"/jobs/{job_id}"})


async def _get_job(context: ApiContext, job_id: str) -> JobRecord:
    return await run_in_threadpool(bulk_jobs.get_job, job_id, settings=context.settings)


async def get_job(context: ApiContext, request: Request) -> Response:
    """One job record (404 when unknown or expired)."""
    await authenticate(context, request, scope=REVOKE_SCOPE)
    job_id = path_id(request, "job_id")
    try:
        record = await _get_job(context, job_id)
    except exc.InvalidIdentifier:
        raise exc.JobNotFound(f"no job {job_id!r}") from None
    return JSONResponse(record.as_dict())


async def list_jobs(context: ApiContext, request: Request) -> Response:
    """Recent jobs, newest first; ``?limit=`` (1..500) and ``?status=``."""
    await authenticate(context, request, scope=REVOKE_SCOPE)
    query = JobQuery.model_validate(dict(request.query_params))
    records = await run_in_threadpool(
        bulk_jobs.list_jobs, limit=query.limit, status=query.status, settings=context.settings
    )
    return JSONResponse({"jobs": [record.as_dict() for record in records]})


def routes(context: ApiContext) -> list[Route]:
    """The job endpoints of one app."""
    return [
        Route("/jobs", partial(list_jobs, context), methods=["GET"]),
        *(
            Route(path, partial(enqueue, context, scope), methods=["POST"])
            for scope, path in ENQUEUE_PATHS.items()
        ),
        Route("/jobs/{job_id}", partial(get_job, context), methods=["GET"]),
    ]
