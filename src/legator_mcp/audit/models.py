"""Tables of the audit log: the hash-chained events, the chain head, and retention checkpoints."""

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from legator_mcp.db.base import Base, new_id, utcnow

__all__ = ["AuditCheckpoint", "AuditEvent", "AuditHead"]

# SQLite only aliases ROWID for a column declared exactly INTEGER; PostgreSQL gets a 64-bit column.
_Seq = BigInteger().with_variant(Integer(), "sqlite")
_Json = JSON(none_as_null=True)


class AuditEvent(Base):
    """One audit event, linked to its predecessor by ``prev_hash``.

    ``seq`` is assigned by the store from :class:`AuditHead` under a lock, never by a database sequence, so the
    chain has no holes unless rows are deleted.
    """

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(_Seq, primary_key=True, autoincrement=False)
    id: Mapped[str] = mapped_column(String(36), unique=True, default=new_id)
    ts: Mapped[datetime] = mapped_column(index=True)
    type: Mapped[str] = mapped_column(String(100), index=True)
    actor: Mapped[str] = mapped_column(String(), index=True)
    principal_kind: Mapped[str] = mapped_column(String(32))
    via: Mapped[str | None] = mapped_column(String(32))
    probe_id: Mapped[str | None] = mapped_column(String(), index=True)
    summary: Mapped[str] = mapped_column(Text())
    detail: Mapped[dict[str, Any] | None] = mapped_column(_Json)
    before: Mapped[dict[str, Any] | None] = mapped_column(_Json)
    after: Mapped[dict[str, Any] | None] = mapped_column(_Json)
    request_id: Mapped[str | None] = mapped_column(String(), index=True)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """The single row (``id = 1``) naming the newest event; appends lock it to serialise the chain."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer(), primary_key=True, autoincrement=False)
    last_seq: Mapped[int] = mapped_column(_Seq)
    last_hash: Mapped[str] = mapped_column(String(64))


class AuditCheckpoint(Base):
    """A retention purge: events up to ``upto_seq`` were deleted; the next event chains onto ``upto_hash``."""

    __tablename__ = "audit_checkpoints"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String())
    upto_seq: Mapped[int] = mapped_column(_Seq, index=True)
    upto_hash: Mapped[str] = mapped_column(String(64))
    purged_count: Mapped[int] = mapped_column(_Seq)
