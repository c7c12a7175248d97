"""Jobs against real ``legator-probe`` processes, with the scheduler on a hand-moved clock: cron fires at the
right minutes, failing commands retry with their backoff and give up, cancel stops the command on the probe,
retry makes a new attempt, and policy denies or queues a job above a probe's level.
"""

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
from tests.support.app import Running, serve
from tests.support.probes import ProbeProcess, online_probes

from legator_mcp.app import LegatorApp
from legator_mcp.commands.schemas import CommandStatus
from legator_mcp.events.service import Subscription
from legator_mcp.jobs.clock import ManualClock
from legator_mcp.jobs.schemas import JobRunQuery, JobRunRead, RunStatus
from legator_mcp.principal import Permission, Principal, PrincipalKind
from legator_mcp.settings import Settings

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

T0 = datetime(2030, 1, 1, 10, 2, 30, tzinfo=UTC)


@asynccontextmanager
async def _serve(settings: Settings, clock: ManualClock) -> AsyncIterator[Running]:
    fast = settings.model_copy(update={"heartbeat_interval_s": 0.5, "offline_after_s": 5.0})

    def use_clock(app: LegatorApp) -> None:
        app.services.jobs.clock = clock

    async with serve(fast, prepare=use_clock) as cp:
        with anyio.fail_after(20):
            await cp.app.services.job_scheduler.leading.wait()
        yield cp


@asynccontextmanager
async def _fleet(
    settings: Settings, workdir: Path, *, level: str = "remediate", count: int = 1
) -> AsyncIterator[tuple[Running, ManualClock, list[ProbeProcess]]]:
    clock = ManualClock(T0)
    async with _serve(settings, clock) as cp, online_probes(cp, workdir, count, level=level, tags="jobs") as probes:
        yield cp, clock, probes


async def _until_run(
    events: Subscription, cp: Running, predicate: Callable[[JobRunRead], bool], *, timeout: float = 30
) -> JobRunRead:
    """Wait (bounded) for a job run event after which some run satisfies ``predicate``."""
    jobs = cp.app.services.jobs
    with anyio.fail_after(timeout):
        while True:
            for run in (await jobs.list_runs(JobRunQuery(limit=500))).runs:
                if predicate(run):
                    return run
            await events.next(timeout)


async def _passes(cp: Running, count: int = 2) -> None:
    """Wait until the scheduler completed ``count`` more passes (it has seen the clock where it is now)."""
    scheduler = cp.app.services.job_scheduler
    with anyio.fail_after(10):
        for _ in range(count):
            await scheduler.passed.wait()


def _at(minute: int, second: int = 0) -> datetime:
    return datetime(2030, 1, 1, 10, minute, second, tzinfo=UTC)


