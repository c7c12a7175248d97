"""The approval queue: list and inspect requests, approve or deny them."""

from starlette.requests import Request

from legator_mcp.approval.schemas import ApprovalDecide, ApprovalDecision, ApprovalPage, ApprovalQuery, ApprovalRead
from legator_mcp.principal import Permission
from legator_mcp.rest._routing import RouteContext, RouteTable, parse_body, parse_query

__all__ = ["register"]


def register(table: RouteTable) -> None:
    """Add the approval routes."""

    @table.route("GET", "/api/v1/approvals", permission=Permission.APPROVAL_READ,
                 summary="List approval requests, newest first", query=ApprovalQuery, response=ApprovalPage,
                 tag="approvals")  # fmt: skip
    async def list_approvals(request: Request, ctx: RouteContext) -> ApprovalPage:
        query = parse_query(request, ApprovalQuery)
        return await ctx.services.approvals.list(
            status=query.status, probe_id=query.probe_id, limit=query.limit, cursor=query.cursor
        )

    @table.route("GET", "/api/v1/approvals/{id}", permission=Permission.APPROVAL_READ,
                 summary="One approval request: what will run, where, why and the risk", response=ApprovalRead,
                 tag="approvals")  # fmt: skip
    async def get_approval(request: Request, ctx: RouteContext) -> ApprovalRead:
        return await ctx.services.approvals.get(request.path_params["id"])

    @table.route("POST", "/api/v1/approvals/{id}/decide", permission=Permission.APPROVAL_WRITE,
                 summary="Approve or deny a request as the authenticated caller", body=ApprovalDecide,
                 response=ApprovalDecision, tag="approvals")  # fmt: skip
    async def decide(request: Request, ctx: RouteContext) -> ApprovalDecision:
        body = await parse_body(request, ApprovalDecide)
        approval = await ctx.services.approvals.decide(
            approver=ctx.principal, approval_id=request.path_params["id"], decision=body.decision,
            reason=body.reason, note=body.decided_by,
        )  # fmt: skip
        return ApprovalDecision.of(approval)
