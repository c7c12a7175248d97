"""One gate on every path: a high-risk command is queued for approval whichever entry point sends it."""

from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from tests.support.app import Running
from tests.support.probes import running_probes
from tests.support.waiting import until

from legator_mcp.approval.schemas import ApprovalStatus
from legator_mcp.commands.schemas import CommandStatus
from legator_mcp.mcp.server import build_mcp_server
from legator_mcp.principal import Permission, Principal, PrincipalKind

pytestmark = pytest.mark.anyio

AGENT = Principal(PrincipalKind.API_KEY, "k-agent", "agent", frozenset({Permission.ADMIN}), via="mcp")

NOT_RUNNING_COMMANDS = {"legator_get_command_result", "legator_cancel_command"}
"""Command-permission tools that look up or stop a run instead of sending a command."""

ONLY_READ = {"legator_read_file", "legator_list_processes"}
"""Tools whose commands only read: the classifier never rates them high, so there is nothing to queue."""


def high_risk_calls(probe_id: str, marker: Path) -> dict[str, dict[str, Any]]:
    """A high-risk call for each MCP tool that sends a command (shell, file write, unit stop, kubectl delete)."""
    script = f"rm -rf {marker.parent / 'scratch'}; touch {marker}"
    return {
        "legator_run_command": {"probe_id": probe_id, "command": script},
        "legator_write_file": {"probe_id": probe_id, "path": "/etc/cron.d/legator-gate-test", "content": "x"},
        "legator_systemd": {"probe_id": probe_id, "action": "stop", "unit": "nginx.service"},
        "legator_kubectl": {"probe_id": probe_id, "args": ["delete", "pod", "web-0"]},
        "legator_run_fleet_command": {"probe_ids": [probe_id], "command": script},
    }


async def test_a_high_risk_command_is_queued_by_every_entry_point_and_nothing_runs(
    live: Running, tmp_path: Path
) -> None:
    services = live.app.services
    marker = tmp_path / "ran"
    script = f"rm -rf {tmp_path / 'scratch'}; touch {marker}"
    async with running_probes(live.base_url, live.admin_key, tmp_path / "probes") as probes:
        probe_id = probes[0].probe_id
        await until(lambda: services.hub.is_connected(probe_id))
        approvals: dict[str, str] = {}

        async with live.client() as client:
            single = await client.post(f"/api/v1/probes/{probe_id}/command?wait=true", json={"command": script})
            fleet = await client.post(
                "/api/v1/fleet/command?wait=true", json={"command": script, "targets": {"probe_ids": [probe_id]}}
            )
        assert single.status_code == 202 and single.json()["status"] == "pending_approval", single.text
        approvals["rest:/api/v1/probes/{id}/command"] = single.json()["approval_id"]
        assert fleet.status_code == 200 and fleet.json()["summary"]["pending_approval"] == 1, fleet.text
        approvals["rest:/api/v1/fleet/command"] = fleet.json()["approval_id"]

        server, registry = build_mcp_server(services, local_principal=AGENT)
        calls = high_risk_calls(probe_id, marker)
        sending = {
            name for name, permission in registry.tool_permissions.items()
            if permission is Permission.COMMAND_EXEC and "job" not in name
        } - NOT_RUNNING_COMMANDS  # fmt: skip
        # Every MCP tool that sends a command is driven here (jobs have their own gate test).
        assert sending == set(calls) | ONLY_READ
        async with Client(server) as client:
            for tool, arguments in calls.items():
                result = await client.call_tool(tool, arguments)
                assert not result.is_error and result.structured_content is not None, (tool, result)
                body = result.structured_content
                if tool == "legator_run_fleet_command":
                    assert [r["status"] for r in body["results"]] == ["pending_approval"], body
                else:
                    assert body["status"] == "pending_approval" and body["how_to_approve"], (tool, body)
                approvals[f"mcp:{tool}"] = body["approval_id"]

        assert all(approvals.values()) and len(set(approvals.values())) == len(approvals) == 7
        pending = await services.approvals.list(status=ApprovalStatus.PENDING, probe_id=probe_id)
        assert {a.id for a in pending.approvals} == set(approvals.values())
        waiting = await services.commands.recent_for_probe(probe_id, limit=50)
        assert {r.status for r in waiting} == {CommandStatus.PENDING_APPROVAL} and len(waiting) == 7
        assert all(r.risk in {"high", "critical"} and r.decision == "queue" for r in waiting)
        assert not marker.exists()
