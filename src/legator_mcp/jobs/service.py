"""Jobs and their runs: definitions, fires, the run state machine, retries, output and lifecycle events.

A fire (scheduled or on demand) inserts one ``queued`` run per target probe in the same transaction that
advances the job's ``next_run_at`` (a compare-and-set), so a fire is recorded exactly once. Runs then move by
compare-and-set transitions (see :data:`ALLOWED_FROM`); every transition is audited in its transaction and
published on the event bus after it commits. A run that ends ``failed`` with attempts left gets its next attempt
inserted in the same transaction, ``queued`` until its backoff ends. Sending runs to probes is the job flow's
part (:mod:`legator_mcp.flows.jobs`).
"""

import secrets
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import anyio
from pydantic import BaseModel

from legator_mcp.audit.service import AuditService
from legator_mcp.db.base import new_id
from legator_mcp.db.session import Database
from legator_mcp.errors import InvalidRequest, NotFound
from legator_mcp.events.service import EventBus
from legator_mcp.fleet.schemas import ProbeRead
from legator_mcp.fleet.service import FleetService
from legator_mcp.jobs._runs import (
    ALLOWED_FROM,
    MAX_OUTPUT_BYTES,
    MAX_STREAMED_BYTES,
    MAX_TARGETS,
    SCHEDULER,
    JobOutputChunk,
    RunLifecycle,
    require_exec,
)
from legator_mcp.jobs._views import EventLog, job_read, run_read
from legator_mcp.jobs.clock import Clock, SystemClock
from legator_mcp.jobs.errors import InvalidTransition
from legator_mcp.jobs.models import Job, JobRun
from legator_mcp.jobs.schedule import RetryPolicy, parse_schedule
from legator_mcp.jobs.schemas import (
    JobCreate,
    JobRead,
    JobRunRead,
    JobTarget,
    JobTriggered,
    JobUpdate,
    RetryPolicyIn,
    RunStatus,
    RunTrigger,
)
from legator_mcp.jobs.store import JobStore
from legator_mcp.principal import Permission, Principal, PrincipalKind
from legator_probe.protocol.sanitize import sanitize

__all__ = [
    "ALLOWED_FROM",
    "MAX_OUTPUT_BYTES",
    "MAX_STREAMED_BYTES",
    "InvalidTransition",
    "JobDispatch",
    "JobOutputChunk",
    "JobService",
]


class JobDispatch(BaseModel):
    """What the job flow needs to send one run: the run, the full command, and whose identity it carries."""

    run: JobRunRead
    kind: str
    spec: dict[str, Any]
    timeout_s: float
    owner: str
    owner_id: str
    owner_kind: str

    def principal(self) -> Principal:
        """The job's owner as the actor of its runs: allowed to run commands, nothing else."""
        name = self.owner.split(":", 1)[1] if ":" in self.owner else self.owner
        return Principal(
            PrincipalKind(self.owner_kind), self.owner_id, name, frozenset({Permission.COMMAND_EXEC}), via="job"
        )


