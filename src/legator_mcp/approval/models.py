"""Tables of the approval queue: requests, the probes each covers, and the approvers' votes."""

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from legator_mcp.db.base import Base, new_id

__all__ = ["Approval", "ApprovalTarget", "ApprovalVote"]


class Approval(Base):
    """One approval request: the exact action to run, where, why it was queued, and where it stands.

    ``action`` is stored in full (it runs later) and is never shown raw; ``payload_sha256`` binds it and
    ``probe_ids`` so a change after queueing is detected before anything runs.
    """

    __tablename__ = "approvals"
    __table_args__ = (
        Index("ix_approvals_created", "created_at", "id"),
        Index("ix_approvals_status_expires", "status", "expires_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    status: Mapped[str] = mapped_column(String(16))
    requester: Mapped[str] = mapped_column(String(200))
    requester_id: Mapped[str] = mapped_column(String(200))
    requester_kind: Mapped[str] = mapped_column(String(32))
    requester_via: Mapped[str | None] = mapped_column(String(32))
    probe_ids: Mapped[list[str]]
    action: Mapped[dict[str, Any]]
    payload_sha256: Mapped[str] = mapped_column(String(64))
    risk: Mapped[str] = mapped_column(String(16))
    summary: Mapped[str] = mapped_column(Text)
    policy: Mapped[dict[str, Any]]
    required_approvals: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    decided_at: Mapped[datetime | None]
    consumed_at: Mapped[datetime | None]
    consumed_by_ref: Mapped[str | None] = mapped_column(String(200))

    votes: Mapped[list["ApprovalVote"]] = relationship(
        back_populates="approval",
        order_by="ApprovalVote.id",
        cascade="all, delete-orphan",
        lazy="raise",
    )


class ApprovalTarget(Base):
    """One probe an approval request covers, so requests can be listed by probe with an index."""

    __tablename__ = "approval_targets"
    __table_args__ = (Index("ix_approval_targets_probe_id", "probe_id"),)

    approval_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("approvals.id", ondelete="CASCADE"), primary_key=True
    )
    probe_id: Mapped[str] = mapped_column(String(64), primary_key=True)


class ApprovalVote(Base):
    """One approver's vote; a principal votes at most once per request."""

    __tablename__ = "approval_votes"
    __table_args__ = (UniqueConstraint("approval_id", "approver_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    """Insertion order, which is the order votes are shown in."""
    approval_id: Mapped[str] = mapped_column(String(36), ForeignKey("approvals.id", ondelete="CASCADE"))
    approver: Mapped[str] = mapped_column(String(200))
    approver_id: Mapped[str] = mapped_column(String(200))
    approver_kind: Mapped[str] = mapped_column(String(32))
    approver_via: Mapped[str | None] = mapped_column(String(32))
    decision: Mapped[str] = mapped_column(String(16))
    withdrawal: Mapped[bool] = mapped_column(Boolean, default=False)
    """A denial by the requester themself: they withdrew their own request."""
    reason: Mapped[str | None] = mapped_column(Text)
    note: Mapped[str | None] = mapped_column(String(200))
    """Free text the client supplied (the reference's ``decided_by``); never an identity."""
    ts: Mapped[datetime]

    approval: Mapped[Approval] = relationship(back_populates="votes", lazy="raise")
