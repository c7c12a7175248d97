"""Registration tokens, probe registration, probes and fleet roll-ups."""

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.requests import Request

from legator_mcp._duration import parse_duration
from legator_mcp.fleet.schemas import (
    CleanupResult,
    FleetInventory,
    FleetSummary,
    HealthRead,
    InventoryRead,
    KeyRotationRead,
    ProbeDeleted,
    ProbePage,
    ProbeQuery,
    ProbeRead,
    ProbeStatus,
    ProbeTagsRead,
    ProbeTagsUpdate,
    RegistrationRequest,
    RegistrationResult,
    TagCounts,
    TokenCreate,
    TokenCreated,
    TokenList,
)
from legator_mcp.principal import Permission
from legator_mcp.rest._routing import RouteContext, RouteTable, parse_body, parse_query

__all__ = ["register"]


def _blank_to_none(value: Any) -> Any:
    return None if value == "" else value


class FleetInventoryQuery(BaseModel):
    """Filters for the fleet inventory; ``limit`` caps the rows listed (aggregates cover every match)."""

    model_config = ConfigDict(extra="forbid")

    tag: Annotated[str, Field(max_length=64)] | None = None
    status: ProbeStatus | None = None
    limit: int = Field(default=1000, ge=1, le=10_000)

    _blank = field_validator("tag", "status", mode="before")(_blank_to_none)

    @field_validator("tag")
    @classmethod
    def _lower(cls, value: str | None) -> str | None:
        return None if value is None else value.strip().lower()


class CleanupQuery(BaseModel):
    """``older_than``: remove probes offline longer than this duration (default 1h)."""

    model_config = ConfigDict(extra="forbid")

    older_than: str = Field(default="1h", description="A duration such as 90m, 1h or 7d")

    @field_validator("older_than")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration(value)
        return value


class TagPath(BaseModel):
    """The tag in ``/fleet/by-tag/{tag}``."""

    tag: Annotated[str, Field(min_length=1, max_length=64)]

    @field_validator("tag")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.strip().lower()


class TagProbes(BaseModel):
    """Every probe carrying a tag."""

    tag: str
    probes: list[ProbeRead]
    total: int