class JobService(RunLifecycle):
    """Jobs, runs and their lifecycle, shared by the REST, MCP and CLI surfaces and the scheduler.

    Args:
        database: Where jobs, runs and output are stored.
        audit: Every job change and run transition is recorded here, in its own transaction.
        events: ``job.*`` and ``job.run.*`` events are published here.
        fleet: Resolves targets (tags, label selectors, the whole fleet) at each fire.
        retry_defaults: The retry policy fields a job leaves out (``LEGATOR_JOBS_RETRY_*``).
        clock: Source of "now" for schedules, due times and run timestamps (tests move it by hand).
    """

    def __init__(
        self,
        *,
        database: Database,
        audit: AuditService,
        events: EventBus,
        fleet: FleetService,
        retry_defaults: RetryPolicy,
        clock: Clock | None = None,
        store: JobStore | None = None,
    ) -> None:
        self._db = database
        self._audit = audit
        self._events = events
        self._fleet = fleet
        self._defaults = retry_defaults
        self.clock: Clock = clock or SystemClock()
        self._store = store or JobStore()
        self.event_log = EventLog()
        self._unsent: set[str] = set()
        self.changed = anyio.Event()
        """Set (and replaced) whenever something the scheduler waits for changes: a job, a new due run."""

    def _apply_retry(self, row: Job, policy: RetryPolicyIn | None) -> None:
        given = policy or RetryPolicyIn()
        row.max_attempts = given.max_attempts or self._defaults.max_attempts
        row.initial_backoff_s = given.initial_backoff or self._defaults.initial_backoff_s
        row.multiplier = given.multiplier or self._defaults.multiplier
        row.max_backoff_s = given.max_backoff if given.max_backoff is not None else self._defaults.max_backoff_s

    async def create_job(self, *, actor: Principal, job: JobCreate) -> JobRead:
        """Define a job; it first fires at its schedule's next time after now (if enabled and scheduled).

        Raises:
            PermissionDenied: If ``actor`` lacks ``command:exec`` (a job runs commands as its owner).
        """
        require_exec(actor, "creating a job")
        now = self.clock.now()
        row = Job(
            id=new_id(),
            name=sanitize(job.name),
            description=job.description,
            command_kind=job.command.kind,
            command_spec=job.command.spec.model_dump(mode="json"),
            timeout_s=job.timeout_s,
            schedule=job.schedule,
            target_kind=job.target.kind,
            target_value=job.target.value,
            enabled=job.enabled,
            owner=actor.actor,
            owner_id=actor.id,
            owner_kind=actor.kind.value,
            created_at=now,
            updated_at=now,
            next_run_at=parse_schedule(job.schedule).first_fire(now) if job.schedule and job.enabled else None,
        )
        self._apply_retry(row, job.retry_policy)
        async with self._db.write() as session:
            await self._store.add_job(session, row)
            read = job_read(row)
            await self._audit.record(
                type="job.created", actor=actor, principal_kind=actor.kind, summary=f"Job created: {row.id}",
                detail={"job_id": row.id, "name": row.name, "schedule": row.schedule,
                        "target": read.target.model_dump(), "command": read.command, "enabled": row.enabled},
                session=session,
            )  # fmt: skip
        self._publish("job.created", summary=f"Job created: {row.id}", detail={"job_id": row.id})
        self._poke()
        return read

    async def update_job(self, *, actor: Principal, job_id: str, changes: JobUpdate) -> JobRead:
        """Change a job; whoever changes it becomes the owner its runs act as.

        Raises:
            NotFound: If there is no such job.
            PermissionDenied: If ``actor`` lacks ``command:exec``.
        """
        require_exec(actor, "changing a job")
        now = self.clock.now()
        async with self._db.write() as session:
            row = await self._job(session, job_id, for_update=True)
            before = job_read(row).model_dump(mode="json")
            given = changes.model_fields_set
            if changes.name is not None:
                row.name = sanitize(changes.name)
            if "description" in given:
                row.description = changes.description
            if changes.command is not None:
                row.command_kind = changes.command.kind
                row.command_spec = changes.command.spec.model_dump(mode="json")
            if changes.timeout_s is not None:
                row.timeout_s = changes.timeout_s
            if changes.target is not None:
                row.target_kind, row.target_value = changes.target.kind, changes.target.value
            if changes.retry_policy is not None:
                self._apply_retry(row, changes.retry_policy)
            if changes.enabled is not None:
                row.enabled = changes.enabled
            rescheduled = changes.schedule is not None and (changes.schedule or None) != row.schedule
            if changes.schedule is not None:
                row.schedule = changes.schedule or None
            if not row.enabled or row.schedule is None:
                row.next_run_at = None
            elif rescheduled or row.next_run_at is None:
                row.next_run_at = parse_schedule(row.schedule).first_fire(now)
            row.owner, row.owner_id, row.owner_kind = actor.actor, actor.id, actor.kind.value
            row.updated_at = now
            await session.flush()
            read = job_read(row)
            await self._audit.record(
                type="job.updated", actor=actor, principal_kind=actor.kind, summary=f"Job updated: {row.id}",
                detail={"job_id": row.id}, before=before, after=read.model_dump(mode="json"), session=session,
            )  # fmt: skip
        self._publish("job.updated", summary=f"Job updated: {row.id}", detail={"job_id": row.id})
        self._poke()
        return read

    async def set_enabled(self, *, actor: Principal, job_id: str, enabled: bool) -> JobRead:
        """Enable (from the next scheduled time after now) or disable a job's schedule.

        Raises:
            NotFound: If there is no such job.
            PermissionDenied: If enabling and ``actor`` lacks ``command:exec``.
        """
        if enabled:
            require_exec(actor, "enabling a job")
        now = self.clock.now()
        async with self._db.write() as session:
            row = await self._job(session, job_id, for_update=True)
            if row.enabled != enabled:
                row.enabled = enabled
                row.next_run_at = parse_schedule(row.schedule).first_fire(now) if enabled and row.schedule else None
                row.updated_at = now
                await session.flush()
                await self._audit.record(
                    type="job.updated", actor=actor, principal_kind=actor.kind,
                    summary=f"Job {'enabled' if enabled else 'disabled'}: {row.id}",
                    detail={"job_id": row.id, "enabled": enabled}, session=session,
                )  # fmt: skip
            read = job_read(row)
        self._publish("job.updated", summary=f"Job updated: {job_id}", detail={"job_id": job_id, "enabled": enabled})
        self._poke()
        return read

    async def delete_job(self, *, actor: Principal, job_id: str) -> None:
        """Delete a job and its run history (runs still on a probe finish there; their results are dropped).

        Raises:
            NotFound: If there is no such job.
        """
        async with self._db.write() as session:
            if not await self._store.delete_job(session, job_id):
                raise NotFound(f"job {job_id} not found")
            await self._audit.record(
                type="job.deleted", actor=actor, principal_kind=actor.kind, summary=f"Job deleted: {job_id}",
                detail={"job_id": job_id}, session=session,
            )  # fmt: skip
        self._publish("job.deleted", summary=f"Job deleted: {job_id}", detail={"job_id": job_id})

    async def get_job(self, job_id: str) -> JobRead:
        """One job.

        Raises:
            NotFound: If there is no such job.
        """
        async with self._db.read() as session:
            return job_read(await self._job(session, job_id))

    async def list_jobs(self, *, enabled: bool | None = None, limit: int = 500) -> list[JobRead]:
        """Jobs, most recently changed first."""
        async with self._db.read() as session:
            return [job_read(row) for row in await self._store.list_jobs(session, enabled=enabled, limit=limit)]

    # -- fires --------------------------------------------------------------------------------------------------

    async def resolve_targets(self, target: JobTarget) -> list[str]:
        """The probe ids ``target`` selects now, sorted (a ``probe`` target is taken as given)."""
        if target.kind == "probe":
            assert isinstance(target.value, str)
            return [target.value]
        if target.kind == "tag":
            assert isinstance(target.value, str)
            return sorted(p.id for p in await self._fleet.by_tag(target.value))
        probes: list[ProbeRead] = []
        cursor: str | None = None
        while True:
            page = await self._fleet.list_probes(limit=500, cursor=cursor)
            probes.extend(page.probes)
            if page.next_cursor is None or len(probes) > MAX_TARGETS:
                break
            cursor = page.next_cursor
        if isinstance(target.value, dict):
            wanted = target.value.items()
            probes = [p for p in probes if all(p.labels.get(key) == value for key, value in wanted)]
        return sorted(p.id for p in probes)[:MAX_TARGETS]

    def _new_runs(
        self, row: Job, probe_ids: Sequence[str], *, trigger: RunTrigger, due: datetime, now: datetime
    ) -> list[JobRun]:
        return [
            JobRun(
                id=(run_id := new_id()),
                job_id=row.id,
                probe_id=probe_id,
                execution_id=f"jobexec-{secrets.token_hex(12)}",
                attempt=1,
                max_attempts=row.max_attempts,
                trigger=trigger,
                request_id=f"job-{run_id.replace('-', '')}",
                status=RunStatus.QUEUED.value,
                scheduled_for=due,
                output="",
                output_truncated=False,
                streamed_bytes=0,
                created_at=now,
                updated_at=now,
            )
            for probe_id in probe_ids
        ]

    async def trigger(self, *, actor: Principal, job_id: str) -> JobTriggered:
        """Queue a run on every target now, whether or not the job is enabled; the scheduler sends them.

        Raises:
            NotFound: If there is no such job.
            PermissionDenied: If ``actor`` lacks ``command:exec``.
            InvalidRequest: If the target resolves to no probe.
        """
        require_exec(actor, "running a job")
        async with self._db.read() as session:
            target = job_read(await self._job(session, job_id)).target
        probe_ids = await self.resolve_targets(target)
        if not probe_ids:
            raise InvalidRequest("no probes resolved for the job's target", details={"field": "target"})
        now = self.clock.now()
        async with self._db.write() as session:
            row = await self._job(session, job_id)
            runs = self._new_runs(row, probe_ids, trigger="manual", due=now, now=now)
            await self._store.add_runs(session, runs)
            await self._record_inserted(session, row, runs, actor)
            reads = [run_read(run) for run in runs]
        self._published_inserted(runs)
        self._poke()
        return JobTriggered(job_id=job_id, execution_ids=[r.execution_id for r in reads], runs=reads)

    async def fire_due(self, *, limit: int = 100) -> list[JobRunRead]:
        """Record one fire for every enabled job whose ``next_run_at`` has come, and move it to its next time.

        A job due several times over (the control plane was down) fires once. Targets are resolved at the fire;
        a fire that resolves no probe is recorded in the audit log as skipped. Safe to call from several
        processes at once: the compare-and-set on ``next_run_at`` lets exactly one record each fire.
        """
        now = self.clock.now()
        async with self._db.read() as session:
            rows = await self._store.due_jobs(session, now=now, limit=limit)
            due = [(row.id, row.next_run_at, job_read(row)) for row in rows]
        fired: list[JobRun] = []
        for job_id, scheduled, read in due:
            assert scheduled is not None and read.schedule is not None
            probe_ids = await self.resolve_targets(read.target)
            following = parse_schedule(read.schedule).next_fire(scheduled, now)
            async with self._db.write() as session:
                row = await self._store.get_job(session, job_id)
                if row is None or not await self._store.advance_job(session, job_id, expected=scheduled, to=following):
                    continue
                runs = self._new_runs(row, probe_ids, trigger="schedule", due=scheduled, now=now)
                await self._store.add_runs(session, runs)
                await self._record_inserted(session, row, runs, SCHEDULER)
                if not runs:
                    await self._audit.record(
                        type="job.fire_skipped", actor=SCHEDULER, principal_kind=PrincipalKind.SYSTEM,
                        summary=f"Job {job_id} fired but its target resolved no probe",
                        detail={"job_id": job_id, "scheduled_for": scheduled.isoformat()}, session=session,
                    )  # fmt: skip
            self._published_inserted(runs)
            fired.extend(runs)
        return [run_read(run) for run in fired]

    async def due_runs(self, *, limit: int = 500) -> list[JobRunRead]:
        """Queued runs whose time has come, oldest due first."""
        async with self._db.read() as session:
            rows = await self._store.due_runs(session, now=self.clock.now(), limit=limit)
        return [run_read(row) for row in rows]

    async def next_wakeup(self) -> datetime | None:
        """The earliest moment something becomes due: a job's next fire or a queued run (a retry)."""
        async with self._db.read() as session:
            moments = [await self._store.next_job_fire(session), await self._store.next_run_due(session)]
        present = [moment for moment in moments if moment is not None]
        return min(present) if present else None

    async def dispatch_infos(self, run_ids: Sequence[str]) -> list[JobDispatch]:
        """:meth:`dispatch_info` for many runs in one read; runs (or jobs) that no longer exist are left out."""
        async with self._db.read() as session:
            runs = await self._store.get_runs(session, run_ids)
            jobs = await self._store.get_jobs(session, (run.job_id for run in runs.values()))
        infos: list[JobDispatch] = []
        for run_id in dict.fromkeys(run_ids):
            run = runs.get(run_id)
            job = jobs.get(run.job_id) if run is not None else None
            if run is not None and job is not None:
                infos.append(
                    JobDispatch(
                        run=run_read(run), kind=job.command_kind, spec=job.command_spec, timeout_s=job.timeout_s,
                        owner=job.owner, owner_id=job.owner_id, owner_kind=job.owner_kind,
                    )
                )  # fmt: skip
        return infos

    async def dispatch_info(self, run_id: str) -> JobDispatch:
        """The run with its job's full command and owner, for sending it.

        Raises:
            NotFound: If the run (or its job) no longer exists.
        """
        async with self._db.read() as session:
            run = await self._store.get_run(session, run_id)
            job = await self._store.get_job(session, run.job_id) if run is not None else None
        if run is None or job is None:
            raise NotFound(f"job run {run_id} not found")
        return JobDispatch(
            run=run_read(run), kind=job.command_kind, spec=job.command_spec, timeout_s=job.timeout_s,
            owner=job.owner, owner_id=job.owner_id, owner_kind=job.owner_kind,
        )  # fmt: skip
