"""Jobs: define, schedule, run now, follow, cancel and retry runs.

Reads need ``fleet:read``; changing a job needs ``fleet:write``; running one (or retrying a run) needs
``command:exec``, and the service also requires ``command:exec`` of whoever creates, changes or enables a job,
because its runs act as that principal.
"""

from starlette.requests import Request

from legator_mcp.jobs.schemas import (
    JobCancelResult,
    JobCreate,
    JobList,
    JobRead,
    JobRetryResult,
    JobRunAction,
    JobRunPage,
    JobRunQuery,
    JobTriggered,
    JobUpdate,
)
from legator_mcp.principal import Permission
from legator_mcp.rest._routing import RouteContext, RouteTable, parse_body, parse_query

__all__ = ["register"]


def register(table: RouteTable) -> None:
    """Add the job routes."""

    @table.route("GET", "/api/v1/jobs/runs", permission=Permission.FLEET_READ,
                 summary="Runs of every job, newest first (filters: job_id, probe_id, status, started_after/before)",
                 query=JobRunQuery, response=JobRunPage, tag="jobs")  # fmt: skip
    async def list_all_runs(request: Request, ctx: RouteContext) -> JobRunPage:
        return await ctx.services.jobs.list_runs(parse_query(request, JobRunQuery))

    @table.route("GET", "/api/v1/jobs", permission=Permission.FLEET_READ, summary="List jobs, latest changed first",
                 response=JobList, tag="jobs")  # fmt: skip
    async def list_jobs(request: Request, ctx: RouteContext) -> JobList:
        jobs = await ctx.services.jobs.list_jobs()
        return JobList(jobs=jobs, count=len(jobs))

    @table.route("POST", "/api/v1/jobs", permission=Permission.FLEET_WRITE,
                 summary="Create a job (its runs act as you: needs command:exec too)", body=JobCreate,
                 response=JobRead, status=201, tag="jobs")  # fmt: skip
    async def create_job(request: Request, ctx: RouteContext) -> JobRead:
        body = await parse_body(request, JobCreate)
        return await ctx.services.jobs.create_job(actor=ctx.principal, job=body)

    @table.route("GET", "/api/v1/jobs/{id}", permission=Permission.FLEET_READ, summary="One job",
                 response=JobRead, tag="jobs")  # fmt: skip
    async def get_job(request: Request, ctx: RouteContext) -> JobRead:
        return await ctx.services.jobs.get_job(request.path_params["id"])

    @table.route("PUT", "/api/v1/jobs/{id}", permission=Permission.FLEET_WRITE,
                 summary="Change a job; fields left out are kept (you become the owner its runs act as)",
                 body=JobUpdate, response=JobRead, tag="jobs")  # fmt: skip
    async def update_job(request: Request, ctx: RouteContext) -> JobRead:
        body = await parse_body(request, JobUpdate)
        return await ctx.services.jobs.update_job(actor=ctx.principal, job_id=request.path_params["id"], changes=body)

    @table.route("DELETE", "/api/v1/jobs/{id}", permission=Permission.FLEET_WRITE,
                 summary="Delete a job and its run history", status=204, tag="jobs")  # fmt: skip
    async def delete_job(request: Request, ctx: RouteContext) -> None:
        await ctx.services.jobs.delete_job(actor=ctx.principal, job_id=request.path_params["id"])

    @table.route("POST", "/api/v1/jobs/{id}/run", permission=Permission.COMMAND_EXEC,
                 summary="Run a job now on every target (enabled or not); one queued run per probe",
                 response=JobTriggered, status=202, tag="jobs")  # fmt: skip
    async def run_job(request: Request, ctx: RouteContext) -> JobTriggered:
        return await ctx.services.jobs.trigger(actor=ctx.principal, job_id=request.path_params["id"])

    @table.route("POST", "/api/v1/jobs/{id}/cancel", permission=Permission.FLEET_WRITE,
                 summary="Cancel every active run of a job (running commands are stopped on their probes)",
                 response=JobCancelResult, tag="jobs")  # fmt: skip
    async def cancel_job(request: Request, ctx: RouteContext) -> JobCancelResult:
        return await ctx.services.job_flow.cancel_job(actor=ctx.principal, job_id=request.path_params["id"])

    @table.route("POST", "/api/v1/jobs/{id}/enable", permission=Permission.FLEET_WRITE,
                 summary="Enable a job's schedule from its next time after now (needs command:exec too)",
                 response=JobRead, tag="jobs")  # fmt: skip
    async def enable_job(request: Request, ctx: RouteContext) -> JobRead:
        return await ctx.services.jobs.set_enabled(actor=ctx.principal, job_id=request.path_params["id"], enabled=True)

    @table.route("POST", "/api/v1/jobs/{id}/disable", permission=Permission.FLEET_WRITE,
                 summary="Disable a job's schedule (active runs and queued retries go on)", response=JobRead,
                 tag="jobs")  # fmt: skip
    async def disable_job(request: Request, ctx: RouteContext) -> JobRead:
        jobs = ctx.services.jobs
        return await jobs.set_enabled(actor=ctx.principal, job_id=request.path_params["id"], enabled=False)

    @table.route("GET", "/api/v1/jobs/{id}/runs", permission=Permission.FLEET_READ,
                 summary="Runs of one job, newest first (filters: probe_id, status, started_after/before)",
                 query=JobRunQuery, response=JobRunPage, tag="jobs")  # fmt: skip
    async def list_job_runs(request: Request, ctx: RouteContext) -> JobRunPage:
        query = parse_query(request, JobRunQuery)
        return await ctx.services.jobs.list_runs(query.model_copy(update={"job_id": request.path_params["id"]}))

    @table.route("POST", "/api/v1/jobs/{id}/runs/{runId}/cancel", permission=Permission.FLEET_WRITE,
                 summary="Cancel one run: its command is stopped on the probe, a waiting approval withdrawn",
                 response=JobRunAction, tag="jobs")  # fmt: skip
    async def cancel_run(request: Request, ctx: RouteContext) -> JobRunAction:
        return await ctx.services.job_flow.cancel_run(
            actor=ctx.principal, job_id=request.path_params["id"], run_id=request.path_params["runId"]
        )

    @table.route("POST", "/api/v1/jobs/{id}/runs/{runId}/retry", permission=Permission.COMMAND_EXEC,
                 summary="Retry a failed, canceled or denied run: a new attempt on the same probe, due now",
                 response=JobRetryResult, status=202, tag="jobs")  # fmt: skip
    async def retry_run(request: Request, ctx: RouteContext) -> JobRetryResult:
        return await ctx.services.jobs.retry_run(
            actor=ctx.principal, job_id=request.path_params["id"], run_id=request.path_params["runId"]
        )
