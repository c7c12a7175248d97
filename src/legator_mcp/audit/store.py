"""Every query of the audit log. Functions run inside a transaction the caller (the service) opened.

Appends are serialised by the head row: ``SELECT … FOR UPDATE`` on PostgreSQL; on SQLite the ``BEGIN
IMMEDIATE`` write transaction already holds the database's only write lock.
"""

import base64
import binascii
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, CursorResult, Select, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from legator_mcp.audit._chain import GENESIS_HASH, event_hash
from legator_mcp.audit.models import AuditCheckpoint, AuditEvent, AuditHead
from legator_mcp.audit.schemas import AuditQuery
from legator_mcp.db.base import new_id
from legator_mcp.db.bulk import insert_rows
from legator_mcp.errors import InvalidRequest

__all__ = [
    "append",
    "append_many",
    "begin_snapshot",
    "chain_batch",
    "count",
    "decode_cursor",
    "encode_cursor",
    "export_batch",
    "latest_checkpoint",
    "lock_head",
    "purge_before",
    "read_head",
    "search",
]

_HEAD_ID = 1
_CURSOR_PREFIX = "seq:"


def encode_cursor(seq: int) -> str:
    """Return the opaque cursor that continues a newest-first listing below ``seq``."""
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{seq}".encode("ascii")).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> int:
    """Return the ``seq`` a cursor from :func:`encode_cursor` encodes.

    Raises:
        InvalidRequest: If the cursor was not produced by :func:`encode_cursor`.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest("invalid audit cursor") from exc
    digits = raw.removeprefix(_CURSOR_PREFIX)
    if not raw.startswith(_CURSOR_PREFIX) or not digits.isdigit() or len(digits) > 19 or int(digits) < 1:
        raise InvalidRequest("invalid audit cursor")
    return int(digits)


def _filters(query: AuditQuery) -> list[ColumnElement[bool]]:
    clauses: list[ColumnElement[bool]] = []
    if query.type is not None:
        clauses.append(AuditEvent.type == query.type)
    if query.actor is not None:
        clauses.append(AuditEvent.actor == query.actor)
    if query.probe_id is not None:
        clauses.append(AuditEvent.probe_id == query.probe_id)
    if query.since is not None:
        clauses.append(AuditEvent.ts >= query.since)
    if query.until is not None:
        clauses.append(AuditEvent.ts < query.until)
    return clauses


async def begin_snapshot(session: AsyncSession) -> None:
    """Make the rest of a read transaction see one consistent snapshot; call it before any other query.

    SQLite's deferred read transactions already do; PostgreSQL needs ``REPEATABLE READ``.
    """
    if session.get_bind().dialect.name == "postgresql":
        await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})


async def lock_head(session: AsyncSession) -> tuple[int, str]:
    """Lock the chain head for the rest of the transaction and return ``(last_seq, last_hash)``.

    The head row is created on first use; concurrent creators are harmless (``ON CONFLICT DO NOTHING``).
    """
    locked = select(AuditHead.last_seq, AuditHead.last_hash).where(AuditHead.id == _HEAD_ID).with_for_update()
    row = (await session.execute(locked)).one_or_none()
    if row is None:
        dialect_insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
        await session.execute(
            dialect_insert(AuditHead)
            .values(id=_HEAD_ID, last_seq=0, last_hash=GENESIS_HASH)
            .on_conflict_do_nothing(index_elements=[AuditHead.id])
        )
        row = (await session.execute(locked)).one()
    return row.last_seq, row.last_hash


async def read_head(session: AsyncSession) -> tuple[int, str] | None:
    """Return ``(last_seq, last_hash)`` without locking, or ``None`` before the first event."""
    row = (
        await session.execute(select(AuditHead.last_seq, AuditHead.last_hash).where(AuditHead.id == _HEAD_ID))
    ).one_or_none()
    return None if row is None else (row.last_seq, row.last_hash)


async def append(
    session: AsyncSession,
    *,
    clock: Callable[[], datetime],
    type: str,
    actor: str,
    principal_kind: str,
    via: str | None,
    probe_id: str | None,
    summary: str,
    detail: dict[str, Any] | None,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    request_id: str | None,
) -> AuditEvent:
    """Append one event to the chain inside the caller's transaction and return it.

    The timestamp is read from ``clock`` after the head is locked, so ``ts`` follows ``seq``. The head stays
    locked until the transaction ends: record audit as the last step of a longer transaction.
    """
    last_seq, last_hash = await lock_head(session)
    fields: dict[str, Any] = {
        "seq": last_seq + 1,
        "id": new_id(),
        "ts": clock(),
        "type": type,
        "actor": actor,
        "principal_kind": principal_kind,
        "via": via,
        "probe_id": probe_id,
        "summary": summary,
        "detail": detail,
        "before": before,
        "after": after,
        "request_id": request_id,
        "prev_hash": last_hash,
    }
    event = AuditEvent(**fields, hash=event_hash(fields))
    session.add(event)
    await session.flush()
    await session.execute(
        update(AuditHead)
        .where(AuditHead.id == _HEAD_ID)
        .values(last_seq=event.seq, last_hash=event.hash)
        .execution_options(synchronize_session=False)
    )
    return event


async def append_many(
    session: AsyncSession, *, clock: Callable[[], datetime], events: Sequence[dict[str, Any]]
) -> None:
    """Append events (each the keyword arguments of :func:`append`) in order: one head lock, one multi-row insert.

    Each event chains onto the one before it exactly as successive :func:`append` calls would chain them.
    """
    last_seq, last_hash = await lock_head(session)
    rows: list[dict[str, Any]] = []
    for event in events:
        fields: dict[str, Any] = {**event, "seq": last_seq + 1, "id": new_id(), "ts": clock(), "prev_hash": last_hash}
        fields["hash"] = event_hash(fields)
        rows.append(fields)
        last_seq, last_hash = fields["seq"], fields["hash"]
    await insert_rows(session, AuditEvent, rows)
    await session.execute(
        update(AuditHead)
        .where(AuditHead.id == _HEAD_ID)
        .values(last_seq=last_seq, last_hash=last_hash)
        .execution_options(synchronize_session=False)
    )


async def search(session: AsyncSession, query: AuditQuery) -> tuple[list[AuditEvent], str | None]:
    """Return one page of events matching ``query``, newest first, and the cursor of the next page.

    Raises:
        InvalidRequest: If ``query.cursor`` is not a cursor this store issued.
    """
    statement = select(AuditEvent).where(*_filters(query))
    if query.cursor is not None:
        statement = statement.where(AuditEvent.seq < decode_cursor(query.cursor))
    statement = statement.order_by(AuditEvent.seq.desc()).limit(query.limit + 1)
    rows = list((await session.scalars(statement)).all())
    if len(rows) > query.limit:
        rows = rows[: query.limit]
        return rows, encode_cursor(rows[-1].seq)
    return rows, None


def _ascending(after_seq: int, limit: int) -> Select[AuditEvent]:
    return select(AuditEvent).where(AuditEvent.seq > after_seq).order_by(AuditEvent.seq).limit(limit)


async def export_batch(session: AsyncSession, query: AuditQuery, *, after_seq: int, limit: int) -> list[AuditEvent]:
    """Return up to ``limit`` events matching ``query``'s filters with ``seq > after_seq``, oldest first."""
    return list((await session.scalars(_ascending(after_seq, limit).where(*_filters(query)))).all())


