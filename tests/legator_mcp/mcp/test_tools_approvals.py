"""MCP approval tools through the SDK client: listing, inspecting and deciding, permissions, and error codes."""

from datetime import timedelta
from typing import Any

import pytest
from mcp import Client
from tests.support.app import Running
from tests.support.mcp import tool_error_code

from legator_mcp.approval.schemas import ApprovalRead
from legator_mcp.mcp.server import build_mcp_server
from legator_mcp.principal import Permission, Principal, PrincipalKind

pytestmark = pytest.mark.anyio

AGENT = Principal(
    PrincipalKind.API_KEY, "k-agent", "agent", frozenset({Permission.COMMAND_EXEC, Permission.APPROVAL_WRITE})
)
HUMAN = Principal(
    PrincipalKind.USER, "u-human", "olivia", frozenset({Permission.APPROVAL_READ, Permission.APPROVAL_WRITE})
)
SECRET = "tok-Qm4nW8zR2yXc"
ACTION: dict[str, Any] = {
    "kind": "shell",
    "spec": {"script": f"curl -H 'Authorization: Bearer {SECRET}' https://example.test/deploy"},
    "timeout_s": 30.0,
}


def client_for(running: Running, principal: Principal) -> Client:
    server, _ = build_mcp_server(running.app.services, local_principal=principal)
    return Client(server)


async def queue(running: Running, *, ttl: timedelta | None = None) -> ApprovalRead:
    return await running.app.services.approvals.request(
        requester=AGENT,
        probe_ids=["prb-db-1"],
        action=ACTION,
        risk="critical",
        summary="trigger a deploy",
        policy={"decision": "queue", "rationale": ["network call with credentials"]},
        ttl=ttl,
    )


async def test_a_human_lists_inspects_and_approves_and_the_command_is_released_once(running: Running) -> None:
    released: list[str] = []

    async def execute(approval: ApprovalRead) -> None:
        action = await running.app.services.approvals.consume(
            approval_id=approval.id, expected_sha256=request.payload_sha256, consumer_ref="cmd-mcp-1"
        )
        released.append(action.action["spec"]["script"])

    running.app.services.approvals.on_approved(execute)
    request = await queue(running)
    async with client_for(running, HUMAN) as client:
        listed = await client.call_tool("legator_list_approvals", {"status": "pending"})
        shown = await client.call_tool("legator_get_approval", {"approval_id": request.id})
        decided = await client.call_tool(
            "legator_decide_approval", {"approval_id": request.id, "decision": "approved", "reason": "change window"}
        )
        again = await client.call_tool("legator_decide_approval", {"approval_id": request.id, "decision": "approved"})
    assert listed.structured_content is not None
    assert [a["id"] for a in listed.structured_content["approvals"]] == [request.id]
    assert listed.structured_content["pending_count"] == 1
    assert shown.structured_content is not None and shown.structured_content["risk_level"] == "critical"
    assert not decided.is_error and decided.structured_content is not None
    assert decided.structured_content["status"] == "approved"
    assert decided.structured_content["request"]["status"] == "consumed"
    assert decided.structured_content["request"]["approvals"][0]["approver"] == HUMAN.actor
    assert released == [ACTION["spec"]["script"]]
    assert tool_error_code(again) == "approval_decided"
    for result in (listed, shown, decided):
        assert SECRET not in str(result.structured_content) and SECRET not in str(result.content)


async def test_an_agent_cannot_approve_its_own_request(running: Running) -> None:
    request = await queue(running)
    async with client_for(running, AGENT) as client:
        refused = await client.call_tool("legator_decide_approval", {"approval_id": request.id, "decision": "approved"})
    assert tool_error_code(refused) == "self_approval"
    assert (await running.app.services.approvals.get(request.id)).approvals == []


async def test_an_expired_request_cannot_be_approved(running: Running) -> None:
    request = await queue(running, ttl=timedelta(microseconds=1))
    async with client_for(running, HUMAN) as client:
        late = await client.call_tool("legator_decide_approval", {"approval_id": request.id, "decision": "approved"})
        shown = await client.call_tool("legator_get_approval", {"approval_id": request.id})
    assert tool_error_code(late) == "approval_expired"
    assert shown.structured_content is not None and shown.structured_content["status"] == "expired"


async def test_tools_are_listed_and_callable_only_with_their_permissions(running: Running) -> None:
    request = await queue(running)
    reader = Principal(PrincipalKind.API_KEY, "k-r", "reader", frozenset({Permission.APPROVAL_READ}))
    outsider = Principal(PrincipalKind.API_KEY, "k-o", "outsider", frozenset({Permission.FLEET_READ}))
    approval_tools = {"legator_list_approvals", "legator_get_approval", "legator_decide_approval"}
    async with client_for(running, reader) as client:
        reader_tools = {t.name for t in (await client.list_tools()).tools} & approval_tools
        refused = await client.call_tool("legator_decide_approval", {"approval_id": request.id, "decision": "denied"})
    async with client_for(running, outsider) as client:
        outsider_tools = {t.name for t in (await client.list_tools()).tools} & approval_tools
        hidden = await client.call_tool("legator_list_approvals", {})
    assert reader_tools == {"legator_list_approvals", "legator_get_approval"}
    assert tool_error_code(refused) == "forbidden"
    assert outsider_tools == set()
    assert tool_error_code(hidden) == "forbidden"
    assert (await running.app.services.approvals.get(request.id)).status == "pending"


async def test_annotations_mark_reads_read_only_and_the_decision_destructive(running: Running) -> None:
    async with client_for(running, Principal.system()) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    for name in ("legator_list_approvals", "legator_get_approval"):
        annotations = tools[name].annotations
        assert annotations is not None and annotations.read_only_hint is True, name
    decide = tools["legator_decide_approval"]
    assert decide.annotations is not None
    assert decide.annotations.read_only_hint is False and decide.annotations.destructive_hint is True
    assert decide.output_schema is not None and decide.description is not None
    assert "self_approval" in decide.description


@pytest.mark.parametrize(
    ("tool", "arguments", "code"),
    [
        pytest.param("legator_decide_approval", {"approval_id": "x", "decision": "maybe"}, None, id="bad-decision"),
        pytest.param("legator_decide_approval", {"decision": "approved"}, None, id="missing-id"),
        pytest.param(
            "legator_decide_approval",
            {"approval_id": "nope", "decision": "approved"},
            "not_found",
            id="unknown-request",
        ),  # fmt: skip
        pytest.param("legator_get_approval", {"approval_id": "nope"}, "not_found", id="get-unknown"),
        pytest.param("legator_get_approval", {"approval_id": ""}, None, id="get-empty-id"),
        pytest.param("legator_list_approvals", {"limit": 0}, None, id="limit-zero"),
        pytest.param("legator_list_approvals", {"status": "maybe"}, None, id="unknown-status"),
        pytest.param("legator_list_approvals", {"cursor": "garbage"}, "invalid_request", id="bad-cursor"),
    ],
)
async def test_malformed_arguments_are_tool_errors_not_crashes(
    running: Running, tool: str, arguments: dict[str, Any], code: str | None
) -> None:
    async with client_for(running, HUMAN) as client:
        result = await client.call_tool(tool, arguments)
    assert result.is_error
    if code is not None:
        assert tool_error_code(result) == code
