"""Audit search and chain verification for the model."""

from datetime import datetime
from typing import Annotated

from mcp.server.mcpserver import Context
from mcp.types import ToolAnnotations
from pydantic import Field

from legator_mcp.audit.schemas import AuditPage, AuditQuery, AuditVerification
from legator_mcp.mcp._context import McpContext
from legator_mcp.mcp._registry import McpRegistry
from legator_mcp.principal import Permission

__all__ = ["register"]

READ_ONLY = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)


def register(registry: McpRegistry) -> None:
    """Add the audit tools."""

    @registry.tool("legator_search_audit", permission=Permission.AUDIT_READ, annotations=READ_ONLY)
    async def search_audit(
        ctx: Context[McpContext],
        probe_id: Annotated[str | None, Field(description="Only events about this probe")] = None,
        type: Annotated[str | None, Field(description="Event type, e.g. command.sent or auth.key_created")] = None,
        actor: Annotated[str | None, Field(description="Actor string, e.g. api_key:ops-bot")] = None,
        since: Annotated[datetime | None, Field(description="Only events at or after this time (RFC 3339)")] = None,
        until: Annotated[datetime | None, Field(description="Only events before this time (RFC 3339)")] = None,
        limit: Annotated[int, Field(ge=1, le=200, description="Page size")] = 50,
        cursor: Annotated[str | None, Field(description="next_cursor from a previous page")] = None,
    ) -> AuditPage:
        """Search the audit log, newest first, to see who did what to which probe and when.

        Results are paged: pass next_cursor back as cursor to read further. Secrets are already redacted.
        """
        query = AuditQuery(
            type=type, actor=actor, probe_id=probe_id, since=since, until=until, limit=limit, cursor=cursor
        )
        return await ctx.request_context.lifespan_context.services.audit.search(query)

    @registry.tool("legator_verify_audit", permission=Permission.AUDIT_READ, annotations=READ_ONLY)
    async def verify_audit(ctx: Context[McpContext]) -> AuditVerification:
        """Check the audit log's hash chain and report the first broken link, if any.

        A broken link means a stored event was altered or removed outside Legator.
        """
        return await ctx.request_context.lifespan_context.services.audit.verify()