async def chain_batch(session: AsyncSession, *, after_seq: int, limit: int) -> list[AuditEvent]:
    """Return up to ``limit`` events with ``seq > after_seq`` in chain order, unfiltered."""
    return list((await session.scalars(_ascending(after_seq, limit))).all())


async def count(session: AsyncSession, query: AuditQuery | None = None) -> int:
    """Return how many events match ``query``'s filters (all events without a query)."""
    statement = select(func.count()).select_from(AuditEvent)
    if query is not None:
        statement = statement.where(*_filters(query))
    return (await session.execute(statement)).scalar_one()


async def latest_checkpoint(session: AsyncSession) -> AuditCheckpoint | None:
    """Return the newest retention checkpoint, or ``None`` if nothing was ever purged."""
    statement = select(AuditCheckpoint).order_by(AuditCheckpoint.upto_seq.desc(), AuditCheckpoint.created_at.desc())
    return (await session.scalars(statement.limit(1))).first()


async def purge_before(session: AsyncSession, *, cutoff: datetime, actor: str, now: datetime) -> AuditCheckpoint | None:
    """Delete the oldest events, those before the first event at or after ``cutoff``; record a checkpoint.

    Only a prefix of the chain is ever deleted, so what remains still links up: an event older than
    ``cutoff`` that follows a newer one (a clock step back) is kept. Returns the checkpoint written, or
    ``None`` when nothing was old enough.
    """
    await lock_head(session)
    boundary = (await session.execute(select(func.min(AuditEvent.seq)).where(AuditEvent.ts >= cutoff))).scalar()
    last_purged = select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)
    if boundary is not None:
        last_purged = last_purged.where(AuditEvent.seq < boundary)
    last = (await session.execute(last_purged)).one_or_none()
    if last is None:
        return None
    result = await session.execute(
        delete(AuditEvent).where(AuditEvent.seq <= last.seq).execution_options(synchronize_session=False)
    )
    assert isinstance(result, CursorResult)
    checkpoint = AuditCheckpoint(
        id=new_id(), created_at=now, actor=actor, upto_seq=last.seq, upto_hash=last.hash, purged_count=result.rowcount
    )
    session.add(checkpoint)
    await session.flush()
    return checkpoint
