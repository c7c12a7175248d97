"""Backups of a live database on both backends: consistent, verified, private."""

from pathlib import Path

import pytest

from legator_mcp.backup.service import BackupService
from legator_mcp.db.session import Database

pytestmark = pytest.mark.anyio


async def test_a_backup_of_a_live_database_verifies(database: Database, tmp_path: Path) -> None:
    result = await BackupService(database=database).backup(destination=tmp_path / "backups")
    copy = Path(result.path)
    assert result.verified is True
    assert copy.exists() and copy.stat().st_size == result.size_bytes > 0
    assert copy.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "backups").stat().st_mode & 0o777 == 0o700
    assert result.schema_revision is not None
    expected = "PRAGMA integrity_check ok" if database.is_sqlite else "pg_restore --list ok"
    assert result.check == expected
