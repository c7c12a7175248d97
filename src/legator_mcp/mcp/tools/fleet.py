"""Fleet tools and resources for the model: probes, their health and inventory, fleet questions and tags."""

import contextvars
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from legator_mcp.app_context import AppContext
from legator_mcp.fleet.schemas import (
    MAX_TAGS,
    FleetQueryAnswer,
    HealthRead,
    InventoryRead,
    ProbePage,
    ProbeRead,
    ProbeTagsRead,
    ProbeTagsUpdate,
    Tag,
)
from legator_mcp.mcp._context import McpContext
from legator_mcp.mcp._errors import caller, guard_resource
from legator_mcp.mcp._registry import McpRegistry
from legator_mcp.principal import Permission

__all__ = ["register", "static_resource"]

READ_ONLY = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)
SET_TAGS = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False)

RESOURCE_PROBE_CAP = 500
"""Most probes listed in ``legator://fleet/inventory`` (its aggregates still cover the whole fleet)."""

ProbeId = Annotated[str, Field(min_length=1, max_length=64, description="The probe's id, e.g. prb-1a2b3c4d")]


class ProbeInfo(BaseModel):
    """A probe's state together with its current health verdict."""

    probe: ProbeRead
    health: HealthRead


def _services(ctx: Context[McpContext]) -> AppContext:
    return ctx.request_context.lifespan_context.services


# -- static resources ------------------------------------------------------------------------------------------
# The SDK gives static (template-free) resources no Context, but the permission guard needs the caller. A
# middleware remembers the request being served so a static resource can build its Context from it.

_resource_request: contextvars.ContextVar[ServerRequestContext[Any, Any] | None] = contextvars.ContextVar(
    "legator_mcp_resource_request", default=None
)


class _RememberResourceRequest:
    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        if ctx.method != "resources/read":
            return await call_next(ctx)
        token = _resource_request.set(ctx)
        try:
            return await call_next(ctx)
        finally:
            _resource_request.reset(token)


def _static_resource(
    registry: McpRegistry, uri: str, *, permission: Permission, name: str, description: str
) -> Callable[[Callable[[Context[McpContext]], Awaitable[str]]], None]:
    def decorator(fn: Callable[[Context[McpContext]], Awaitable[str]]) -> None:
        guarded = guard_resource(uri, permission)(fn)

        async def read() -> str:
            request = _resource_request.get()
            if request is None:  # pragma: no cover - the middleware is installed by register()
                raise ResourceError(f"internal_error: no request context for {uri}")
            return await guarded(Context(request_context=request, mcp_server=registry.server))

        registry.server.resource(uri, name=name, description=description, mime_type="application/json")(read)
        registry.resource_permissions[uri] = permission

    return decorator


static_resource = _static_resource
"""Register a template-free resource that still sees its caller (other tool modules use it too)."""


