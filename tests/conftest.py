"""Shared test fixtures: the anyio backend, settings, and real databases (SQLite file and PostgreSQL)."""

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg  # pyright: ignore[reportMissingTypeStubs]
import pytest

from legator_mcp.db.migrate import upgrade
from legator_mcp.db.session import Database
from legator_mcp.settings import Settings

PG_ADMIN_DSN = os.environ.get("LEGATOR_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
"""Where the PostgreSQL test server is; each test gets its own freshly created database there."""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path / "data", log_format="text")  # pyright: ignore[reportCallIssue]


async def _create_pg_database() -> str:
    name = f"legator_t_{uuid.uuid4().hex[:12]}"
    try:
        conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required in CI but unreachable at {PG_ADMIN_DSN}: {exc!r}")
        pytest.skip(f"PostgreSQL unreachable at {PG_ADMIN_DSN} (set CI=true to make this a failure)")
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name


async def _drop_pg_database(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def pg_url(name: str) -> str:
    """The SQLAlchemy URL of database ``name`` on the PostgreSQL test server."""
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return f"{base}/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database URL, once for an SQLite file and once for a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'legator-test.db'}"
        return
    name = await _create_pg_database()
    try:
        yield pg_url(name)
    finally:
        await _drop_pg_database(name)


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    """A migrated database on each backend."""
    db = Database(database_url)
    await upgrade(db)
    try:
        yield db
    finally:
        await db.dispose()


@pytest.fixture
async def sqlite_database(tmp_path: Path) -> AsyncIterator[Database]:
    """A migrated SQLite database only, for tests that do not concern storage."""
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'legator-test.db'}")
    await upgrade(db)
    try:
        yield db
    finally:
        await db.dispose()


@pytest.fixture
async def postgres_database() -> AsyncIterator[Database]:
    """A migrated, freshly created PostgreSQL database, for behaviour only PostgreSQL has."""
    name = await _create_pg_database()
    db = Database(pg_url(name))
    try:
        await upgrade(db)
        yield db
    finally:
        await db.dispose()
        await _drop_pg_database(name)
