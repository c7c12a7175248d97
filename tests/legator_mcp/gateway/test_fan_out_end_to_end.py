"""Fleet fan-out against real ``legator-probe`` processes on loopback: by tag with every result, stopping early
on errors, one approval covering every queued host, label selectors, no-wait handles, MCP progress, and
cancellation reaching the probes.
"""

import json
import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from tests.support.app import Running, serve
from tests.support.probes import ProbeProcess, online_probes

from legator_mcp.approval.service import ApprovalDecided
from legator_mcp.commands.schemas import CommandStatus
from legator_mcp.flows.fan_out import TargetSelector
from legator_mcp.flows.run_command import CommandRequest
from legator_mcp.principal import Permission, Principal, PrincipalKind
from legator_mcp.settings import Settings

pytestmark = pytest.mark.anyio

COUNT = 6
TAG = "fanout"


@asynccontextmanager
async def _fleet(settings: Settings, workdir: Path) -> AsyncIterator[tuple[Running, list[ProbeProcess]]]:
    """A control plane with ``COUNT`` real probes tagged ``TAG``, all online."""
    fast = settings.model_copy(update={"heartbeat_interval_s": 0.5, "offline_after_s": 3.0})
    async with serve(fast) as cp, online_probes(cp, workdir, COUNT, tags=TAG) as probes:
        yield cp, probes


def _home(probe: ProbeProcess) -> Path:
    return probe.config.parent


