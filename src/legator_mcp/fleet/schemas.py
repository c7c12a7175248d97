"""Wire shapes of the fleet: registration tokens, registration, probes, health, inventory and fleet roll-ups."""

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, field_validator

from legator_mcp._duration import parse_duration
from legator_mcp.db.base import JSONText
from legator_probe.protocol.payloads import (
    DiskInfo,
    InterfaceInfo,
    InventoryPayload,
    PackageInfo,
    ServiceInfo,
    UserInfo,
    inventory_digest,
)
from legator_probe.protocol.types import CapabilityLevel

__all__ = [
    "CLOSE_CREDENTIAL_REPLACED",
    "CLOSE_HEARTBEAT_TIMEOUT",
    "CLOSE_PROBE_DELETED",
    "CREDENTIAL_PREFIX",
    "KEY_ROTATION_OVERLAP_S",
    "MAX_TAGS",
    "TOKEN_PREFIX",
    "PROBE_ID_PATTERN",
    "AuthenticatedProbe",
    "CleanupResult",
    "FleetInventory",
    "FleetInventoryAggregates",
    "FleetInventoryProbe",
    "FleetQueryAnswer",
    "FleetSummary",
    "HealthMetrics",
    "HealthRead",
    "HealthReason",
    "HealthStatus",
    "HeartbeatRead",
    "Hostname",
    "InventoryRead",
    "InventoryReport",
    "KeyRotationRead",
    "PolicyLevel",
    "PolicyRead",
    "ProbeBrief",
    "ProbeDeleted",
    "ProbePage",
    "ProbeQuery",
    "ProbeRead",
    "ProbeStatus",
    "ProbeTagsRead",
    "ProbeTagsUpdate",
    "RegistrationRequest",
    "RegistrationResult",
    "SigningIdentity",
    "SigningKeyRead",
    "Tag",
    "TagCounts",
    "TokenCreate",
    "TokenCreated",
    "TokenList",
    "TokenRead",
]

ProbeStatus: TypeAlias = Literal["pending", "online", "degraded", "offline"]
"""A probe's connection state: ``pending`` until it first connects, ``degraded`` while connected but unhealthy."""

HealthStatus: TypeAlias = Literal["healthy", "degraded", "critical", "unknown"]
"""The verdict of a health check: the worst severity among its reasons (``unknown`` before any heartbeat)."""

PolicyLevel: TypeAlias = CapabilityLevel
"""``observe < diagnose < remediate``: the most a probe may be asked to do."""

PROBE_ID_PATTERN = re.compile(r"^prb-[0-9a-f]{8}$")
"""Probe ids are ``prb-`` and 8 hex digits."""

MAX_TAGS = 32
"""Most tags a probe (or a registration token) may carry."""

TOKEN_PREFIX = "lrt_"
"""Every registration token starts with this (the credential sanitiser recognises it)."""

CREDENTIAL_PREFIX = "lpc_"
"""Every probe credential starts with this (the credential sanitiser recognises it)."""

KEY_ROTATION_OVERLAP_S = 300
"""Seconds a probe keeps trusting its old signing key after a rotation, for instructions already in flight."""

CLOSE_CREDENTIAL_REPLACED = 4001
"""WebSocket close code: the probe re-registered, so the credential this connection used is revoked."""

CLOSE_PROBE_DELETED = 4004
"""WebSocket close code: the probe was deleted from the fleet."""

CLOSE_HEARTBEAT_TIMEOUT = 4008
"""WebSocket close code: the probe sent no heartbeat within ``offline_after_s``."""

_TAG_RE = re.compile(r"^[a-z0-9][a-z0-9_.:=/-]{0,63}$")
_HOSTNAME_RE = re.compile(r"^[a-z0-9_](?:[a-z0-9_.-]{0,251}[a-z0-9_])?$")


def _tag(value: str) -> str:
    tag = value.strip().lower()
    if not _TAG_RE.fullmatch(tag):
        raise ValueError("a tag is 1-64 characters of a-z, 0-9 and _ . : = / - (starting with a letter or digit)")
    return tag


def _tags(values: list[str]) -> list[str]:
    return sorted({_tag(value) for value in values})


