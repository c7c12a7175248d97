"""Wire shapes of policy decisions."""

import enum
import re
from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, computed_field, field_validator, model_validator

from legator_probe.protocol.types import CapabilityLevel

__all__ = [
    "CapacitySignal",
    "CapacityState",
    "Decision",
    "IndicatorRead",
    "PolicyApplied",
    "PolicyDecision",
    "PolicyEvaluate",
    "PolicyTemplateCreate",
    "PolicyTemplateList",
    "PolicyTemplateRead",
    "PolicyTemplateUpdate",
    "ProbeRules",
]


class Decision(enum.StrEnum):
    """What the policy engine says about an action."""

    ALLOW = "allow"
    QUEUE = "queue"
    DENY = "deny"


class CapacityState(enum.StrEnum):
    """How much load a target can take, as a capacity signal provider sees it."""

    OK = "ok"
    LIMITED = "limited"
    """Changes should wait for a human: an ``allow`` becomes ``queue``."""
    DEGRADED = "degraded"
    """Nothing more should run there now: the decision becomes ``deny``."""


class CapacitySignal(BaseModel):
    """One provider's view of one target's capacity."""

    state: CapacityState
    source: str = Field(description="The provider that reported it, e.g. heartbeat or grafana")
    reason: str = Field(description="Why, with the measurement and the threshold when there is one")


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
    rule: str | None = None
    """The rule that decided: ``block_pattern``, ``allow_list``, ``path_deny``, ``path_allow``, ``level_cap``,
    ``capacity_degraded``, ``capacity_limited``, ``approval_threshold``, ``preapproved`` or ``below_threshold``."""
    capacity: list[CapacitySignal] = []
    """The capacity signals consulted for the target (none when no provider is registered)."""


Pattern = Annotated[str, Field(min_length=1, max_length=500)]
PathPattern = Annotated[str, Field(min_length=1, max_length=1000, pattern=r"^/")]
_Patterns = Annotated[list[Pattern], Field(max_length=200)]
_Paths = Annotated[list[PathPattern], Field(max_length=200)]


class PolicyTemplateCreate(BaseModel):
    """A custom policy template.

    Patterns are globs (``*``, ``?``, ``[…]``) over the normalised command line — the program's basename and its
    arguments joined by spaces, e.g. ``systemctl restart nginx``; typed kinds read as ``systemctl <action>
    <unit>``, ``kubectl <argv…>``, ``file_read <path>``, ``file_write <path>``, ``process <action> …``. A
    pattern starting with ``re:`` is a regular expression that must match the whole line. Path rules use the
    probe's path globs: ``*`` stays within a segment, ``**`` spans segments, and a path without wildcards
    covers everything below it.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: Annotated[str, Field(min_length=1, max_length=200)]
    description: Annotated[str, Field(max_length=2000)] = ""
    level: CapabilityLevel = "observe"
    allow_patterns: _Patterns = Field(default=[], validation_alias=AliasChoices("allow_patterns", "allowed"))
    block_patterns: _Patterns = Field(default=[], validation_alias=AliasChoices("block_patterns", "blocked"))
    path_allow: _Paths = Field(default=[], validation_alias=AliasChoices("path_allow", "paths"))
    path_deny: _Paths = []
    preapproved_patterns: _Patterns = []

    @field_validator("allow_patterns", "block_patterns", "preapproved_patterns")
    @classmethod
    def _valid_patterns(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            if pattern.startswith("re:"):
                try:
                    re.compile(pattern[3:])
                except re.error as exc:
                    raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None
        return patterns


class PolicyTemplateUpdate(PolicyTemplateCreate):
    """A full replacement of a custom template's fields (its version goes up by one)."""


class PolicyTemplateRead(BaseModel):
    """A policy template; ``builtin`` templates cannot be changed or deleted."""

    id: str
    name: str
    description: str
    level: CapabilityLevel
    builtin: bool
    allow_patterns: list[str]
    block_patterns: list[str]
    path_allow: list[str]
    path_deny: list[str]
    preapproved_patterns: list[str]
    version: int
    created_at: datetime
    updated_at: datetime

    @computed_field
    @property
    def allowed(self) -> list[str]:
        """Alias of ``allow_patterns`` under the reference implementation's field name."""
        return self.allow_patterns

    @computed_field
    @property
    def blocked(self) -> list[str]:
        """Alias of ``block_patterns`` under the reference implementation's field name."""
        return self.block_patterns

    @computed_field
    @property
    def paths(self) -> list[str]:
        """Alias of ``path_allow`` under the reference implementation's field name."""
        return self.path_allow


class ProbeRules(BaseModel):
    """What a probe enforces itself from its template, in the probe's own pattern dialect (see
    :func:`legator_mcp.policy._probe_rules.probe_rules`)."""

    allow_patterns: list[str] = []
    block_patterns: list[str] = []
    path_allow: list[str] = []
    path_deny: list[str] = []


class PolicyTemplateList(BaseModel):
    """Every template, built-ins first."""

    templates: list[PolicyTemplateRead]


class PolicyEvaluate(BaseModel):
    """ "What would happen if I ran this there?": a typed command (``kind`` + ``spec``) or ``command`` + ``args``."""

    model_config = ConfigDict(extra="forbid")

    probe_id: Annotated[str, Field(min_length=1, max_length=64)]
    kind: Annotated[str, Field(min_length=1, max_length=32)] | None = None
    spec: dict[str, Any] | None = None
    command: Annotated[str, Field(min_length=1, max_length=4096)] | None = None
    args: Annotated[list[Annotated[str, Field(max_length=4096)]], Field(max_length=256)] = []

    @model_validator(mode="after")
    def _one_form(self) -> Self:
        if (self.command is None) == (self.kind is None):
            raise ValueError("give either kind and spec, or command (with optional args)")
        if self.kind is not None and self.spec is None:
            raise ValueError("kind needs a spec")
        return self

    def as_command(self) -> tuple[str, dict[str, Any]]:
        """The ``(kind, spec)`` this request evaluates: ``command`` with ``args`` is a shell argv; a ``command``
        alone that contains whitespace is a shell script (``"systemctl restart nginx"``)."""
        if self.command is not None:
            if not self.args and self.command.split() != [self.command]:
                return "shell", {"script": self.command}
            return "shell", {"argv": [self.command, *self.args]}
        return self.kind or "shell", self.spec or {}


class PolicyApplied(BaseModel):
    """The outcome of applying a template to a probe."""

    status: Literal["applied", "applied_locally"]
    probe_id: str
    policy_id: str
    level: CapabilityLevel
    version: int
    note: str | None = None
