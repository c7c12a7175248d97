"""Fleet fan-out: run one command on many probes (by ids, tag or label selector), policy per target."""

from pydantic import Field, model_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from legator_mcp.flows.fan_out import FanOutResult, TargetSelector
from legator_mcp.principal import Permission
from legator_mcp.rest._routing import RouteContext, RouteTable, parse_body, parse_query
from legator_mcp.rest.routes.commands import CommandBody, WaitQuery

__all__ = ["FleetCommandBody", "TagCommandBody", "register"]


class TagCommandBody(CommandBody):
    """A command (typed or shell form) and the fan-out options."""

    max_concurrency: int = Field(default=10, ge=1, le=500, description="Commands in flight at once")
    max_errors: int | None = Field(
        default=None, ge=0, description="Stop scheduling new targets once more than this many failed (wait only)"
    )
    canary: int = Field(default=0, ge=0, description="Run the first N targets first; stop if any fails (wait only)")

    @model_validator(mode="after")
    def _no_request_id(self) -> "TagCommandBody":
        if self.request_id is not None:
            raise ValueError("request_id cannot be set for a fan-out: each target gets its own")
        return self


class FleetCommandBody(TagCommandBody):
    """A command, its targets (ids, tag and/or label selector, ANDed) and the fan-out options."""

    targets: TargetSelector


async def _fan_out(request: Request, ctx: RouteContext, body: TagCommandBody, targets: TargetSelector) -> Response:
    query = parse_query(request, WaitQuery)
    result = await ctx.services.fan_out.run(
        actor=ctx.principal, targets=targets, request=body.to_request(), wait=query.wait,
        max_concurrency=body.max_concurrency, max_errors=body.max_errors, canary=body.canary,
    )  # fmt: skip
    return JSONResponse(result.model_dump(mode="json"), status_code=200 if query.wait else 202)


def register(table: RouteTable) -> None:
    """Add the fan-out routes."""

    @table.route("POST", "/api/v1/fleet/command", permission=Permission.COMMAND_EXEC,
                 summary="Run a command on many probes (policy per target)", body=FleetCommandBody,
                 query=WaitQuery, response=FanOutResult, tag="commands")  # fmt: skip
    async def fleet_command(request: Request, ctx: RouteContext) -> Response:
        body = await parse_body(request, FleetCommandBody)
        return await _fan_out(request, ctx, body, body.targets)

    @table.route("POST", "/api/v1/fleet/by-tag/{tag}/command", permission=Permission.COMMAND_EXEC,
                 summary="Run a command on every probe with a tag (policy per target)", body=TagCommandBody,
                 query=WaitQuery, response=FanOutResult, tag="commands")  # fmt: skip
    async def tag_command(request: Request, ctx: RouteContext) -> Response:
        body = await parse_body(request, TagCommandBody)
        return await _fan_out(request, ctx, body, TargetSelector(tag=request.path_params["tag"]))
