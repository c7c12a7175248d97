"""Approval queue tools: list and inspect requests that wait for a human, and decide them."""

from typing import Annotated, Literal

from mcp.server.mcpserver import Context
from mcp.types import ToolAnnotations
from pydantic import Field

from legator_mcp.approval.schemas import ApprovalDecision, ApprovalPage, ApprovalRead, ApprovalStatus
from legator_mcp.mcp._context import McpContext
from legator_mcp.mcp._errors import caller
from legator_mcp.mcp._registry import McpRegistry
from legator_mcp.principal import Permission

__all__ = ["register"]

READ_ONLY = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)
# Approving releases a queued command to run on real hosts, so the decision itself counts as destructive.
DECIDES = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=True)

ApprovalId = Annotated[str, Field(min_length=1, max_length=64, description="The approval_id of the request")]


def register(registry: McpRegistry) -> None:
    """Add the approval tools."""

    @registry.tool("legator_list_approvals", permission=Permission.APPROVAL_READ, annotations=READ_ONLY)
    async def list_approvals(
        ctx: Context[McpContext],
        status: Annotated[ApprovalStatus | None, Field(description="Only requests in this state, e.g. pending")] = None,
        probe_id: Annotated[
            str | None, Field(min_length=1, max_length=64, description="Only requests for this probe")
        ] = None,
        limit: Annotated[int, Field(ge=1, le=200, description="Page size")] = 50,
        cursor: Annotated[str | None, Field(max_length=200, description="next_cursor from a previous page")] = None,
    ) -> ApprovalPage:
        """List approval requests, newest first, with how many still wait for a decision.

        Each request shows what will run (secrets redacted), on which probes, why policy queued it and the
        risk. Pass next_cursor back as cursor to read further.
        """
        services = ctx.request_context.lifespan_context.services
        return await services.approvals.list(status=status, probe_id=probe_id, limit=limit, cursor=cursor)

    @registry.tool("legator_get_approval", permission=Permission.APPROVAL_READ, annotations=READ_ONLY)
    async def get_approval(ctx: Context[McpContext], approval_id: ApprovalId) -> ApprovalRead:
        """Show one approval request: the exact command, its targets, the policy rationale, risk and votes.

        Use it to show a human what would run before they decide, and to follow a request you queued.
        """
        return await ctx.request_context.lifespan_context.services.approvals.get(approval_id)

    @registry.tool("legator_decide_approval", permission=Permission.APPROVAL_WRITE, annotations=DECIDES)
    async def decide_approval(
        ctx: Context[McpContext],
        approval_id: ApprovalId,
        decision: Literal["approved", "denied"],
        reason: Annotated[str | None, Field(max_length=2000, description="Why, recorded in the audit log")] = None,
        decided_by: Annotated[
            str | None, Field(max_length=200, description="Optional note; you are recorded as the approver")
        ] = None,
    ) -> ApprovalDecision:
        """Approve or deny a pending approval request; an approved command then runs, exactly once.

        Only decide on a human's explicit instruction: first show them the request (legator_get_approval) —
        the command, the probes, the risk and why it was queued. Never approve a request you queued yourself;
        it is refused with self_approval. Denying your own request withdraws it. Some requests need several
        distinct approvers, so status may stay "pending" after your vote.
        """
        services = ctx.request_context.lifespan_context.services
        approval = await services.approvals.decide(
            approver=caller(ctx), approval_id=approval_id, decision=decision, reason=reason, note=decided_by
        )
        return ApprovalDecision.of(approval)
