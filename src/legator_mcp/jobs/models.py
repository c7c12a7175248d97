"""Tables of the jobs domain: job definitions, their runs (one per target probe per attempt), and run output."""

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from legator_mcp.db.base import Base, new_id

__all__ = ["Job", "JobRun", "JobRunChunk"]


class Job(Base):
    """A command, where it runs, when, and how failures are retried.

    ``next_run_at`` is the next scheduled fire (``None`` when disabled or on-demand only); the scheduler moves
    it with a compare-and-set in the same transaction that inserts the fire's runs, so a fire is recorded
    exactly once however many schedulers race for it.
    """

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_enabled_next", "enabled", "next_run_at"),
        Index("ix_jobs_updated", "updated_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    command_kind: Mapped[str] = mapped_column(String(16))
    command_spec: Mapped[dict[str, Any]]
    timeout_s: Mapped[float] = mapped_column(Float)
    schedule: Mapped[str | None] = mapped_column(String(200))
    target_kind: Mapped[str] = mapped_column(String(16))
    target_value: Mapped[Any] = mapped_column(JSON, nullable=True)
    max_attempts: Mapped[int] = mapped_column(Integer)
    initial_backoff_s: Mapped[float] = mapped_column(Float)
    multiplier: Mapped[float] = mapped_column(Float)
    max_backoff_s: Mapped[float | None] = mapped_column(Float)
    enabled: Mapped[bool] = mapped_column(Boolean)
    owner: Mapped[str] = mapped_column(String(200))
    """The actor whose identity the runs carry (policy, approvals, audit): whoever last defined the command."""
    owner_id: Mapped[str] = mapped_column(String(200))
    owner_kind: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    last_run_at: Mapped[datetime | None]
    last_status: Mapped[str | None] = mapped_column(String(16))
    next_run_at: Mapped[datetime | None]


class JobRun(Base):
    """One attempt of a job on one probe; retries are new rows sharing ``execution_id``.

    ``request_id`` is chosen when the run is inserted, before anything is sent, so after a crash the command it
    names either exists (and is adopted) or does not (and is sent once).
    """

    __tablename__ = "job_runs"
    __table_args__ = (
        UniqueConstraint("execution_id", "attempt"),
        UniqueConstraint("request_id"),
        Index("ix_job_runs_job_created", "job_id", "created_at"),
        Index("ix_job_runs_job_due", "job_id", "scheduled_for"),
        Index("ix_job_runs_status_due", "status", "scheduled_for"),
        Index("ix_job_runs_probe_created", "probe_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(String(36), ForeignKey("jobs.id", ondelete="CASCADE"))
    probe_id: Mapped[str] = mapped_column(String(64))
    execution_id: Mapped[str] = mapped_column(String(64))
    attempt: Mapped[int] = mapped_column(Integer)
    max_attempts: Mapped[int] = mapped_column(Integer)
    trigger: Mapped[str] = mapped_column(String(16))
    request_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    scheduled_for: Mapped[datetime]
    """When the run is due: its fire time, or the time its retry backoff ends."""
    retry_scheduled_at: Mapped[datetime | None]
    """On a failed run: when its next attempt is due (if one was scheduled)."""
    admission_decision: Mapped[str | None] = mapped_column(String(8))
    admission_reason: Mapped[str | None] = mapped_column(Text)
    admission_rationale: Mapped[dict[str, Any] | None]
    approval_id: Mapped[str | None] = mapped_column(String(64))
    exit_code: Mapped[int | None] = mapped_column(Integer)
    output: Mapped[str] = mapped_column(Text, default="")
    output_truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    streamed_bytes: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]


class JobRunChunk(Base):
    """A piece of a run's streamed output, as the probe sent it (``seq`` orders them)."""

    __tablename__ = "job_run_chunks"

    run_id: Mapped[str] = mapped_column(String(36), ForeignKey("job_runs.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    stream: Mapped[str] = mapped_column(String(8))
    data: Mapped[str] = mapped_column(Text)
