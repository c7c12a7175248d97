"""REST approval routes: list, inspect and decide, with permissions and the one error shape; the CLI over them."""

import json
import os
import subprocess
import sys
from datetime import timedelta
from typing import Any

import anyio
import pytest
from tests.support.app import Running

from legator_mcp.approval.schemas import ApprovalRead
from legator_mcp.principal import Permission, Principal, PrincipalKind

pytestmark = pytest.mark.anyio

REQUESTER = Principal(PrincipalKind.USER, "u-requester", "mallory", frozenset({Permission.COMMAND_EXEC}), via="mcp")
SECRET = "s3cr3t-Vb7wQ2pL"
ACTION: dict[str, Any] = {
    "kind": "file_write",
    "spec": {"path": "/etc/nginx/nginx.conf", "content": f"# api_key={SECRET}\nworker_processes 4;\n"},
    "timeout_s": 60.0,
}


def assert_error(body: object, code: str) -> None:
    assert isinstance(body, dict)
    assert set(body) == {"error"}
    error = body["error"]
    assert isinstance(error, dict)
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]


async def queue(
    running: Running,
    *,
    requester: Principal = REQUESTER,
    probe_ids: list[str] | None = None,
    required: int = 1,
    ttl: timedelta | None = None,
) -> ApprovalRead:
    return await running.app.services.approvals.request(
        requester=requester,
        probe_ids=probe_ids or ["prb-web-1"],
        action=ACTION,
        risk="high",
        summary="rewrite the nginx config",
        policy={"decision": "queue", "rationale": ["file_write to /etc is high risk"]},
        required_approvals=required,
        ttl=ttl,
    )


async def make_key(running: Running, name: str, *permissions: str) -> str:
    async with running.client() as admin:
        created = await admin.post("/api/v1/auth/keys", json={"name": name, "permissions": list(permissions)})
    assert created.status_code == 201, created.text
    return str(created.json()["plain_key"])


async def test_an_approver_lists_inspects_and_approves_a_request(running: Running) -> None:
    request = await queue(running)
    async with running.client() as admin:
        listed = await admin.get("/api/v1/approvals", params={"status": "pending"})
        shown = await admin.get(f"/api/v1/approvals/{request.id}")
        decided = await admin.post(
            f"/api/v1/approvals/{request.id}/decide",
            json={"decision": "approved", "reason": "reviewed the diff", "decided_by": "alice at the desk"},
        )
    assert listed.status_code == 200
    assert listed.json()["pending_count"] == 1
    assert [a["id"] for a in listed.json()["approvals"]] == [request.id]
    assert shown.status_code == 200
    body = shown.json()
    assert body["probe_id"] == "prb-web-1" and body["risk_level"] == "high" and body["status"] == "pending"
    assert body["policy_decision"] == "queue" and body["requester"] == REQUESTER.actor
    assert body["console_url"] == f"/ui/approvals/{request.id}"
    assert decided.status_code == 200
    assert set(decided.json()) == {"status", "request"}
    assert decided.json()["status"] == "approved"
    vote = decided.json()["request"]["approvals"][0]
    assert vote["approver"] == "api_key:bootstrap-admin"
    assert vote["note"] == "alice at the desk" and vote["reason"] == "reviewed the diff"


async def test_the_view_shows_the_file_as_a_digest_and_never_the_secret(running: Running) -> None:
    request = await queue(running)
    async with running.client() as admin:
        shown = await admin.get(f"/api/v1/approvals/{request.id}")
        listed = await admin.get("/api/v1/approvals")
        audit = await admin.get("/api/v1/audit", params={"type": "approval.requested"})
    content = shown.json()["command"]["spec"]["content"]
    assert set(content) == {"sha256", "bytes", "preview"}
    assert content["preview"].startswith("# api_key=")
    for response in (shown, listed, audit):
        assert SECRET not in response.text


async def test_the_requester_cannot_approve_their_own_request(running: Running) -> None:
    async with running.client() as admin:
        me = (await admin.get("/api/v1/me")).json()
    myself = Principal(PrincipalKind(me["kind"]), me["id"], me["name"], frozenset({Permission.ADMIN}))
    request = await queue(running, requester=myself)
    async with running.client() as admin:
        refused = await admin.post(f"/api/v1/approvals/{request.id}/decide", json={"decision": "approved"})
        withdrawn = await admin.post(f"/api/v1/approvals/{request.id}/decide", json={"decision": "denied"})
    assert refused.status_code == 403
    assert_error(refused.json(), "self_approval")
    assert withdrawn.status_code == 200 and withdrawn.json()["status"] == "denied"
    assert withdrawn.json()["request"]["approvals"][0]["withdrawal"] is True


