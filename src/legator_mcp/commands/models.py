"""The ``command_runs`` table."""

from datetime import datetime
from typing import Any

from sqlalchemy import Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from legator_mcp.db.base import Base

__all__ = ["CommandRun"]


class CommandRun(Base):
    """One command for one probe, from the request to its final result."""

    __tablename__ = "command_runs"
    __table_args__ = (
        Index("ix_command_runs_probe_created", "probe_id", "created_at"),
        Index("ix_command_runs_status", "status"),
    )

    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    probe_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    spec: Mapped[dict[str, Any]]
    payload_sha256: Mapped[str] = mapped_column(String(64))
    timeout_s: Mapped[float]
    requested_by: Mapped[str] = mapped_column(String(200))
    principal_kind: Mapped[str] = mapped_column(String(32))
    via: Mapped[str | None] = mapped_column(String(32))
    origin_request_id: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(24))
    decision: Mapped[str] = mapped_column(String(8))
    risk: Mapped[str] = mapped_column(String(16))
    required_level: Mapped[str] = mapped_column(String(16))
    rationale: Mapped[dict[str, Any]]
    approval_id: Mapped[str | None] = mapped_column(String(64), index=True)
    approval_sha256: Mapped[str | None] = mapped_column(String(64))
    """The digest the approval request returned, kept here so a tampered approval row cannot match it."""
    exit_code: Mapped[int | None] = mapped_column(Integer)
    stdout: Mapped[str] = mapped_column(Text, default="")
    stderr: Mapped[str] = mapped_column(Text, default="")
    stdout_bytes: Mapped[int] = mapped_column(Integer, default=0)
    stderr_bytes: Mapped[int] = mapped_column(Integer, default=0)
    truncated: Mapped[bool] = mapped_column(default=False)
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime]
    dispatched_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
