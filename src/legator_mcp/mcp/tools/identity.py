"""Who am I: lets a model check its own permissions before planning."""

from mcp.server.mcpserver import Context
from mcp.types import ToolAnnotations

from legator_mcp.auth.schemas import MeRead
from legator_mcp.mcp._context import McpContext
from legator_mcp.mcp._errors import caller
from legator_mcp.mcp._registry import McpRegistry
from legator_mcp.principal import Permission

__all__ = ["register"]


def register(registry: McpRegistry) -> None:
    """Add the identity tool."""

    @registry.tool(
        "legator_whoami",
        permission=Permission.FLEET_READ,
        annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False),
    )
    async def whoami(ctx: Context[McpContext]) -> MeRead:
        """Report which identity this MCP session acts as and the permissions it holds.

        Use it before planning changes: tools that need a permission you lack will be refused.
        """
        p = caller(ctx)
        return MeRead(id=p.id, kind=p.kind.value, name=p.name, permissions=sorted(p.permissions), grants=list(p.grants))
