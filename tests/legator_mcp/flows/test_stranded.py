"""Approvals decided by a process that stopped before acting on them: released once, or closed with a reason.

"Another process" is a second ``ApprovalService`` on the same database without the command flow's release
hook: its decisions commit, and nothing is sent (what a crash right after the decision leaves behind).
"""

from datetime import timedelta
from pathlib import Path

import pytest
from tests.support.app import Running
from tests.support.probes import running_probes
from tests.support.waiting import until

from legator_mcp.app_context import AppContext
from legator_mcp.approval.schemas import ApprovalStatus
from legator_mcp.approval.service import ApprovalService
from legator_mcp.commands.schemas import CommandStatus
from legator_mcp.flows.stranded import StrandedApprovals
from legator_mcp.principal import Permission, Principal, PrincipalKind

pytestmark = pytest.mark.anyio

APPROVER = Principal(PrincipalKind.API_KEY, "k-second", "second-admin", frozenset({Permission.ADMIN}))


def _settler(
    services: AppContext,
    *,
    stranded_after: timedelta = timedelta(seconds=30),
    release_window: timedelta = timedelta(minutes=15),
) -> StrandedApprovals:
    return StrandedApprovals(
        flow=services.command_flow, commands=services.commands, approvals=services.approvals, links=services.hub,
        stranded_after=stranded_after, release_window=release_window,
    )  # fmt: skip


async def _queue(live: Running, probe_id: str, script: str) -> tuple[str, str]:
    async with live.client() as client:
        response = await client.post(f"/api/v1/probes/{probe_id}/command", json={"command": script})
    body = response.json()
    assert response.status_code == 202 and body["status"] == "pending_approval", response.text
    return body["request_id"], body["approval_id"]


async def test_stranded_approvals_are_released_once_or_closed_with_a_reason(live: Running, tmp_path: Path) -> None:
    services = live.app.services
    crashed = ApprovalService(database=services.database, audit=services.audit, events=services.events)
    ran = tmp_path / "ran.txt"
    script = f"rm -rf {tmp_path / 'scratch'}; echo ran >> {ran}"
    async with running_probes(live.base_url, live.admin_key, tmp_path / "probes") as probes:
        probe_id = probes[0].probe_id
        await until(lambda: services.hub.is_connected(probe_id))

        approved_run, approved = await _queue(live, probe_id, script)
        consumed_run, consumed = await _queue(live, probe_id, script)
        denied_run, denied = await _queue(live, probe_id, script)
        fresh_run, fresh = await _queue(live, probe_id, script)
        for approval_id in (approved, consumed, fresh):
            await crashed.decide(approver=APPROVER, approval_id=approval_id, decision="approved")
        await crashed.decide(approver=APPROVER, approval_id=denied, decision="denied")
        # The other process even released this one, then stopped before sending its command.
        expected = (await services.approvals.get(consumed)).payload_sha256
        await crashed.consume(approval_id=consumed, expected_sha256=expected, consumer_ref=consumed_run)

        # Decided moments ago: the releasing process may still be at it, so nothing is touched yet.
        untouched = await _settler(services).settle()
        assert untouched.released == [] and untouched.lost == [] and untouched.closed == [denied]

        settled = await _settler(services, stranded_after=timedelta(0)).settle()
        assert sorted(settled.released) == sorted([approved, fresh]) and settled.lost == [consumed]
        for request_id in (approved_run, fresh_run):
            final = await services.command_flow.result(request_id=request_id, wait_s=20)
            assert final.status is CommandStatus.OK and final.exit_code == 0, final
        lost = await services.commands.get(consumed_run)
        assert lost.status is CommandStatus.LOST and lost.error_code == "released_not_sent"
        closed = await services.commands.get(denied_run)
        assert closed.status is CommandStatus.DENIED and closed.error_code == "approval_denied"
        assert (await services.approvals.get(approved)).status is ApprovalStatus.CONSUMED

        # Nothing is left waiting, and a second pass sends nothing again: each approved command ran once.
        again = await _settler(services, stranded_after=timedelta(0)).settle()
        assert again.released == again.lost == again.closed == again.lapsed == []
        assert ran.read_text(encoding="utf-8") == "ran\n" * 2

        # Approved while its probe is away: it waits for the probe, and once the window has passed it is closed.
        away_run, away = await _queue(live, probe_id, script)
        probes[0].kill()
        await until(lambda: not services.hub.is_connected(probe_id))
        await crashed.decide(approver=APPROVER, approval_id=away, decision="approved")
        waiting = await _settler(services, stranded_after=timedelta(0)).settle()
        assert waiting.released == waiting.lapsed == []
        assert (await services.commands.get(away_run)).status is CommandStatus.PENDING_APPROVAL
        lapsed = await _settler(services, stranded_after=timedelta(0), release_window=timedelta(0)).settle()
        assert lapsed.lapsed == [away]
        final = await services.commands.get(away_run)
        assert final.status is CommandStatus.ERROR and final.error_code == "approval_not_released"
    assert ran.read_text(encoding="utf-8") == "ran\n" * 2
