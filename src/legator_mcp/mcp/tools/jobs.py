"""Job tools and resources: define jobs, run them now, follow runs (poll, output, events), cancel and retry.

A run that policy queued is ``pending`` until a human approves it; one policy denied is ``denied`` — both are
normal outcomes to report, not errors to retry.
"""

from datetime import datetime
from typing import Annotated

from mcp.server.mcpserver import Context
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from legator_mcp.app_context import AppContext
from legator_mcp.flows.jobs import ActiveRuns, JobEvents, RunOutput
from legator_mcp.jobs.schemas import (
    JobCommand,
    JobCreate,
    JobList,
    JobRead,
    JobRetryResult,
    JobRunAction,
    JobRunPage,
    JobRunQuery,
    JobRunRead,
    JobTarget,
    JobTriggered,
    RetryPolicyIn,
    RunStatus,
)
from legator_mcp.mcp._context import McpContext
from legator_mcp.mcp._errors import caller
from legator_mcp.mcp._registry import McpRegistry
from legator_mcp.mcp.tools.fleet import static_resource
from legator_mcp.principal import Permission

__all__ = ["register"]

READ_ONLY = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)
DEFINES = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False)
RUNS = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=True)
STOPS = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=True)

JobId = Annotated[str, Field(min_length=1, max_length=36, description="The job's id (see legator_list_jobs)")]
RunId = Annotated[str, Field(min_length=1, max_length=36, description="The run's id (see legator_list_job_runs)")]
WaitMs = Annotated[int, Field(ge=0, le=60000, description="How long to wait, in milliseconds (at most 60000)")]


class JobRunView(BaseModel):
    """One run and whether it can still change."""

    run: JobRunRead
    active: bool
    terminal: bool


class ActiveRunList(BaseModel):
    """Every run still queued, pending or running."""

    runs: list[JobRunRead]
    count: int


def _services(ctx: Context[McpContext]) -> AppContext:
    return ctx.request_context.lifespan_context.services


