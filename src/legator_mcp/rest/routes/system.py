"""Liveness, readiness, version, metrics and the OpenAPI document."""

from typing import Literal

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from legator_mcp.principal import Permission
from legator_mcp.rest._routing import RouteContext, RouteTable

__all__ = ["register"]


class VersionRead(BaseModel):
    """The running build."""

    version: str
    name: Literal["legator"] = "legator"


class ReadyRead(BaseModel):
    """Readiness: the database answers and the schema is current."""

    status: Literal["ready"]
    database: str


def register(table: RouteTable) -> None:
    """Add the system routes."""

    @table.route("GET", "/healthz", permission=None, public=True, summary="Liveness probe", tag="system",
                 response_media_type="text/plain")  # fmt: skip
    async def healthz(request: Request, ctx: RouteContext) -> Response:
        return PlainTextResponse("ok\n")

    @table.route("GET", "/readyz", permission=None, public=True, summary="Readiness: the database answers",
                 response=ReadyRead, tag="system")  # fmt: skip
    async def readyz(request: Request, ctx: RouteContext) -> ReadyRead:
        await ctx.services.database.ping()
        return ReadyRead(status="ready", database=ctx.services.database.dialect)

    @table.route("GET", "/version", permission=None, public=True, summary="Build version", response=VersionRead,
                 tag="system")  # fmt: skip
    async def version(request: Request, ctx: RouteContext) -> VersionRead:
        return VersionRead(version=ctx.services.version)

    async def metrics(request: Request, ctx: RouteContext) -> Response:
        return Response(generate_latest(ctx.services.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    table.route("GET", "/metrics", permission=Permission.FLEET_READ, summary="Prometheus metrics", tag="system",
                response_media_type="text/plain")(metrics)  # fmt: skip
    table.route("GET", "/api/v1/metrics", permission=Permission.FLEET_READ, summary="Prometheus metrics",
                tag="system", response_media_type="text/plain")(metrics)  # fmt: skip

    @table.route("GET", "/openapi.json", permission=None, public=True, summary="This API's OpenAPI 3.1 document",
                 tag="system")  # fmt: skip
    async def openapi(request: Request, ctx: RouteContext) -> Response:
        return JSONResponse(request.app.state.openapi)
