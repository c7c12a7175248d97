"""What MCP handlers see as their lifespan context, and how they learn who is calling."""

from dataclasses import dataclass
from typing import Any

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken, TokenVerifier

from legator_mcp.app_context import AppContext
from legator_mcp.errors import Unauthenticated
from legator_mcp.principal import Permission, Principal, PrincipalKind

__all__ = ["ApiKeyVerifier", "McpContext", "principal_from_request"]


@dataclass(frozen=True)
class McpContext:
    """The MCP server's lifespan object: the shared services plus the identity of a credential-less transport."""

    services: AppContext
    local_principal: Principal | None
    """Who the caller is on stdio or in-memory transports (no bearer token exists there); ``None`` over HTTP."""


def _from_access_token(token: AccessToken) -> Principal:
    claims = token.claims or {}
    return Principal(
        kind=PrincipalKind(claims.get("kind", PrincipalKind.API_KEY.value)),
        id=token.client_id,
        name=token.subject or token.client_id,
        permissions=frozenset(Permission(scope) for scope in token.scopes),
        grants=tuple(claims.get("grants", ())),
        via="mcp",
    )


def principal_from_request(lifespan: McpContext, request: Any) -> Principal | None:
    """Identify the caller of the MCP message being handled, or ``None`` when nobody is authenticated."""
    token = get_access_token()
    if token is None and request is not None:
        user = getattr(request, "scope", {}).get("user")
        if isinstance(user, AuthenticatedUser):
            token = user.access_token
    if token is not None:
        return _from_access_token(token)
    if lifespan.local_principal is not None:
        return lifespan.local_principal.with_via("mcp")
    return None


class ApiKeyVerifier(TokenVerifier):
    """Accept Legator API keys as MCP bearer tokens."""

    def __init__(self, services: AppContext) -> None:
        self._services = services

    async def verify_token(self, token: str) -> AccessToken | None:
        """Return the key's identity and permissions as an access token, or ``None`` to answer 401."""
        try:
            principal = await self._services.auth.authenticate_api_key(token)
        except Unauthenticated:
            await self._services.auth.record_denied(
                actor=None, surface="mcp", required=None, reason="invalid_token", request_id=None
            )
            return None
        return AccessToken(
            token=token,
            client_id=principal.id,
            scopes=sorted(p.value for p in principal.permissions),
            subject=principal.name,
            claims={"kind": principal.kind.value, "grants": list(principal.grants)},
        )
