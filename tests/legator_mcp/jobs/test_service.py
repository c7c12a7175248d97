"""The job service against real SQLite and PostgreSQL with a hand-moved clock: schedules without drift, missed
fires collapsed into one, compare-and-set run transitions, retries with backoff, cancel and operator retry.
"""

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
from pydantic import ValidationError

from legator_mcp.app import build_services
from legator_mcp.app_context import AppContext
from legator_mcp.db.migrate import upgrade
from legator_mcp.errors import NotFound, PermissionDenied
from legator_mcp.jobs.clock import ManualClock
from legator_mcp.jobs.schedule import RetryPolicy, backoff_delay, parse_schedule
from legator_mcp.jobs.schemas import JobCreate, JobRunQuery, JobUpdate, RunStatus
from legator_mcp.jobs.service import InvalidTransition, JobService
from legator_mcp.principal import Permission, Principal, PrincipalKind
from legator_mcp.settings import Settings

pytestmark = pytest.mark.anyio

T0 = datetime(2030, 1, 1, 10, 2, 30, tzinfo=UTC)
OPS = Principal(PrincipalKind.API_KEY, "k-ops", "ops", frozenset({Permission.ADMIN}), via="rest")
READER = Principal(PrincipalKind.API_KEY, "k-ro", "ro", frozenset({Permission.FLEET_WRITE}), via="rest")
DEFAULTS = RetryPolicy(max_attempts=1, initial_backoff_s=5, multiplier=2, max_backoff_s=None)


@pytest.fixture
async def services(database_url: str, tmp_path: Path) -> AsyncIterator[AppContext]:
    settings = Settings(_env_file=None, data_dir=tmp_path / "data", database_url=database_url)  # pyright: ignore[reportCallIssue]
    services = build_services(settings)
    await upgrade(services.database)
    try:
        yield services
    finally:
        await services.database.dispose()


def _jobs(services: AppContext, clock: ManualClock) -> JobService:
    return JobService(
        database=services.database, audit=services.audit, events=services.events, fleet=services.fleet,
        retry_defaults=DEFAULTS, clock=clock,
    )  # fmt: skip


def _job(**changes: object) -> JobCreate:
    body: dict[str, object] = {"name": "nightly", "command": "echo hi", "target": {"kind": "probe", "value": "prb-1"}}
    return JobCreate.model_validate({**body, **changes})


@pytest.mark.parametrize(
    ("field", "body"),
    [
        pytest.param("schedule", {"schedule": "61 * * * *"}, id="bad-cron"),
        pytest.param("schedule", {"schedule": "* * *"}, id="short-cron"),
        pytest.param("schedule", {"schedule": "0s"}, id="zero-interval"),
        pytest.param("target", {"target": {"kind": "tag"}}, id="tag-without-value"),
        pytest.param("target.kind", {"target": {"kind": "galaxy", "value": "x"}}, id="unknown-kind"),
        pytest.param("target", {"target": {"kind": "selector", "value": "nonsense"}}, id="bad-selector"),
        pytest.param("retry_policy.multiplier", {"retry_policy": {"multiplier": 0.5}}, id="multiplier"),
        pytest.param("command.shell.spec", {"command": {"kind": "shell", "spec": {}}}, id="empty-shell-spec"),
    ],
)
def test_invalid_schedules_targets_and_commands_name_the_field(field: str, body: dict[str, object]) -> None:
    with pytest.raises(ValidationError) as caught:
        _job(**body)
    assert {".".join(str(p) for p in e["loc"]) for e in caught.value.errors()} & {field}, caught.value.errors()


