"""Command tools: run a shell command or a typed action on a probe, fetch results, cancel.

Every tool goes through the command flow, so policy decides and the audit log records. A denied command is
a normal result with ``status: "denied"`` and the reasons, not an error, so the model can explain or adjust.
"""

from datetime import datetime
from typing import Annotated, Any, Literal

import anyio
from mcp.server.mcpserver import Context
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from legator_mcp.commands.schemas import CommandRunRead, CommandStatus
from legator_mcp.commands.service import new_request_id
from legator_mcp.flows.run_command import CommandRequest
from legator_mcp.mcp._context import McpContext
from legator_mcp.mcp._errors import caller
from legator_mcp.mcp._registry import McpRegistry
from legator_mcp.principal import Permission

__all__ = ["CommandOutcome", "register"]

MCP_OUTPUT_BYTES = 64 * 1024
"""Output a tool result carries per stream; the full stored output is in legator_get_command_result."""

READS_HOST = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=True)
CHANGES_HOST = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=True)

ProbeId = Annotated[
    str, Field(min_length=1, max_length=64, description="The probe to act on (see legator_list_probes)")
]
Timeout = Annotated[float, Field(gt=0, le=3600, description="Seconds before the probe kills the command")]


class CommandOutcome(BaseModel):
    """What happened to a command: the policy decision, and the probe's result when it finished."""

    request_id: str
    probe_id: str
    kind: str
    status: str = Field(
        description="pending_approval, denied, dispatched (still running), ok, error, timeout, canceled, "
        "refused or lost"
    )
    decision: str
    risk: str
    required_level: str
    rationale: list[str]
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    truncated: bool = False
    duration_ms: int | None = None
    error_code: str | None = None
    error: str | None = None
    data: dict[str, Any] | None = None
    approval_id: str | None = Field(default=None, description="Set when the command waits for a human approval")
    approval_expires_at: datetime | None = None
    how_to_approve: str | None = Field(default=None, description="How a human (not the requester) approves it")
    next_step: str | None = Field(default=None, description="What to do next, when the command is not finished")


def outcome(run: CommandRunRead) -> CommandOutcome:
    """Shape a run for the model, capping output (the full stored output stays fetchable)."""
    stdout, cut_out = _cap(run.stdout)
    stderr, cut_err = _cap(run.stderr)
    next_step = None
    how_to_approve = None
    if run.status is CommandStatus.PENDING_APPROVAL and run.approval_id:
        how_to_approve = (
            f"A different person with approval:write approves it in the console at /ui/approvals/{run.approval_id}, "
            f"with `legator approvals approve {run.approval_id}`, or with legator_decide_approval. "
            "You cannot approve your own request."
        )
        next_step = (
            f"tell the user approval {run.approval_id} is needed; afterwards call legator_get_command_result with "
            f"request_id={run.request_id} and wait_s to collect the result"
        )
    elif not run.finished:
        next_step = f"call legator_get_command_result with request_id={run.request_id} (and wait_s) for the result"
    elif cut_out or cut_err:
        next_step = "output was cut for this reply; legator_get_command_result returns up to 256 KiB per stream"
    return CommandOutcome(
        request_id=run.request_id,
        probe_id=run.probe_id,
        kind=run.kind,
        status=run.status.value,
        decision=run.decision,
        risk=run.risk,
        required_level=run.required_level,
        rationale=list(run.rationale.get("rationale", [])),
        exit_code=run.exit_code,
        stdout=stdout,
        stderr=stderr,
        stdout_bytes=run.stdout_bytes,
        stderr_bytes=run.stderr_bytes,
        truncated=run.truncated or cut_out or cut_err,
        duration_ms=run.duration_ms,
        error_code=run.error_code,
        error=run.error,
        data=run.data,
        approval_id=run.approval_id,
        approval_expires_at=run.approval_expires_at,
        how_to_approve=how_to_approve,
        next_step=next_step,
    )