def register(registry: McpRegistry) -> None:
    """Add the fleet tools and resources."""
    registry.server.middleware.append(_RememberResourceRequest())

    @registry.tool("legator_list_probes", permission=Permission.FLEET_READ, annotations=READ_ONLY)
    async def list_probes(
        ctx: Context[McpContext],
        status: Annotated[
            Literal["pending", "online", "degraded", "offline", "all"] | None,
            Field(description="Only probes in this state; all (the default) for every probe"),
        ] = None,
        tag: Annotated[Tag | None, Field(description="Only probes carrying this tag, e.g. prod or env=prod")] = None,
        limit: Annotated[int, Field(ge=1, le=200, description="Page size")] = 50,
        cursor: Annotated[str | None, Field(description="next_cursor from a previous page")] = None,
    ) -> ProbePage:
        """List the fleet's probes with their status, tags, policy level and health score.

        Pages are ordered by probe id; pass next_cursor back as cursor to read on. Narrow large fleets with
        status or tag; `total` says how many match in all.
        """
        return await _services(ctx).fleet.list_probes(
            status=None if status is None or status == "all" else status,
            tag=None if tag is None else tag.lower(),
            limit=limit,
            cursor=cursor,
        )

    @registry.tool("legator_probe_info", permission=Permission.FLEET_READ, annotations=READ_ONLY)
    async def probe_info(ctx: Context[McpContext], probe_id: ProbeId) -> ProbeInfo:
        """Get one probe's full state: host, status, policy level, tags, key generation and health with reasons.

        Use legator_get_inventory for its hardware, packages and services.
        """
        fleet = _services(ctx).fleet
        return ProbeInfo(probe=await fleet.get_probe(probe_id), health=await fleet.health(probe_id))

    @registry.tool("legator_get_inventory", permission=Permission.FLEET_READ, annotations=READ_ONLY)
    async def get_inventory(
        ctx: Context[McpContext],
        probe_id: ProbeId,
        max_items: Annotated[int, Field(ge=1, le=1000, description="Most entries per list section")] = 50,
    ) -> InventoryRead:
        """Get a probe's system inventory: OS, kernel, CPUs, memory, disks, interfaces, packages, services, users.

        Each list is cut to max_items; `truncated` names the cut sections with their full sizes (raise
        max_items to see more). Fails with not_found before the probe's first inventory report.
        """
        return await _services(ctx).fleet.get_inventory(probe_id, max_items=max_items)

    @registry.tool("legator_probe_health", permission=Permission.FLEET_READ, annotations=READ_ONLY)
    async def probe_health(ctx: Context[McpContext], probe_id: ProbeId) -> HealthRead:
        """Get a probe's health: a 0-100 score, a verdict (healthy, degraded, critical, unknown) and its reasons.

        Each reason names the check (load per CPU, memory, disk, heartbeat), the measured value and the
        threshold it crossed; metrics come from the probe's last heartbeat.
        """
        return await _services(ctx).fleet.health(probe_id)

    @registry.tool("legator_fleet_query", permission=Permission.FLEET_READ, annotations=READ_ONLY)
    async def fleet_query(
        ctx: Context[McpContext],
        question: Annotated[str, Field(min_length=1, max_length=1000, description="A question about the fleet")],
    ) -> FleetQueryAnswer:
        """Answer a question about the fleet from live data, e.g. "which prod hosts are offline?".

        Returns totals by status, tag counts, CPU and RAM totals, and the probes whose hostname, tag or status
        the question names (at most 50, with matches_total). It matches words; it does not interpret prose.
        """
        return await _services(ctx).fleet.fleet_query(question)

    @registry.tool("legator_set_probe_tags", permission=Permission.FLEET_WRITE, annotations=SET_TAGS)
    async def set_probe_tags(
        ctx: Context[McpContext],
        probe_id: ProbeId,
        tags: Annotated[list[Tag], Field(max_length=MAX_TAGS, description="The complete new tag list")],
    ) -> ProbeTagsRead:
        """Replace a probe's tags with exactly this list (pass [] to clear them).

        Tags are lower-cased and de-duplicated. Read the current tags with legator_probe_info first if you
        mean to add one rather than replace them all. The change is audited.
        """
        normalised = ProbeTagsUpdate(tags=tags).tags
        return await _services(ctx).fleet.set_tags(actor=caller(ctx), probe_id=probe_id, tags=normalised)

    @_static_resource(
        registry, "legator://fleet/summary", permission=Permission.FLEET_READ, name="Fleet Summary",
        description="Fleet-wide status counts, tags, connected probes and pending approval totals",
    )  # fmt: skip
    async def fleet_summary(ctx: Context[McpContext]) -> str:
        return (await _services(ctx).fleet.summary()).model_dump_json()

    @_static_resource(
        registry, "legator://fleet/inventory", permission=Permission.FLEET_READ, name="Fleet Inventory",
        description=(
            f"Aggregated fleet inventory: the first {RESOURCE_PROBE_CAP} probes by id (truncated=true when there "
            "are more; narrow with legator_list_probes) and aggregates over every probe"
        ),
    )  # fmt: skip
    async def fleet_inventory(ctx: Context[McpContext]) -> str:
        return (await _services(ctx).fleet.fleet_inventory(limit=RESOURCE_PROBE_CAP)).model_dump_json()

    @registry.resource(
        "legator://probes/{probe_id}", permission=Permission.FLEET_READ, name="Probe",
        description="One probe's state (status, tags, policy level, health score)",
    )  # fmt: skip
    async def probe_resource(probe_id: str, ctx: Context[McpContext]) -> str:
        return (await _services(ctx).fleet.get_probe(probe_id)).model_dump_json()

    @registry.resource(
        "legator://probes/{probe_id}/inventory", permission=Permission.FLEET_READ, name="Probe Inventory",
        description="One probe's last reported inventory (lists capped at 200 entries each)",
    )  # fmt: skip
    async def probe_inventory_resource(probe_id: str, ctx: Context[McpContext]) -> str:
        return (await _services(ctx).fleet.get_inventory(probe_id, max_items=200)).model_dump_json()