def test_cron_fires_follow_the_grid_and_missed_fires_collapse_into_one() -> None:
    cron = parse_schedule("*/5 * * * *")
    assert cron.first_fire(T0) == datetime(2030, 1, 1, 10, 5, tzinfo=UTC)
    fire = datetime(2030, 1, 1, 10, 5, tzinfo=UTC)
    assert cron.next_fire(fire, fire + timedelta(seconds=3)) == datetime(2030, 1, 1, 10, 10, tzinfo=UTC)
    assert cron.next_fire(fire, datetime(2030, 1, 1, 11, 7, tzinfo=UTC)) == datetime(2030, 1, 1, 11, 10, tzinfo=UTC)
    every = parse_schedule("90s")
    start = datetime(2030, 1, 1, tzinfo=UTC)
    # A late tick does not shift the grid: the fire after 00:01:30 is 00:03:00 even if noticed at 00:02:59.
    assert every.next_fire(start + timedelta(seconds=90), start + timedelta(seconds=179)) == start + timedelta(
        seconds=180
    )
    assert every.next_fire(start, start + timedelta(seconds=1000)) == start + timedelta(seconds=1080)
    policy = RetryPolicy(max_attempts=4, initial_backoff_s=0.1, multiplier=2, max_backoff_s=0.25)
    assert [backoff_delay(policy, n).total_seconds() for n in (1, 2, 3)] == [0.1, 0.2, 0.25]


async def test_a_scheduled_job_fires_once_per_time_and_once_after_downtime(services: AppContext) -> None:
    clock = ManualClock(T0)
    jobs = _jobs(services, clock)
    job = await jobs.create_job(actor=OPS, job=_job(schedule="*/5 * * * *"))
    assert job.next_run_at == datetime(2030, 1, 1, 10, 5, tzinfo=UTC) and job.schedule_kind == "cron"
    clock.set(datetime(2030, 1, 1, 10, 4, 59, tzinfo=UTC))
    assert await jobs.fire_due() == []
    clock.set(datetime(2030, 1, 1, 10, 5, 0, tzinfo=UTC))
    fired = await jobs.fire_due()
    assert [(r.scheduled_for.minute, r.status, r.attempt, r.trigger) for r in fired] == [(5, "queued", 1, "schedule")]
    # Two schedulers racing for the same fire: the compare-and-set lets only one record it.
    assert await jobs.fire_due() == []
    clock.set(datetime(2030, 1, 1, 10, 27, 0, tzinfo=UTC))
    results: list[int] = []

    async def fire() -> None:
        results.append(len(await jobs.fire_due()))

    async with anyio.create_task_group() as group:
        for _ in range(3):
            group.start_soon(fire)
    assert sorted(results) == [0, 0, 1]
    page = await jobs.list_runs(JobRunQuery(job_id=job.id))
    # The one run for the backlog carries the first missed time; the grid resumes after now.
    assert sorted(r.scheduled_for.minute for r in page.runs) == [5, 10]
    assert (await jobs.get_job(job.id)).next_run_at == datetime(2030, 1, 1, 10, 30, tzinfo=UTC)
    assert (await jobs.get_job(job.id)).last_status is RunStatus.QUEUED
    assert await jobs.next_wakeup() is not None


