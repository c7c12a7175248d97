"""Audit search, export, verification and retention purge."""

import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.requests import Request
from starlette.responses import StreamingResponse

from legator_mcp._duration import parse_duration
from legator_mcp.audit.schemas import CSV_COLUMNS, AuditPage, AuditQuery, AuditVerification, PurgeResult
from legator_mcp.principal import Permission
from legator_mcp.rest._routing import RouteContext, RouteTable, parse_query

__all__ = ["register"]


class PurgeQuery(BaseModel):
    """``older_than``: a duration such as ``30d`` or ``720h``."""

    model_config = ConfigDict(extra="forbid")

    older_than: str = Field(description="Delete events older than this duration, e.g. 30d")

    @field_validator("older_than")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration(value)
        return value


def _filename(ext: str) -> str:
    return f"legator-audit-{datetime.now(UTC):%Y%m%d}.{ext}"


def register(table: RouteTable) -> None:
    """Add the audit routes."""

    @table.route("GET", "/api/v1/audit", permission=Permission.AUDIT_READ, summary="Search audit events",
                 query=AuditQuery, response=AuditPage, tag="audit")  # fmt: skip
    async def search(request: Request, ctx: RouteContext) -> AuditPage:
        return await ctx.services.audit.search(parse_query(request, AuditQuery))

    @table.route("GET", "/api/v1/audit/verify", permission=Permission.AUDIT_READ,
                 summary="Verify the audit hash chain", response=AuditVerification, tag="audit")  # fmt: skip
    async def verify(request: Request, ctx: RouteContext) -> AuditVerification:
        return await ctx.services.audit.verify()

    @table.route("GET", "/api/v1/audit/export", permission=Permission.AUDIT_READ,
                 summary="Export audit events as JSON lines", query=AuditQuery, tag="audit",
                 response_media_type="application/x-ndjson")  # fmt: skip
    async def export_jsonl(request: Request, ctx: RouteContext) -> StreamingResponse:
        query = parse_query(request, AuditQuery)

        async def lines() -> AsyncIterator[str]:
            async for event in ctx.services.audit.export(query):
                yield json.dumps(event.model_dump(mode="json"), ensure_ascii=False) + "\n"

        return StreamingResponse(
            lines(), media_type="application/x-ndjson",
            headers={"content-disposition": f'attachment; filename="{_filename("jsonl")}"'},
        )  # fmt: skip

    @table.route("GET", "/api/v1/audit/export/csv", permission=Permission.AUDIT_READ,
                 summary="Export audit events as CSV", query=AuditQuery, tag="audit",
                 response_media_type="text/csv")  # fmt: skip
    async def export_csv(request: Request, ctx: RouteContext) -> StreamingResponse:
        query = parse_query(request, AuditQuery)

        async def rows() -> AsyncIterator[str]:
            buffer = io.StringIO()
            writer = csv.writer(buffer)
            writer.writerow(CSV_COLUMNS)
            async for event in ctx.services.audit.export(query):
                row = event.csv_row()
                writer.writerow([row[column] for column in CSV_COLUMNS])
                if buffer.tell() > 64 * 1024:
                    yield buffer.getvalue()
                    buffer.seek(0)
                    buffer.truncate()
            yield buffer.getvalue()

        return StreamingResponse(
            rows(), media_type="text/csv; charset=utf-8",
            headers={"content-disposition": f'attachment; filename="{_filename("csv")}"'},
        )  # fmt: skip

    @table.route("DELETE", "/api/v1/audit/purge", permission=Permission.ADMIN,
                 summary="Delete events older than a duration, keeping the chain verifiable", query=PurgeQuery,
                 response=PurgeResult, tag="audit")  # fmt: skip
    async def purge(request: Request, ctx: RouteContext) -> PurgeResult:
        query = parse_query(request, PurgeQuery)
        return await ctx.services.audit.purge(older_than=parse_duration(query.older_than), actor=ctx.principal)
