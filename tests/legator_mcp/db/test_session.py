"""The data layer: SQLite pragmas, both backends answering, and the migration downgrade guard."""

from pathlib import Path

import pytest
from sqlalchemy import text

from legator_mcp.db.migrate import SchemaTooNew, current_revision, head_revision, upgrade
from legator_mcp.db.session import SQLITE_BUSY_TIMEOUT_MS, Database

pytestmark = pytest.mark.anyio


async def test_sqlite_connections_use_wal_normal_sync_foreign_keys_and_busy_timeout(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'p.db'}")
    try:
        for engine in (db.engine, db.write_engine):
            async with engine.connect() as conn:
                assert (await conn.execute(text("PRAGMA journal_mode"))).scalar_one() == "wal"
                assert (await conn.execute(text("PRAGMA synchronous"))).scalar_one() == 1  # NORMAL
                assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar_one() == 1
                assert (await conn.execute(text("PRAGMA busy_timeout"))).scalar_one() == SQLITE_BUSY_TIMEOUT_MS
    finally:
        await db.dispose()


async def test_migrations_bring_an_empty_database_to_head(database_url: str) -> None:
    db = Database(database_url)
    try:
        assert await current_revision(db) is None
        assert await upgrade(db) == head_revision()
        assert await upgrade(db) == head_revision()  # a second run is a no-op
        await db.ping()
    finally:
        await db.dispose()


async def test_a_database_stamped_by_a_newer_schema_is_refused(database_url: str) -> None:
    db = Database(database_url)
    try:
        await upgrade(db)
        async with db.write() as session:
            await session.execute(text("UPDATE alembic_version SET version_num = 'ffffffffffff'"))
        with pytest.raises(SchemaTooNew) as info:
            await upgrade(db)
        assert info.value.code == "schema_too_new"
        assert info.value.details == {"database_revision": "ffffffffffff", "code_head": head_revision()}
    finally:
        await db.dispose()


async def test_write_transactions_roll_back_on_error(sqlite_database: Database) -> None:
    with pytest.raises(RuntimeError):
        async with sqlite_database.write() as session:
            await session.execute(text("CREATE TABLE scratch (x INTEGER)"))
            raise RuntimeError("boom")
    async with sqlite_database.read() as session:
        found = (await session.execute(text("SELECT name FROM sqlite_master WHERE name = 'scratch'"))).all()
    assert found == []
