"""Queries for jobs and runs. Functions run inside a transaction the service opened.

Run status changes are compare-and-set ``UPDATE … WHERE status IN (allowed-from)``: of two racing changes
(a result and a cancel, two schedulers) exactly one matches the row, and the loser learns it lost.
"""

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import CursorResult, and_, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from legator_mcp.db._errors import map_db_errors
from legator_mcp.jobs.models import Job, JobRun, JobRunChunk

__all__ = ["JobStore"]


class JobStore:
    """Every SQL statement of the jobs domain; callers pass the session of their transaction."""

    # -- jobs ---------------------------------------------------------------------------------------------------

    async def add_job(self, session: AsyncSession, job: Job) -> Job:
        with map_db_errors(f"a job with id {job.id!r} already exists"):
            session.add(job)
            await session.flush()
        return job

    async def get_job(self, session: AsyncSession, job_id: str, *, for_update: bool = False) -> Job | None:
        statement = select(Job).where(Job.id == job_id)
        if for_update:
            statement = statement.with_for_update()
        return (await session.execute(statement)).scalar_one_or_none()

    async def list_jobs(self, session: AsyncSession, *, enabled: bool | None, limit: int) -> Sequence[Job]:
        statement = select(Job)
        if enabled is not None:
            statement = statement.where(Job.enabled == enabled)
        statement = statement.order_by(Job.updated_at.desc(), Job.id).limit(limit)
        return (await session.execute(statement)).scalars().all()

    async def delete_job(self, session: AsyncSession, job_id: str) -> bool:
        with map_db_errors():
            result = await session.execute(delete(Job).where(Job.id == job_id))
        assert isinstance(result, CursorResult)
        return result.rowcount == 1

    async def due_jobs(self, session: AsyncSession, *, now: datetime, limit: int) -> Sequence[Job]:
        statement = (
            select(Job)
            .where(Job.enabled.is_(True), Job.next_run_at.is_not(None), Job.next_run_at <= now)
            .order_by(Job.next_run_at, Job.id)
            .limit(limit)
        )
        return (await session.execute(statement)).scalars().all()

    async def advance_job(
        self, session: AsyncSession, job_id: str, *, expected: datetime, to: datetime | None, **values: Any
    ) -> bool:
        """Move a job's ``next_run_at`` from ``expected`` to ``to``; ``False`` when another fire got there first."""
        statement = (
            update(Job)
            .where(Job.id == job_id, Job.next_run_at == expected, Job.enabled.is_(True))
            .values(next_run_at=to, **values)
            .execution_options(synchronize_session=False)
        )
        with map_db_errors():
            result = await session.execute(statement)
        assert isinstance(result, CursorResult)
        return result.rowcount == 1

    async def touch_job(self, session: AsyncSession, job_id: str, **values: Any) -> None:
        statement = update(Job).where(Job.id == job_id).values(**values).execution_options(synchronize_session=False)
        with map_db_errors():
            await session.execute(statement)

    async def next_job_fire(self, session: AsyncSession) -> datetime | None:
        statement = select(func.min(Job.next_run_at)).where(Job.enabled.is_(True))
        return (await session.execute(statement)).scalar_one_or_none()

    # -- runs ---------------------------------------------------------------------------------------------------

    async def add_runs(self, session: AsyncSession, runs: Iterable[JobRun]) -> None:
        with map_db_errors("a run for this execution and attempt already exists"):
            session.add_all(list(runs))
            await session.flush()

    async def get_run(self, session: AsyncSession, run_id: str) -> JobRun | None:
        return (await session.execute(select(JobRun).where(JobRun.id == run_id))).scalar_one_or_none()

    async def get_runs(self, session: AsyncSession, run_ids: Sequence[str]) -> dict[str, JobRun]:
        """The runs with these ids that exist, by id (one query per 500 ids)."""
        found: dict[str, JobRun] = {}
        ids = list(dict.fromkeys(run_ids))
        for start in range(0, len(ids), 500):
            statement = select(JobRun).where(JobRun.id.in_(ids[start : start + 500]))
            found.update((row.id, row) for row in (await session.execute(statement)).scalars())
        return found

    async def get_jobs(self, session: AsyncSession, job_ids: Iterable[str]) -> dict[str, Job]:
        """The jobs with these ids that exist, by id."""
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            return {}
        statement = select(Job).where(Job.id.in_(ids))
        return {row.id: row for row in (await session.execute(statement)).scalars()}

    async def run_by_request(self, session: AsyncSession, request_id: str) -> JobRun | None:
        statement = select(JobRun).where(JobRun.request_id == request_id)
        return (await session.execute(statement)).scalar_one_or_none()

    async def transition(
        self, session: AsyncSession, run_id: str, *, allowed_from: Iterable[str], to: str, **values: Any
    ) -> JobRun | None:
        """Move a run to ``to`` if it is in one of ``allowed_from``; returns the updated row, else ``None``."""
        statement = (
            update(JobRun)
            .where(JobRun.id == run_id, JobRun.status.in_(list(allowed_from)))
            .values(status=to, **values)
            .execution_options(synchronize_session=False)
        )
        with map_db_errors():
            result = await session.execute(statement)
        assert isinstance(result, CursorResult)
        if result.rowcount != 1:
            return None
        row = await session.get(JobRun, run_id, populate_existing=True)
        return row

    async def update_run(self, session: AsyncSession, run_id: str, **values: Any) -> None:
        statement = (
            update(JobRun).where(JobRun.id == run_id).values(**values).execution_options(synchronize_session=False)
        )
        with map_db_errors():
            await session.execute(statement)

    async def list_runs(
        self,
        session: AsyncSession,
        *,
        job_id: str | None = None,
        probe_id: str | None = None,
        statuses: Sequence[str] | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        after: tuple[datetime, str] | None = None,
        limit: int,
    ) -> Sequence[JobRun]:
        statement = select(JobRun)
        if job_id is not None:
            statement = statement.where(JobRun.job_id == job_id)
        if probe_id is not None:
            statement = statement.where(JobRun.probe_id == probe_id)
        if statuses is not None:
            statement = statement.where(JobRun.status.in_(list(statuses)))
        if created_after is not None:
            statement = statement.where(JobRun.created_at >= created_after)
        if created_before is not None:
            statement = statement.where(JobRun.created_at <= created_before)
        if after is not None:
            created_at, run_id = after
            statement = statement.where(
                or_(JobRun.created_at < created_at, and_(JobRun.created_at == created_at, JobRun.id < run_id))
            )
        statement = statement.order_by(JobRun.created_at.desc(), JobRun.id.desc()).limit(limit)
        return (await session.execute(statement)).scalars().all()

    async def due_runs(self, session: AsyncSession, *, now: datetime, limit: int) -> Sequence[JobRun]:
        statement = (
            select(JobRun)
            .where(JobRun.status == "queued", JobRun.scheduled_for <= now)
            .order_by(JobRun.scheduled_for, JobRun.id)
            .limit(limit)
        )
        return (await session.execute(statement)).scalars().all()

    async def next_run_due(self, session: AsyncSession) -> datetime | None:
        statement = select(func.min(JobRun.scheduled_for)).where(JobRun.status == "queued")
        return (await session.execute(statement)).scalar_one_or_none()

    async def attempts(self, session: AsyncSession, execution_id: str) -> int:
        statement = select(func.max(JobRun.attempt)).where(JobRun.execution_id == execution_id)
        return int((await session.execute(statement)).scalar_one_or_none() or 0)

    async def latest_statuses(self, session: AsyncSession, job_id: str) -> list[str]:
        """Statuses of the job's newest batch (the runs sharing its latest ``scheduled_for``)."""
        latest = select(func.max(JobRun.scheduled_for)).where(JobRun.job_id == job_id).scalar_subquery()
        statement = select(JobRun.status).where(JobRun.job_id == job_id, JobRun.scheduled_for == latest).distinct()
        return list((await session.execute(statement)).scalars().all())

    # -- output -------------------------------------------------------------------------------------------------

    async def add_chunks(self, session: AsyncSession, chunks: Iterable[JobRunChunk]) -> None:
        with map_db_errors("an output chunk with this sequence number is already stored"):
            session.add_all(list(chunks))
            await session.flush()

    async def chunks(self, session: AsyncSession, run_id: str, *, from_seq: int, limit: int) -> Sequence[JobRunChunk]:
        statement = (
            select(JobRunChunk)
            .where(JobRunChunk.run_id == run_id, JobRunChunk.seq >= from_seq)
            .order_by(JobRunChunk.seq)
            .limit(limit)
        )
        return (await session.execute(statement)).scalars().all()
