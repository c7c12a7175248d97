"""Fleet fan-out tool: run one shell command on many probes, policy per target, with progress and cancellation."""

from typing import Annotated, Any

from mcp.server.mcpserver import Context
from pydantic import Field

from legator_mcp.flows.fan_out import FanOutResult, TargetResult, TargetSelector
from legator_mcp.flows.run_command import CommandRequest
from legator_mcp.mcp._context import McpContext
from legator_mcp.mcp._errors import caller
from legator_mcp.mcp._registry import McpRegistry
from legator_mcp.mcp.tools.commands import CHANGES_HOST, MCP_OUTPUT_BYTES
from legator_mcp.principal import Permission

__all__ = ["register"]

_PER_HOST_OUTPUT_BYTES = 8 * 1024
"""Output a fan-out result carries per host and stream; the full output is in legator_get_command_result."""


def _cap(text: str, limit: int) -> tuple[str, bool]:
    raw = text.encode()
    if len(raw) <= limit:
        return text, False
    return raw[:limit].decode(errors="ignore"), True


def _shape(result: FanOutResult) -> FanOutResult:
    """Cap each host's output so the whole reply stays readable (at most ~MCP_OUTPUT_BYTES per stream overall)."""
    limit = max(256, min(_PER_HOST_OUTPUT_BYTES, MCP_OUTPUT_BYTES // max(1, len(result.results))))
    shaped: list[TargetResult] = []
    for item in result.results:
        stdout, cut_out = _cap(item.stdout, limit)
        stderr, cut_err = _cap(item.stderr, limit)
        shaped.append(
            item.model_copy(
                update={"stdout": stdout, "stderr": stderr, "truncated": item.truncated or cut_out or cut_err}
            )
        )
    return result.model_copy(update={"results": shaped})


def register(registry: McpRegistry) -> None:
    """Add the fan-out tool."""

    @registry.tool("legator_run_fleet_command", permission=Permission.COMMAND_EXEC, annotations=CHANGES_HOST)
    async def run_fleet_command(
        ctx: Context[McpContext],
        command: Annotated[
            str,
            Field(min_length=1, max_length=65536, description="A program name, or a shell script when args is omitted"),
        ],
        args: Annotated[
            list[str] | None, Field(description="Arguments; when given, command runs directly without a shell")
        ] = None,
        tag: Annotated[str | None, Field(min_length=1, max_length=64, description="Every probe with this tag")] = None,
        probe_ids: Annotated[list[str] | None, Field(min_length=1, max_length=10000)] = None,
        selector: Annotated[
            dict[str, str] | None, Field(description="Label key=value pairs a probe must all carry")
        ] = None,
        max_concurrency: Annotated[int, Field(ge=1, le=500, description="Commands in flight at once")] = 10,
        max_errors: Annotated[
            int | None, Field(ge=0, description="Stop starting new hosts once more than this many failed")
        ] = None,
        canary: Annotated[int, Field(ge=0, description="Run on the first N hosts first; stop if any fails")] = 0,
        timeout_s: Annotated[float, Field(gt=0, le=3600, description="Seconds before a probe kills it")] = 30,
    ) -> FanOutResult:
        """Run one shell command on many probes (by tag, probe_ids and/or label selector) and wait for all results.

        Give at least one of tag, probe_ids, selector (they are combined with AND). Policy is evaluated on each
        host: allowed hosts run; hosts needing approval are queued together under ONE approval_id (a different
        person approves it; the queued hosts then run once); denied hosts are reported with status "denied";
        disconnected hosts are reported as "offline". Use max_errors=0 or a canary batch for risky changes:
        hosts never started are reported as "not_run". Output per host is cut; fetch a host's full output with
        legator_get_command_result and its request_id.
        """
        services = ctx.request_context.lifespan_context.services
        spec: dict[str, Any] = {"argv": [command, *args]} if args is not None else {"script": command}
        failed = 0

        async def on_result(result: TargetResult, done: int, total: int) -> None:
            nonlocal failed
            failed += int(result.failed)
            await ctx.report_progress(done, total, f"{done}/{total} hosts done, {failed} failed")

        result = await services.fan_out.run(
            actor=caller(ctx),
            targets=TargetSelector(probe_ids=probe_ids, tag=tag, selector=selector),
            request=CommandRequest(kind="shell", spec=spec, timeout_s=timeout_s),
            wait=True,
            max_concurrency=max_concurrency,
            max_errors=max_errors,
            canary=canary,
            on_result=on_result,
        )
        return _shape(result)
