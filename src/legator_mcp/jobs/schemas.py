"""Wire shapes of jobs and their runs."""

import enum
from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from legator_mcp._duration import parse_duration
from legator_mcp.jobs.schedule import parse_schedule
from legator_probe.protocol.commands import (
    MAX_TIMEOUT_S,
    FileReadSpec,
    FileWriteSpec,
    KubectlSpec,
    ProcessSpec,
    ShellSpec,
    SystemdSpec,
)

__all__ = [
    "ACTIVE_STATUSES",
    "TERMINAL_STATUSES",
    "JobCancelResult",
    "JobCommand",
    "JobCreate",
    "JobList",
    "JobRead",
    "JobRetryResult",
    "JobRunAction",
    "JobRunPage",
    "JobRunQuery",
    "JobRunRead",
    "JobTarget",
    "JobTriggered",
    "JobUpdate",
    "RetryPolicyIn",
    "RetryPolicyRead",
    "RunStatus",
    "RunTrigger",
    "TargetKind",
]

DEFAULT_JOB_TIMEOUT_S = 300.0
"""How long a job's command may run on the probe unless the job says otherwise."""


class RunStatus(enum.StrEnum):
    """Where a job run is.

    ``queued`` (due or waiting for its retry time, nothing sent yet) → ``pending`` (policy queued it: it waits
    for a human approval) → ``running`` (sent to the probe) → ``success`` / ``failed`` / ``canceled``;
    ``denied`` when policy (or the approver) said no. The last four are final.
    """

    QUEUED = "queued"
    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELED = "canceled"
    DENIED = "denied"


ACTIVE_STATUSES = frozenset({RunStatus.QUEUED, RunStatus.PENDING, RunStatus.RUNNING})
"""States a run can still leave."""

TERMINAL_STATUSES = frozenset({RunStatus.SUCCESS, RunStatus.FAILED, RunStatus.CANCELED, RunStatus.DENIED})
"""States a run never leaves."""

RunTrigger = Literal["schedule", "manual", "retry", "operator_retry"]
"""What made a run: its schedule, a run-now request, an automatic retry, or an operator's retry."""

TargetKind = Literal["probe", "tag", "selector", "all"]
"""How a job picks its probes."""


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ShellJobCommand(_Command):
    """Run a program (``argv``) or a ``script`` under ``sh -c``."""

    kind: Literal["shell"] = "shell"
    spec: ShellSpec


class FileReadJobCommand(_Command):
    """Read a file (bounded)."""

    kind: Literal["file_read"] = "file_read"
    spec: FileReadSpec


class FileWriteJobCommand(_Command):
    """Replace a file atomically."""

    kind: Literal["file_write"] = "file_write"
    spec: FileWriteSpec


class ProcessJobCommand(_Command):
    """List, inspect or signal processes."""

    kind: Literal["process"] = "process"
    spec: ProcessSpec


class SystemdJobCommand(_Command):
    """Query or act on a systemd unit."""

    kind: Literal["systemd"] = "systemd"
    spec: SystemdSpec


class KubectlJobCommand(_Command):
    """Run kubectl."""

    kind: Literal["kubectl"] = "kubectl"
    spec: KubectlSpec


JobCommand = Annotated[
    ShellJobCommand
    | FileReadJobCommand
    | FileWriteJobCommand
    | ProcessJobCommand
    | SystemdJobCommand
    | KubectlJobCommand,
    Field(discriminator="kind"),
]
"""A job's command: one of the six command kinds with its typed spec (a plain string means a shell script)."""


def _command_shorthand(value: Any) -> Any:
    if isinstance(value, str):
        return {"kind": "shell", "spec": {"script": value}}
    return value


def _check_schedule(value: str | None) -> str | None:
    if value is None or value.strip() == "":
        return None
    return parse_schedule(value).text


def _seconds(value: Any) -> Any:
    if isinstance(value, str):
        return parse_duration(value).total_seconds()
    return value


_Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^\S+$")]