async def test_fan_out_by_tag_returns_every_result_and_stops_early_on_errors(
    settings: Settings, tmp_path: Path
) -> None:
    async with _fleet(settings, tmp_path) as (cp, probes), cp.client() as client:
        started = time.perf_counter()
        response = await client.post(
            f"/api/v1/fleet/by-tag/{TAG}/command?wait=true", json={"command": 'echo "$LEGATOR_HOSTNAME"'}, timeout=60
        )
        elapsed = time.perf_counter() - started
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["summary"]["total"] == COUNT and body["summary"]["succeeded"] == COUNT
        assert not body["stopped_early"] and body["fanout_id"]
        assert [r["probe_id"] for r in body["results"]] == [p.probe_id for p in probes]
        assert {r["stdout"].strip() for r in body["results"]} == {r["hostname"] for r in body["results"]}
        assert all(r["exit_code"] == 0 and r["request_id"] and r["duration_ms"] is not None for r in body["results"])
        print(f"fan-out of echo to {COUNT} real probes by tag: {elapsed * 1000:.0f} ms wall")

        # max_errors=0 with one failing host: the hosts after it (one at a time, in target order) never run.
        (_home(probes[1]) / "fail").touch()
        response = await client.post(
            "/api/v1/fleet/command?wait=true",
            json={"command": 'test ! -e "$HOME/fail"', "targets": {"tag": TAG}, "max_errors": 0, "max_concurrency": 1},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        statuses = [r["status"] for r in body["results"]]
        assert statuses == ["ok", "error", *["not_run"] * (COUNT - 2)]
        assert body["stopped_early"]
        assert body["summary"] == {
            "total": COUNT, "succeeded": 1, "failed": 1, "timed_out": 0, "denied": 0, "offline": 0,
            "pending_approval": 0, "not_run": COUNT - 2, "dispatched": 0,
        }  # fmt: skip
        assert all(r["request_id"] is None for r in body["results"][2:])

        # A canary batch that fails stops the rest too.
        (_home(probes[0]) / "fail").touch()
        response = await client.post(
            f"/api/v1/fleet/by-tag/{TAG}/command?wait=true",
            json={"command": 'test ! -e "$HOME/fail"', "canary": 1},
            timeout=60,
        )
        body = response.json()
        assert [r["status"] for r in body["results"]] == ["error", *["not_run"] * (COUNT - 1)]

        # Label selectors (ANDed with the tag); a killed probe is reported offline without anything sent.
        db = sqlite3.connect(cp.app.settings.data_dir / "legator.db")
        for probe in probes[:3]:
            db.execute("UPDATE probes SET labels = ? WHERE id = ?", (json.dumps({"role": "web"}), probe.probe_id))
        db.commit()
        db.close()
        async with cp.app.services.events.subscribe("probe.offline") as offline:
            probes[2].kill()
            with anyio.fail_after(30):
                async for event in offline:
                    if event.probe_id == probes[2].probe_id:
                        break
        response = await client.post(
            "/api/v1/fleet/command?wait=true",
            json={"command": "true", "targets": {"tag": TAG, "selector": {"role": "web"}}},
            timeout=60,
        )
        body = response.json()
        assert [r["probe_id"] for r in body["results"]] == [p.probe_id for p in probes[:3]]
        assert [r["status"] for r in body["results"]] == ["ok", "ok", "offline"]
        assert body["results"][2]["request_id"] is None and body["summary"]["offline"] == 1

        # Without wait: 202 and a request id per target, each fetchable on its own.
        response = await client.post(
            "/api/v1/fleet/command", json={"command": "echo later", "targets": {"probe_ids": [probes[3].probe_id,
                                                                                             probes[4].probe_id]}}
        )  # fmt: skip
        assert response.status_code == 202, response.text
        body = response.json()
        assert [r["status"] for r in body["results"]] == ["dispatched", "dispatched"]
        for item in body["results"]:
            with anyio.fail_after(20):
                final = await cp.app.services.command_flow.result(request_id=item["request_id"], wait_s=15)
            assert final.status is CommandStatus.OK and final.stdout == "later\n"
            fetched = await client.get(f"/api/v1/commands/{item['request_id']}")
            assert fetched.json()["stdout"] == "later\n"

        invalid = await client.post("/api/v1/fleet/command?wait=true", json={"command": "true", "targets": {}})
        assert invalid.status_code == 422
        no_wait_budget = await client.post(f"/api/v1/fleet/by-tag/{TAG}/command", json={"command": "true", "canary": 1})
        assert no_wait_budget.status_code == 422


async def test_a_high_risk_fan_out_queues_one_approval_that_runs_every_host_once(
    settings: Settings, tmp_path: Path
) -> None:
    requester = Principal(PrincipalKind.API_KEY, "requester", "requester", frozenset({Permission.ADMIN}))
    approver = Principal(PrincipalKind.API_KEY, "approver", "approver", frozenset({Permission.ADMIN}))
    script = 'rm -rf "$HOME/fanout-marker"; echo ran >> "$HOME/ran.txt"'
    async with _fleet(settings, tmp_path) as (cp, probes):
        services = cp.app.services
        result = await services.fan_out.run(
            actor=requester, targets=TargetSelector(tag=TAG), wait=True,
            request=CommandRequest(kind="shell", spec={"script": script}),
        )  # fmt: skip
        assert result.summary.pending_approval == COUNT and result.approval_id
        assert {r.approval_id for r in result.results} == {result.approval_id}
        approval = await services.approvals.get(result.approval_id)
        assert sorted(approval.probe_ids) == sorted(p.probe_id for p in probes)
        assert not any((_home(p) / "ran.txt").exists() for p in probes)

        await services.approvals.decide(approver=approver, approval_id=result.approval_id, decision="approved")
        for item in result.results:
            assert item.request_id
            with anyio.fail_after(20):
                final = await services.command_flow.result(request_id=item.request_id, wait_s=15)
            assert final.status is CommandStatus.OK, final
        assert [(_home(p) / "ran.txt").read_text(encoding="utf-8") for p in probes] == ["ran\n"] * COUNT
        with pytest.raises(ApprovalDecided):
            await services.approvals.decide(approver=approver, approval_id=result.approval_id, decision="approved")
        assert [(_home(p) / "ran.txt").read_text(encoding="utf-8") for p in probes] == ["ran\n"] * COUNT


async def test_mcp_fleet_command_reports_progress_and_cancellation_stops_the_probes(
    settings: Settings, tmp_path: Path
) -> None:
    async with _fleet(settings, tmp_path) as (cp, _):
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {cp.admin_key}"}, timeout=60)
        async with http, Client(streamable_http_client(f"{cp.base_url}/mcp", http_client=http)) as client:
            tools = {tool.name: tool for tool in (await client.list_tools()).tools}
            annotations = tools["legator_run_fleet_command"].annotations
            assert annotations is not None and annotations.destructive_hint
            messages: list[str] = []

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                messages.append(message or "")

            ran = await client.call_tool(
                "legator_run_fleet_command", {"command": "uname", "args": ["-s"], "tag": TAG, "max_concurrency": 3},
                progress_callback=on_progress,
            )  # fmt: skip
            assert not ran.is_error and ran.structured_content is not None
            assert ran.structured_content["summary"]["succeeded"] == COUNT
            assert {r["stdout"] for r in ran.structured_content["results"]} == {"Linux\n"}
            assert f"{COUNT}/{COUNT} hosts done, 0 failed" in messages

        # Cancelling the fan-out (what an MCP client's cancellation does to the tool) cancels every command.
        services = cp.app.services
        actor = Principal(PrincipalKind.API_KEY, "op", "op", frozenset({Permission.ADMIN}))
        request_ids: list[str] = []
        async with services.events.subscribe("command.dispatched") as dispatched:
            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    lambda: services.fan_out.run(
                        actor=actor, targets=TargetSelector(tag=TAG), wait=True,
                        request=CommandRequest(kind="shell", spec={"script": "sleep 30"}, timeout_s=60),
                    )
                )  # fmt: skip
                with anyio.fail_after(20):
                    async for event in dispatched:
                        request_ids.append(str((event.detail or {})["request_id"]))
                        if len(request_ids) == COUNT:
                            break
                tg.cancel_scope.cancel()
        for request_id in request_ids:
            with anyio.fail_after(20):
                final = await services.command_flow.result(request_id=request_id, wait_s=15)
            assert final.status is CommandStatus.CANCELED, final


