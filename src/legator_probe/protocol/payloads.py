"""Payload models of every wire message except ``command`` (see :mod:`legator_probe.protocol.commands`).

Unknown payload fields are ignored so that an older peer can read frames from a newer one. For signed
payloads this is fail-closed: the signature covers the fields this version knows, so a field the
probe does not understand makes the signature check fail rather than being silently dropped.
"""

import base64
import binascii
import hashlib
from typing import Annotated, cast

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator
from pydantic.config import JsonDict

from legator_probe.protocol.types import (
    AbsolutePath,
    CapabilityLevel,
    CommandStatus,
    Identifier,
    NonNegativeInt,
    OutputStream,
    RejectionReason,
    UtcDatetime,
)

__all__ = [
    "BackoffPayload",
    "CancelPayload",
    "CommandResultPayload",
    "DiskInfo",
    "ErrorPayload",
    "HeartbeatPayload",
    "HelloPayload",
    "InterfaceInfo",
    "InventoryPayload",
    "KeyRotationPayload",
    "OutputChunkPayload",
    "PROTOCOL_VERSION",
    "PackageInfo",
    "PolicyUpdatePayload",
    "RejectionPayload",
    "ServiceInfo",
    "SignedPayload",
    "UpdatePayload",
    "UserInfo",
    "WelcomePayload",
    "WireModel",
    "inventory_digest",
]

PROTOCOL_VERSION = 1
"""Version of this wire protocol, announced by the agent in ``hello``."""

_NonNegativeFloat = Annotated[float, Field(ge=0)]
_Name = Annotated[str, Field(max_length=255)]


def _require_discriminators(schema: JsonDict) -> None:
    """Mark constant ``type``/``kind`` fields required: they have defaults in Python but not on the wire."""
    properties = cast(JsonDict, schema.get("properties", {}))
    tags: list[JsonValue] = []
    for name in ("type", "kind"):
        field = properties.get(name)
        if isinstance(field, dict) and "const" in field:
            tags.append(name)
    if tags:
        required = cast(list[JsonValue], schema.get("required", []))
        schema["required"] = tags + [name for name in required if name not in tags]


class WireModel(BaseModel):
    """Base class of every wire model: immutable, finite numbers only, unknown fields ignored.

    ``cache_strings=False`` because pydantic-core's JSON string cache is process-wide and keeps up to 16,384
    short strings alive (ids, nonces, timestamps: nearly all distinct), about 1.7 MiB in a long-running probe
    once full; parsing is not measurably slower without it.
    """

    model_config = ConfigDict(
        frozen=True,
        extra="ignore",
        allow_inf_nan=False,
        cache_strings=False,
        json_schema_extra=_require_discriminators,
    )


# --- handshake --------------------------------------------------------------------------------


class HelloPayload(WireModel):
    """First frame of the agent after connecting: who it is and what it can run."""

    probe_id: Identifier
    version: Annotated[str, Field(min_length=1, max_length=64)]
    hostname: _Name
    capabilities: list[Annotated[str, Field(max_length=64)]] = []
    protocol_version: Annotated[int, Field(ge=1)] = PROTOCOL_VERSION
    trusted_key_ids: Annotated[list[Annotated[str, Field(max_length=128)]], Field(max_length=8)] | None = Field(
        default=None,
        description="ids of the signing keys the probe trusts now: the gateway signs with one of them, and re-sends "
        "a key rotation the probe did not receive",
    )


class WelcomePayload(WireModel):
    """The gateway's answer to ``hello``; after it the agent may send anything.

    ``policy_level`` is informational: the probe changes its enforced policy only through a signed
    ``policy_update``.
    """

    heartbeat_interval_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    server_time: UtcDatetime
    policy_level: CapabilityLevel
    inventory_digest: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = Field(
        default=None,
        description="inventory_digest() of the inventory the control plane has on file for this probe, if any: "
        "an agent whose inventory has the same digest need not send it on connecting",
    )
    inventory_delay_s: Annotated[float, Field(ge=0, le=3600)] | None = Field(
        default=None,
        description="seconds the agent waits before collecting and sending its connect-time inventory: during a "
        "reconnect storm the gateway gives each connection a later slot, so inventories arrive at a pace it keeps",
    )


# --- telemetry --------------------------------------------------------------------------------


class HeartbeatPayload(WireModel):
    """Periodic liveness report with real host metrics."""

    uptime_s: _NonNegativeFloat
    load: tuple[_NonNegativeFloat, _NonNegativeFloat, _NonNegativeFloat]
    mem_total_bytes: NonNegativeInt
    mem_used_bytes: NonNegativeInt
    disk_total_bytes: NonNegativeInt
    disk_used_bytes: NonNegativeInt
    running_commands: NonNegativeInt = 0


class DiskInfo(WireModel):
    """One mounted file system in an inventory."""

    mount: str
    fstype: str
    total_bytes: NonNegativeInt
    used_bytes: NonNegativeInt


class InterfaceInfo(WireModel):
    """One network interface in an inventory; ``addresses`` are in CIDR form."""

    name: str
    mac: str | None = None
    addresses: list[str] = []


