"""Build the MCP server: every tool and resource module, the API-key verifier, and per-caller list filtering."""

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from mcp.server import MCPServer
from mcp.server.auth.settings import AuthSettings
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp_types.methods import serialize_server_result

from legator_mcp.app_context import AppContext
from legator_mcp.mcp._context import ApiKeyVerifier, McpContext, principal_from_request
from legator_mcp.mcp._registry import McpRegistry
from legator_mcp.mcp.tools import approvals as approval_tools
from legator_mcp.mcp.tools import audit as audit_tools
from legator_mcp.mcp.tools import commands as command_tools
from legator_mcp.mcp.tools import fan_out as fan_out_tools
from legator_mcp.mcp.tools import fleet as fleet_tools
from legator_mcp.mcp.tools import identity as identity_tools
from legator_mcp.mcp.tools import jobs as job_tools
from legator_mcp.mcp.tools import policies as policy_tools
from legator_mcp.principal import Permission, Principal

__all__ = ["build_mcp_server"]

INSTRUCTIONS = """\
Legator operates a fleet of servers through probes. Every action that changes a host passes a policy engine and
may wait for human approval: a result with status "pending_approval" is normal, not a failure — report the
approval id to the user instead of retrying. Prefer read-only tools to understand a problem before proposing
a change. Errors start with a stable code (e.g. "not_found:", "forbidden:", "policy_denied:").
"""

REGISTRARS: list[Callable[[McpRegistry], None]] = [
    identity_tools.register,
    audit_tools.register,
    fleet_tools.register,
    approval_tools.register,
    command_tools.register,
    fan_out_tools.register,
    policy_tools.register,
    job_tools.register,
]
"""Every tool/resource module; each contributes through its ``register(registry)``."""


class _PermissionFilter:
    """Refuse calls the caller may not make before their arguments are even parsed, and hide such tools and
    resources from ``*/list`` results. The per-tool guards check again (defence in depth).
    """

    def __init__(self, registry: McpRegistry) -> None:
        self._registry = registry

    def _allowed(self, principal: Principal | None, permission: Permission | None) -> bool:
        return permission is None or (principal is not None and principal.has(permission))

    async def _refuse_call(self, ctx: ServerRequestContext[Any, Any]) -> HandlerResult | None:
        name = (ctx.params or {}).get("name")
        permission = self._registry.tool_permissions.get(name) if isinstance(name, str) else None
        if permission is None:
            return None
        lifespan: McpContext = ctx.lifespan_context
        principal = principal_from_request(lifespan, ctx.request)
        if self._allowed(principal, permission):
            return None
        await lifespan.services.auth.record_denied(
            actor=principal, surface=f"tool:{name}", required=permission, reason="insufficient_permissions",
            request_id=str(ctx.request_id),
        )  # fmt: skip
        lifespan.services.metrics.mcp_calls.labels(str(name), "forbidden").inc()
        text = f"forbidden: insufficient permissions (required: {permission.value})"
        refusal = {"content": [{"type": "text", "text": text}], "isError": True, "resultType": "complete"}
        # A short-circuiting middleware owns the wire shape; the per-version surface drops what an era lacks.
        return serialize_server_result("tools/call", ctx.protocol_version, refusal)

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        if ctx.method == "tools/call":
            refused = await self._refuse_call(ctx)
            if refused is not None:
                return refused
        result = await call_next(ctx)
        if ctx.method not in {"tools/list", "resources/list", "resources/templates/list"} or result is None:
            return result
        principal = principal_from_request(ctx.lifespan_context, ctx.request)
        if ctx.method == "tools/list":
            attribute, table, key = "tools", self._registry.tool_permissions, "name"
        elif ctx.method == "resources/list":
            attribute, table, key = "resources", self._registry.resource_permissions, "uri"
        else:
            attribute, table, key = "resourceTemplates", self._registry.resource_permissions, "uriTemplate"
        # The runner hands middleware the wire-shaped dict (camelCase keys).
        wire = result if isinstance(result, dict) else result.model_dump(by_alias=True, mode="json", exclude_none=True)
        items: list[dict[str, Any]] = wire.get(attribute, [])
        wire[attribute] = [item for item in items if self._allowed(principal, table.get(str(item.get(key))))]
        return wire


def build_mcp_server(
    services: AppContext,
    *,
    local_principal: Principal | None = None,
    http_auth: bool = False,
    base_url: str | None = None,
    disabled_toolsets: frozenset[str] = frozenset(),
) -> tuple[MCPServer[McpContext], McpRegistry]:
    """Create the MCP server over ``services``.

    Args:
        services: The shared service bundle.
        local_principal: Who the caller is on stdio/in-memory transports.
        http_auth: Require bearer API keys on Streamable HTTP (the normal, secure mode).
        base_url: The externally visible base URL, advertised in the OAuth resource metadata.
        disabled_toolsets: Toolset names to leave out (configuration switch).
    """

    @asynccontextmanager
    async def lifespan(_server: MCPServer[McpContext]) -> AsyncIterator[McpContext]:
        yield McpContext(services=services, local_principal=local_principal)

    auth: AuthSettings | None = None
    verifier: ApiKeyVerifier | None = None
    if http_auth:
        root = (base_url or f"http://{services.settings.listen_addr}").rstrip("/")
        auth = AuthSettings(issuer_url=root, resource_server_url=f"{root}/mcp", validate_token_resource=False)  # pyright: ignore[reportArgumentType]
        verifier = ApiKeyVerifier(services)
    server: MCPServer[McpContext] = MCPServer(
        "legator",
        title="Legator fleet control plane",
        instructions=INSTRUCTIONS,
        version=services.version,
        lifespan=lifespan,
        token_verifier=verifier,
        auth=auth,
    )
    registry = McpRegistry(server=server, disabled_toolsets=disabled_toolsets)
    for register in REGISTRARS:
        register(registry)
    server.middleware.append(_PermissionFilter(registry))
    return server, registry
