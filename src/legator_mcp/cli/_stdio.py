"""MCP over stdio: an embedded control plane, or a bridge that forwards to a remote one over Streamable HTTP."""

from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

from legator_mcp.app import build_services, local_operator, start_services
from legator_mcp.mcp.server import build_mcp_server
from legator_mcp.settings import Settings

__all__ = ["bridge", "embedded"]


async def embedded(settings: Settings) -> None:
    """Serve MCP on stdin/stdout from a control plane in this process (the caller is the local operator)."""
    services = build_services(settings)
    await start_services(services)
    server, _registry = build_mcp_server(services, local_principal=local_operator())
    try:
        await server.run_stdio_async()
    finally:
        await services.database.dispose()


async def bridge(server_url: str, api_key: str) -> None:
    """Forward every MCP request from stdio to ``<server_url>/mcp`` with the API key as bearer token."""
    url = server_url.rstrip("/")
    if not url.endswith("/mcp"):
        url += "/mcp"
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {api_key}"}, timeout=httpx2.Timeout(30, read=300))
    async with http, Client(streamable_http_client(url, http_client=http)) as remote:

        async def list_tools(ctx: Any, params: Any) -> Any:
            return await remote.list_tools()

        async def call_tool(ctx: Any, params: Any) -> Any:
            return await remote.call_tool(params.name, params.arguments or {})

        async def list_resources(ctx: Any, params: Any) -> Any:
            return await remote.list_resources()

        async def list_resource_templates(ctx: Any, params: Any) -> Any:
            return await remote.list_resource_templates()

        async def read_resource(ctx: Any, params: Any) -> Any:
            return await remote.read_resource(params.uri)

        async def list_prompts(ctx: Any, params: Any) -> Any:
            return await remote.list_prompts()

        async def get_prompt(ctx: Any, params: Any) -> Any:
            return await remote.get_prompt(params.name, params.arguments)

        proxy: Server[Any] = Server(
            "legator",
            on_list_tools=list_tools,
            on_call_tool=call_tool,
            on_list_resources=list_resources,
            on_list_resource_templates=list_resource_templates,
            on_read_resource=read_resource,
            on_list_prompts=list_prompts,
            on_get_prompt=get_prompt,
        )
        async with stdio_server() as (read_stream, write_stream):
            await proxy.run(read_stream, write_stream, proxy.create_initialization_options())