async def test_deciding_twice_an_expired_or_unknown_request_gets_the_right_status(running: Running) -> None:
    decided = await queue(running)
    expired = await queue(running, ttl=timedelta(microseconds=1))
    async with running.client() as admin:
        first = await admin.post(f"/api/v1/approvals/{decided.id}/decide", json={"decision": "denied"})
        again = await admin.post(f"/api/v1/approvals/{decided.id}/decide", json={"decision": "approved"})
        late = await admin.post(f"/api/v1/approvals/{expired.id}/decide", json={"decision": "approved"})
        unknown = await admin.post("/api/v1/approvals/no-such-request/decide", json={"decision": "approved"})
        missing = await admin.get("/api/v1/approvals/no-such-request")
    assert first.status_code == 200 and first.json()["status"] == "denied"
    assert again.status_code == 409
    assert_error(again.json(), "approval_decided")
    assert late.status_code == 409
    assert_error(late.json(), "approval_expired")
    assert unknown.status_code == 404 and missing.status_code == 404
    assert_error(missing.json(), "not_found")


async def test_two_approvers_are_needed_when_the_policy_says_so(running: Running) -> None:
    request = await queue(running, required=2)
    second_key = await make_key(running, "second-approver", "approval:write", "approval:read")
    async with running.client() as admin:
        first = await admin.post(f"/api/v1/approvals/{request.id}/decide", json={"decision": "approved"})
        twice = await admin.post(f"/api/v1/approvals/{request.id}/decide", json={"decision": "approved"})
    async with running.client(second_key) as other:
        second = await other.post(f"/api/v1/approvals/{request.id}/decide", json={"decision": "approved"})
    assert first.json()["status"] == "pending"
    assert twice.status_code == 409
    assert_error(twice.json(), "approval_already_voted")
    assert second.json()["status"] == "approved"
    assert [v["approver"] for v in second.json()["request"]["approvals"]] == [
        "api_key:bootstrap-admin",
        "api_key:second-approver",
    ]


async def test_reading_needs_approval_read_and_deciding_needs_approval_write(running: Running) -> None:
    request = await queue(running)
    reader = await make_key(running, "reader", "approval:read")
    outsider = await make_key(running, "outsider", "fleet:read")
    async with running.client(reader) as client:
        assert (await client.get("/api/v1/approvals")).status_code == 200
        assert (await client.get(f"/api/v1/approvals/{request.id}")).status_code == 200
        refused = await client.post(f"/api/v1/approvals/{request.id}/decide", json={"decision": "approved"})
    async with running.client(outsider) as client:
        hidden = await client.get("/api/v1/approvals")
    async with running.client("") as anonymous:
        anonymous_list = await anonymous.get("/api/v1/approvals")
    assert refused.status_code == 403
    assert refused.json()["error"]["details"] == {"required_permission": "approval:write"}
    assert hidden.status_code == 403
    assert anonymous_list.status_code == 401
    assert (await running.app.services.approvals.get(request.id)).status == "pending"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"decision": "maybe"}, "decision", id="unknown-decision"),
        pytest.param({}, "decision", id="missing-decision"),
        pytest.param({"decision": "approved", "extra": 1}, "extra", id="unknown-field"),
        pytest.param({"decision": "approved", "reason": "x" * 2001}, "reason", id="reason-too-long"),
        pytest.param({"decision": "approved", "decided_by": 7}, "decided_by", id="note-not-text"),
        pytest.param([1, 2], "", id="not-an-object"),
    ],
)
async def test_malformed_decisions_get_422_naming_the_field(running: Running, body: object, field: str) -> None:
    request = await queue(running)
    async with running.client() as admin:
        response = await admin.post(f"/api/v1/approvals/{request.id}/decide", json=body)
    assert response.status_code == 422
    assert_error(response.json(), "invalid_request")
    fields = [f["field"] for f in response.json()["error"]["details"]["fields"]]
    assert field in fields or (field == "" and fields)
    assert (await running.app.services.approvals.get(request.id)).approvals == []


