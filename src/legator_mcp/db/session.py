"""Engines and sessions: :class:`Database` is the one handle services get to the database.

SQLite runs in WAL mode with ``synchronous=NORMAL``, foreign keys on and a busy timeout. Write transactions
start with ``BEGIN IMMEDIATE`` and are serialised in-process, so a read-then-write (the audit hash chain)
cannot interleave with another writer; reads use deferred transactions and see a consistent snapshot.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy import event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from legator_mcp.db.base import serialize_json
from legator_mcp.errors import ServiceUnavailable

__all__ = ["SQLITE_BUSY_TIMEOUT_MS", "Database"]

SQLITE_BUSY_TIMEOUT_MS = 15_000
"""How long an SQLite connection waits for a lock held by another process before failing."""


def _sqlite_engine(url: URL, *, begin: str, echo: bool, connections: int) -> AsyncEngine:
    # A fixed pool: an overflow connection would be opened (a thread, a file, the pragmas) and closed again for
    # every transaction past the pool's size while the load lasts. Past ``connections`` at once, callers queue.
    engine = create_async_engine(
        url, echo=echo, pool_size=connections, max_overflow=0, pool_timeout=60, json_serializer=serialize_json
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Take transaction control from the driver so BEGIN is ours to emit.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql(begin)

    return engine


class Database:
    """One database, reached through short transactions that services open and commit themselves."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = make_url(url)
        self.dialect = self.url.get_backend_name()
        if self.dialect == "sqlite":
            database = self.url.database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            self.engine = _sqlite_engine(self.url, begin="BEGIN", echo=echo, connections=16)
            # Writers take the write lock first, so one connection writes at a time; a few spare ones serve
            # whatever writes outside it (migrations, backups).
            self.write_engine = _sqlite_engine(self.url, begin="BEGIN IMMEDIATE", echo=echo, connections=4)
            self._write_lock: anyio.Lock | None = anyio.Lock()
        elif self.dialect == "postgresql":
            self.engine = create_async_engine(
                self.url, echo=echo, pool_size=10, max_overflow=20, pool_pre_ping=True, json_serializer=serialize_json
            )
            self.write_engine = self.engine
            self._write_lock = None
        else:
            raise ValueError(f"unsupported database backend {self.dialect!r}")
        self._reader = async_sessionmaker(self.engine, expire_on_commit=False)
        self._writer = async_sessionmaker(self.write_engine, expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        """Whether this is the embedded SQLite database."""
        return self.dialect == "sqlite"

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """Open a read transaction (a consistent snapshot); loaded objects stay usable after it ends.

        The block is shielded from cancellation: cancelling a driver call half-way can wedge an aiosqlite
        connection, so a cancelled caller's transaction finishes first. Keep the block short and free of
        network waits.
        """
        with anyio.CancelScope(shield=True):
            async with self._reader() as session, session.begin():
                yield session

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """Open a write transaction that commits on a clean exit and rolls back on an exception.

        Shielded from cancellation like :meth:`read`; a cancelled caller's write commits or rolls back whole.
        """
        with anyio.CancelScope(shield=True):
            if self._write_lock is None:
                async with self._writer.begin() as session:
                    yield session
                return
            async with self._write_lock, self._writer.begin() as session:
                yield session

    async def ping(self) -> None:
        """Run a trivial query.

        Raises:
            ServiceUnavailable: If the database does not answer.
        """
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except (SQLAlchemyError, OSError) as exc:
            raise ServiceUnavailable("the database is not reachable") from exc

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()
        if self.write_engine is not self.engine:
            await self.write_engine.dispose()
