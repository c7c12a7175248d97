"""MCP policy tools through the SDK client: list, dry-run evaluate, apply; annotations, permissions, bad input."""

from typing import Any

import pytest
from mcp import Client
from tests.support.app import Running
from tests.support.mcp import tool_error_code

from legator_mcp.fleet.schemas import RegistrationRequest, TokenCreate
from legator_mcp.mcp.server import build_mcp_server
from legator_mcp.principal import Permission, Principal, PrincipalKind

pytestmark = pytest.mark.anyio

OPERATOR = Principal(
    PrincipalKind.USER, "u-op", "olivia", frozenset({Permission.FLEET_READ, Permission.FLEET_WRITE}), via="mcp"
)
READER = Principal(PrincipalKind.API_KEY, "k-reader", "reader", frozenset({Permission.FLEET_READ}), via="mcp")
OUTSIDER = Principal(PrincipalKind.API_KEY, "k-out", "outsider", frozenset({Permission.AUDIT_READ}), via="mcp")
ADMIN = Principal(PrincipalKind.USER, "u-admin", "admin", frozenset({Permission.ADMIN}))
POLICY_TOOLS = {"legator_list_policies", "legator_evaluate_policy", "legator_apply_policy"}


def client_for(running: Running, principal: Principal) -> Client:
    server, _ = build_mcp_server(running.app.services, local_principal=principal)
    return Client(server)


async def register(running: Running, hostname: str = "web-1") -> str:
    fleet = running.app.services.fleet
    token = await fleet.create_token(actor=ADMIN, request=TokenCreate(policy_level="remediate"))
    return (await fleet.register(request=RegistrationRequest(token=token.token, hostname=hostname))).probe_id


async def test_list_evaluate_and_apply(running: Running) -> None:
    probe_id = await register(running)
    async with client_for(running, OPERATOR) as client:
        listed = await client.call_tool("legator_list_policies", {})
        applied = await client.call_tool("legator_apply_policy", {"probe_id": probe_id, "policy_id": "diagnose"})
        denied = await client.call_tool(
            "legator_evaluate_policy", {"probe_id": probe_id, "command": "systemctl", "args": ["restart", "nginx"]}
        )
        script = await client.call_tool(
            "legator_evaluate_policy", {"probe_id": probe_id, "command": "uptime && systemctl restart nginx"}
        )
        typed = await client.call_tool(
            "legator_evaluate_policy",
            {"probe_id": probe_id, "kind": "systemd", "spec": {"action": "status", "unit": "nginx.service"}},
        )
    assert listed.structured_content is not None
    assert [t["id"] for t in listed.structured_content["templates"]][:3] == [
        "observe-only",
        "diagnose",
        "full-remediate",
    ]
    assert applied.structured_content is not None
    assert applied.structured_content["status"] == "applied_locally"
    assert applied.structured_content["policy_id"] == "diagnose" and applied.structured_content["level"] == "diagnose"
    assert denied.structured_content is not None and denied.structured_content["decision"] == "deny"
    assert any("diagnose" in line for line in denied.structured_content["rationale"])
    assert script.structured_content is not None and script.structured_content["rule"] == "block_pattern"
    assert any("'systemctl restart *'" in line for line in script.structured_content["rationale"])
    assert typed.structured_content is not None and typed.structured_content["decision"] == "allow"
    probe = await running.app.services.fleet.get_probe(probe_id)
    assert probe.policy_id == "diagnose" and probe.policy_level == "diagnose"


@pytest.mark.parametrize(
    ("arguments", "code"),
    [
        ({"probe_id": "prb-nope", "command": "ls"}, "not_found"),
        ({"probe_id": "PROBE", "command": "ls", "kind": "shell", "spec": {"argv": ["ls"]}}, "invalid_request"),
        ({"probe_id": "PROBE"}, "invalid_request"),
        ({"probe_id": "PROBE", "kind": "teleport", "spec": {}}, "invalid_request"),
        ({"probe_id": "PROBE", "kind": "file_read", "spec": {"path": 5}}, "invalid_request"),
    ],
)
async def test_bad_evaluations_are_tool_errors(running: Running, arguments: dict[str, Any], code: str) -> None:
    probe_id = await register(running)
    arguments = {k: (probe_id if v == "PROBE" else v) for k, v in arguments.items()}
    async with client_for(running, READER) as client:
        result = await client.call_tool("legator_evaluate_policy", arguments)
    assert tool_error_code(result) == code


async def test_annotations_and_permissions(running: Running) -> None:
    probe_id = await register(running)
    async with client_for(running, OPERATOR) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools if t.name in POLICY_TOOLS}
        unknown = await client.call_tool("legator_apply_policy", {"probe_id": probe_id, "policy_id": "pol-nope"})
    assert set(tools) == POLICY_TOOLS
    for name in ("legator_list_policies", "legator_evaluate_policy"):
        annotations = tools[name].annotations
        assert annotations is not None and annotations.read_only_hint is True
    apply = tools["legator_apply_policy"].annotations
    assert apply is not None and apply.destructive_hint is True and apply.read_only_hint is False
    assert tool_error_code(unknown) == "not_found"
    async with client_for(running, READER) as client:
        reader_tools = {t.name for t in (await client.list_tools()).tools} & POLICY_TOOLS
        refused = await client.call_tool("legator_apply_policy", {"probe_id": probe_id, "policy_id": "diagnose"})
    assert reader_tools == {"legator_list_policies", "legator_evaluate_policy"}
    assert refused.is_error
    async with client_for(running, OUTSIDER) as client:
        outsider_tools = {t.name for t in (await client.list_tools()).tools} & POLICY_TOOLS
    assert outsider_tools == set()
    assert (await running.app.services.fleet.get_probe(probe_id)).policy_id != "diagnose"
