"""Wire shapes of the approval queue: requests as approvers see them, votes, pages, decisions."""

import enum
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "APPROVAL_STATUSES",
    "ApprovalAction",
    "ApprovalDecide",
    "ApprovalDecision",
    "ApprovalPage",
    "ApprovalQuery",
    "ApprovalRead",
    "ApprovalStatus",
    "ApprovalVoteRead",
    "VoteDecision",
]


class ApprovalStatus(enum.StrEnum):
    """Where an approval request is in its life.

    ``pending`` → ``approved`` (enough distinct approvers) → ``consumed`` (its action was released to run,
    once); or ``pending`` → ``denied`` (one denial, or the requester withdrew it) / ``expired`` (not decided
    in time). Every state but ``pending`` and ``approved`` is final.
    """

    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    CONSUMED = "consumed"


APPROVAL_STATUSES = tuple(status.value for status in ApprovalStatus)
"""Every status string, for adapters that list the choices."""

VoteDecision = Literal["approved", "denied"]
"""What one approver can say."""


class ApprovalVoteRead(BaseModel):
    """One approver's vote, recorded with the authenticated principal that cast it."""

    approver: str = Field(description="The authenticated actor, e.g. user:alice or api_key:ops-bot")
    approver_kind: str
    decision: VoteDecision
    withdrawal: bool = Field(default=False, description="The requester denied (withdrew) their own request")
    reason: str | None = None
    note: str | None = Field(default=None, description="Free text the client supplied (decided_by); not an identity")
    ts: datetime


class ApprovalRead(BaseModel):
    """An approval request as approvers see it: what will run, where, why it was queued, and the risk.

    ``command`` is a sanitised view of the stored action: secrets are redacted and a file's new content is
    shown as its SHA-256, size and a short preview.
    """

    id: str
    status: ApprovalStatus
    decision: Literal["approved", "denied", "expired"] | None = Field(
        default=None, description="How the request was decided, once it was (consumed counts as approved)"
    )
    decided_by: str | None = Field(default=None, description="The actor whose vote decided it")
    probe_ids: list[str]
    probe_id: str = Field(description="The first target, for clients of the single-probe API")
    command: dict[str, Any] = Field(description="What will run (sanitised): kind, spec, timeout_s, …")
    payload_sha256: str = Field(description="SHA-256 binding the exact action and targets this request authorises")
    risk_level: str
    reason: str = Field(description="Why the action was queued, in one line")
    requester: str
    requester_kind: str
    policy_decision: str | None = None
    policy_rationale: dict[str, Any] = Field(default_factory=dict[str, Any])
    required_approvals: int
    approvals: list[ApprovalVoteRead] = Field(description="Votes so far, oldest first")
    created_at: datetime
    expires_at: datetime
    decided_at: datetime | None = None
    consumed_at: datetime | None = None
    consumed_by_ref: str | None = None
    console_url: str = Field(description="Where a human reviews and decides it in the console (relative URL)")


class ApprovalPage(BaseModel):
    """Approval requests, newest first; pass ``next_cursor`` back as ``cursor`` for the next page."""

    approvals: list[ApprovalRead]
    pending_count: int = Field(description="Requests still waiting for a decision (over all pages)")
    next_cursor: str | None = None


class ApprovalDecision(BaseModel):
    """The answer to a vote: the state the vote produced and the request as it now stands.

    ``status`` is ``approved`` or ``denied`` when this vote decided the request, ``pending`` when more
    approvals are needed.
    """

    status: str
    request: ApprovalRead

    @classmethod
    def of(cls, request: ApprovalRead) -> "ApprovalDecision":
        """The answer for a request just voted on (a consumed request was approved by this vote)."""
        return cls(status=request.decision or request.status.value, request=request)


class ApprovalAction(BaseModel):
    """What a consumed approval releases to run: the stored action and targets, exactly as approved."""

    approval_id: str
    action: dict[str, Any]
    probe_ids: list[str]
    payload_sha256: str
    requester: str
    requester_id: str
    requester_kind: str
    approvers: list[str] = Field(description="Actors who approved it")


def _blank_to_none(value: Any) -> Any:
    return None if value == "" else value


class ApprovalQuery(BaseModel):
    """Filters and paging for approval lists."""

    model_config = ConfigDict(extra="forbid")

    status: ApprovalStatus | None = None
    probe_id: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    limit: int = Field(default=50, ge=1, le=500)
    cursor: Annotated[str, Field(max_length=200)] | None = Field(
        default=None, description="next_cursor of the previous page"
    )

    _blank = field_validator("status", "probe_id", "cursor", mode="before")(_blank_to_none)


class ApprovalDecide(BaseModel):
    """Approve or deny a request. The decision is recorded with the authenticated caller."""

    model_config = ConfigDict(extra="forbid")

    decision: VoteDecision
    reason: Annotated[str, Field(max_length=2000)] | None = None
    decided_by: Annotated[str, Field(max_length=200)] | None = Field(
        default=None, description="Optional free-text note; the approver is always the authenticated caller"
    )
