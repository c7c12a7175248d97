"""Job routes through the real ASGI app: validation naming the field, CRUD, permissions, run-now, run listing
filters and paging, cancel. Runs here target a probe that does not exist, so they fail without a fleet.
"""

from typing import Any

import anyio
import pytest
from tests.support.app import Running

from legator_mcp.jobs.schemas import RunStatus

pytestmark = pytest.mark.anyio

JOB: dict[str, Any] = {"name": "disk usage", "command": "df -h", "target": {"kind": "probe", "value": "prb-ghost"}}


def _fields(body: dict[str, Any]) -> set[str]:
    return {f["field"] for f in body["error"]["details"]["fields"]}


async def _key(running: Running, *permissions: str) -> str:
    async with running.client() as admin:
        created = await admin.post("/api/v1/auth/keys", json={"name": "-".join(permissions).replace(":", "-"),
                                                              "permissions": list(permissions)})  # fmt: skip
    return str(created.json()["plain_key"])


@pytest.mark.parametrize(
    ("change", "field"),
    [
        pytest.param({"schedule": "every tuesday"}, "schedule", id="cron"),
        pytest.param({"schedule": "70 * * * *"}, "schedule", id="cron-range"),
        pytest.param({"target": {"kind": "tag", "value": ""}}, "target", id="empty-tag"),
        pytest.param({"target": {"kind": "cluster", "value": "x"}}, "target.kind", id="target-kind"),
        pytest.param({"retry_policy": {"max_attempts": 0}}, "retry_policy.max_attempts", id="attempts"),
        pytest.param(
            {"command": {"kind": "systemd", "spec": {"action": "bounce", "unit": "x"}}},
            "command.systemd.spec.action",
            id="command-spec",
        ),  # fmt: skip
    ],
)
async def test_an_invalid_job_is_422_naming_the_field(running: Running, change: dict[str, Any], field: str) -> None:
    async with running.client() as client:
        response = await client.post("/api/v1/jobs", json={**JOB, **change})
    assert response.status_code == 422, response.text
    assert field in _fields(response.json())


async def test_jobs_are_created_listed_changed_enabled_and_deleted(running: Running) -> None:
    async with running.client() as client:
        created = await client.post("/api/v1/jobs", json={**JOB, "schedule": "@hourly", "retry_policy": {
            "max_attempts": 2, "initial_backoff": "30s"}})  # fmt: skip
        assert created.status_code == 201, created.text
        job = created.json()
        assert job["schedule_kind"] == "cron" and job["enabled"] and job["next_run_at"].endswith(":00:00Z")
        assert job["retry_policy"] == {
            "max_attempts": 2,
            "initial_backoff": 30.0,
            "multiplier": 2.0,
            "max_backoff": None,
        }
        assert job["command"] == {"kind": "shell", "spec": {"argv": None, "script": "df -h", "cwd": None, "env": {}}}
        listed = (await client.get("/api/v1/jobs")).json()
        assert listed["count"] == 1 and listed["jobs"][0]["id"] == job["id"]
        changed = await client.put(f"/api/v1/jobs/{job['id']}", json={"schedule": "10m", "name": "du"})
        assert changed.status_code == 200 and changed.json()["schedule_kind"] == "interval"
        assert changed.json()["name"] == "du" and changed.json()["target"] == JOB["target"]
        bad = await client.put(f"/api/v1/jobs/{job['id']}", json={"schedule": "0 25 * * *"})
        assert bad.status_code == 422 and "schedule" in _fields(bad.json())
        disabled = (await client.post(f"/api/v1/jobs/{job['id']}/disable")).json()
        assert not disabled["enabled"] and disabled["next_run_at"] is None
        enabled = (await client.post(f"/api/v1/jobs/{job['id']}/enable")).json()
        assert enabled["enabled"] and enabled["next_run_at"] is not None
        assert (await client.delete(f"/api/v1/jobs/{job['id']}")).status_code == 204
        missing = await client.get(f"/api/v1/jobs/{job['id']}")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        assert (await client.post(f"/api/v1/jobs/{job['id']}/run")).status_code == 404


async def test_defining_or_running_a_job_needs_command_exec(running: Running) -> None:
    writer = await _key(running, "fleet:write", "fleet:read")
    async with running.client() as admin:
        job = (await admin.post("/api/v1/jobs", json=JOB)).json()
    async with running.client(writer) as client:
        refused = await client.post("/api/v1/jobs", json=JOB)
        assert refused.status_code == 403
        assert refused.json()["error"]["details"]["required_permission"] == "command:exec"
        assert (await client.put(f"/api/v1/jobs/{job['id']}", json={"name": "x"})).status_code == 403
        assert (await client.post(f"/api/v1/jobs/{job['id']}/run")).status_code == 403
        assert (await client.post(f"/api/v1/jobs/{job['id']}/disable")).status_code == 200
        assert (await client.get(f"/api/v1/jobs/{job['id']}/runs")).status_code == 200


async def test_run_now_queues_one_run_per_target_and_runs_are_listed_filtered_and_paged(running: Running) -> None:
    services = running.app.services
    with anyio.fail_after(10):
        await services.job_scheduler.leading.wait()
    async with running.client() as client, services.events.subscribe("job.run.failed") as failed:
        job = (await client.post("/api/v1/jobs", json=JOB)).json()
        ids: list[str] = []
        for _ in range(3):
            response = await client.post(f"/api/v1/jobs/{job['id']}/run")
            assert response.status_code == 202, response.text
            body = response.json()
            assert body["status"] == "dispatched" and [r["status"] for r in body["runs"]] == ["queued"]
            ids.append(body["runs"][0]["id"])
        with anyio.fail_after(20):
            done: set[str] = set()
            async for event in failed:
                done.add(str((event.detail or {})["run_id"]))
                if done >= set(ids):
                    break
        page = (await client.get(f"/api/v1/jobs/{job['id']}/runs", params={"limit": 2})).json()
        assert page["count"] == 2 and page["next_cursor"] and page["counts"]["failed"] == 2
        rest = (
            await client.get("/api/v1/jobs/runs", params={"job_id": job["id"], "cursor": page["next_cursor"]})
        ).json()
        assert [r["id"] for r in page["runs"] + rest["runs"]] == ids[::-1]
        run = rest["runs"][0]
        assert run["status"] == RunStatus.FAILED and run["error"] == "probe prb-ghost not found" and run["terminal"]
        assert run["admission_decision"] is None
        by_probe = await client.get("/api/v1/jobs/runs", params={"probe_id": "prb-ghost", "status": "success"})
        assert by_probe.json()["count"] == 0
        later = await client.get("/api/v1/jobs/runs", params={"started_after": "2099-01-01T00:00:00Z"})
        assert later.json()["count"] == 0
        reversed_range = await client.get(
            "/api/v1/jobs/runs",
            params={"started_after": "2030-01-02T00:00:00Z", "started_before": "2030-01-01T00:00:00Z"},
        )
        assert reversed_range.status_code == 422
        assert (await client.get("/api/v1/jobs/runs", params={"job_id": "nope"})).status_code == 404
        assert (await client.get("/api/v1/jobs/runs", params={"status": "exploded"})).status_code == 422
        retried = await client.post(f"/api/v1/jobs/{job['id']}/runs/{run['id']}/retry")
        assert retried.status_code == 202 and retried.json()["run"]["attempt"] == 2
        other = await client.post(f"/api/v1/jobs/other/runs/{run['id']}/cancel")
        assert other.status_code == 404
        canceled = (await client.post(f"/api/v1/jobs/{job['id']}/cancel")).json()
        assert canceled["status"] == "cancel_requested"
