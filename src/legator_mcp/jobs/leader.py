"""Only one scheduler at a time: a PostgreSQL advisory lock, or a file lock beside an SQLite database.

PostgreSQL: ``pg_try_advisory_lock`` on a connection kept for as long as this process leads; the server drops the
lock when that connection or process dies, and :meth:`SchedulerLock.still_held` notices a dropped connection.
SQLite: an exclusive ``fcntl`` lock on ``<database>.scheduler.lock``, which the kernel releases when the process
dies (``kill -9`` included). Either way a standby takes over at its next attempt.
"""

import fcntl
import logging
import os
from pathlib import Path
from typing import IO

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from legator_mcp.db.session import Database

__all__ = ["ADVISORY_LOCK_KEY", "SchedulerLock"]

logger = logging.getLogger("legator.jobs")

ADVISORY_LOCK_KEY = 0x4C4547_4A4F42
"""The advisory lock id the job scheduler holds on PostgreSQL ("LEGJOB")."""


class SchedulerLock:
    """Leadership of the job scheduler for one database."""

    def __init__(self, database: Database, *, lock_path: Path | None = None) -> None:
        self._db = database
        self._conn: AsyncConnection | None = None
        self._file: IO[bytes] | None = None
        if lock_path is None and database.is_sqlite:
            name = database.url.database
            lock_path = Path(f"{name}.scheduler.lock") if name and name != ":memory:" else None
        self._path = lock_path

    @property
    def held(self) -> bool:
        """Whether this process holds the lock (as far as it knows)."""
        return self._conn is not None or self._file is not None

    async def try_acquire(self) -> bool:
        """Take the lock if nobody holds it; never waits."""
        if self.held:
            return True
        if not self._db.is_sqlite:
            return await self._try_advisory()
        if self._path is None:
            return True  # an in-memory database is private to this process
        handle = self._path.open("ab")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n".encode())
        handle.flush()
        self._file = handle
        return True

    async def _try_advisory(self) -> bool:
        try:
            conn = await self._db.engine.connect()
        except (SQLAlchemyError, OSError):
            logger.warning("cannot reach the database to take the scheduler lock")
            return False
        try:
            got = bool(
                (await conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": ADVISORY_LOCK_KEY})).scalar()
            )
            await conn.commit()
        except (SQLAlchemyError, OSError):
            await conn.close()
            return False
        if not got:
            await conn.close()
            return False
        self._conn = conn
        return True

    async def still_held(self) -> bool:
        """Check the lock is still ours (the PostgreSQL session is alive); drops it if not."""
        if self._conn is None:
            return self.held or (self._db.is_sqlite and self._path is None)
        try:
            await self._conn.execute(text("SELECT 1"))
            await self._conn.commit()
        except (SQLAlchemyError, OSError):
            logger.warning("lost the scheduler lock's database connection")
            await self.release()
            return False
        return True

    async def release(self) -> None:
        """Give the lock up."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_LOCK_KEY})
                await conn.commit()
            except (SQLAlchemyError, OSError):
                pass
            finally:
                await conn.close()
        handle, self._file = self._file, None
        if handle is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            handle.close()