async def test_run_transitions_are_compare_and_set_and_failures_retry_with_backoff(services: AppContext) -> None:
    clock = ManualClock(T0)
    jobs = _jobs(services, clock)
    job = await jobs.create_job(
        actor=OPS, job=_job(retry_policy={"max_attempts": 3, "initial_backoff": "10s", "multiplier": 3})
    )
    triggered = await jobs.trigger(actor=OPS, job_id=job.id)
    run = triggered.runs[0]
    assert (run.status, run.attempt, run.max_attempts, run.trigger) == ("queued", 1, 3, "manual")
    assert await jobs.transition(run_id=run.id, to=RunStatus.SUCCESS) is None  # not from queued
    started = await jobs.transition(run_id=run.id, to=RunStatus.RUNNING, admission_decision="allow")
    assert started is not None and started.started_at == T0
    # A result and a cancel racing on one run: exactly one wins.
    racer = (await jobs.trigger(actor=OPS, job_id=job.id)).runs[0]
    await jobs.transition(run_id=racer.id, to=RunStatus.RUNNING)
    outcomes: list[str | None] = []

    async def move(to: RunStatus) -> None:
        moved = await jobs.transition(run_id=racer.id, to=to, exit_code=0)
        outcomes.append(moved.status.value if moved else None)

    async with anyio.create_task_group() as group:
        group.start_soon(move, RunStatus.SUCCESS)
        group.start_soon(move, RunStatus.CANCELED)
    assert outcomes.count(None) == 1 and (await jobs.get_run(racer.id)).status.value in outcomes
    failed = await jobs.transition(run_id=run.id, to=RunStatus.FAILED, exit_code=3, output="boom")
    assert failed is not None and failed.ended_at == T0
    first = await jobs.get_run(run.id)
    assert first.retry_scheduled_at == T0 + timedelta(seconds=10)
    clock.advance(timedelta(seconds=9))
    assert await jobs.due_runs() == []
    clock.advance(timedelta(seconds=1))
    (second,) = await jobs.due_runs()
    assert (second.attempt, second.execution_id, second.trigger) == (2, run.execution_id, "retry")
    await jobs.transition(run_id=second.id, to=RunStatus.RUNNING)
    await jobs.transition(run_id=second.id, to=RunStatus.FAILED, exit_code=3)
    assert (await jobs.get_run(second.id)).retry_scheduled_at == clock.now() + timedelta(seconds=30)
    clock.advance(timedelta(seconds=30))
    (third,) = await jobs.due_runs()
    await jobs.transition(run_id=third.id, to=RunStatus.FAILED, error="probe offline")
    assert (await jobs.get_run(third.id)).retry_scheduled_at is None
    assert await jobs.due_runs() == []
    with pytest.raises(InvalidTransition):
        await jobs.cancel_run(actor=OPS, job_id=job.id, run_id=third.id)
    retried = await jobs.retry_run(actor=OPS, job_id=job.id, run_id=third.id)
    assert (retried.run.attempt, retried.run.trigger, retried.run.status) == (4, "operator_retry", "queued")
    canceled, previous = await jobs.cancel_run(actor=OPS, job_id=job.id, run_id=retried.run.id)
    assert canceled.status is RunStatus.CANCELED and previous is RunStatus.QUEUED
    page = await jobs.list_runs(JobRunQuery(job_id=job.id, status=RunStatus.FAILED))
    assert page.count == 3 and page.counts["failed"] == 3
    with pytest.raises(NotFound):
        await jobs.cancel_run(actor=OPS, job_id="other", run_id=run.id)
    events = jobs.event_log.since(0, {"job_id": job.id}, 500)
    types = [event.type for _, event in events]
    assert types.count("job.run.retry_scheduled") == 2 and "job.run.canceled" in types and "job.created" in types


async def test_jobs_need_command_exec_and_updates_make_the_updater_the_owner(services: AppContext) -> None:
    clock = ManualClock(T0)
    jobs = _jobs(services, clock)
    with pytest.raises(PermissionDenied):
        await jobs.create_job(actor=READER, job=_job())
    job = await jobs.create_job(actor=OPS, job=_job(schedule="1h", enabled=False))
    assert job.next_run_at is None and job.owner == "api_key:ops"
    with pytest.raises(PermissionDenied):
        await jobs.set_enabled(actor=READER, job_id=job.id, enabled=True)
    disabled = await jobs.set_enabled(actor=READER, job_id=job.id, enabled=False)
    assert not disabled.enabled
    enabled = await jobs.set_enabled(actor=OPS, job_id=job.id, enabled=True)
    assert enabled.next_run_at == T0 + timedelta(hours=1)
    other = Principal(PrincipalKind.USER, "u-eve", "eve", frozenset({Permission.COMMAND_EXEC}))
    updated = await jobs.update_job(actor=other, job_id=job.id, changes=JobUpdate(schedule="", name="renamed"))
    assert updated.owner == "user:eve" and updated.schedule is None and updated.next_run_at is None
    assert updated.name == "renamed" and updated.command["kind"] == "shell"
    await jobs.delete_job(actor=OPS, job_id=job.id)
    with pytest.raises(NotFound):
        await jobs.get_job(job.id)
