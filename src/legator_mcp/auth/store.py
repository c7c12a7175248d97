"""Queries for API keys and users."""

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from legator_mcp.auth.models import ApiKey, User
from legator_mcp.db._errors import map_db_errors

__all__ = ["AuthStore"]


class AuthStore:
    """Every SQL statement of the auth domain; callers pass the session of their transaction."""

    async def add_key(self, session: AsyncSession, key: ApiKey) -> ApiKey:
        with map_db_errors("an API key with that digest exists"):
            session.add(key)
            await session.flush()
        return key

    async def key_by_hash(self, session: AsyncSession, key_hash: str) -> ApiKey | None:
        return (await session.execute(select(ApiKey).where(ApiKey.key_hash == key_hash))).scalar_one_or_none()

    async def key_by_id(self, session: AsyncSession, key_id: str) -> ApiKey | None:
        return await session.get(ApiKey, key_id)

    async def list_keys(self, session: AsyncSession) -> Sequence[ApiKey]:
        return (await session.execute(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id))).scalars().all()

    async def delete_key(self, session: AsyncSession, key_id: str) -> bool:
        result = await session.execute(delete(ApiKey).where(ApiKey.id == key_id))
        return bool(getattr(result, "rowcount", 0))

    async def touch_key(self, session: AsyncSession, key_id: str, when: datetime) -> None:
        await session.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=when))

    async def count_keys(self, session: AsyncSession) -> int:
        return int((await session.execute(select(func.count()).select_from(ApiKey))).scalar_one())

    async def add_user(self, session: AsyncSession, user: User) -> User:
        with map_db_errors(f"a user named {user.username!r} already exists"):
            session.add(user)
            await session.flush()
        return user

    async def user_by_id(self, session: AsyncSession, user_id: str) -> User | None:
        return await session.get(User, user_id)

    async def user_by_name(self, session: AsyncSession, username: str) -> User | None:
        return (await session.execute(select(User).where(User.username == username))).scalar_one_or_none()

    async def list_users(self, session: AsyncSession) -> Sequence[User]:
        return (await session.execute(select(User).order_by(User.created_at, User.id))).scalars().all()

    async def delete_user(self, session: AsyncSession, user_id: str) -> bool:
        result = await session.execute(delete(User).where(User.id == user_id))
        return bool(getattr(result, "rowcount", 0))

    async def touch_user_login(self, session: AsyncSession, user_id: str, when: datetime) -> None:
        await session.execute(update(User).where(User.id == user_id).values(last_login_at=when))
