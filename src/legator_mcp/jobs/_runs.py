"""The run half of the job service: the compare-and-set state machine, retries, operator actions on runs,
reading runs and their stored output. :class:`~legator_mcp.jobs.service.JobService` builds on it."""

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import anyio
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from legator_mcp.audit.service import AuditEntry, AuditService
from legator_mcp.db.base import new_id
from legator_mcp.db.cursor import decode_cursor, encode_cursor
from legator_mcp.db.session import Database
from legator_mcp.errors import NotFound, PermissionDenied
from legator_mcp.events.service import Event, EventBus
from legator_mcp.jobs._views import EventLog, retry_policy, run_read
from legator_mcp.jobs.clock import Clock
from legator_mcp.jobs.errors import InvalidTransition
from legator_mcp.jobs.models import Job, JobRun, JobRunChunk
from legator_mcp.jobs.schedule import backoff_delay
from legator_mcp.jobs.schemas import (
    ACTIVE_STATUSES,
    JobCancelResult,
    JobRetryResult,
    JobRunPage,
    JobRunQuery,
    JobRunRead,
    RunStatus,
)
from legator_mcp.jobs.store import JobStore
from legator_mcp.principal import Permission, Principal
from legator_probe.protocol.sanitize import sanitize

__all__ = [
    "ALLOWED_FROM",
    "MAX_OUTPUT_BYTES",
    "MAX_STREAMED_BYTES",
    "MAX_TARGETS",
    "SCHEDULER",
    "JobOutputChunk",
    "RunLifecycle",
    "require_exec",
]

ALLOWED_FROM: dict[RunStatus, frozenset[RunStatus]] = {
    RunStatus.PENDING: frozenset({RunStatus.QUEUED}),
    RunStatus.RUNNING: frozenset({RunStatus.QUEUED, RunStatus.PENDING}),
    RunStatus.SUCCESS: frozenset({RunStatus.RUNNING}),
    RunStatus.FAILED: frozenset({RunStatus.QUEUED, RunStatus.PENDING, RunStatus.RUNNING}),
    RunStatus.CANCELED: frozenset({RunStatus.QUEUED, RunStatus.PENDING, RunStatus.RUNNING}),
    RunStatus.DENIED: frozenset({RunStatus.QUEUED, RunStatus.PENDING}),
}
"""The states each state may be entered from; final states are entered from none."""

MAX_OUTPUT_BYTES = 64 * 1024
"""How much of a run's final output (stdout, then stderr) is kept on the run."""

MAX_STREAMED_BYTES = 1024 * 1024
"""How much streamed output is stored per run; later chunks are dropped and the run marked truncated."""

MAX_TARGETS = 10_000
"""The most probes one fire may address."""

_EVENT_TYPES: dict[RunStatus, str] = {
    RunStatus.QUEUED: "job.run.queued",
    RunStatus.PENDING: "job.run.admission_queued",
    RunStatus.RUNNING: "job.run.started",
    RunStatus.SUCCESS: "job.run.succeeded",
    RunStatus.FAILED: "job.run.failed",
    RunStatus.CANCELED: "job.run.canceled",
    RunStatus.DENIED: "job.run.denied",
}
# Which status a job shows when its latest batch is mixed: the most "in progress", then the worst outcome.
_STATUS_PRIORITY = ["running", "pending", "queued", "failed", "denied", "canceled", "success"]
SCHEDULER = Principal.system("job-scheduler")
"""The actor of transitions the scheduler makes on its own."""


class JobOutputChunk(BaseModel):
    """A piece of a run's streamed output."""

    seq: int
    stream: str
    data: str


def require_exec(actor: Principal, what: str) -> None:
    """Refuse ``actor`` unless it may run commands (a job's runs act as whoever defined or runs it)."""
    if not actor.has(Permission.COMMAND_EXEC):
        raise PermissionDenied(f"{what} needs command:exec", details={"required_permission": "command:exec"})


def _cap(text: str, limit: int) -> tuple[str, bool]:
    raw = text.encode()
    if len(raw) <= limit:
        return text, False
    return raw[:limit].decode(errors="ignore"), True


