"""The MCP surface through the official SDK client: in-memory, Streamable HTTP and stdio."""

import os
import sys
from pathlib import Path

import httpx
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from tests.support.app import Running
from tests.support.mcp import tool_error_code

from legator_mcp.mcp.server import build_mcp_server
from legator_mcp.principal import Permission, Principal, PrincipalKind

pytestmark = pytest.mark.anyio


def _principal(*permissions: Permission) -> Principal:
    return Principal(PrincipalKind.API_KEY, "k-test", "tester", frozenset(permissions))


async def test_every_tool_has_an_output_schema_annotations_and_a_description(running: Running) -> None:
    server, _ = build_mcp_server(running.app.services, local_principal=_principal(Permission.ADMIN))
    async with Client(server) as client:
        tools = (await client.list_tools()).tools
    assert {"legator_search_audit", "legator_verify_audit"} <= {t.name for t in tools}
    for tool in tools:
        assert tool.output_schema is not None, tool.name
        assert tool.annotations is not None, tool.name
        assert tool.description and len(tool.description) > 40, tool.name


async def test_the_tool_list_is_filtered_by_the_callers_permissions(running: Running) -> None:
    server, _ = build_mcp_server(running.app.services, local_principal=_principal(Permission.FLEET_READ))
    async with Client(server) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        refused = await client.call_tool("legator_search_audit", {})
    assert "legator_search_audit" not in names
    assert "legator_whoami" in names
    assert refused.is_error
    assert tool_error_code(refused) == "forbidden"


async def test_search_audit_returns_structured_events(running: Running) -> None:
    server, _ = build_mcp_server(running.app.services, local_principal=_principal(Permission.AUDIT_READ))
    async with Client(server) as client:
        result = await client.call_tool("legator_search_audit", {"type": "auth.key_created", "limit": 5})
        verify = await client.call_tool("legator_verify_audit", {})
    assert not result.is_error
    assert result.structured_content is not None
    events = result.structured_content["events"]
    assert events and events[0]["type"] == "auth.key_created"
    assert verify.structured_content is not None and verify.structured_content["ok"] is True


async def test_bad_arguments_become_tool_errors_not_crashes(running: Running) -> None:
    server, _ = build_mcp_server(running.app.services, local_principal=_principal(Permission.ADMIN))
    async with Client(server) as client:
        too_big = await client.call_tool("legator_search_audit", {"limit": 100000})
        bad_cursor = await client.call_tool("legator_search_audit", {"cursor": "@@@"})
    assert too_big.is_error
    assert bad_cursor.is_error
    assert tool_error_code(bad_cursor) == "invalid_request"


async def test_streamable_http_requires_a_key_and_serves_tools_with_one(live: Running) -> None:
    async with httpx.AsyncClient() as plain:
        response = await plain.post(
            f"{live.base_url}/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"accept": "application/json, text/event-stream"},
        )
    assert response.status_code == 401

    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {live.admin_key}"})
    async with http, Client(streamable_http_client(f"{live.base_url}/mcp", http_client=http)) as client:
        tools = (await client.list_tools()).tools
        result = await client.call_tool("legator_search_audit", {"limit": 3})
        whoami = await client.call_tool("legator_whoami", {})
    assert all(t.output_schema is not None and t.annotations is not None for t in tools)
    assert not result.is_error and result.structured_content is not None
    assert whoami.structured_content is not None and whoami.structured_content["name"] == "bootstrap-admin"


async def test_streamable_http_hides_tools_from_a_key_without_permission(live: Running) -> None:
    async with live.client() as admin:
        created = await admin.post("/api/v1/auth/keys", json={"name": "ro", "permissions": ["fleet:read"]})
    key = created.json()["plain_key"]
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"})
    async with http, Client(streamable_http_client(f"{live.base_url}/mcp", http_client=http)) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        refused = await client.call_tool("legator_verify_audit", {})
    assert "legator_verify_audit" not in names
    assert refused.is_error


async def test_stdio_embedded_server_lists_tools_and_searches_audit(tmp_path: Path) -> None:
    env = {**os.environ, "LEGATOR_DATA_DIR": str(tmp_path / "stdio"), "LEGATOR_LOG_LEVEL": "WARNING"}
    params = StdioServerParameters(command=sys.executable, args=["-m", "legator_mcp", "mcp"], env=env)
    async with Client(params) as client:
        tools = (await client.list_tools()).tools
        result = await client.call_tool("legator_search_audit", {"limit": 5})
    assert {"legator_search_audit", "legator_verify_audit"} <= {t.name for t in tools}
    assert not result.is_error and result.structured_content is not None


async def test_stdio_bridge_forwards_to_a_running_server(live: Running, tmp_path: Path) -> None:
    env = {**os.environ, "LEGATOR_API_KEY": live.admin_key}
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "legator_mcp", "mcp", "--server", live.base_url], env=env
    )
    async with Client(params) as client:
        tools = (await client.list_tools()).tools
        whoami = await client.call_tool("legator_whoami", {})
    assert "legator_search_audit" in {t.name for t in tools}
    assert whoami.structured_content is not None and whoami.structured_content["name"] == "bootstrap-admin"
