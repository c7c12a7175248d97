"""Every REST route, MCP tool and MCP resource declares a permission, and each one enforces it."""

import re

import pytest
from mcp import Client
from tests.support.app import Running
from tests.support.mcp import tool_error_code

from legator_mcp.mcp.server import build_mcp_server
from legator_mcp.principal import Permission, Principal, PrincipalKind

pytestmark = pytest.mark.anyio

PUBLIC_ROUTES = {"GET /healthz", "GET /readyz", "GET /version", "GET /openapi.json", "POST /api/v1/register"}
"""The only routes anyone may call without a credential."""


def _url(path: str) -> str:
    return re.sub(r"{[^}]+}", "x", path)


def _other_permission(required: Permission) -> Permission:
    return Permission.AUDIT_READ if required is not Permission.AUDIT_READ else Permission.FLEET_READ


async def test_only_the_known_routes_are_public(running: Running) -> None:
    public = {f"{s.method} {s.path}" for s in running.app.route_table.specs if s.public}
    assert public == PUBLIC_ROUTES


async def test_every_private_route_answers_401_without_credentials_and_403_without_permission(running: Running) -> None:
    specs = [s for s in running.app.route_table.specs if not s.public]
    assert len(specs) >= 10
    async with running.client() as admin:
        keys: dict[Permission, str] = {}
        for permission in Permission:
            if permission is Permission.ADMIN:
                continue
            created = await admin.post(
                "/api/v1/auth/keys",
                json={"name": f"only-{permission.value.replace(':', '-')}", "permissions": [permission.value]},
            )
            keys[permission] = created.json()["plain_key"]
    async with running.client("") as anonymous:
        for spec in specs:
            response = await anonymous.request(spec.method, _url(spec.path), json={} if spec.body else None)
            assert response.status_code == 401, f"{spec.method} {spec.path}"
            assert response.json()["error"]["code"] == "unauthorized"
    for spec in specs:
        if spec.permission is None:
            continue
        async with running.client(keys[_other_permission(spec.permission)]) as weak:
            response = await weak.request(spec.method, _url(spec.path), json={} if spec.body else None)
        assert response.status_code == 403, f"{spec.method} {spec.path}"
        assert response.json()["error"]["details"]["required_permission"] == spec.permission.value


async def test_every_mcp_tool_and_resource_declares_and_enforces_a_permission(running: Running) -> None:
    nobody = Principal(PrincipalKind.API_KEY, "k", "nobody", frozenset())
    server, registry = build_mcp_server(running.app.services, local_principal=nobody)
    async with Client(server) as client:
        listed = {t.name for t in (await client.list_tools()).tools}
        assert listed == set(), "a principal with no permissions must see no tools"
    admin_server, _ = build_mcp_server(running.app.services, local_principal=Principal.system())
    async with Client(admin_server) as client:
        all_tools = {t.name for t in (await client.list_tools()).tools}
    assert all_tools == set(registry.tool_permissions)
    for name, permission in registry.tool_permissions.items():
        weak = Principal(PrincipalKind.API_KEY, "k", "weak", frozenset({_other_permission(permission)}))
        weak_server, _ = build_mcp_server(running.app.services, local_principal=weak)
        async with Client(weak_server) as client:
            result = await client.call_tool(name, {})
        assert result.is_error, name
        assert tool_error_code(result) == "forbidden", name
    for uri, permission in registry.resource_permissions.items():
        weak = Principal(PrincipalKind.API_KEY, "k", "weak", frozenset({_other_permission(permission)}))
        weak_server, _ = build_mcp_server(running.app.services, local_principal=weak)
        async with Client(weak_server) as client:
            with pytest.raises(Exception, match="forbidden"):
                await client.read_resource(_url(uri))
