"""API keys, users and the caller's identity."""

from starlette.requests import Request

from legator_mcp.auth.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyList, MeRead, UserCreate, UserList, UserRead
from legator_mcp.principal import Permission
from legator_mcp.rest._routing import RouteContext, RouteTable, parse_body

__all__ = ["register"]


def register(table: RouteTable) -> None:
    """Add the identity routes."""

    @table.route("GET", "/api/v1/me", permission=None, summary="Who am I and what may I do", response=MeRead,
                 tag="auth")  # fmt: skip
    async def me(request: Request, ctx: RouteContext) -> MeRead:
        p = ctx.principal
        return MeRead(id=p.id, kind=p.kind.value, name=p.name, permissions=sorted(p.permissions), grants=list(p.grants))

    @table.route("GET", "/api/v1/auth/keys", permission=Permission.ADMIN, summary="List API keys",
                 response=ApiKeyList, tag="auth")  # fmt: skip
    async def list_keys(request: Request, ctx: RouteContext) -> ApiKeyList:
        keys = await ctx.services.auth.list_api_keys()
        return ApiKeyList(keys=keys, total=len(keys))

    @table.route("POST", "/api/v1/auth/keys", permission=Permission.ADMIN, summary="Create an API key (shown once)",
                 body=ApiKeyCreate, response=ApiKeyCreated, status=201, tag="auth")  # fmt: skip
    async def create_key(request: Request, ctx: RouteContext) -> ApiKeyCreated:
        body = await parse_body(request, ApiKeyCreate)
        return await ctx.services.auth.create_api_key(actor=ctx.principal, request=body)

    @table.route("DELETE", "/api/v1/auth/keys/{id}", permission=Permission.ADMIN, summary="Revoke an API key",
                 status=204, tag="auth")  # fmt: skip
    async def delete_key(request: Request, ctx: RouteContext) -> None:
        await ctx.services.auth.delete_api_key(actor=ctx.principal, key_id=request.path_params["id"])

    @table.route("GET", "/api/v1/users", permission=Permission.ADMIN, summary="List users", response=UserList,
                 tag="auth")  # fmt: skip
    async def list_users(request: Request, ctx: RouteContext) -> UserList:
        users = await ctx.services.auth.list_users()
        return UserList(users=users, total=len(users))

    @table.route("POST", "/api/v1/users", permission=Permission.ADMIN, summary="Create a user", body=UserCreate,
                 response=UserRead, status=201, tag="auth")  # fmt: skip
    async def create_user(request: Request, ctx: RouteContext) -> UserRead:
        body = await parse_body(request, UserCreate)
        return await ctx.services.auth.create_user(actor=ctx.principal, request=body)

    @table.route("DELETE", "/api/v1/users/{id}", permission=Permission.ADMIN, summary="Delete a user", status=204,
                 tag="auth")  # fmt: skip
    async def delete_user(request: Request, ctx: RouteContext) -> None:
        await ctx.services.auth.delete_user(actor=ctx.principal, user_id=request.path_params["id"])
