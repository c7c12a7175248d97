"""Alembic, driven from code: upgrade at start-up, report the current revision, refuse a newer schema."""

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from legator_mcp.db.session import Database
from legator_mcp.errors import LegatorError

__all__ = ["SchemaTooNew", "current_revision", "head_revision", "upgrade"]

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


class SchemaTooNew(LegatorError):
    """Raised when the database was migrated by a newer Legator than this one (the downgrade guard)."""

    code = "schema_too_new"
    http_status = 503


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str:
    """Return the newest schema revision this code knows."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships migrations
        raise RuntimeError("no migrations found")
    return head


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def current_revision(database: Database) -> str | None:
    """Return the revision the database is stamped with, or ``None`` for an empty database."""
    async with database.engine.connect() as conn:
        return await conn.run_sync(_current)


def _guard(connection: Connection) -> None:
    current = _current(connection)
    if current is None:
        return
    scripts = ScriptDirectory.from_config(_config())
    known = {script.revision for script in scripts.walk_revisions()}
    if current not in known:
        raise SchemaTooNew(
            f"the database schema is at revision {current}, newer than this Legator knows "
            f"(head {scripts.get_current_head()}); upgrade Legator or restore a matching backup",
            details={"database_revision": current, "code_head": scripts.get_current_head()},
        )


def _upgrade(connection: Connection, revision: str) -> None:
    _guard(connection)
    config = _config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def upgrade(database: Database, revision: str = "head") -> str:
    """Apply pending migrations and return the resulting revision.

    Raises:
        SchemaTooNew: If the database is stamped with a revision this code does not know.
    """
    async with database.write_engine.begin() as conn:
        await conn.run_sync(_upgrade, revision)
    current = await current_revision(database)
    assert current is not None
    return current
