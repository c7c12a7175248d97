"""Queries for the approval queue. Functions run inside a transaction the service opened.

Decisions lock the request row (``SELECT … FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` write
transaction already holds the only write lock) and move its status with a compare-and-set ``UPDATE``, so two
racing decisions cannot both count and an approval cannot be consumed twice.
"""

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, CursorResult, and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from legator_mcp.approval.models import Approval, ApprovalTarget, ApprovalVote
from legator_mcp.approval.schemas import ApprovalStatus
from legator_mcp.db._errors import map_db_errors

__all__ = ["ApprovalStore"]


def _status_clause(status: ApprovalStatus, now: datetime) -> ColumnElement[bool]:
    # A pending request past its expiry is expired whether or not the reaper has marked it yet.
    if status is ApprovalStatus.PENDING:
        return and_(Approval.status == ApprovalStatus.PENDING.value, Approval.expires_at > now)
    if status is ApprovalStatus.EXPIRED:
        return or_(
            Approval.status == ApprovalStatus.EXPIRED.value,
            and_(Approval.status == ApprovalStatus.PENDING.value, Approval.expires_at <= now),
        )
    return Approval.status == status.value


class ApprovalStore:
    """Every SQL statement of the approval domain; callers pass the session of their transaction."""

    async def add(self, session: AsyncSession, approval: Approval) -> Approval:
        with map_db_errors(f"an approval with id {approval.id!r} already exists"):
            session.add(approval)
            await session.flush()
            session.add_all([ApprovalTarget(approval_id=approval.id, probe_id=probe) for probe in approval.probe_ids])
            await session.flush()
        return approval

    async def get(self, session: AsyncSession, approval_id: str, *, for_update: bool = False) -> Approval | None:
        statement = select(Approval).where(Approval.id == approval_id).options(selectinload(Approval.votes))
        if for_update:
            statement = statement.with_for_update()
        return (await session.execute(statement)).scalar_one_or_none()

    async def add_vote(self, session: AsyncSession, approval: Approval, vote: ApprovalVote) -> None:
        with map_db_errors("this principal already voted on the request"):
            approval.votes.append(vote)
            await session.flush()

    async def transition(
        self, session: AsyncSession, approval_id: str, *, expected: ApprovalStatus, to: ApprovalStatus, **values: Any
    ) -> bool:
        """Move a request from ``expected`` to ``to``; ``False`` when it was no longer in ``expected``."""
        statement = (
            update(Approval)
            .where(Approval.id == approval_id, Approval.status == expected.value)
            .values(status=to.value, **values)
            .execution_options(synchronize_session="fetch")
        )
        with map_db_errors():
            result = await session.execute(statement)
        assert isinstance(result, CursorResult)
        return result.rowcount == 1

    async def list(
        self,
        session: AsyncSession,
        *,
        now: datetime,
        status: ApprovalStatus | None,
        probe_id: str | None,
        after: tuple[datetime, str] | None,
        limit: int,
    ) -> Sequence[Approval]:
        statement = select(Approval).options(selectinload(Approval.votes))
        if status is not None:
            statement = statement.where(_status_clause(status, now))
        if probe_id is not None:
            targets = select(ApprovalTarget.approval_id).where(ApprovalTarget.probe_id == probe_id)
            statement = statement.where(Approval.id.in_(targets))
        if after is not None:
            created_at, approval_id = after
            statement = statement.where(
                or_(
                    Approval.created_at < created_at,
                    and_(Approval.created_at == created_at, Approval.id < approval_id),
                )
            )
        statement = statement.order_by(Approval.created_at.desc(), Approval.id.desc()).limit(limit)
        return (await session.execute(statement)).scalars().all()

    async def count_pending(self, session: AsyncSession, *, now: datetime) -> int:
        statement = select(func.count()).select_from(Approval).where(_status_clause(ApprovalStatus.PENDING, now))
        return int((await session.execute(statement)).scalar_one())

    async def overdue(self, session: AsyncSession, *, now: datetime, limit: int) -> Sequence[Approval]:
        """Pending requests past their expiry, locked for the caller to mark expired."""
        statement = (
            select(Approval)
            .where(Approval.status == ApprovalStatus.PENDING.value, Approval.expires_at <= now)
            .order_by(Approval.expires_at, Approval.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return (await session.execute(statement)).scalars().all()