def _hostname(value: str) -> str:
    name = value.strip().lower()
    if not _HOSTNAME_RE.fullmatch(name) or ".." in name:
        raise ValueError("a hostname is 1-253 characters of a-z, 0-9, '-', '_' and '.'")
    return name


Tag = Annotated[
    str,
    Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:=/-]*$", description="e.g. prod or env=prod"),
]
"""One probe tag; normalised to lower case."""

Hostname = Annotated[
    str, Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?$")
]
"""A host name (normalised to lower case)."""


def _duration_or_none(value: Any) -> timedelta | None:
    if value is None or isinstance(value, timedelta):
        return value
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return parse_duration(value)
    raise ValueError("must be a duration like 30m, 24h or 7d, or seconds")


# -- registration tokens ---------------------------------------------------------------------------------------


class TokenCreate(BaseModel):
    """Ask for a registration token that lets a new probe join the fleet."""

    model_config = ConfigDict(extra="forbid")

    multi_use: bool = Field(default=False, description="Allow many probes to register with it until it expires")
    expires_in: timedelta | None = Field(default=None, description="Lifetime such as 30m or 7d; default from settings")
    tags: list[Tag] = Field(default_factory=list[str], max_length=MAX_TAGS, description="Tags given to its probes")
    policy_level: PolicyLevel | None = Field(default=None, description="Initial level; remediate needs admin")

    _tags = field_validator("tags")(_tags)
    _expires = field_validator("expires_in", mode="before")(_duration_or_none)

    @field_validator("expires_in")
    @classmethod
    def _bounded(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value > timedelta(days=3650):
            raise ValueError("must be at most 3650 days")
        return value


class TokenRead(BaseModel):
    """A registration token as listed: never the token itself."""

    id: str
    token_prefix: str
    multi_use: bool
    tags: list[str]
    policy_level: PolicyLevel
    created_at: datetime
    created_by: str | None
    expires_at: datetime
    uses: int
    last_used_at: datetime | None
    expired: bool
    used: bool
    active: bool


class TokenCreated(BaseModel):
    """The one response that carries a registration token in plain text."""

    token: str
    token_id: str
    expires_at: datetime
    multi_use: bool
    tags: list[str]
    policy_level: PolicyLevel
    install_command: str


class TokenList(BaseModel):
    """Every registration token; ``count`` are still usable."""

    tokens: list[TokenRead]
    count: int
    total: int


# -- registration ----------------------------------------------------------------------------------------------


class RegistrationRequest(BaseModel):
    """What a probe sends to join the fleet (``legator-probe init``)."""

    model_config = ConfigDict(extra="ignore")

    token: Annotated[str, Field(min_length=1, max_length=256)]
    hostname: Hostname
    os: Annotated[str, Field(max_length=64)] = ""
    arch: Annotated[str, Field(max_length=32)] = ""
    version: Annotated[str, Field(max_length=64)] = ""
    tags: list[Tag] = Field(default_factory=list[str], max_length=MAX_TAGS)

    _hostname = field_validator("hostname")(_hostname)
    _tags = field_validator("tags")(_tags)


class SigningKeyRead(BaseModel):
    """The public key a probe verifies the control plane's instructions with."""

    key_id: str
    algorithm: Literal["ed25519"] = "ed25519"
    public_key: str = Field(description="Standard base64 of the 32-byte raw Ed25519 public key")


class PolicyRead(BaseModel):
    """The policy a probe enforces locally."""

    policy_id: str
    level: PolicyLevel
    path_allow: list[str] = Field(default_factory=list[str])
    path_deny: list[str] = Field(default_factory=list[str])
    version: int


class RegistrationResult(BaseModel):
    """A registered probe's identity: ``credential`` is shown this once and stored only as a digest."""

    probe_id: str
    credential: str
    signing_key: SigningKeyRead
    policy: PolicyRead
    heartbeat_interval_s: float


# -- probes ----------------------------------------------------------------------------------------------------


class ProbeRead(BaseModel):
    """A probe's state (never its credential)."""

    id: str
    hostname: str
    os: str
    arch: str
    version: str
    kernel: str | None = None
    status: ProbeStatus
    status_changed_at: datetime
    policy_level: PolicyLevel
    policy_id: str
    policy_version: int
    tags: list[str]
    labels: dict[str, str]
    key_generation: int
    key_rotated_at: datetime | None = None
    registered_at: datetime
    last_seen_at: datetime | None = None
    connected_at: datetime | None = None
    cpus: int | None = None
    mem_total_bytes: int | None = None
    disk_total_bytes: int | None = None
    inventory_collected_at: datetime | None = None
    health_score: int | None = Field(default=None, description="0-100 from the last heartbeat; null before one")
    health_status: HealthStatus = "unknown"


class ProbeQuery(BaseModel):
    """Filters and paging for probe lists."""

    model_config = ConfigDict(extra="forbid")

    status: ProbeStatus | None = None
    tag: Tag | None = None
    limit: int = Field(default=100, ge=1, le=500)
    cursor: str | None = Field(default=None, max_length=64, description="next_cursor of the previous page")

    @field_validator("tag", mode="before")
    @classmethod
    def _tag_filter(cls, value: Any) -> Any:
        if value in (None, ""):
            return None
        return _tag(value) if isinstance(value, str) else value

    @field_validator("status", "cursor", mode="before")
    @classmethod
    def _blank(cls, value: Any) -> Any:
        return None if value == "" else value


class ProbePage(BaseModel):
    """One page of probes ordered by id; pass ``next_cursor`` back as ``cursor`` for the next page."""

    probes: list[ProbeRead]
    total: int = Field(description="Probes matching the filters, over all pages")
    next_cursor: str | None = None
    has_more: bool = False


class ProbeTagsUpdate(BaseModel):
    """Replace a probe's tags."""

    model_config = ConfigDict(extra="forbid")

    tags: list[Tag] = Field(max_length=MAX_TAGS)

    _tags = field_validator("tags")(_tags)


class ProbeTagsRead(BaseModel):
    """A probe's tags after an update."""

    probe_id: str
    tags: list[str]


class ProbeDeleted(BaseModel):
    """The probe that was deleted (and disconnected)."""

    deleted: str
    disconnected: bool


class KeyRotationRead(BaseModel):
    """The outcome of a signing-key rotation.

    ``delivery`` is ``pushed`` when the connected probe was sent the new key (signed with the old one), or
    ``on_reconnect`` when it is offline and will receive it when it connects next.
    """

    status: Literal["rotated"] = "rotated"
    probe_id: str
    key_id: str
    generation: int
    delivery: Literal["pushed", "on_reconnect"]


class SigningIdentity(BaseModel):
    """Which key generation signs a probe's instructions right now."""

    probe_id: str
    generation: int
    key_id: str


@dataclass(frozen=True, slots=True)
class InventoryReport:
    """An inventory as it is stored: its JSON text and the columns copied onto the probe.

    The gateway turns a parsed inventory into this at once, so a connection waiting for the database writer holds
    about the frame's size, not the parsed objects (several times more).
    """

    data: JSONText
    digest: str
    collected_at: datetime
    os: str
    arch: str
    kernel: str
    cpus: int | None
    mem_total_bytes: int | None
    disk_total_bytes: int | None

    @classmethod
    def of(cls, inventory: InventoryPayload) -> "InventoryReport":
        """The report of a validated inventory payload."""
        return cls(
            data=JSONText(inventory.model_dump_json()), digest=inventory_digest(inventory),
            collected_at=inventory.collected_at, os=inventory.os[:64],
            arch=inventory.arch[:32], kernel=inventory.kernel[:255], cpus=inventory.cpus,
            mem_total_bytes=inventory.mem_total_bytes,
            disk_total_bytes=sum(disk.total_bytes for disk in inventory.disks) or None,
        )  # fmt: skip


class AuthenticatedProbe(BaseModel):
    """A probe identified by its connection credential, with what its connection signs with."""

    probe: ProbeRead
    signing_generation: int = Field(description="the key generation the probe trusts now (see SigningIdentity)")
    key_rotation_pending: bool = Field(description="a rotation made while it was offline awaits delivery")
    previous_key_generation: int | None = Field(default=None, description="the generation before the last rotation")
    inventory_digest: str | None = Field(default=None, description="digest of the inventory on file, if any")


class CleanupResult(BaseModel):
    """Probes removed because they were offline too long."""

    removed: list[str]
    count: int


# -- health ----------------------------------------------------------------------------------------------------


class HealthReason(BaseModel):
    """One finding of a health check, with the value measured and the threshold it crossed."""

    check: Literal["load", "memory", "disk", "heartbeat"]
    severity: Literal["warning", "critical"]
    message: str
    value: float
    threshold: float


class HealthMetrics(BaseModel):
    """The measurements a health verdict is based on (from the last heartbeat)."""

    uptime_s: float
    load: tuple[float, float, float]
    cpus: int | None
    load_per_cpu: float | None = Field(description="5-minute load average divided by the CPU count")
    mem_used_pct: float | None
    disk_used_pct: float | None
    mem_total_bytes: int
    mem_used_bytes: int
    disk_total_bytes: int
    disk_used_bytes: int
    running_commands: int
    heartbeat_age_s: float | None


class HealthRead(BaseModel):
    """A probe's health: a 0-100 score, a verdict and the reasons behind it."""

    probe_id: str
    score: int = Field(ge=0, le=100)
    status: HealthStatus
    reasons: list[HealthReason]
    metrics: HealthMetrics | None
    last_seen_at: datetime | None
    evaluated_at: datetime


class HeartbeatRead(BaseModel):
    """A heartbeat as recorded: the probe's status after it and whether that changed."""

    probe_id: str
    status: ProbeStatus
    previous_status: ProbeStatus
    health_score: int
    health_status: HealthStatus


# -- inventory -------------------------------------------------------------------------------------------------


class InventoryRead(BaseModel):
    """What a probe's host is, as last reported.

    ``truncated`` names the sections cut to a maximum length, with their full sizes.
    """

    probe_id: str
    hostname: str
    os: str
    os_version: str
    kernel: str
    arch: str
    cpus: int
    mem_total_bytes: int
    disk_total_bytes: int
    disks: list[DiskInfo]
    interfaces: list[InterfaceInfo]
    packages: list[PackageInfo]
    services: list[ServiceInfo]
    users: list[UserInfo]
    collected_at: datetime
    received_at: datetime
    truncated: dict[str, int] = Field(default_factory=dict[str, int])


# -- fleet roll-ups --------------------------------------------------------------------------------------------


class TagCounts(BaseModel):
    """How many probes carry each tag."""

    tags: dict[str, int]


class FleetSummary(BaseModel):
    """Fleet-wide status counts, tags and what is connected."""

    total_probes: int
    by_status: dict[str, int]
    tags: dict[str, int]
    connected: list[str] = Field(description="Ids of online or degraded probes (at most 1000)")
    connected_total: int
    pending_approvals: int = 0


class FleetInventoryProbe(BaseModel):
    """One probe's row in the fleet inventory."""

    id: str
    hostname: str
    status: ProbeStatus
    os: str
    arch: str
    kernel: str | None
    policy_level: PolicyLevel
    tags: list[str]
    last_seen: datetime | None
    collected_at: datetime | None
    cpus: int
    ram_bytes: int
    disk_bytes: int


class FleetInventoryAggregates(BaseModel):
    """Totals over every matching probe (not only those listed)."""

    total_probes: int
    online: int
    total_cpus: int
    total_ram_bytes: int
    probes_by_os: dict[str, int]
    tag_distribution: dict[str, int]


class FleetInventory(BaseModel):
    """Inventory rows of the fleet and their aggregates; ``truncated`` when ``probes`` was capped."""

    probes: list[FleetInventoryProbe]
    aggregates: FleetInventoryAggregates
    truncated: bool = False


class ProbeBrief(BaseModel):
    """A probe that matched a fleet question, and why."""

    id: str
    hostname: str
    status: ProbeStatus
    tags: list[str]
    matched_on: list[str]


class FleetQueryAnswer(BaseModel):
    """A structured answer to a question about the fleet (computed from data; no language model)."""

    question: str
    answer: str
    total_probes: int
    by_status: dict[str, int]
    tags: dict[str, int]
    total_cpus: int
    total_ram_bytes: int
    matches: list[ProbeBrief]
    matches_total: int
