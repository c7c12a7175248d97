"""Wire shapes of policy decisions."""

import enum

from pydantic import BaseModel

__all__ = ["Decision", "IndicatorRead", "PolicyDecision"]


class Decision(enum.StrEnum):
    """What the policy engine says about an action."""

    ALLOW = "allow"
    QUEUE = "queue"
    DENY = "deny"


class IndicatorRead(BaseModel):
    """One reason the classifier found."""

    code: str
    detail: str
    risk: str


class PolicyDecision(BaseModel):
    """The outcome of evaluating one command against one probe, with everything that drove it."""

    decision: Decision
    risk: str
    required_level: str
    probe_level: str
    policy_id: str | None
    parsed: bool
    programs: list[str]
    indicators: list[IndicatorRead]
    rationale: list[str]
    """Human-readable sentences, in the order the rules were applied."""
