"""Wire shapes of command runs."""

import enum
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

__all__ = ["TERMINAL_STATUSES", "CommandRunRead", "CommandStatus", "PendingCommands"]


class CommandStatus(enum.StrEnum):
    """Where a command run is in its life."""

    PENDING_APPROVAL = "pending_approval"
    DENIED = "denied"
    DISPATCHED = "dispatched"
    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    CANCELED = "canceled"
    REFUSED = "refused"
    LOST = "lost"


TERMINAL_STATUSES = frozenset(
    {
        CommandStatus.DENIED,
        CommandStatus.OK,
        CommandStatus.ERROR,
        CommandStatus.TIMEOUT,
        CommandStatus.CANCELED,
        CommandStatus.REFUSED,
        CommandStatus.LOST,
    }
)
"""States a run never leaves."""


class CommandRunRead(BaseModel):
    """A command run: what was asked, what policy said, and what happened."""

    request_id: str
    probe_id: str
    kind: str
    spec: dict[str, Any]
    status: CommandStatus
    decision: str
    risk: str
    required_level: str
    rationale: dict[str, Any]
    approval_id: str | None = None
    approval_expires_at: datetime | None = None
    requested_by: str
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    truncated: bool = False
    duration_ms: int | None = None
    error_code: str | None = None
    error: str | None = None
    data: dict[str, Any] | None = None
    timeout_s: float
    created_at: datetime
    dispatched_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def finished(self) -> bool:
        """Whether the run reached a terminal state."""
        return self.status in TERMINAL_STATUSES


class PendingCommands(BaseModel):
    """Commands sent to probes whose results have not arrived."""

    pending: list[CommandRunRead]
    in_flight: int = Field(description="How many of them this control plane is tracking live")