async def test_cron_fires_at_the_right_minutes_and_failures_retry_with_backoff_then_give_up(
    settings: Settings, tmp_path: Path
) -> None:
    async with _fleet(settings, tmp_path) as (cp, clock, probes), cp.client() as client:
        events = cp.app.services.events
        async with events.subscribe("job.*") as seen:
            created = await client.post(
                "/api/v1/jobs",
                json={"name": "five-minutely", "command": 'echo "tick $LEGATOR_HOSTNAME"', "schedule": "*/5 * * * *",
                      "target": {"kind": "tag", "value": "jobs"}},
            )  # fmt: skip
            assert created.status_code == 201, created.text
            job = created.json()
            assert job["next_run_at"] == "2030-01-01T10:05:00Z"
            clock.set(_at(4, 59))
            await _passes(cp)
            assert (await client.get(f"/api/v1/jobs/{job['id']}/runs")).json()["count"] == 0
            clock.set(_at(5))
            first = await _until_run(seen, cp, lambda r: r.status is RunStatus.SUCCESS)
            assert first.scheduled_for == _at(5) and first.output == "tick host-0\n" and first.exit_code == 0
            assert first.admission_decision == "allow" and first.probe_id == probes[0].probe_id
            # Twenty minutes of downtime: the missed fires (10:10 … 10:25) make ONE run, then the grid resumes.
            clock.set(_at(27))
            await _until_run(seen, cp, lambda r: r.scheduled_for == _at(10) and r.status is RunStatus.SUCCESS)
            await _passes(cp)
            runs = (await client.get(f"/api/v1/jobs/{job['id']}/runs")).json()
            assert sorted(r["scheduled_for"] for r in runs["runs"]) == ["2030-01-01T10:05:00Z", "2030-01-01T10:10:00Z"]
            shown = (await client.get(f"/api/v1/jobs/{job['id']}")).json()
            assert shown["next_run_at"] == "2030-01-01T10:30:00Z" and shown["last_status"] == "success"

            failing = await client.post(
                "/api/v1/jobs",
                json={"name": "flaky", "command": "echo failing; exit 3", "target": {"kind": "probe",
                      "value": probes[0].probe_id}, "retry_policy": {"max_attempts": 3, "initial_backoff": "10s",
                      "multiplier": 2}},
            )  # fmt: skip
            flaky = failing.json()
            triggered = await client.post(f"/api/v1/jobs/{flaky['id']}/run")
            assert triggered.status_code == 202 and triggered.json()["runs"][0]["status"] == "queued"
            execution = triggered.json()["runs"][0]["execution_id"]
            attempt1 = await _until_run(seen, cp, lambda r: r.execution_id == execution and r.status.value == "failed")
            assert attempt1.exit_code == 3 and attempt1.output == "failing\n"
            failed_at = attempt1.ended_at
            assert failed_at is not None and attempt1.retry_scheduled_at == failed_at + timedelta(seconds=10)
            clock.advance(timedelta(seconds=9))
            await _passes(cp)
            queued = (await client.get("/api/v1/jobs/runs", params={"job_id": flaky["id"], "status": "queued"})).json()
            assert [r["attempt"] for r in queued["runs"]] == [2]
            clock.advance(timedelta(seconds=1))
            attempt2 = await _until_run(seen, cp, lambda r: r.execution_id == execution and r.attempt == 2
                                        and r.status.value == "failed")  # fmt: skip
            assert attempt2.retry_scheduled_at == clock.now() + timedelta(seconds=20)
            clock.advance(timedelta(seconds=20))
            attempt3 = await _until_run(seen, cp, lambda r: r.execution_id == execution and r.attempt == 3
                                        and r.status.value == "failed")  # fmt: skip
            assert attempt3.retry_scheduled_at is None and attempt3.max_attempts == 3
            clock.advance(timedelta(hours=1))
            await _passes(cp)
            all_runs = (await client.get(f"/api/v1/jobs/{flaky['id']}/runs")).json()
            assert all_runs["count"] == 3 and all_runs["counts"]["failed"] == 3
            assert (await client.get(f"/api/v1/jobs/{flaky['id']}")).json()["last_status"] == "failed"


async def test_cancel_stops_the_command_on_the_probe_and_retry_makes_a_new_attempt(
    settings: Settings, tmp_path: Path
) -> None:
    async with _fleet(settings, tmp_path) as (cp, _clock, probes), cp.client() as client:
        home = probes[0].config.parent
        (home / "slow").touch()
        script = 'if [ -e "$HOME/slow" ]; then echo waiting; sleep 30; touch "$HOME/finished"; fi; echo done'
        job = (
            await client.post(
                "/api/v1/jobs", json={"name": "slow", "command": script, "target": {"kind": "all"}, "timeout_s": 60}
            )
        ).json()
        async with cp.app.services.events.subscribe("job.*") as seen:
            run = (await client.post(f"/api/v1/jobs/{job['id']}/run")).json()["runs"][0]
            await _until_run(seen, cp, lambda r: r.id == run["id"] and r.status is RunStatus.RUNNING)
            # The streamed output reaches the store while the command still runs.
            output = await cp.app.services.job_flow.output(run_id=run["id"], cursor=0, wait_s=10, max_chunks=10)
            assert [c.data for c in output.chunks] == ["waiting\n"] and not output.terminal
            canceled = await client.post(f"/api/v1/jobs/{job['id']}/runs/{run['id']}/cancel")
            assert canceled.status_code == 200 and canceled.json()["run"]["status"] == "canceled"
            with anyio.fail_after(20):
                command = await cp.app.services.command_flow.result(request_id=run["request_id"], wait_s=15)
            assert command.status is CommandStatus.CANCELED
            again = await client.post(f"/api/v1/jobs/{job['id']}/runs/{run['id']}/cancel")
            assert again.status_code == 409 and again.json()["error"]["code"] == "invalid_transition"
            assert not (home / "finished").exists()

            (home / "slow").unlink()
            retried = await client.post(f"/api/v1/jobs/{job['id']}/runs/{run['id']}/retry")
            assert retried.status_code == 202, retried.text
            new = retried.json()["run"]
            assert (new["attempt"], new["execution_id"], new["trigger"]) == (2, run["execution_id"], "operator_retry")
            done = await _until_run(seen, cp, lambda r: r.id == new["id"] and r.terminal)
            assert done.status is RunStatus.SUCCESS and done.output == "done\n"
            succeeded = await client.post(f"/api/v1/jobs/{job['id']}/runs/{new['id']}/retry")
            assert succeeded.status_code == 409