def _detail(run: JobRun, **extra: Any) -> dict[str, Any]:
    detail: dict[str, Any] = {
        "job_id": run.job_id,
        "run_id": run.id,
        "execution_id": run.execution_id,
        "probe_id": run.probe_id,
        "attempt": run.attempt,
        "max_attempts": run.max_attempts,
        "request_id": run.request_id,
        "status": run.status,
        "trigger": run.trigger,
        "admission_decision": run.admission_decision,
        "admission_reason": run.admission_reason,
    }
    detail.update(extra)
    return {key: value for key, value in detail.items() if value not in (None, "")}


def _transition_entries(row: JobRun, to: RunStatus, actor: Principal, retry: JobRun | None) -> list[AuditEntry]:
    """The audit events of one transition (and the retry it scheduled)."""
    entries = [
        AuditEntry(
            type=_EVENT_TYPES[to], actor=actor, principal_kind=actor.kind, probe_id=row.probe_id,
            summary=f"Job run {to.value}: {row.job_id}", detail=_detail(row, exit_code=row.exit_code, error=row.error),
        )
    ]  # fmt: skip
    if retry is not None:
        entries.append(
            AuditEntry(
                type="job.run.retry_scheduled", actor=actor, principal_kind=actor.kind, probe_id=row.probe_id,
                summary=f"Job run retry scheduled: {row.job_id}",
                detail=_detail(retry, deferred_until=retry.scheduled_for.isoformat(), previous_run_id=row.id),
            )
        )  # fmt: skip
    return entries


