"""REST policy routes: templates CRUD, apply to a probe, dry-run evaluate; permissions and malformed input."""

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from tests.support.app import Running
from tests.support.probes import PROBE, ProbeProcess, probe_env, running_probes

from legator_mcp.commands.schemas import CommandStatus
from legator_mcp.flows.run_command import CommandRequest
from legator_mcp.policy.schemas import PolicyDecision
from legator_mcp.principal import Permission, Principal, PrincipalKind
from legator_probe.protocol import COMMAND_PAYLOAD_ADAPTER

pytestmark = pytest.mark.anyio

OPERATOR = Principal(PrincipalKind.API_KEY, "k-op", "op", frozenset({Permission.ADMIN}))


def assert_error(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"]


async def make_key(running: Running, name: str, *permissions: str) -> str:
    async with running.client() as admin:
        created = await admin.post("/api/v1/auth/keys", json={"name": name, "permissions": list(permissions)})
    assert created.status_code == 201, created.text
    return str(created.json()["plain_key"])


async def register(running: Running, hostname: str) -> str:
    async with running.client() as admin:
        created = (await admin.post("/api/v1/tokens", json={"policy_level": "remediate"})).json()
    async with running.client("") as anonymous:
        response = await anonymous.post("/api/v1/register", json={"token": created["token"], "hostname": hostname})
    assert response.status_code == 201, response.text
    return str(response.json()["probe_id"])


async def test_templates_are_listed_created_changed_and_deleted(running: Running) -> None:
    async with running.client() as admin:
        listed = await admin.get("/api/v1/policies")
        created = await admin.post(
            "/api/v1/policies",
            json={"name": "web", "level": "diagnose", "blocked": ["curl *"], "path_deny": ["/srv/secret"]},
        )
        template_id = created.json()["id"]
        shown = await admin.get(f"/api/v1/policies/{template_id}")
        updated = await admin.put(f"/api/v1/policies/{template_id}", json={"name": "web", "level": "observe"})
        duplicate = await admin.post("/api/v1/policies", json={"name": "web"})
        builtin_put = await admin.put("/api/v1/policies/diagnose", json={"name": "x"})
        builtin_delete = await admin.delete("/api/v1/policies/observe-only")
        deleted = await admin.delete(f"/api/v1/policies/{template_id}")
        gone = await admin.get(f"/api/v1/policies/{template_id}")
    assert listed.status_code == 200
    assert [t["id"] for t in listed.json()["templates"]] == ["observe-only", "diagnose", "full-remediate"]
    assert created.status_code == 201 and created.json()["block_patterns"] == ["curl *"]
    assert created.json()["blocked"] == ["curl *"]  # the reference implementation's field name, too
    assert shown.status_code == 200 and shown.json() == created.json()
    assert updated.status_code == 200 and updated.json()["version"] == 2 and updated.json()["level"] == "observe"
    assert_error(duplicate, 409, "conflict")
    assert_error(builtin_put, 409, "conflict")
    assert_error(builtin_delete, 409, "conflict")
    assert deleted.status_code == 204
    assert_error(gone, 404, "not_found")


async def test_evaluate_answers_without_running_anything(running: Running) -> None:
    probe_id = await register(running, "web-1")
    async with running.client() as admin:
        applied = await admin.post(f"/api/v1/probes/{probe_id}/apply-policy/full-remediate")
        allowed = await admin.post("/api/v1/policies/evaluate", json={"probe_id": probe_id, "command": "uptime"})
        queued = await admin.post(
            "/api/v1/policies/evaluate",
            json={"probe_id": probe_id, "kind": "systemd", "spec": {"action": "stop", "unit": "nginx.service"}},
        )
        denied = await admin.post(
            "/api/v1/policies/evaluate",
            json={"probe_id": probe_id, "kind": "file_read", "spec": {"path": "/etc/shadow"}},
        )
        audit = await admin.get("/api/v1/audit", params={"probe_id": probe_id})
    assert applied.status_code == 200
    assert applied.json()["status"] == "applied_locally" and applied.json()["level"] == "remediate"
    assert allowed.status_code == 200 and allowed.json()["decision"] == "allow"
    assert queued.json()["decision"] == "queue" and queued.json()["rule"] == "approval_threshold"
    assert any("full-remediate" in line for line in queued.json()["rationale"])
    assert denied.json()["decision"] == "deny" and denied.json()["rule"] == "path_deny"
    assert audit.status_code == 200
    assert all(not e["type"].startswith("command.") for e in audit.json()["events"])  # nothing ran


@pytest.mark.parametrize(
    "body",
    [
        {"probe_id": "x"},
        {"probe_id": "x", "command": "ls", "kind": "shell", "spec": {}},
        {"probe_id": "x", "kind": "shell"},
        {"probe_id": "x", "command": ""},
        {"probe_id": "x", "command": "ls", "args": "not-a-list"},
        {"command": "ls"},
    ],
)
async def test_malformed_evaluations_are_422(running: Running, body: dict[str, Any]) -> None:
    async with running.client() as admin:
        response = await admin.post("/api/v1/policies/evaluate", json=body)
    assert_error(response, 422, "invalid_request")


async def test_evaluate_with_a_broken_spec_or_unknown_probe_is_never_a_500(running: Running) -> None:
    probe_id = await register(running, "web-2")
    async with running.client() as admin:
        unknown_probe = await admin.post("/api/v1/policies/evaluate", json={"probe_id": "prb-nope", "command": "ls"})
        bad_kind = await admin.post(
            "/api/v1/policies/evaluate", json={"probe_id": probe_id, "kind": "teleport", "spec": {}}
        )
        bad_spec = await admin.post(
            "/api/v1/policies/evaluate", json={"probe_id": probe_id, "kind": "file_read", "spec": {"path": 5}}
        )
        bad_regex = await admin.post("/api/v1/policies", json={"name": "r", "allow_patterns": ["re:("]})
        bad_level = await admin.post("/api/v1/policies", json={"name": "r", "level": "god"})
        unknown_policy = await admin.post(f"/api/v1/probes/{probe_id}/apply-policy/pol-nope")
        unknown_target = await admin.post("/api/v1/probes/prb-nope/apply-policy/diagnose")
    assert_error(unknown_probe, 404, "not_found")
    assert_error(bad_kind, 422, "invalid_request")
    assert_error(bad_spec, 422, "invalid_request")
    assert_error(bad_regex, 422, "invalid_request")
    assert_error(bad_level, 422, "invalid_request")
    assert_error(unknown_policy, 404, "not_found")
    assert_error(unknown_target, 404, "not_found")


async def test_permissions_read_needs_fleet_read_and_write_needs_fleet_write(running: Running) -> None:
    probe_id = await register(running, "web-3")
    reader = await make_key(running, "reader", "fleet:read")
    nobody = await make_key(running, "nobody", "audit:read")
    async with running.client(reader) as client:
        listed = await client.get("/api/v1/policies")
        evaluated = await client.post("/api/v1/policies/evaluate", json={"probe_id": probe_id, "command": "ls"})
        created = await client.post("/api/v1/policies", json={"name": "x"})
        applied = await client.post(f"/api/v1/probes/{probe_id}/apply-policy/diagnose")
        deleted = await client.delete("/api/v1/policies/diagnose")
    async with running.client(nobody) as client:
        hidden = await client.get("/api/v1/policies")
        hidden_evaluate = await client.post("/api/v1/policies/evaluate", json={"probe_id": probe_id, "command": "ls"})
    assert listed.status_code == 200 and evaluated.status_code == 200
    for response in (created, applied, deleted, hidden, hidden_evaluate):
        assert_error(response, 403, "forbidden")


async def test_apply_is_audited_with_before_and_after(running: Running) -> None:
    probe_id = await register(running, "web-4")
    async with running.client() as admin:
        applied = await admin.post(f"/api/v1/probes/{probe_id}/apply-policy/diagnose")
        probe = await admin.get(f"/api/v1/probes/{probe_id}")
        audit = await admin.get("/api/v1/audit", params={"type": "policy.changed"})
    assert applied.status_code == 200
    assert applied.json() == {
        "status": "applied_locally", "probe_id": probe_id, "policy_id": "diagnose", "level": "diagnose",
        "version": applied.json()["version"], "note": applied.json()["note"],
    }  # fmt: skip
    assert probe.json()["policy_id"] == "diagnose" and probe.json()["policy_level"] == "diagnose"
    event = audit.json()["events"][0]
    assert event["before"]["level"] == "remediate" and event["after"]["level"] == "diagnose"


def start_probe_again(probe: ProbeProcess, hostname: str = "host-0") -> ProbeProcess:
    with probe.log.open("ab") as handle:
        process = subprocess.Popen(
            [*PROBE, "run", "--config", str(probe.config)], env=probe_env(probe.config.parent, hostname),
            stdout=handle, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return ProbeProcess(probe_id=probe.probe_id, config=probe.config, process=process, log=probe.log)


async def _until(condition: Callable[[], bool], timeout: float = 20) -> None:
    for _ in range(int(timeout * 10)):
        if condition():
            return
        await anyio.sleep(0.1)
    raise AssertionError("condition not met in time")


def _policy(config: Path) -> dict[str, Any]:
    return dict(json.loads(config.read_text(encoding="utf-8")).get("policy", {}))


async def _policy_on_disk(config: Path, policy_id: str) -> dict[str, Any]:
    await _until(lambda: _policy(config).get("policy_id") == policy_id)
    return _policy(config)


async def test_a_connected_probe_gets_the_template_signed_and_again_on_reconnect(live: Running, tmp_path: Path) -> None:
    async with running_probes(live.base_url, live.admin_key, tmp_path) as probes:
        probe = probes[0]
        await _until(lambda: live.app.services.hub.is_connected(probe.probe_id))
        async with live.client() as admin:
            created = await admin.post(
                "/api/v1/policies", json={"name": "logs", "level": "diagnose", "path_allow": ["/var/log"]}
            )
            template_id = created.json()["id"]
            applied = await admin.post(f"/api/v1/probes/{probe.probe_id}/apply-policy/{template_id}")
        assert applied.status_code == 200, applied.text
        assert applied.json()["status"] == "applied" and applied.json()["level"] == "diagnose"
        on_disk = await _policy_on_disk(probe.config, template_id)
        assert on_disk["level"] == "diagnose" and on_disk["path_allow"] == ["/var/log"]
        # A template applied while the probe is away reaches it when it reconnects.
        probe.kill()
        await _until(lambda: not live.app.services.hub.is_connected(probe.probe_id))
        async with live.client() as admin:
            offline = await admin.post(f"/api/v1/probes/{probe.probe_id}/apply-policy/observe-only")
        assert offline.json()["status"] == "applied_locally"
        restarted = start_probe_again(probe)
        try:
            on_disk = await _policy_on_disk(probe.config, "observe-only")
            assert on_disk["level"] == "observe" and "/etc/shadow" in on_disk["path_deny"]
        finally:
            restarted.kill()


async def test_editing_a_template_re_pushes_it_and_the_probe_itself_enforces_the_new_block_pattern(
    live: Running, tmp_path: Path
) -> None:
    services = live.app.services
    marker = tmp_path / "touched"
    touch = CommandRequest(kind="shell", spec={"argv": ["touch", str(marker)]})
    async with running_probes(live.base_url, live.admin_key, tmp_path) as probes:
        probe = probes[0]
        await _until(lambda: services.hub.is_connected(probe.probe_id))
        async with live.client() as admin:
            created = await admin.post("/api/v1/policies", json={"name": "guarded", "level": "remediate"})
            template_id = created.json()["id"]
            await admin.post(f"/api/v1/probes/{probe.probe_id}/apply-policy/{template_id}")
            first = await _policy_on_disk(probe.config, template_id)
            edited = await admin.put(
                f"/api/v1/policies/{template_id}",
                json={"name": "guarded", "level": "remediate", "block_patterns": ["touch *", "re:^wget .*"]},
            )
            changed = await admin.get("/api/v1/audit", params={"type": "policy.changed", "probe_id": probe.probe_id})
        assert edited.status_code == 200 and edited.json()["version"] == 2
        await _until(lambda: _policy(probe.config).get("version", 0) > first["version"])
        on_disk = _policy(probe.config)
        assert on_disk["block_patterns"] == ["touch *"] and on_disk["policy_id"] == template_id
        latest = changed.json()["events"][0]
        assert latest["after"]["version"] == latest["before"]["version"] + 1 == on_disk["version"]

        # The control plane's own gate denies it now…
        denied = await services.command_flow.run(actor=OPERATOR, probe_id=probe.probe_id, request=touch, wait=True)
        assert denied.status is CommandStatus.DENIED and denied.rationale["rule"] == "block_pattern"
        # …and with that gate bypassed (a compromised control plane), the probe refuses it by itself.
        command = COMMAND_PAYLOAD_ADAPTER.validate_python(
            {**touch.model_dump(exclude={"request_id"}), "request_id": "cmd-bypass-block",
             **services.hub.signed_fields(probe.probe_id)}
        )  # fmt: skip
        allowed = PolicyDecision.model_validate(
            {**denied.rationale, "decision": "allow", "rationale": ["sent directly by a test"]}
        )
        await services.commands.create(
            actor=OPERATOR, command=command, decision=allowed, status=CommandStatus.DISPATCHED
        )
        await services.hub.dispatch(command)
        run = await services.hub.wait("cmd-bypass-block", timeout=20)
        assert run is not None and run.status is CommandStatus.REFUSED and run.error_code == "rejected_policy"
        assert "blocked pattern" in (run.error or "")
        assert not marker.exists()
