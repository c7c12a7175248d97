"""Fan-out without live probes: target resolution, option checks, offline reporting and the summary."""

import json
import sqlite3
from typing import Any

import httpx
import pytest
from tests.support.app import Running

from legator_mcp.errors import Conflict, InvalidRequest, NotFound, PermissionDenied
from legator_mcp.flows.fan_out import TargetResult, TargetSelector, summarise
from legator_mcp.flows.run_command import CommandRequest
from legator_mcp.principal import Permission, Principal, PrincipalKind

pytestmark = pytest.mark.anyio

ECHO = CommandRequest(kind="shell", spec={"argv": ["echo", "hi"]})
OPERATOR = Principal(PrincipalKind.API_KEY, "op", "op", frozenset({Permission.ADMIN}))


async def _register(running: Running, hostname: str, tags: list[str]) -> str:
    async with running.client() as admin:
        created = (await admin.post("/api/v1/tokens", json={"tags": tags, "policy_level": "remediate"})).json()
    async with running.client("") as anonymous:
        response = await anonymous.post("/api/v1/register", json={"token": created["token"], "hostname": hostname})
    assert response.status_code == 201, response.text
    return str(response.json()["probe_id"])


def _label(running: Running, probe_id: str, labels: dict[str, str]) -> None:
    db = sqlite3.connect(running.app.settings.data_dir / "legator.db")
    db.execute("UPDATE probes SET labels = ? WHERE id = ?", (json.dumps(labels), probe_id))
    db.commit()
    db.close()


def _result(status: str, exit_code: int | None = None) -> TargetResult:
    return TargetResult(probe_id="p", hostname="h", status=status, exit_code=exit_code)


def test_the_summary_counts_each_outcome_once() -> None:
    results = [
        _result("ok", 0), _result("ok", 2), _result("error", 1), _result("timeout"), _result("denied"),
        _result("offline"), _result("pending_approval"), _result("not_run"), _result("dispatched"), _result("lost"),
    ]  # fmt: skip
    summary = summarise(results)
    assert summary.model_dump() == {
        "total": 10, "succeeded": 1, "failed": 3, "timed_out": 1, "denied": 1, "offline": 1,
        "pending_approval": 1, "not_run": 1, "dispatched": 1,
    }  # fmt: skip
    assert [r.failed for r in results] == [False, True, True, True, False, False, False, False, False, True]


async def test_targets_resolve_by_ids_tag_and_labels_and_disconnected_probes_are_reported_offline(
    running: Running,
) -> None:
    web = [await _register(running, f"web-{i}", ["web"]) for i in range(3)]
    db = await _register(running, "db-0", ["db"])
    _label(running, web[0], {"role": "api", "zone": "a"})
    _label(running, db, {"role": "api", "zone": "a"})
    fan_out = running.app.services.fan_out

    by_tag = await fan_out.resolve(TargetSelector(tag="web"))
    assert [p.id for p in by_tag] == sorted(web)
    by_ids = await fan_out.resolve(TargetSelector(probe_ids=[db, web[1], db]))
    assert [p.id for p in by_ids] == [db, web[1]]
    by_labels = await fan_out.resolve(TargetSelector(selector={"role": "api", "zone": "a"}))
    assert {p.id for p in by_labels} == {web[0], db}
    both = await fan_out.resolve(TargetSelector(tag="web", selector={"role": "api"}))
    assert [p.id for p in both] == [web[0]]
    assert await fan_out.resolve(TargetSelector(tag="nothing")) == []
    with pytest.raises(NotFound):
        await fan_out.resolve(TargetSelector(probe_ids=["prb-missing"]))
    with pytest.raises(InvalidRequest):
        await fan_out.resolve(TargetSelector())

    seen: list[tuple[int, int]] = []

    async def on_result(result: TargetResult, done: int, total: int) -> None:
        seen.append((done, total))

    result = await fan_out.run(actor=OPERATOR, targets=TargetSelector(tag="web"), request=ECHO, wait=True,
                               on_result=on_result)  # fmt: skip
    assert [r.status for r in result.results] == ["offline"] * 3
    assert all(r.request_id is None for r in result.results)
    assert result.summary.offline == 3 and not result.stopped_early and result.approval_id is None
    assert seen == [(1, 3), (2, 3), (3, 3)]
    pending = await running.app.services.commands.pending()
    assert pending == []


async def test_options_and_permissions_are_checked_before_anything_runs(running: Running) -> None:
    fan_out = running.app.services.fan_out
    reader = Principal(PrincipalKind.API_KEY, "r", "r", frozenset({Permission.FLEET_READ}))
    with pytest.raises(PermissionDenied):
        await fan_out.run(actor=reader, targets=TargetSelector(tag="web"), request=ECHO, wait=True)
    web = TargetSelector(tag="web")
    for concurrency, canary, errors, wait in [(0, 0, None, True), (1, -1, None, True), (1, 0, -1, True),
                                              (1, 1, None, False), (1, 0, 0, False)]:  # fmt: skip
        with pytest.raises(InvalidRequest):
            await fan_out.run(
                actor=OPERATOR, targets=web, request=ECHO, wait=wait, max_concurrency=concurrency, canary=canary,
                max_errors=errors,
            )  # fmt: skip


async def test_rest_fan_out_checks_permission_and_input(running: Running) -> None:
    await _register(running, "web-0", ["web"])
    async with running.client() as admin:
        created = await admin.post("/api/v1/auth/keys", json={"name": "reader", "permissions": ["fleet:read"]})
        reader_key = created.json()["plain_key"]
        bodies: list[dict[str, Any]] = [
            {"command": "true"},
            {"command": "true", "targets": {"tag": "web"}, "request_id": "mine"},
            {"command": "true", "targets": {"tag": "web"}, "max_concurrency": 0},
            {"command": "true", "targets": {"nodes": ["x"]}},
        ]
        for body in bodies:
            response = await admin.post("/api/v1/fleet/command?wait=true", json=body)
            assert response.status_code == 422, (body, response.text)
        offline = await admin.post("/api/v1/fleet/by-tag/web/command?wait=true", json={"command": "true"})
        assert offline.status_code == 200
        assert offline.json()["summary"]["offline"] == 1
    async with running.client(reader_key) as reader:
        denied: httpx.Response = await reader.post("/api/v1/fleet/by-tag/web/command", json={"command": "true"})
        assert denied.status_code == 403


async def test_callers_request_ids_name_the_commands_and_must_be_distinct_one_per_target(running: Running) -> None:
    services = running.app.services
    ids = [await _register(running, f"job-{i}", ["jobs"]) for i in range(2)]
    probes = [await services.fleet.get_probe(probe_id) for probe_id in ids]
    decisions = await services.command_flow.evaluate_many(actor=OPERATOR, probes=probes, request=ECHO)
    targets = list(zip(probes, decisions, strict=True))
    flow = services.command_flow
    for bad in (["req-a"], ["req-a", "req-a"]):
        with pytest.raises(InvalidRequest):
            await flow.record_denied(actor=OPERATOR, targets=targets, request=ECHO, request_ids=bad)
    runs = await flow.record_denied(actor=OPERATOR, targets=targets, request=ECHO, request_ids=["req-a", "req-b"])
    assert [(run.request_id, run.probe_id, run.status) for run in runs] == [
        ("req-a", ids[0], "denied"), ("req-b", ids[1], "denied")
    ]  # fmt: skip
    # The same ids again: the commands exist already, so nothing is recorded twice.
    with pytest.raises(Conflict):
        await flow.record_denied(actor=OPERATOR, targets=targets, request=ECHO, request_ids=["req-a", "req-b"])