async def test_a_host_that_never_answers_times_out_while_the_others_report(settings: Settings, tmp_path: Path) -> None:
    # Offline detection is slower than the command's timeout, so the stopped probe stays connected and silent.
    patient = settings.model_copy(update={"heartbeat_interval_s": 0.5, "offline_after_s": 60.0})
    async with serve(patient) as cp, online_probes(cp, tmp_path, 3, tags=TAG) as probes, cp.client() as client:
        silent = probes[1]
        silent.process.send_signal(signal.SIGSTOP)
        try:
            started = time.perf_counter()
            response = await client.post(
                f"/api/v1/fleet/by-tag/{TAG}/command?wait=true",
                json={"command": "echo hi", "timeout_s": 1}, timeout=60,
            )  # fmt: skip
            elapsed = time.perf_counter() - started
        finally:
            silent.process.send_signal(signal.SIGCONT)
        assert response.status_code == 200, response.text
        body = response.json()
        by_probe = {r["probe_id"]: r for r in body["results"]}
        assert by_probe[silent.probe_id]["status"] == "timeout"
        assert by_probe[silent.probe_id]["error_code"] == "result_timeout"
        assert [by_probe[p.probe_id]["stdout"] for p in probes if p is not silent] == ["hi\n", "hi\n"]
        assert body["summary"] == {**body["summary"], "total": 3, "succeeded": 2, "timed_out": 1}
        # The command's 1 s plus the control plane's grace, not the test's 60 s.
        assert elapsed < 30
        stored = await cp.app.services.command_flow.result(request_id=by_probe[silent.probe_id]["request_id"])
        assert stored.status is CommandStatus.TIMEOUT