class PackageInfo(WireModel):
    """One installed package in an inventory."""

    name: str
    version: str
    manager: str


class ServiceInfo(WireModel):
    """One system service in an inventory (``state`` is the active state, ``sub_state`` e.g. ``running``)."""

    name: str
    state: str
    sub_state: str | None = None


class UserInfo(WireModel):
    """One local user account in an inventory."""

    name: str
    uid: NonNegativeInt
    shell: str | None = None


class InventoryPayload(WireModel):
    """What the host is: OS, hardware, disks, interfaces, packages, services and users."""

    hostname: _Name
    os: str
    os_version: str
    kernel: str
    arch: str
    cpus: NonNegativeInt
    mem_total_bytes: NonNegativeInt
    disks: list[DiskInfo] = []
    interfaces: list[InterfaceInfo] = []
    packages: list[PackageInfo] = []
    services: list[ServiceInfo] = []
    users: list[UserInfo] = []
    collected_at: UtcDatetime


_VOLATILE_INVENTORY: dict[str, object] = {"collected_at": True, "disks": {"__all__": {"used_bytes"}}}
"""What :func:`inventory_digest` leaves out: when it was collected, and disk usage (heartbeats carry that)."""


def inventory_digest(inventory: InventoryPayload) -> str:
    """SHA-256 (hex) of what the inventory says about the host, leaving out when it was collected and how full its
    disks are, which change between any two collections without the host having changed.

    Both sides compute it from the same model, so equal digests mean the control plane's copy is current.
    """
    text = inventory.model_dump_json(exclude=_VOLATILE_INVENTORY)  # pyright: ignore[reportArgumentType]
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --- command output ---------------------------------------------------------------------------


class OutputChunkPayload(WireModel):
    """A piece of a streaming command's output; ``seq`` orders chunks of one request."""

    request_id: Identifier
    seq: NonNegativeInt
    stream: OutputStream
    data: str


class CommandResultPayload(WireModel):
    """The final outcome of a command.

    ``stdout``/``stderr`` hold at most the requested number of bytes; ``stdout_bytes`` and
    ``stderr_bytes`` are the full sizes, and ``truncated`` says whether anything was cut.
    """

    request_id: Identifier
    status: CommandStatus
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    stdout_bytes: NonNegativeInt = 0
    stderr_bytes: NonNegativeInt = 0
    truncated: bool = False
    duration_ms: NonNegativeInt = 0
    error_code: Annotated[str, Field(max_length=64)] | None = None
    error: str | None = None
    data: dict[str, JsonValue] | None = None


# --- signed instructions (gateway -> agent) ---------------------------------------------------


class SignedPayload(WireModel):
    """Fields every signed instruction carries; the signature covers them with the rest of the payload."""

    probe_id: Identifier
    nonce: Annotated[str, Field(max_length=128)]
    expires_at: UtcDatetime


class CancelPayload(SignedPayload):
    """Cancel a running command; the agent kills its whole process group."""

    request_id: Identifier


class PolicyUpdatePayload(SignedPayload):
    """Replace the probe's local policy wholesale; a higher ``version`` wins."""

    policy_id: Identifier
    level: CapabilityLevel
    allow_patterns: list[str] = []
    block_patterns: list[str] = []
    path_allow: list[AbsolutePath] = []
    path_deny: list[AbsolutePath] = []
    version: NonNegativeInt


class KeyRotationPayload(SignedPayload):
    """Trust a new signing key; keys trusted before stay valid for ``overlap_s`` more seconds."""

    new_key_id: Identifier
    new_public_key: str
    overlap_s: Annotated[float, Field(ge=0, le=30 * 86400)]

    @field_validator("new_public_key")
    @classmethod
    def _raw_ed25519_key(cls, value: str) -> str:
        try:
            raw = base64.b64decode(value, validate=True)
        except binascii.Error as exc:
            raise ValueError("must be standard base64") from exc
        if len(raw) != 32:
            raise ValueError("must encode a 32-byte raw Ed25519 public key")
        return value


class UpdatePayload(SignedPayload):
    """Download a new probe build from ``url``, check its SHA-256, and replace the running binary."""

    version: Annotated[str, Field(min_length=1, max_length=64)]
    url: Annotated[str, Field(max_length=2048, pattern=r"^https?://\S+$")]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


# --- control ----------------------------------------------------------------------------------


class RejectionPayload(WireModel):
    """The agent refused a signed instruction; ``ref_id`` is the refused envelope's ``id``."""

    ref_id: Identifier
    reason: RejectionReason
    detail: str = ""


class ErrorPayload(WireModel):
    """A protocol or processing error; ``ref_id`` names the offending envelope when known."""

    code: Annotated[str, Field(min_length=1, max_length=64)]
    message: str
    ref_id: Identifier | None = None


class BackoffPayload(WireModel):
    """The gateway is overloaded: close and reconnect no sooner than ``retry_after_s`` seconds."""

    retry_after_s: Annotated[float, Field(gt=0, le=3600)]