class JobTarget(BaseModel):
    """Which probes a job runs on, resolved at each fire.

    ``probe``: ``value`` is a probe id. ``tag``: a tag. ``selector``: label ``key: value`` pairs that must all
    match (or ``"k=v,k2=v2"``). ``all``: every registered probe (``value`` is ignored).
    """

    model_config = ConfigDict(extra="forbid")

    kind: TargetKind
    value: str | dict[str, str] | None = None

    @model_validator(mode="after")
    def _value_matches_kind(self) -> Self:
        if self.kind == "all":
            self.value = None
        elif self.kind == "selector":
            if isinstance(self.value, str):
                pairs = [part.split("=", 1) for part in self.value.split(",") if part.strip()]
                if not pairs or any(len(pair) != 2 for pair in pairs):
                    raise ValueError("a selector is key=value pairs separated by commas")
                self.value = {key.strip(): value.strip() for key, value in pairs}
            if not isinstance(self.value, dict) or not self.value:
                raise ValueError("a selector target needs at least one label key=value")
            if any(not key or len(key) > 64 or len(value) > 256 for key, value in self.value.items()):
                raise ValueError("selector keys are 1-64 characters and values at most 256")
        elif not isinstance(self.value, str) or not 0 < len(self.value.strip()) <= 64:
            raise ValueError(f"a {self.kind} target needs a value of 1-64 characters")
        else:
            self.value = self.value.strip()
        return self


class RetryPolicyIn(BaseModel):
    """Retry settings; any left out take the defaults (``LEGATOR_JOBS_RETRY_*``). Durations are seconds or
    text such as ``5s``/``2m``.
    """

    model_config = ConfigDict(extra="forbid")

    max_attempts: Annotated[int, Field(ge=1, le=100, description="Attempts in all, the first included")] | None = None
    initial_backoff: Annotated[float, Field(gt=0, le=86400, description="Seconds before the 2nd attempt")] | None = None
    multiplier: Annotated[float, Field(ge=1, le=100)] | None = None
    max_backoff: Annotated[float, Field(gt=0, le=86400 * 7, description="Cap on any one wait (seconds)")] | None = None

    _durations = field_validator("initial_backoff", "max_backoff", mode="before")(_seconds)


class RetryPolicyRead(BaseModel):
    """The retry policy a job's runs follow (defaults resolved)."""

    max_attempts: int
    initial_backoff: float = Field(description="Seconds")
    multiplier: float
    max_backoff: float | None = Field(default=None, description="Seconds; none means uncapped")


Timeout = Annotated[float, Field(gt=0, le=MAX_TIMEOUT_S, description="Seconds before the probe kills the command")]


class JobCreate(BaseModel):
    """A new job. ``schedule`` is an interval (``30s``, ``5m``, ``1h30m``) or a 5-field cron expression in UTC
    (``*/5 * * * *``, ``@hourly``); leave it out for a job that only runs on demand.
    """

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=200)]
    description: Annotated[str, Field(max_length=2000)] | None = None
    command: JobCommand
    schedule: Annotated[str, Field(max_length=200)] | None = None
    target: JobTarget
    retry_policy: RetryPolicyIn | None = None
    enabled: bool = True
    timeout_s: Timeout = DEFAULT_JOB_TIMEOUT_S

    _command = field_validator("command", mode="before")(_command_shorthand)
    _schedule = field_validator("schedule")(_check_schedule)