async def test_policy_denies_a_job_above_the_probe_level(settings: Settings, tmp_path: Path) -> None:
    async with _fleet(settings, tmp_path, level="observe") as (cp, _clock, probes), cp.client() as client:
        job = (
            await client.post(
                "/api/v1/jobs",
                json={
                    "name": "change",
                    "command": "touch /tmp/legator-job-test",
                    "target": {"kind": "probe", "value": probes[0].probe_id},
                },
            )  # fmt: skip
        ).json()
        async with cp.app.services.events.subscribe("job.*") as seen:
            run = (await client.post(f"/api/v1/jobs/{job['id']}/run")).json()["runs"][0]
            denied = await _until_run(seen, cp, lambda r: r.id == run["id"] and r.terminal)
        assert denied.status is RunStatus.DENIED and denied.admission_decision == "deny"
        assert denied.admission_reason is not None and denied.admission_reason.startswith("rule level_cap")
        assert denied.admission_rationale is not None and denied.admission_rationale["rule"] == "level_cap"


async def test_a_queued_admission_waits_for_approval_then_runs_once(settings: Settings, tmp_path: Path) -> None:
    approver = Principal(PrincipalKind.API_KEY, "approver", "approver", frozenset({Permission.ADMIN}))
    async with _fleet(settings, tmp_path) as (cp, _clock, probes), cp.client() as client:
        script = 'rm -rf "$HOME/job-marker"; echo ran >> "$HOME/ran.txt"'
        job = (
            await client.post(
                "/api/v1/jobs", json={"name": "risky", "command": script, "target": {"kind": "tag", "value": "jobs"}}
            )
        ).json()
        services = cp.app.services
        async with services.events.subscribe("job.*") as seen:
            triggered = (await client.post(f"/api/v1/jobs/{job['id']}/run")).json()["runs"]
            first = await _until_run(seen, cp, lambda r: r.id == triggered[0]["id"] and r.status is RunStatus.PENDING)
            assert first.admission_decision == "queue" and first.approval_id
            assert not (probes[0].config.parent / "ran.txt").exists()
            await services.approvals.decide(approver=approver, approval_id=first.approval_id, decision="approved")
            done = await _until_run(seen, cp, lambda r: r.id == first.id and r.terminal)
            assert done.status is RunStatus.SUCCESS, done
            assert (probes[0].config.parent / "ran.txt").read_text(encoding="utf-8") == "ran\n"

            # Canceling a run that waits for approval withdraws the approval request.
            second = (await client.post(f"/api/v1/jobs/{job['id']}/run")).json()["runs"][0]
            waiting = await _until_run(seen, cp, lambda r: r.id == second["id"] and r.status is RunStatus.PENDING)
            await client.post(f"/api/v1/jobs/{job['id']}/cancel")
            assert waiting.approval_id is not None
            approval = await services.approvals.get(waiting.approval_id)
            assert approval.status == "denied"
            assert (await services.jobs.get_run(waiting.id)).status is RunStatus.CANCELED
        assert (probes[0].config.parent / "ran.txt").read_text(encoding="utf-8") == "ran\n"