def register(table: RouteTable) -> None:
    """Add the fleet routes."""

    @table.route("POST", "/api/v1/tokens", permission=Permission.FLEET_WRITE,
                 summary="Issue a registration token for new probes (shown once)", body=TokenCreate,
                 response=TokenCreated, status=201, tag="fleet")  # fmt: skip
    async def create_token(request: Request, ctx: RouteContext) -> TokenCreated:
        body = await parse_body(request, TokenCreate)
        return await ctx.services.fleet.create_token(actor=ctx.principal, request=body, base_url=str(request.base_url))

    @table.route("GET", "/api/v1/tokens", permission=Permission.ADMIN, summary="List registration tokens",
                 response=TokenList, tag="fleet")  # fmt: skip
    async def list_tokens(request: Request, ctx: RouteContext) -> TokenList:
        return await ctx.services.fleet.list_tokens()

    @table.route("POST", "/api/v1/register", permission=None, public=True,
                 summary="Register a probe with a registration token", body=RegistrationRequest,
                 response=RegistrationResult, status=201, tag="fleet")  # fmt: skip
    async def register_probe(request: Request, ctx: RouteContext) -> RegistrationResult:
        # Public (the token is the credential), so limit by client address instead of by principal.
        ctx.services.rate_limiter.check(f"register:{request.client.host if request.client else 'unknown'}")
        body = await parse_body(request, RegistrationRequest)
        return await ctx.services.fleet.register(request=body)

    @table.route("GET", "/api/v1/probes", permission=Permission.FLEET_READ,
                 summary="List probes (filter by status and tag; cursor-paged)", query=ProbeQuery,
                 response=ProbePage, tag="fleet")  # fmt: skip
    async def list_probes(request: Request, ctx: RouteContext) -> ProbePage:
        query = parse_query(request, ProbeQuery)
        return await ctx.services.fleet.list_probes(
            status=query.status, tag=query.tag, limit=query.limit, cursor=query.cursor
        )

    @table.route("GET", "/api/v1/probes/{id}", permission=Permission.FLEET_READ, summary="One probe's state",
                 response=ProbeRead, tag="fleet")  # fmt: skip
    async def get_probe(request: Request, ctx: RouteContext) -> ProbeRead:
        return await ctx.services.fleet.get_probe(request.path_params["id"])

    @table.route("DELETE", "/api/v1/probes/{id}", permission=Permission.FLEET_WRITE,
                 summary="Delete a probe, revoke its credential and disconnect it", response=ProbeDeleted,
                 tag="fleet")  # fmt: skip
    async def delete_probe(request: Request, ctx: RouteContext) -> ProbeDeleted:
        return await ctx.services.fleet.delete_probe(actor=ctx.principal, probe_id=request.path_params["id"])

    @table.route("GET", "/api/v1/probes/{id}/health", permission=Permission.FLEET_READ,
                 summary="A probe's health score and the reasons behind it", response=HealthRead,
                 tag="fleet")  # fmt: skip
    async def probe_health(request: Request, ctx: RouteContext) -> HealthRead:
        return await ctx.services.fleet.health(request.path_params["id"])

    @table.route("GET", "/api/v1/probes/{id}/inventory", permission=Permission.FLEET_READ,
                 summary="A probe's last reported inventory", response=InventoryRead, tag="fleet")  # fmt: skip
    async def probe_inventory(request: Request, ctx: RouteContext) -> InventoryRead:
        return await ctx.services.fleet.get_inventory(request.path_params["id"])

    @table.route("PUT", "/api/v1/probes/{id}/tags", permission=Permission.FLEET_WRITE,
                 summary="Replace a probe's tags", body=ProbeTagsUpdate, response=ProbeTagsRead,
                 tag="fleet")  # fmt: skip
    async def set_tags(request: Request, ctx: RouteContext) -> ProbeTagsRead:
        body = await parse_body(request, ProbeTagsUpdate)
        return await ctx.services.fleet.set_tags(
            actor=ctx.principal, probe_id=request.path_params["id"], tags=body.tags
        )

    @table.route("POST", "/api/v1/probes/{id}/rotate-key", permission=Permission.FLEET_WRITE,
                 summary="Rotate a probe's command-signing key", response=KeyRotationRead, tag="fleet")  # fmt: skip
    async def rotate_key(request: Request, ctx: RouteContext) -> KeyRotationRead:
        return await ctx.services.fleet.rotate_key(actor=ctx.principal, probe_id=request.path_params["id"])

    @table.route("GET", "/api/v1/fleet/summary", permission=Permission.FLEET_READ,
                 summary="Fleet status counts, tags and connected probes", response=FleetSummary,
                 tag="fleet")  # fmt: skip
    async def summary(request: Request, ctx: RouteContext) -> FleetSummary:
        return await ctx.services.fleet.summary()

    @table.route("GET", "/api/v1/fleet/inventory", permission=Permission.FLEET_READ,
                 summary="Inventory rows and aggregates of the fleet", query=FleetInventoryQuery,
                 response=FleetInventory, tag="fleet")  # fmt: skip
    async def fleet_inventory(request: Request, ctx: RouteContext) -> FleetInventory:
        query = parse_query(request, FleetInventoryQuery)
        return await ctx.services.fleet.fleet_inventory(tag=query.tag, status=query.status, limit=query.limit)

    @table.route("GET", "/api/v1/fleet/tags", permission=Permission.FLEET_READ, summary="Probe counts per tag",
                 response=TagCounts, tag="fleet")  # fmt: skip
    async def tags(request: Request, ctx: RouteContext) -> TagCounts:
        return await ctx.services.fleet.tags()

    @table.route("GET", "/api/v1/fleet/by-tag/{tag}", permission=Permission.FLEET_READ,
                 summary="Every probe carrying a tag", response=TagProbes, tag="fleet")  # fmt: skip
    async def by_tag(request: Request, ctx: RouteContext) -> TagProbes:
        tag = TagPath.model_validate({"tag": request.path_params["tag"]}).tag
        probes = await ctx.services.fleet.by_tag(tag)
        return TagProbes(tag=tag, probes=probes, total=len(probes))

    @table.route("POST", "/api/v1/fleet/cleanup", permission=Permission.FLEET_WRITE,
                 summary="Delete probes offline longer than older_than (default 1h)", query=CleanupQuery,
                 response=CleanupResult, tag="fleet")  # fmt: skip
    async def cleanup(request: Request, ctx: RouteContext) -> CleanupResult:
        query = parse_query(request, CleanupQuery)
        return await ctx.services.fleet.cleanup(actor=ctx.principal, older_than=parse_duration(query.older_than))
