"""The fleet tools and resources through the official SDK client (in-memory)."""

import json
from datetime import UTC, datetime

import pytest
from mcp import Client
from mcp.types import TextResourceContents
from tests.support.app import Running
from tests.support.mcp import tool_error_code

from legator_mcp.fleet.schemas import RegistrationRequest, TokenCreate
from legator_mcp.mcp.server import build_mcp_server
from legator_mcp.principal import Permission, Principal, PrincipalKind
from legator_probe.protocol.payloads import HeartbeatPayload, HelloPayload, InventoryPayload, PackageInfo

pytestmark = pytest.mark.anyio

FLEET_TOOLS = {
    "legator_list_probes",
    "legator_probe_info",
    "legator_get_inventory",
    "legator_probe_health",
    "legator_fleet_query",
    "legator_set_probe_tags",
}


def _principal(*permissions: Permission) -> Principal:
    return Principal(PrincipalKind.API_KEY, "k-test", "tester", frozenset(permissions))


async def _probe(running: Running, hostname: str, *, tags: list[str], packages: int = 0) -> str:
    fleet = running.app.services.fleet
    token = await fleet.create_token(actor=Principal.system(), request=TokenCreate(tags=tags))
    probe_id = (await fleet.register(request=RegistrationRequest(token=token.token, hostname=hostname))).probe_id
    await fleet.probe_connected(
        probe_id=probe_id, hello=HelloPayload(probe_id=probe_id, version="1", hostname=hostname)
    )
    await fleet.record_heartbeat(
        probe_id=probe_id,
        heartbeat=HeartbeatPayload(
            uptime_s=5, load=(0.1, 0.1, 0.1), mem_total_bytes=100, mem_used_bytes=10, disk_total_bytes=100,
            disk_used_bytes=97,
        ),
    )  # fmt: skip
    await fleet.record_inventory(
        probe_id=probe_id,
        inventory=InventoryPayload(
            hostname=hostname, os="linux", os_version="12", kernel="6.1", arch="arm64", cpus=2, mem_total_bytes=100,
            packages=[PackageInfo(name=f"p{n}", version="1", manager="apt") for n in range(packages)],
            collected_at=datetime.now(UTC),
        ),
    )  # fmt: skip
    return probe_id


async def test_the_fleet_tools_are_listed_read_only_except_set_tags(running: Running) -> None:
    server, _ = build_mcp_server(running.app.services, local_principal=_principal(Permission.ADMIN))
    async with Client(server) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools if t.name in FLEET_TOOLS}
    assert set(tools) == FLEET_TOOLS
    for name, tool in tools.items():
        assert tool.annotations is not None and tool.output_schema is not None, name
        assert tool.annotations.read_only_hint is (name != "legator_set_probe_tags"), name
    set_tags = tools["legator_set_probe_tags"].annotations
    assert set_tags is not None and set_tags.idempotent_hint is True and set_tags.destructive_hint is False


async def test_a_reader_lists_probes_and_reads_info_health_and_inventory(running: Running) -> None:
    probe_id = await _probe(running, "web-1", tags=["prod"], packages=120)
    await _probe(running, "db-1", tags=["db"])
    server, _ = build_mcp_server(running.app.services, local_principal=_principal(Permission.FLEET_READ))
    async with Client(server) as client:
        listed = await client.call_tool("legator_list_probes", {"tag": "PROD", "status": "all"})
        degraded = await client.call_tool("legator_list_probes", {"status": "degraded", "limit": 1})
        info = await client.call_tool("legator_probe_info", {"probe_id": probe_id})
        health = await client.call_tool("legator_probe_health", {"probe_id": probe_id})
        inventory = await client.call_tool("legator_get_inventory", {"probe_id": probe_id, "max_items": 100})
        names = {t.name for t in (await client.list_tools()).tools}
    assert "legator_set_probe_tags" not in names
    assert listed.structured_content is not None
    assert [p["hostname"] for p in listed.structured_content["probes"]] == ["web-1"]
    assert degraded.structured_content is not None
    assert (degraded.structured_content["total"], degraded.structured_content["has_more"]) == (2, True)
    assert info.structured_content is not None
    assert info.structured_content["probe"]["id"] == probe_id
    assert info.structured_content["health"]["status"] == "critical"
    assert health.structured_content is not None
    assert [r["check"] for r in health.structured_content["reasons"]] == ["disk"]
    assert inventory.structured_content is not None
    assert len(inventory.structured_content["packages"]) == 100
    assert inventory.structured_content["truncated"] == {"packages": 120}


