"""Policy templates: list, create, change and delete them, apply one to a probe, and dry-run an evaluation."""

from starlette.requests import Request

from legator_mcp.flows.run_command import CommandRequest
from legator_mcp.policy.schemas import (
    PolicyApplied,
    PolicyDecision,
    PolicyEvaluate,
    PolicyTemplateCreate,
    PolicyTemplateList,
    PolicyTemplateRead,
    PolicyTemplateUpdate,
)
from legator_mcp.principal import Permission
from legator_mcp.rest._routing import RouteContext, RouteTable, parse_body

__all__ = ["register"]


def register(table: RouteTable) -> None:
    """Add the policy routes."""

    @table.route("GET", "/api/v1/policies", permission=Permission.FLEET_READ,
                 summary="List policy templates, built-ins first", response=PolicyTemplateList,
                 tag="policies")  # fmt: skip
    async def list_policies(request: Request, ctx: RouteContext) -> PolicyTemplateList:
        return await ctx.services.policy.list_templates()

    @table.route("POST", "/api/v1/policies", permission=Permission.FLEET_WRITE,
                 summary="Create a custom policy template", body=PolicyTemplateCreate, response=PolicyTemplateRead,
                 status=201, tag="policies")  # fmt: skip
    async def create_policy(request: Request, ctx: RouteContext) -> PolicyTemplateRead:
        body = await parse_body(request, PolicyTemplateCreate)
        return await ctx.services.policy.create_template(actor=ctx.principal, request=body)

    @table.route("POST", "/api/v1/policies/evaluate", permission=Permission.FLEET_READ,
                 summary="What would happen if this command ran on that probe (nothing runs)", body=PolicyEvaluate,
                 response=PolicyDecision, tag="policies")  # fmt: skip
    async def evaluate_policy(request: Request, ctx: RouteContext) -> PolicyDecision:
        body = await parse_body(request, PolicyEvaluate)
        kind, spec = body.as_command()
        return await ctx.services.command_flow.evaluate(
            actor=ctx.principal, probe_id=body.probe_id, request=CommandRequest(kind=kind, spec=spec)
        )

    @table.route("GET", "/api/v1/policies/{id}", permission=Permission.FLEET_READ, summary="One policy template",
                 response=PolicyTemplateRead, tag="policies")  # fmt: skip
    async def get_policy(request: Request, ctx: RouteContext) -> PolicyTemplateRead:
        return await ctx.services.policy.get_template(request.path_params["id"])

    @table.route("PUT", "/api/v1/policies/{id}", permission=Permission.FLEET_WRITE,
                 summary="Replace a custom policy template (built-ins: 409)", body=PolicyTemplateUpdate,
                 response=PolicyTemplateRead, tag="policies")  # fmt: skip
    async def update_policy(request: Request, ctx: RouteContext) -> PolicyTemplateRead:
        body = await parse_body(request, PolicyTemplateUpdate)
        return await ctx.services.policy.update_template(
            actor=ctx.principal, template_id=request.path_params["id"], request=body
        )

    @table.route("DELETE", "/api/v1/policies/{id}", permission=Permission.FLEET_WRITE,
                 summary="Delete a custom policy template no probe uses (built-ins: 409)", status=204,
                 tag="policies")  # fmt: skip
    async def delete_policy(request: Request, ctx: RouteContext) -> None:
        await ctx.services.policy.delete_template(actor=ctx.principal, template_id=request.path_params["id"])

    @table.route("POST", "/api/v1/probes/{id}/apply-policy/{policyId}", permission=Permission.FLEET_WRITE,
                 summary="Apply a policy template to a probe and push it (signed) when connected",
                 response=PolicyApplied, tag="policies")  # fmt: skip
    async def apply_policy(request: Request, ctx: RouteContext) -> PolicyApplied:
        return await ctx.services.policy.apply(
            actor=ctx.principal, probe_id=request.path_params["id"], policy_id=request.path_params["policyId"]
        )