class RunLifecycle:
    """Runs of jobs: their state machine, retries, operator actions, listing and output."""

    _db: Database
    _audit: AuditService
    _events: EventBus
    _store: JobStore
    clock: Clock
    event_log: EventLog
    changed: anyio.Event
    _unsent: set[str]

    def _poke(self) -> None:
        changed, self.changed = self.changed, anyio.Event()
        changed.set()

    def _publish(self, type: str, *, summary: str, probe_id: str | None = None, detail: Mapping[str, Any]) -> Event:
        event = self._events.publish(type, summary=summary, probe_id=probe_id, detail=detail)
        self.event_log.append(event)
        return event

    async def _job(self, session: AsyncSession, job_id: str, *, for_update: bool = False) -> Job:
        row = await self._store.get_job(session, job_id, for_update=for_update)
        if row is None:
            raise NotFound(f"job {job_id} not found")
        return row

    def unsent_here(self, run_id: str) -> bool:
        """Whether this process inserted the run and nobody has asked to send it yet (so no command exists).

        Asking consumes the answer: the first caller sends it; any later one must look the command up.
        """
        if run_id in self._unsent:
            self._unsent.discard(run_id)
            return True
        return False

    async def _record_inserted(self, session: AsyncSession, row: Job, runs: Sequence[JobRun], actor: Principal) -> None:
        # One chain insert for a whole fire, whatever its size.
        entries = [
            AuditEntry(
                type="job.run.queued", actor=actor, principal_kind=actor.kind, probe_id=run.probe_id,
                summary=f"Job run queued: {row.id}", detail=_detail(run),
            )
            for run in runs
        ]  # fmt: skip
        await self._audit.record_many(entries, session=session)
        if runs:
            await self._store.touch_job(
                session, row.id, last_run_at=runs[0].created_at, last_status=await self._last_status(session, row.id)
            )

    def _published_inserted(self, runs: Sequence[JobRun]) -> None:
        self._unsent.update(run.id for run in runs)
        for run in runs:
            self._publish("job.run.queued", summary=f"Job run queued: {run.job_id}", probe_id=run.probe_id,
                          detail=_detail(run))  # fmt: skip

    # -- the run state machine ----------------------------------------------------------------------------------

    async def _last_status(self, session: AsyncSession, job_id: str) -> str | None:
        statuses = set(await self._store.latest_statuses(session, job_id))
        return next((status for status in _STATUS_PRIORITY if status in statuses), None)

    async def transition(
        self,
        *,
        run_id: str,
        to: RunStatus,
        actor: Principal = SCHEDULER,
        allowed_from: frozenset[RunStatus] | None = None,
        **values: Any,
    ) -> JobRunRead | None:
        """Move a run to ``to`` if its current state allows it; ``None`` when it did not (it moved on first).

        ``values`` are other columns to set (``exit_code``, ``output``, ``error``, ``admission_*`` …); final
        states also get ``ended_at``, ``running`` gets ``started_at``. A run that ends ``failed`` with attempts
        left gets its next attempt queued (``retry_scheduled_at`` says when) in the same transaction.
        """
        return (await self.transition_many([(run_id, to, values)], actor=actor, allowed_from=allowed_from))[0]

    def _prepared(self, to: RunStatus, values: Mapping[str, Any], now: datetime) -> dict[str, Any]:
        prepared = dict(values)
        if "output" in prepared:
            prepared["output"], cut = _cap(sanitize(str(prepared["output"])), MAX_OUTPUT_BYTES)
            prepared["output_truncated"] = bool(prepared.get("output_truncated")) or cut
        if "error" in prepared and prepared["error"] is not None:
            prepared["error"] = sanitize(str(prepared["error"]))[:2000]
        if to is RunStatus.RUNNING:
            prepared.setdefault("started_at", now)
        if to not in ACTIVE_STATUSES:
            prepared.setdefault("ended_at", now)
        return prepared

    async def transition_many(
        self,
        moves: Sequence[tuple[str, RunStatus, Mapping[str, Any]]],
        *,
        actor: Principal = SCHEDULER,
        allowed_from: frozenset[RunStatus] | None = None,
    ) -> list[JobRunRead | None]:
        """:meth:`transition` for many runs ``(run_id, to, values)`` in ONE write transaction: each is its own
        compare-and-set, their audit events are one chain insert, each job's status is refreshed once, and the
        events are published after the commit. Returns one entry per move, ``None`` where the run had moved on.
        """
        if not moves:
            return []
        now = self.clock.now()
        prepared = [(run_id, to, self._prepared(to, values, now)) for run_id, to, values in moves]
        moved: list[tuple[JobRunRead, RunStatus, JobRun | None] | None] = []
        async with self._db.write() as session:
            entries: list[AuditEntry] = []
            jobs: dict[str, Job | None] = {}
            for run_id, to, values in prepared:
                sources = allowed_from if allowed_from is not None else ALLOWED_FROM.get(to, frozenset())
                row = await self._store.transition(
                    session, run_id, allowed_from=[s.value for s in sources], to=to.value, updated_at=now, **values
                )
                if row is None:
                    moved.append(None)
                    continue
                retry: JobRun | None = None
                if to is RunStatus.FAILED and row.attempt < row.max_attempts:
                    if row.job_id not in jobs:
                        jobs[row.job_id] = await self._store.get_job(session, row.job_id)
                    job = jobs[row.job_id]
                    if job is not None:
                        retry = await self._schedule_retry(session, row, job, now)
                entries.extend(_transition_entries(row, to, actor, retry))
                moved.append((run_read(row), to, retry))
            await self._audit.record_many(entries, session=session)
            for job_id in dict.fromkeys(item[0].job_id for item in moved if item is not None):
                await self._store.touch_job(session, job_id, last_status=await self._last_status(session, job_id))
        retried = False
        for item in moved:
            if item is not None:
                read, to, retry = item
                self._publish_transition(read, to, retry)
                if retry is not None:
                    self._unsent.add(retry.id)
                    retried = True
        if retried:
            self._poke()
        return [item[0] if item is not None else None for item in moved]

    async def _schedule_retry(self, session: AsyncSession, row: JobRun, job: Job, now: datetime) -> JobRun:
        due = now + backoff_delay(retry_policy(job), row.attempt)
        retry = JobRun(
            id=(run_id := new_id()), job_id=row.job_id, probe_id=row.probe_id, execution_id=row.execution_id,
            attempt=row.attempt + 1, max_attempts=row.max_attempts, trigger="retry",
            request_id=f"job-{run_id.replace('-', '')}", status=RunStatus.QUEUED.value, scheduled_for=due,
            output="", output_truncated=False, streamed_bytes=0, created_at=now, updated_at=now,
        )  # fmt: skip
        await self._store.add_runs(session, [retry])
        await self._store.update_run(session, row.id, retry_scheduled_at=due)
        row.retry_scheduled_at = due
        return retry

    def _publish_transition(self, read: JobRunRead, to: RunStatus, retry: JobRun | None) -> None:
        detail = {
            key: value
            for key, value in read.model_dump(
                mode="json",
                include={"job_id", "execution_id", "probe_id", "attempt", "max_attempts", "request_id", "status",
                         "trigger", "admission_decision", "admission_reason", "exit_code", "error"},
            ).items()
            if value not in (None, "")
        }  # fmt: skip
        detail["run_id"] = read.id
        if read.admission_decision and to in {RunStatus.PENDING, RunStatus.RUNNING, RunStatus.DENIED}:
            admission = {"allow": "allowed", "queue": "queued", "deny": "denied"}.get(read.admission_decision)
            if admission and not (to is RunStatus.RUNNING and read.approval_id):
                self._publish(f"job.run.admission_{admission}", summary=f"Job run admission {admission}: "
                              f"{read.job_id}", probe_id=read.probe_id, detail=detail)  # fmt: skip
        self._publish(_EVENT_TYPES[to], summary=f"Job run {to.value}: {read.job_id}", probe_id=read.probe_id,
                      detail=detail)  # fmt: skip
        if retry is not None:
            self._publish(
                "job.run.retry_scheduled", summary=f"Job run retry scheduled: {read.job_id}", probe_id=read.probe_id,
                detail=_detail(retry, deferred_until=retry.scheduled_for.isoformat(), previous_run_id=read.id),
            )  # fmt: skip

    # -- operator actions on runs -------------------------------------------------------------------------------

    async def _run_of(self, job_id: str, run_id: str) -> JobRunRead:
        run = await self.get_run(run_id)
        if run.job_id != job_id:
            raise NotFound(f"job run {run_id} not found")
        return run

    async def cancel_run(self, *, actor: Principal, job_id: str, run_id: str) -> tuple[JobRunRead, RunStatus]:
        """Mark an active run canceled; returns it and the state it was in (the flow stops what that needs).

        Raises:
            NotFound: If there is no such run of that job.
            InvalidTransition: If the run already finished.
        """
        current = await self._run_of(job_id, run_id)
        while current.status in ACTIVE_STATUSES:
            moved = await self.transition(
                run_id=run_id, to=RunStatus.CANCELED, actor=actor, allowed_from=frozenset({current.status}),
                error=f"canceled by {actor.actor}",
            )  # fmt: skip
            if moved is not None:
                return moved, current.status
            current = await self.get_run(run_id)
        raise InvalidTransition(
            f"invalid run status transition: {current.status.value} -> canceled",
            details={"status": current.status.value},
        )

    async def active_runs(self, *, job_id: str | None = None, limit: int = 500) -> list[JobRunRead]:
        """Runs still queued, pending or running, newest first."""
        async with self._db.read() as session:
            rows = await self._store.list_runs(
                session, job_id=job_id, statuses=[s.value for s in ACTIVE_STATUSES], limit=limit
            )
        return [run_read(row) for row in rows]

    async def cancel_job(
        self, *, actor: Principal, job_id: str
    ) -> tuple[JobCancelResult, list[tuple[JobRunRead, RunStatus]]]:
        """Cancel every active run of a job (queued retries included).

        Raises:
            NotFound: If there is no such job.
        """
        async with self._db.read() as session:
            await self._job(session, job_id)
        canceled: list[tuple[JobRunRead, RunStatus]] = []
        for run in await self.active_runs(job_id=job_id, limit=MAX_TARGETS):
            try:
                canceled.append(await self.cancel_run(actor=actor, job_id=job_id, run_id=run.id))
            except InvalidTransition:
                continue
        return JobCancelResult(job_id=job_id, canceled_runs=[run.id for run, _ in canceled]), canceled

    async def retry_run(self, *, actor: Principal, job_id: str, run_id: str) -> JobRetryResult:
        """Queue a new attempt of a finished run (same probe and execution), due now.

        Raises:
            NotFound: If there is no such run of that job.
            PermissionDenied: If ``actor`` lacks ``command:exec``.
            InvalidTransition: If the run is not failed, canceled or denied.
        """
        require_exec(actor, "retrying a job run")
        source = await self._run_of(job_id, run_id)
        if source.status not in {RunStatus.FAILED, RunStatus.CANCELED, RunStatus.DENIED}:
            raise InvalidTransition(
                "only failed, canceled, or denied runs can be retried", details={"status": source.status.value}
            )
        now = self.clock.now()
        async with self._db.write() as session:
            job = await self._job(session, job_id)
            attempt = await self._store.attempts(session, source.execution_id) + 1
            run = JobRun(
                id=(new_run_id := new_id()), job_id=job_id, probe_id=source.probe_id,
                execution_id=source.execution_id, attempt=attempt, max_attempts=max(job.max_attempts, attempt),
                trigger="operator_retry", request_id=f"job-{new_run_id.replace('-', '')}",
                status=RunStatus.QUEUED.value, scheduled_for=now, output="", output_truncated=False,
                streamed_bytes=0, created_at=now, updated_at=now,
            )  # fmt: skip
            await self._store.add_runs(session, [run])
            await self._record_inserted(session, job, [run], actor)
            read = run_read(run)
        self._published_inserted([run])
        self._poke()
        return JobRetryResult(job_id=job_id, source_run_id=run_id, run=read)

    # -- reading runs -------------------------------------------------------------------------------------------

    async def get_run(self, run_id: str) -> JobRunRead:
        """One run.

        Raises:
            NotFound: If there is no such run.
        """
        async with self._db.read() as session:
            row = await self._store.get_run(session, run_id)
        if row is None:
            raise NotFound(f"job run {run_id} not found")
        return run_read(row)

    async def run_for_request(self, request_id: str) -> JobRunRead | None:
        """The run that sent command ``request_id``, if a job run did."""
        async with self._db.read() as session:
            row = await self._store.run_by_request(session, request_id)
        return run_read(row) if row is not None else None

    async def list_runs(self, query: JobRunQuery) -> JobRunPage:
        """A page of runs, newest first.

        Raises:
            NotFound: If ``query.job_id`` names no job.
            InvalidRequest: If the cursor is not one this listing produced.
        """
        after = decode_cursor(query.cursor, what="run") if query.cursor else None
        async with self._db.read() as session:
            if query.job_id is not None:
                await self._job(session, query.job_id)
            rows = await self._store.list_runs(
                session, job_id=query.job_id, probe_id=query.probe_id,
                statuses=[query.status.value] if query.status else None, created_after=query.started_after,
                created_before=query.started_before, after=after, limit=query.limit + 1,
            )  # fmt: skip
        page = [run_read(row) for row in rows[: query.limit]]
        counts = {status.value: 0 for status in RunStatus}
        for run in page:
            counts[run.status.value] += 1
        last = rows[query.limit - 1] if len(rows) > query.limit else None
        next_cursor = encode_cursor(last.created_at, last.id) if last is not None else None
        return JobRunPage(runs=page, count=len(page), counts=counts, next_cursor=next_cursor)

    # -- output -------------------------------------------------------------------------------------------------

    async def add_output(self, *, run_id: str, chunks: Sequence[JobOutputChunk]) -> int:
        """Store streamed chunks of a run (up to :data:`MAX_STREAMED_BYTES`); returns how many were kept."""
        if not chunks:
            return 0
        async with self._db.write() as session:
            row = await self._store.get_run(session, run_id)
            if row is None:
                return 0
            budget = MAX_STREAMED_BYTES - row.streamed_bytes
            kept: list[JobRunChunk] = []
            for chunk in chunks:
                data = sanitize(chunk.data)
                size = len(data.encode())
                if size > budget:
                    break
                budget -= size
                kept.append(JobRunChunk(run_id=run_id, seq=chunk.seq, stream=chunk.stream, data=data))
            await self._store.add_chunks(session, kept)
            await self._store.update_run(
                session, run_id, streamed_bytes=MAX_STREAMED_BYTES - budget,
                **({"output_truncated": True} if len(kept) < len(chunks) else {}),
            )  # fmt: skip
        return len(kept)

    async def output(self, *, run_id: str, from_seq: int = 0, limit: int = 256) -> list[JobOutputChunk]:
        """Stored streamed chunks of a run with ``seq >= from_seq``, in order."""
        async with self._db.read() as session:
            rows = await self._store.chunks(session, run_id, from_seq=from_seq, limit=limit)
        return [JobOutputChunk(seq=row.seq, stream=row.stream, data=row.data) for row in rows]