def register(registry: McpRegistry) -> None:
    """Add the job tools and resources."""

    @registry.tool("legator_list_jobs", permission=Permission.FLEET_READ, annotations=READ_ONLY)
    async def list_jobs(ctx: Context[McpContext]) -> JobList:
        """List jobs (scheduled and on-demand commands), most recently changed first.

        Each shows its command, schedule (interval or UTC cron), target, retry policy, next fire and the status of
        its latest runs.
        """
        jobs = await _services(ctx).jobs.list_jobs()
        return JobList(jobs=jobs, count=len(jobs))

    @registry.tool("legator_list_job_runs", permission=Permission.FLEET_READ, annotations=READ_ONLY)
    async def list_job_runs(
        ctx: Context[McpContext],
        job_id: Annotated[str | None, Field(max_length=36, description="Only runs of this job")] = None,
        probe_id: Annotated[str | None, Field(max_length=64, description="Only runs on this probe")] = None,
        status: Annotated[RunStatus | None, Field(description="Only runs in this state")] = None,
        started_after: Annotated[datetime | None, Field(description="RFC 3339, e.g. 2030-01-01T10:00:00Z")] = None,
        started_before: Annotated[datetime | None, Field(description="RFC 3339")] = None,
        limit: Annotated[int, Field(ge=1, le=500)] = 50,
        cursor: Annotated[str | None, Field(max_length=200, description="next_cursor of a previous page")] = None,
    ) -> JobRunPage:
        """List job runs, newest first, with counts per status over the page.

        A run is one attempt of a job on one probe; retries share its execution_id with a higher attempt.
        """
        query = JobRunQuery(
            job_id=job_id, probe_id=probe_id, status=status, started_after=started_after,
            started_before=started_before, limit=limit, cursor=cursor,
        )  # fmt: skip
        return await _services(ctx).jobs.list_runs(query)

    @registry.tool("legator_get_job_run", permission=Permission.FLEET_READ, annotations=READ_ONLY)
    async def get_job_run(ctx: Context[McpContext], run_id: RunId) -> JobRunView:
        """Show one job run: status, admission decision and reason, exit code, output and timing."""
        run = await _services(ctx).jobs.get_run(run_id)
        return JobRunView(run=run, active=run.active, terminal=run.terminal)

    @registry.tool("legator_poll_job_active", permission=Permission.FLEET_READ, annotations=READ_ONLY)
    async def poll_job_active(
        ctx: Context[McpContext],
        job_id: JobId,
        wait_ms: WaitMs = 10000,
        include_runs: Annotated[bool, Field(description="Also return the job's latest 50 runs")] = True,
        include_job: bool = False,
    ) -> ActiveRuns:
        """Wait (bounded) until a job has no queued, pending or running run, then report its runs.

        completed=false after the wait means runs are still active: call again, or report progress. A run
        "pending" waits for a human approval and will not finish on its own.
        """
        return await _services(ctx).job_flow.poll_active(
            job_id=job_id, wait_s=wait_ms / 1000, include_runs=include_runs, include_job=include_job
        )

    @registry.tool("legator_stream_job_run_output", permission=Permission.FLEET_READ, annotations=READ_ONLY)
    async def stream_job_run_output(
        ctx: Context[McpContext],
        run_id: RunId,
        cursor: Annotated[int, Field(ge=0, description="next_cursor of the previous call; 0 from the start")] = 0,
        wait_ms: WaitMs = 5000,
        max_chunks: Annotated[int, Field(ge=1, le=1024)] = 256,
    ) -> RunOutput:
        """Read a run's streamed output from a cursor, waiting (bounded) for new chunks while it runs.

        Call again with next_cursor until terminal is true; the final output is included once the run ended.
        """
        return await _services(ctx).job_flow.output(
            run_id=run_id, cursor=cursor, wait_s=wait_ms / 1000, max_chunks=max_chunks
        )

    @registry.tool("legator_stream_job_events", permission=Permission.FLEET_READ, annotations=READ_ONLY)
    async def stream_job_events(
        ctx: Context[McpContext],
        job_id: Annotated[str | None, Field(max_length=36)] = None,
        run_id: Annotated[str | None, Field(max_length=36)] = None,
        execution_id: Annotated[str | None, Field(max_length=64)] = None,
        request_id: Annotated[str | None, Field(max_length=64)] = None,
        probe_id: Annotated[str | None, Field(max_length=64)] = None,
        since: Annotated[int, Field(ge=0, description="next_since of the previous call; 0 for all kept")] = 0,
        wait_ms: WaitMs = 0,
        limit: Annotated[int, Field(ge=1, le=500)] = 50,
    ) -> JobEvents:
        """Read job lifecycle events (job.created, job.run.started, job.run.failed, …) after a cursor.

        With wait_ms, waits (bounded) for the next matching event when there is none yet.
        """
        filters = {
            "job_id": job_id, "run_id": run_id, "execution_id": execution_id, "request_id": request_id,
            "probe_id": probe_id,
        }  # fmt: skip
        return await _services(ctx).job_flow.events(filters=filters, since=since, wait_s=wait_ms / 1000, limit=limit)

    @registry.tool("legator_create_job", permission=Permission.COMMAND_EXEC, annotations=DEFINES)
    async def create_job(
        ctx: Context[McpContext],
        name: Annotated[str, Field(min_length=1, max_length=200)],
        command: Annotated[
            JobCommand | str, Field(description="A shell script, or {kind, spec} for a typed command kind")
        ],
        target: JobTarget,
        schedule: Annotated[
            str | None, Field(max_length=200, description="30s / 5m / 1h30m, or cron in UTC like '*/5 * * * *'")
        ] = None,
        retry_policy: RetryPolicyIn | None = None,
        enabled: bool = True,
        timeout_s: Annotated[float, Field(gt=0, le=3600)] = 300,
        description: Annotated[str | None, Field(max_length=2000)] = None,
    ) -> JobRead:
        """Create a job: a command that runs on its target probes on a schedule and/or on demand.

        Runs act as you: policy judges each one per probe (allowed, queued for a human approval, or denied).
        Leave schedule out for an on-demand job (run it with legator_run_job).
        """
        job = JobCreate.model_validate(
            {
                "name": name, "description": description, "command": command, "schedule": schedule,
                "target": target.model_dump(), "enabled": enabled, "timeout_s": timeout_s,
                "retry_policy": retry_policy.model_dump() if retry_policy else None,
            }
        )  # fmt: skip
        return await _services(ctx).jobs.create_job(actor=caller(ctx), job=job)

    @registry.tool("legator_run_job", permission=Permission.COMMAND_EXEC, annotations=RUNS)
    async def run_job(ctx: Context[McpContext], job_id: JobId) -> JobTriggered:
        """Run a job now on every target probe (enabled or not); returns the queued runs, one per probe.

        Follow them with legator_poll_job_active or legator_stream_job_run_output.
        """
        return await _services(ctx).jobs.trigger(actor=caller(ctx), job_id=job_id)

    @registry.tool("legator_cancel_job_run", permission=Permission.FLEET_WRITE, annotations=STOPS)
    async def cancel_job_run(ctx: Context[McpContext], job_id: JobId, run_id: RunId) -> JobRunAction:
        """Cancel a queued, pending or running job run; a running command is stopped on its probe."""
        return await _services(ctx).job_flow.cancel_run(actor=caller(ctx), job_id=job_id, run_id=run_id)

    @registry.tool("legator_retry_job_run", permission=Permission.COMMAND_EXEC, annotations=RUNS)
    async def retry_job_run(ctx: Context[McpContext], job_id: JobId, run_id: RunId) -> JobRetryResult:
        """Retry a failed, canceled or denied run: a new attempt on the same probe, sent at once."""
        return await _services(ctx).jobs.retry_run(actor=caller(ctx), job_id=job_id, run_id=run_id)

    @static_resource(
        registry, "legator://jobs/list", permission=Permission.FLEET_READ, name="Jobs",
        description="Every job with its schedule, target, next fire and latest status",
    )  # fmt: skip
    async def jobs_resource(ctx: Context[McpContext]) -> str:
        jobs = await _services(ctx).jobs.list_jobs()
        return JobList(jobs=jobs, count=len(jobs)).model_dump_json()

    @static_resource(
        registry, "legator://jobs/active-runs", permission=Permission.FLEET_READ, name="Active Job Runs",
        description="Every job run still queued, pending (awaiting approval) or running",
    )  # fmt: skip
    async def active_runs_resource(ctx: Context[McpContext]) -> str:
        runs = await _services(ctx).jobs.active_runs()
        return ActiveRunList(runs=runs, count=len(runs)).model_dump_json()

    @registry.resource(
        "legator://jobs/runs/{run_id}", permission=Permission.FLEET_READ, name="Job Run",
        description="One job run: status, admission, exit code and output",
    )  # fmt: skip
    async def run_resource(run_id: str, ctx: Context[McpContext]) -> str:
        run = await _services(ctx).jobs.get_run(run_id)
        return JobRunView(run=run, active=run.active, terminal=run.terminal).model_dump_json()
