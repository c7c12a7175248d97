"""Queries for policy templates. Functions run inside a transaction the service opened."""

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from legator_mcp.db._errors import map_db_errors
from legator_mcp.policy.models import PolicyTemplate

__all__ = ["PolicyStore"]


class PolicyStore:
    """Every SQL statement of the policy domain; callers pass the session of their transaction."""

    async def add(self, session: AsyncSession, row: PolicyTemplate) -> PolicyTemplate:
        with map_db_errors(f"a policy template named {row.name!r} already exists"):
            session.add(row)
            await session.flush()
        return row

    async def get(self, session: AsyncSession, template_id: str, *, for_update: bool = False) -> PolicyTemplate | None:
        statement = select(PolicyTemplate).where(PolicyTemplate.id == template_id)
        if for_update:
            statement = statement.with_for_update()
        return (await session.execute(statement)).scalar_one_or_none()

    async def get_many(self, session: AsyncSession, template_ids: Sequence[str]) -> Sequence[PolicyTemplate]:
        statement = select(PolicyTemplate).where(PolicyTemplate.id.in_(template_ids))
        return (await session.execute(statement)).scalars().all()

    async def list(self, session: AsyncSession) -> Sequence[PolicyTemplate]:
        statement = select(PolicyTemplate).order_by(PolicyTemplate.created_at, PolicyTemplate.id)
        return (await session.execute(statement)).scalars().all()

    async def flush(self, session: AsyncSession, row: PolicyTemplate) -> None:
        with map_db_errors(f"a policy template named {row.name!r} already exists"):
            await session.flush()

    async def delete(self, session: AsyncSession, row: PolicyTemplate) -> None:
        await session.delete(row)
        await session.flush()
