"""Register tools and resources together with the permission each requires, so lists can be filtered."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from mcp.server import MCPServer
from mcp.types import ToolAnnotations

from legator_mcp.mcp._errors import guard_resource, guard_tool
from legator_mcp.principal import Permission

__all__ = ["McpRegistry"]

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


@dataclass
class McpRegistry:
    """The server plus the permission table that the list filter and the permission test read."""

    server: MCPServer[Any]
    tool_permissions: dict[str, Permission] = field(default_factory=dict[str, Permission])
    resource_permissions: dict[str, Permission] = field(default_factory=dict[str, Permission])
    disabled_toolsets: frozenset[str] = frozenset()

    def tool(
        self,
        name: str,
        *,
        permission: Permission,
        annotations: ToolAnnotations,
        title: str | None = None,
        toolset: str = "core",
    ) -> Callable[[F], F]:
        """Register an async tool function under ``name`` requiring ``permission``."""

        def decorator(fn: F) -> F:
            if toolset in self.disabled_toolsets:
                return fn
            guarded = guard_tool(name, permission)(fn)
            self.server.tool(name=name, title=title, annotations=annotations)(guarded)
            self.tool_permissions[name] = permission
            return fn

        return decorator

    def resource(
        self, uri: str, *, permission: Permission, name: str, description: str, mime_type: str = "application/json"
    ) -> Callable[[F], F]:
        """Register an async resource (or resource template, when ``uri`` has ``{params}``)."""

        def decorator(fn: F) -> F:
            guarded = guard_resource(uri, permission)(fn)
            self.server.resource(uri, name=name, description=description, mime_type=mime_type)(guarded)
            self.resource_permissions[uri] = permission
            return fn

        return decorator
