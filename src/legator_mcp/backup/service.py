"""Consistent online backups: SQLite through ``VACUUM INTO`` (verified with ``PRAGMA integrity_check``),
PostgreSQL through ``pg_dump`` (verified with ``pg_restore --list``).
"""

import os
import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import anyio.to_thread
from pydantic import BaseModel

from legator_mcp.db.base import utcnow
from legator_mcp.db.migrate import current_revision
from legator_mcp.db.session import Database
from legator_mcp.errors import LegatorError, ServiceUnavailable

__all__ = ["BackupFailed", "BackupResult", "BackupService"]


class BackupFailed(LegatorError):
    """Raised when a backup could not be written or did not verify."""

    code = "backup_failed"
    http_status = 500


class BackupResult(BaseModel):
    """What a backup run produced."""

    path: str
    size_bytes: int
    verified: bool
    check: str
    schema_revision: str | None
    removed: list[str]


class BackupService:
    """Write a backup of the live database next to earlier ones and prune the old."""

    def __init__(self, *, database: Database, clock: Callable[[], datetime] = utcnow) -> None:
        self._db = database
        self._clock = clock

    async def backup(self, *, destination: Path, keep_days: int | None = None) -> BackupResult:
        """Copy the database to ``destination`` (a directory), verify the copy, then remove old backups.

        Raises:
            BackupFailed: If the copy cannot be made or fails verification.
            ServiceUnavailable: If ``pg_dump`` is needed and not installed.
        """
        await anyio.to_thread.run_sync(_private_dir, destination)
        stamp = self._clock().strftime("%Y%m%dT%H%M%SZ")
        revision = await current_revision(self._db)
        if self._db.is_sqlite:
            target = destination / f"legator-{stamp}.db"
            await self._sqlite_copy(target)
            check = await anyio.to_thread.run_sync(_sqlite_integrity, target)
        else:
            target = destination / f"legator-{stamp}.pgdump"
            check = await anyio.to_thread.run_sync(self._pg_dump, target)
        await anyio.Path(target).chmod(0o600)
        removed = self.prune(destination=destination, keep_days=keep_days, keep=target) if keep_days else []
        return BackupResult(
            path=str(target), size_bytes=(await anyio.Path(target).stat()).st_size, verified=True, check=check,
            schema_revision=revision, removed=removed,
        )  # fmt: skip

    async def _sqlite_copy(self, target: Path) -> None:
        if await anyio.Path(target).exists():
            raise BackupFailed(f"backup file {target} already exists")
        source = self._db.url.database
        if not source:
            raise BackupFailed("an in-memory database cannot be backed up")
        await anyio.to_thread.run_sync(_sqlite_vacuum_into, Path(source), target)

    def _pg_dump(self, target: Path) -> str:
        dump = shutil.which("pg_dump")
        restore = shutil.which("pg_restore")
        if dump is None or restore is None:
            raise ServiceUnavailable(
                "pg_dump and pg_restore are needed to back up PostgreSQL; install postgresql-client"
            )
        url = self._db.url.set(drivername="postgresql")
        env = dict(os.environ)
        if url.password:
            env["PGPASSWORD"] = url.password
        dsn = url._replace(password=None).render_as_string(hide_password=False)
        result = subprocess.run(
            [dump, "--format=custom", f"--file={target}", dsn], env=env, capture_output=True, text=True,
            encoding="utf-8", timeout=3600,
            check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise BackupFailed("pg_dump failed", details={"stderr": result.stderr[-2000:]})
        listing = subprocess.run(
            [restore, "--list", str(target)], capture_output=True, text=True, encoding="utf-8", timeout=600, check=False
        )
        if listing.returncode != 0 or "TABLE DATA" not in listing.stdout:
            raise BackupFailed("the dump did not verify with pg_restore --list")
        return "pg_restore --list ok"

    def prune(self, *, destination: Path, keep_days: int, keep: Path | None = None) -> list[str]:
        """Delete backups in ``destination`` older than ``keep_days`` (never ``keep``, never the newest)."""
        cutoff = self._clock() - timedelta(days=keep_days)
        candidates = sorted(
            (p for p in destination.iterdir() if p.name.startswith("legator-") and p.suffix in {".db", ".pgdump"}),
            key=lambda p: p.stat().st_mtime,
        )
        removed: list[str] = []
        for path in candidates[:-1]:
            if path == keep:
                continue
            if datetime.fromtimestamp(path.stat().st_mtime, cutoff.tzinfo) < cutoff:
                path.unlink()
                removed.append(str(path))
        return removed


def _sqlite_vacuum_into(source: Path, target: Path) -> None:
    # VACUUM INTO reads one consistent snapshot while writers carry on (WAL mode); it cannot run inside a
    # transaction, so it uses a plain autocommit connection of its own.
    conn = sqlite3.connect(source, isolation_level=None, timeout=30)
    try:
        conn.execute("VACUUM INTO ?", (str(target),))
    finally:
        conn.close()


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _sqlite_integrity(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        row = conn.execute("PRAGMA integrity_check").fetchone()
        tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()
    finally:
        conn.close()
    if row is None or row[0] != "ok" or not tables or tables[0] == 0:
        path.unlink(missing_ok=True)
        raise BackupFailed("the backup copy failed PRAGMA integrity_check", details={"result": row[0] if row else None})
    return "PRAGMA integrity_check ok"