async def test_the_fleet_query_tool_answers_with_structured_matches(running: Running) -> None:
    await _probe(running, "web-1", tags=["env=prod"])
    await _probe(running, "db-1", tags=["env=staging"])
    server, _ = build_mcp_server(running.app.services, local_principal=_principal(Permission.FLEET_READ))
    async with Client(server) as client:
        result = await client.call_tool("legator_fleet_query", {"question": "which prod hosts are degraded?"})
        empty = await client.call_tool("legator_fleet_query", {"question": ""})
    assert result.structured_content is not None
    assert result.structured_content["total_probes"] == 2
    assert [m["hostname"] for m in result.structured_content["matches"]] == ["web-1"]
    assert empty.is_error


async def test_setting_tags_needs_fleet_write_and_is_audited(running: Running) -> None:
    probe_id = await _probe(running, "web-1", tags=["old"])
    reader, _ = build_mcp_server(running.app.services, local_principal=_principal(Permission.FLEET_READ))
    writer, _ = build_mcp_server(running.app.services, local_principal=_principal(Permission.FLEET_WRITE))
    async with Client(reader) as client:
        refused = await client.call_tool("legator_set_probe_tags", {"probe_id": probe_id, "tags": ["x"]})
    async with Client(writer) as client:
        result = await client.call_tool("legator_set_probe_tags", {"probe_id": probe_id, "tags": ["Prod", "web"]})
        again = await client.call_tool("legator_set_probe_tags", {"probe_id": probe_id, "tags": ["web", "prod"]})
        bad = await client.call_tool("legator_set_probe_tags", {"probe_id": probe_id, "tags": ["no spaces"]})
    assert tool_error_code(refused) == "forbidden"
    assert result.structured_content == {"probe_id": probe_id, "tags": ["prod", "web"]}
    assert again.structured_content == result.structured_content
    assert bad.is_error
    assert (await running.app.services.fleet.get_probe(probe_id)).tags == ["prod", "web"]


async def test_unknown_probes_are_not_found_tool_errors(running: Running) -> None:
    server, _ = build_mcp_server(running.app.services, local_principal=_principal(Permission.ADMIN))
    async with Client(server) as client:
        results = [
            await client.call_tool(name, {"probe_id": "prb-00000000"})
            for name in ("legator_probe_info", "legator_get_inventory", "legator_probe_health")
        ]
        bad_cursor = await client.call_tool("legator_list_probes", {"cursor": "nope"})
    assert [tool_error_code(r) for r in results] == ["not_found"] * 3
    assert tool_error_code(bad_cursor) == "invalid_request"


async def test_the_fleet_resources_serve_json_to_readers_only(running: Running) -> None:
    probe_id = await _probe(running, "web-1", tags=["prod"], packages=250)
    server, _ = build_mcp_server(running.app.services, local_principal=_principal(Permission.FLEET_READ))
    async with Client(server) as client:
        uris = {str(r.uri) for r in (await client.list_resources()).resources}
        templates = {t.uri_template for t in (await client.list_resource_templates()).resource_templates}
        contents = {
            uri: (await client.read_resource(uri)).contents[0]
            for uri in (
                "legator://fleet/summary",
                "legator://fleet/inventory",
                f"legator://probes/{probe_id}",
                f"legator://probes/{probe_id}/inventory",
            )
        }
        with pytest.raises(Exception, match="not_found"):
            await client.read_resource("legator://probes/prb-00000000")
    assert {"legator://fleet/summary", "legator://fleet/inventory"} <= uris
    assert {"legator://probes/{probe_id}", "legator://probes/{probe_id}/inventory"} <= templates
    data: dict[str, dict[str, object]] = {}
    for uri, content in contents.items():
        assert isinstance(content, TextResourceContents) and content.mime_type == "application/json"
        data[uri] = json.loads(content.text)
    assert data["legator://fleet/summary"]["total_probes"] == 1
    assert data["legator://fleet/inventory"]["aggregates"] == {
        "total_probes": 1, "online": 0, "total_cpus": 2, "total_ram_bytes": 100, "probes_by_os": {"linux": 1},
        "tag_distribution": {"prod": 1},
    }  # fmt: skip
    assert data[f"legator://probes/{probe_id}"]["hostname"] == "web-1"
    assert data[f"legator://probes/{probe_id}/inventory"]["truncated"] == {"packages": 250}

    nobody, _ = build_mcp_server(running.app.services, local_principal=_principal(Permission.AUDIT_READ))
    async with Client(nobody) as client:
        assert (await client.list_resources()).resources == []
        with pytest.raises(Exception, match="forbidden"):
            await client.read_resource("legator://fleet/summary")
