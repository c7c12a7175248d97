"""The MCP error mapping: a decorator every tool and resource goes through.

It checks the caller's permission, counts the call, and turns ``LegatorError`` into ``ToolError`` (tools) or
``ResourceError`` / ``ResourceNotFoundError`` (resources) whose text starts with the stable error code.
"""

import functools
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError

from legator_mcp.errors import LegatorError, NotFound
from legator_mcp.mcp._context import McpContext, principal_from_request
from legator_mcp.principal import Permission, Principal

__all__ = ["ToolCaller", "caller", "guard_resource", "guard_tool"]

P = ParamSpec("P")
R = TypeVar("R")

ToolCaller = Principal
"""The principal a tool runs as (an alias for readability in tool signatures)."""


def _lifespan(ctx: Context[McpContext]) -> McpContext:
    return ctx.request_context.lifespan_context


def caller(ctx: Context[McpContext]) -> Principal:
    """The authenticated principal of this MCP call.

    Raises:
        ToolError: If there is none (cannot happen behind the HTTP auth middleware).
    """
    principal = principal_from_request(_lifespan(ctx), ctx.request_context.request)
    if principal is None:
        raise ToolError("unauthorized: authentication required")
    return principal


def _find_ctx(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Context[McpContext]:
    for value in (*args, *kwargs.values()):
        if isinstance(value, Context):
            return value  # pyright: ignore[reportUnknownVariableType]
    raise TypeError("MCP handlers must take a Context parameter")  # pragma: no cover - registration bug


def guard_tool(name: str, permission: Permission) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Wrap a tool body with the permission check, metrics and the LegatorError → ToolError mapping."""

    def decorator(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            ctx = _find_ctx(args, kwargs)
            services = _lifespan(ctx).services
            principal = caller(ctx)
            if not principal.has(permission):
                services.metrics.mcp_calls.labels(name, "forbidden").inc()
                await services.auth.record_denied(
                    actor=principal, surface=f"tool:{name}", required=permission, reason="insufficient_permissions",
                    request_id=str(ctx.request_id),
                )  # fmt: skip
                raise ToolError(f"forbidden: insufficient permissions (required: {permission.value})")
            try:
                result = await fn(*args, **kwargs)
            except LegatorError as exc:
                services.metrics.mcp_calls.labels(name, exc.code).inc()
                raise ToolError(f"{exc.code}: {exc.message}") from exc
            services.metrics.mcp_calls.labels(name, "ok").inc()
            return result

        return wrapper

    return decorator


def guard_resource(
    uri: str, permission: Permission
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Wrap a resource body with the permission check and the LegatorError → ResourceError mapping."""

    def decorator(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            ctx = _find_ctx(args, kwargs)
            services = _lifespan(ctx).services
            principal = principal_from_request(_lifespan(ctx), ctx.request_context.request)
            if principal is None or not principal.has(permission):
                await services.auth.record_denied(
                    actor=principal, surface=f"resource:{uri}", required=permission,
                    reason="insufficient_permissions" if principal else "unauthenticated",
                    request_id=str(ctx.request_id),
                )  # fmt: skip
                raise ResourceError(f"forbidden: insufficient permissions (required: {permission.value})")
            try:
                return await fn(*args, **kwargs)
            except NotFound as exc:
                raise ResourceNotFoundError(f"{exc.code}: {exc.message}") from exc
            except LegatorError as exc:
                raise ResourceError(f"{exc.code}: {exc.message}") from exc

        return wrapper

    return decorator
