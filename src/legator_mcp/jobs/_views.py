"""Row → wire shape conversions and the in-process log of job lifecycle events."""

import collections
from collections.abc import Mapping
from typing import Any, cast

import anyio

from legator_mcp.commands.service import stored_spec
from legator_mcp.events.service import Event
from legator_mcp.jobs.models import Job, JobRun
from legator_mcp.jobs.schedule import RetryPolicy, parse_schedule
from legator_mcp.jobs.schemas import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    JobRead,
    JobRunRead,
    JobTarget,
    RetryPolicyRead,
    RunStatus,
    RunTrigger,
)

__all__ = ["EventLog", "job_read", "retry_policy", "run_read"]


def retry_policy(row: Job) -> RetryPolicy:
    """The retry policy stored on a job."""
    return RetryPolicy(
        max_attempts=row.max_attempts,
        initial_backoff_s=row.initial_backoff_s,
        multiplier=row.multiplier,
        max_backoff_s=row.max_backoff_s,
    )


def job_read(row: Job) -> JobRead:
    """A job row as clients see it (the command's secrets redacted)."""
    schedule = parse_schedule(row.schedule) if row.schedule else None
    return JobRead(
        id=row.id,
        name=row.name,
        description=row.description,
        command={"kind": row.command_kind, "spec": stored_spec(row.command_kind, row.command_spec)},
        timeout_s=row.timeout_s,
        schedule=row.schedule,
        schedule_kind=schedule.kind if schedule else None,
        target=JobTarget.model_validate({"kind": row.target_kind, "value": row.target_value}),
        retry_policy=RetryPolicyRead(
            max_attempts=row.max_attempts,
            initial_backoff=row.initial_backoff_s,
            multiplier=row.multiplier,
            max_backoff=row.max_backoff_s,
        ),
        enabled=row.enabled,
        owner=row.owner,
        created_at=row.created_at,
        updated_at=row.updated_at,
        last_run_at=row.last_run_at,
        last_status=RunStatus(row.last_status) if row.last_status else None,
        next_run_at=row.next_run_at,
    )


def run_read(row: JobRun) -> JobRunRead:
    """A run row as clients see it."""
    status = RunStatus(row.status)
    return JobRunRead(
        id=row.id,
        job_id=row.job_id,
        probe_id=row.probe_id,
        execution_id=row.execution_id,
        attempt=row.attempt,
        max_attempts=row.max_attempts,
        trigger=cast(RunTrigger, row.trigger),
        request_id=row.request_id,
        status=status,
        active=status in ACTIVE_STATUSES,
        terminal=status in TERMINAL_STATUSES,
        scheduled_for=row.scheduled_for,
        retry_scheduled_at=row.retry_scheduled_at,
        admission_decision=row.admission_decision,
        admission_reason=row.admission_reason,
        admission_rationale=row.admission_rationale,
        approval_id=row.approval_id,
        exit_code=row.exit_code,
        output=row.output,
        output_truncated=row.output_truncated,
        error=row.error,
        created_at=row.created_at,
        started_at=row.started_at,
        ended_at=row.ended_at,
        updated_at=row.updated_at,
    )


class EventLog:
    """The latest job lifecycle events of this process, numbered, for cursor reads and long polls.

    The durable record is the audit log; this is what ``legator_stream_job_events`` reads without a query.
    """

    def __init__(self, size: int = 4096) -> None:
        self._events: collections.deque[tuple[int, Event]] = collections.deque(maxlen=size)
        self._seq = 0
        self._changed = anyio.Event()

    @property
    def last_seq(self) -> int:
        """The number of the newest event (0 before any)."""
        return self._seq

    def append(self, event: Event) -> None:
        """Record ``event`` and wake long polls."""
        self._seq += 1
        self._events.append((self._seq, event))
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    def since(self, seq: int, filters: Mapping[str, Any], limit: int) -> list[tuple[int, Event]]:
        """Events after ``seq`` whose detail matches every non-empty filter, oldest first."""
        wanted = {key: value for key, value in filters.items() if value not in (None, "")}
        found: list[tuple[int, Event]] = []
        for number, event in self._events:
            if number <= seq:
                continue
            detail = {**(event.detail or {}), "probe_id": event.probe_id or (event.detail or {}).get("probe_id")}
            if all(detail.get(key) == value for key, value in wanted.items()):
                found.append((number, event))
                if len(found) >= limit:
                    break
        return found

    async def wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the next event."""
        changed = self._changed
        with anyio.move_on_after(timeout):
            await changed.wait()