async def test_a_body_that_is_not_json_gets_422(running: Running) -> None:
    request = await queue(running)
    async with running.client() as admin:
        response = await admin.post(
            f"/api/v1/approvals/{request.id}/decide", content=b"{nope", headers={"content-type": "application/json"}
        )
    assert response.status_code == 422
    assert response.json()["error"]["details"] == {"reason": "invalid_json"}


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"limit": "0"}, id="limit-zero"),
        pytest.param({"limit": "501"}, id="limit-too-big"),
        pytest.param({"limit": "many"}, id="limit-not-a-number"),
        pytest.param({"status": "maybe"}, id="unknown-status"),
        pytest.param({"cursor": "@@not-a-cursor@@"}, id="bad-cursor"),
        pytest.param({"sort": "asc"}, id="unknown-parameter"),
    ],
)
async def test_malformed_list_queries_get_422_not_500(running: Running, params: dict[str, str]) -> None:
    async with running.client() as admin:
        response = await admin.get("/api/v1/approvals", params=params)
    assert response.status_code == 422
    assert_error(response.json(), "invalid_request")


async def test_lists_filter_by_status_and_probe_and_page_with_a_cursor(running: Running) -> None:
    ids = [(await queue(running, probe_ids=[f"prb-{n}", "prb-shared"])).id for n in range(3)]
    async with running.client() as admin:
        await admin.post(f"/api/v1/approvals/{ids[0]}/decide", json={"decision": "denied"})
        first = (await admin.get("/api/v1/approvals", params={"limit": "2"})).json()
        rest = (await admin.get("/api/v1/approvals", params={"limit": "2", "cursor": first["next_cursor"]})).json()
        by_probe = (await admin.get("/api/v1/approvals", params={"probe_id": "prb-1"})).json()
        pending = (await admin.get("/api/v1/approvals", params={"status": "pending", "probe_id": "prb-shared"})).json()
        denied = (await admin.get("/api/v1/approvals", params={"status": "denied"})).json()
    paged = [a["id"] for a in first["approvals"] + rest["approvals"]]
    assert sorted(paged) == sorted(ids) and len(paged) == 3 and rest["next_cursor"] is None
    assert [a["id"] for a in by_probe["approvals"]] == [ids[1]]
    assert sorted(a["id"] for a in pending["approvals"]) == sorted(ids[1:])
    assert pending["pending_count"] == 2
    assert [a["id"] for a in denied["approvals"]] == [ids[0]]


async def test_the_cli_lists_shows_approves_and_denies_over_rest(live: Running) -> None:
    approve_me = await queue(live)
    deny_me = await queue(live)
    env = {"LEGATOR_API_KEY": live.admin_key}
    listed = await _cli(["approvals", "list", "--server", live.base_url, "--status", "pending"], env)
    shown = await _cli(["approvals", "show", approve_me.id, "--server", live.base_url], env)
    shown_json = await _cli(["approvals", "show", approve_me.id, "--server", live.base_url, "-o", "json"], env)
    approved = await _cli(["approvals", "approve", approve_me.id, "--server", live.base_url, "--reason", "ok"], env)
    denied = await _cli(["approvals", "deny", deny_me.id, "--server", live.base_url, "-o", "json"], env)
    again = await _cli(["approvals", "approve", approve_me.id, "--server", live.base_url], env)
    assert listed.returncode == 0 and approve_me.id in listed.stdout and "(2 pending)" in listed.stdout
    assert shown.returncode == 0 and "/etc/nginx/nginx.conf" in shown.stdout and SECRET not in shown.stdout
    assert json.loads(shown_json.stdout)["id"] == approve_me.id
    assert approved.returncode == 0 and "approved" in approved.stdout
    assert denied.returncode == 0 and json.loads(denied.stdout)["status"] == "denied"
    assert again.returncode == 1 and "approval_decided" in again.stderr


async def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``legator`` without blocking the event loop that serves the live control plane."""
    with anyio.fail_after(60):
        done = await anyio.run_process([sys.executable, "-m", "legator_mcp", *args], env={**os.environ, **env},
                                       check=False)  # fmt: skip
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())