def _cap(text: str) -> tuple[str, bool]:
    raw = text.encode()
    if len(raw) <= MCP_OUTPUT_BYTES:
        return text, False
    return raw[:MCP_OUTPUT_BYTES].decode(errors="ignore"), True


async def _run(ctx: Context[McpContext], probe_id: str, request: CommandRequest) -> CommandOutcome:
    services = ctx.request_context.lifespan_context.services
    actor = caller(ctx)

    async def progress(done: float, total: float | None, message: str) -> None:
        await ctx.report_progress(done, total, message)

    request = request.model_copy(update={"request_id": request.request_id or new_request_id()})
    assert request.request_id is not None
    try:
        run = await services.command_flow.run(
            actor=actor, probe_id=probe_id, request=request, wait=True, progress=progress
        )
    except anyio.get_cancelled_exc_class():
        # The client gave up (closed the stream or sent notifications/cancelled): stop the command on the probe too.
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await services.command_flow.cancel_if_running(actor=actor, request_id=request.request_id)
        raise
    await ctx.report_progress(1, 1, f"command {run.status.value}")
    return outcome(run)


def register(registry: McpRegistry) -> None:
    """Add the command tools."""

    @registry.tool("legator_run_command", permission=Permission.COMMAND_EXEC, annotations=CHANGES_HOST)
    async def run_command(
        ctx: Context[McpContext],
        probe_id: ProbeId,
        command: Annotated[
            str,
            Field(min_length=1, max_length=65536, description="A program name, or a shell script when args is omitted"),
        ],
        args: Annotated[
            list[str] | None, Field(description="Arguments; when given, command runs directly without a shell")
        ] = None,
        timeout_s: Timeout = 30,
    ) -> CommandOutcome:
        """Run a shell command on one probe and wait for its result.

        Policy classifies the command first: read-only commands run at any level, changes need a probe at
        remediate. A denied command returns status "denied" with the reasons — do not retry it unchanged.
        Prefer the typed tools (legator_read_file, legator_systemd, …) when they fit.
        """
        spec: dict[str, Any] = {"argv": [command, *args]} if args is not None else {"script": command}
        return await _run(ctx, probe_id, CommandRequest(kind="shell", spec=spec, timeout_s=timeout_s))

    @registry.tool("legator_read_file", permission=Permission.COMMAND_EXEC, annotations=READS_HOST)
    async def read_file(
        ctx: Context[McpContext],
        probe_id: ProbeId,
        path: Annotated[str, Field(description="Absolute path on the probe's host")],
        max_bytes: Annotated[int, Field(ge=1, le=1048576)] = 65536,
        offset: Annotated[int, Field(ge=0)] = 0,
        tail_lines: Annotated[int | None, Field(ge=1, le=100000, description="Return only the last N lines")] = None,
    ) -> CommandOutcome:
        """Read a file on a probe (bounded), e.g. a config file or the tail of a log.

        Secrets in the content are redacted before they leave the host.
        """
        spec = {"path": path, "max_bytes": max_bytes, "offset": offset, "tail_lines": tail_lines}
        return await _run(ctx, probe_id, CommandRequest(kind="file_read", spec=spec, timeout_s=30))

    @registry.tool("legator_write_file", permission=Permission.COMMAND_EXEC, annotations=CHANGES_HOST)
    async def write_file(
        ctx: Context[McpContext],
        probe_id: ProbeId,
        path: Annotated[str, Field(description="Absolute path on the probe's host")],
        content: Annotated[str, Field(max_length=4 * 1024 * 1024, description="The complete new file content")],
        mode: Annotated[int | None, Field(ge=0, le=0o7777, description="Permission bits, e.g. 420 for 0644")] = None,
    ) -> CommandOutcome:
        """Replace a file on a probe atomically, keeping a backup of the old version.

        Needs a probe at remediate level; writes to system paths are high risk. The result's data holds a
        diff summary of what changed.
        """
        spec = {"path": path, "content": content, "mode": mode}
        return await _run(ctx, probe_id, CommandRequest(kind="file_write", spec=spec, timeout_s=60))

    @registry.tool("legator_list_processes", permission=Permission.COMMAND_EXEC, annotations=READS_HOST)
    async def list_processes(
        ctx: Context[McpContext],
        probe_id: ProbeId,
        name_filter: Annotated[
            str | None, Field(max_length=256, description="Only processes whose name contains this")
        ] = None,
    ) -> CommandOutcome:
        """List processes on a probe (pid, user, name, command line, memory) as structured data."""
        spec = {"action": "list", "name_filter": name_filter}
        return await _run(ctx, probe_id, CommandRequest(kind="process", spec=spec, timeout_s=30))

    @registry.tool("legator_systemd", permission=Permission.COMMAND_EXEC, annotations=CHANGES_HOST)
    async def systemd(
        ctx: Context[McpContext],
        probe_id: ProbeId,
        action: Literal["status", "list", "journal", "start", "stop", "restart", "reload", "enable", "disable"],
        unit: Annotated[
            str | None, Field(max_length=256, description="Unit name, e.g. nginx.service (not for list)")
        ] = None,
        lines: Annotated[int, Field(ge=1, le=10000, description="Journal lines to return")] = 100,
    ) -> CommandOutcome:
        """Inspect or control a systemd unit on a probe.

        status, list and journal only read; start/stop/restart/reload/enable/disable change the host and need
        remediate (stop and disable are high risk).
        """
        spec = {"action": action, "unit": unit, "lines": lines}
        return await _run(ctx, probe_id, CommandRequest(kind="systemd", spec=spec, timeout_s=60))

    @registry.tool("legator_kubectl", permission=Permission.COMMAND_EXEC, annotations=CHANGES_HOST)
    async def kubectl(
        ctx: Context[McpContext],
        probe_id: ProbeId,
        args: Annotated[
            list[str], Field(min_length=1, description='kubectl arguments, e.g. ["get", "pods", "-o", "wide"]')
        ],
        namespace: Annotated[str | None, Field(max_length=253)] = None,
        context: Annotated[str | None, Field(max_length=253, description="kubeconfig context")] = None,
        timeout_s: Timeout = 60,
    ) -> CommandOutcome:
        """Run kubectl on a probe that has cluster access.

        Read verbs (get, describe, logs, top, events) need diagnose; changes (apply, scale, delete, drain, …)
        need remediate and deletions are high risk.
        """
        spec = {"argv": args, "namespace": namespace, "context": context}
        return await _run(ctx, probe_id, CommandRequest(kind="kubectl", spec=spec, timeout_s=timeout_s))

    @registry.tool(
        "legator_get_command_result",
        permission=Permission.COMMAND_EXEC,
        annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False),
    )
    async def get_command_result(
        ctx: Context[McpContext],
        request_id: Annotated[str, Field(min_length=1, max_length=64)],
        wait_s: Annotated[float, Field(ge=0, le=300, description="Wait up to this long for a running command")] = 0,
    ) -> CommandOutcome:
        """Fetch a command's status and output by its request_id, optionally waiting for it to finish."""
        services = ctx.request_context.lifespan_context.services
        return outcome(await services.command_flow.result(request_id=request_id, wait_s=wait_s))

    @registry.tool("legator_cancel_command", permission=Permission.COMMAND_EXEC,
                   annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True,
                                               open_world_hint=True))  # fmt: skip
    async def cancel_command(
        ctx: Context[McpContext], request_id: Annotated[str, Field(min_length=1, max_length=64)]
    ) -> CommandOutcome:
        """Cancel a running command; the probe kills its whole process group."""
        services = ctx.request_context.lifespan_context.services
        run = await services.command_flow.cancel(actor=caller(ctx), request_id=request_id)
        return outcome(run)