class JobUpdate(BaseModel):
    """Change a job; fields left out keep their value (``schedule: ""`` makes it on-demand only)."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    description: Annotated[str, Field(max_length=2000)] | None = None
    command: JobCommand | None = None
    schedule: Annotated[str, Field(max_length=200)] | None = None
    target: JobTarget | None = None
    retry_policy: RetryPolicyIn | None = None
    enabled: bool | None = None
    timeout_s: Timeout | None = None

    _command = field_validator("command", mode="before")(_command_shorthand)

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return _check_schedule(value) or ""


class JobRead(BaseModel):
    """A job as stored, with its next fire and the outcome of its latest runs."""

    id: str
    name: str
    description: str | None = None
    command: dict[str, Any] = Field(description="kind and spec (secrets redacted, file content as a digest)")
    timeout_s: float
    schedule: str | None = Field(default=None, description="Interval or cron (UTC); none for on-demand only")
    schedule_kind: Literal["interval", "cron"] | None = None
    target: JobTarget
    retry_policy: RetryPolicyRead
    enabled: bool
    owner: str = Field(description="The actor the runs act as (policy, approvals, audit)")
    created_at: datetime
    updated_at: datetime
    last_run_at: datetime | None = None
    last_status: RunStatus | None = None
    next_run_at: datetime | None = None


class JobRunRead(BaseModel):
    """One attempt of a job on one probe."""

    id: str
    job_id: str
    probe_id: str
    execution_id: str = Field(description="Shared by every attempt of one fire on one probe")
    attempt: int
    max_attempts: int
    trigger: RunTrigger
    request_id: str = Field(description="The command's id (GET /api/v1/commands/{requestId})")
    status: RunStatus
    active: bool
    terminal: bool
    scheduled_for: datetime
    retry_scheduled_at: datetime | None = None
    admission_decision: str | None = Field(default=None, description="allow, queue or deny (the policy gate)")
    admission_reason: str | None = None
    admission_rationale: dict[str, Any] | None = None
    approval_id: str | None = None
    exit_code: int | None = None
    output: str = Field(default="", description="stdout then stderr, at most 64 KiB")
    output_truncated: bool = False
    error: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    ended_at: datetime | None = None
    updated_at: datetime


class JobRunPage(BaseModel):
    """Runs, newest first, with counts per status over this page; pass ``next_cursor`` back as ``cursor``."""

    runs: list[JobRunRead]
    count: int
    counts: dict[str, int] = Field(description="Runs of this page per status")
    next_cursor: str | None = None


def _blank_to_none(value: Any) -> Any:
    return None if value == "" else value


class JobRunQuery(BaseModel):
    """Filters and paging for run lists; ``started_after``/``started_before`` bound the run's creation time."""

    model_config = ConfigDict(extra="forbid")

    job_id: Annotated[str, Field(min_length=1, max_length=36)] | None = None
    probe_id: _Name | None = None
    status: RunStatus | None = None
    started_after: datetime | None = None
    started_before: datetime | None = None
    limit: int = Field(default=50, ge=1, le=500)
    cursor: Annotated[str, Field(max_length=200)] | None = None

    _blank = field_validator(
        "job_id", "probe_id", "status", "started_after", "started_before", "cursor", mode="before"
    )(_blank_to_none)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        for moment in (self.started_after, self.started_before):
            if moment is not None and moment.tzinfo is None:
                raise ValueError("times need a timezone, e.g. 2030-01-01T10:00:00Z")
        if self.started_after and self.started_before and self.started_after > self.started_before:
            raise ValueError("started_after must not be later than started_before")
        return self


class JobTriggered(BaseModel):
    """A run-now request: the runs it queued (one per target probe); the scheduler sends them at once."""

    job_id: str
    status: Literal["dispatched"] = "dispatched"
    execution_ids: list[str]
    runs: list[JobRunRead]


class JobCancelResult(BaseModel):
    """What cancelling a job's active runs did."""

    job_id: str
    status: Literal["cancel_requested"] = "cancel_requested"
    canceled_runs: list[str]


class JobRunAction(BaseModel):
    """A run after an operator acted on it."""

    job_id: str
    run: JobRunRead


class JobRetryResult(BaseModel):
    """An operator's retry: a new attempt for the same probe and execution, due now."""

    job_id: str
    source_run_id: str
    status: Literal["retry_queued"] = "retry_queued"
    run: JobRunRead


class JobList(BaseModel):
    """Jobs, most recently changed first."""

    jobs: list[JobRead]
    count: int
