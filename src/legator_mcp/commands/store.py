"""Queries for command runs."""

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from legator_mcp.commands.models import CommandRun
from legator_mcp.db._errors import map_db_errors
from legator_mcp.db.bulk import insert_rows, update_rows

__all__ = ["CommandStore"]


class CommandStore:
    """Every SQL statement of the commands domain."""

    async def add(self, session: AsyncSession, run: CommandRun) -> CommandRun:
        with map_db_errors(f"a command with request id {run.request_id!r} already exists"):
            session.add(run)
            await session.flush()
        return run

    async def insert_many(self, session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
        """Insert rows given as column values, in one multi-row statement (no ORM objects to build)."""
        with map_db_errors("a command with one of these request ids already exists"):
            await insert_rows(session, CommandRun, rows)

    async def values_for_update(self, session: AsyncSession, request_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The rows with these ids as (mutable) column-value dicts, locked until the transaction ends."""
        found: dict[str, dict[str, Any]] = {}
        unique = list(dict.fromkeys(request_ids))
        table = CommandRun.__table__
        for start in range(0, len(unique), 500):  # SQLite caps bound parameters per statement
            statement = (
                select(table)
                .where(table.c.request_id.in_(unique[start : start + 500]))
                .order_by(table.c.request_id)
                .with_for_update()
            )
            found.update((row["request_id"], dict(row)) for row in (await session.execute(statement)).mappings())
        return found

    async def update_many(self, session: AsyncSession, changes: Sequence[dict[str, Any]]) -> None:
        """Apply column changes to rows by ``request_id`` (each dict names it), batched into one statement."""
        if changes:
            await update_rows(session, CommandRun, changes, key="request_id")

    async def get(self, session: AsyncSession, request_id: str, *, for_update: bool = False) -> CommandRun | None:
        statement = select(CommandRun).where(CommandRun.request_id == request_id)
        if for_update:
            statement = statement.with_for_update()
        return (await session.execute(statement)).scalar_one_or_none()

    async def with_status(
        self, session: AsyncSession, statuses: Sequence[str], *, limit: int = 500
    ) -> Sequence[CommandRun]:
        statement = (
            select(CommandRun)
            .where(CommandRun.status.in_(statuses))
            .order_by(CommandRun.created_at.desc())
            .limit(limit)
        )
        return (await session.execute(statement)).scalars().all()

    async def dispatched_before(self, session: AsyncSession, cutoff: datetime) -> Sequence[CommandRun]:
        statement = select(CommandRun).where(CommandRun.status == "dispatched", CommandRun.dispatched_at < cutoff)
        return (await session.execute(statement)).scalars().all()

    async def by_approval(self, session: AsyncSession, approval_id: str) -> Sequence[CommandRun]:
        statement = select(CommandRun).where(CommandRun.approval_id == approval_id).with_for_update()
        return (await session.execute(statement)).scalars().all()

    async def recent_for_probe(self, session: AsyncSession, probe_id: str, *, limit: int) -> Sequence[CommandRun]:
        statement = (
            select(CommandRun)
            .where(CommandRun.probe_id == probe_id)
            .order_by(CommandRun.created_at.desc())
            .limit(limit)
        )
        return (await session.execute(statement)).scalars().all()
