"""Envelopes of the probe wire protocol, the message union, and JSON encoding.

Every WebSocket text frame is one JSON envelope ``{"id", "type", "ts", "payload", "sig"?}``. The
message classes form a discriminated union on ``type`` (:data:`Message`), validated by the
module-level :data:`MESSAGE_ADAPTER`. :func:`parse_message` additionally recognises envelopes of
types this version does not know and returns them as :class:`UnknownMessage`, which the protocol
ignores instead of treating as an error.
"""

import uuid
from typing import Annotated, Any, Final, Literal, TypeAlias, cast

import pydantic_core
from pydantic import ConfigDict, Discriminator, Field, Tag, TypeAdapter, ValidationError

from legator_probe.protocol.commands import CommandPayload
from legator_probe.protocol.errors import MalformedMessage
from legator_probe.protocol.payloads import (
    BackoffPayload,
    CancelPayload,
    CommandResultPayload,
    ErrorPayload,
    HeartbeatPayload,
    HelloPayload,
    InventoryPayload,
    KeyRotationPayload,
    OutputChunkPayload,
    PolicyUpdatePayload,
    RejectionPayload,
    UpdatePayload,
    WelcomePayload,
    WireModel,
)
from legator_probe.protocol.types import Identifier, UtcDatetime

__all__ = [
    "AGENT_MESSAGE_TYPES",
    "GATEWAY_MESSAGE_TYPES",
    "MESSAGE_ADAPTER",
    "MESSAGE_TYPES",
    "SIGNED_MESSAGE_CLASSES",
    "SIGNED_TYPES",
    "BackoffMessage",
    "CancelMessage",
    "CommandMessage",
    "CommandResultMessage",
    "Envelope",
    "ErrorMessage",
    "HeartbeatMessage",
    "HelloMessage",
    "InventoryMessage",
    "KeyRotationMessage",
    "Message",
    "MessageType",
    "OutputChunkMessage",
    "PolicyUpdateMessage",
    "RejectionMessage",
    "SignedMessage",
    "UnknownMessage",
    "UpdateMessage",
    "WelcomeMessage",
    "dump_message",
    "new_message_id",
    "parse_message",
    "wire_json_schema",
]

MessageType: TypeAlias = Literal[
    "hello",
    "welcome",
    "heartbeat",
    "inventory",
    "command",
    "output_chunk",
    "command_result",
    "cancel",
    "policy_update",
    "key_rotation",
    "update",
    "rejection",
    "error",
    "backoff",
]
"""Every message type this version of the protocol knows."""

MESSAGE_TYPES: Final[frozenset[str]] = frozenset(MessageType.__args__)
"""The values of :data:`MessageType`; envelopes with any other ``type`` are ignored."""

SIGNED_TYPES: Final[frozenset[str]] = frozenset({"command", "cancel", "policy_update", "key_rotation", "update"})
"""Message types that must carry a valid signature before the agent acts on them."""

AGENT_MESSAGE_TYPES: Final[frozenset[str]] = frozenset(
    {"hello", "heartbeat", "inventory", "output_chunk", "command_result", "rejection", "error"}
)
"""Message types the agent sends and the gateway receives."""

GATEWAY_MESSAGE_TYPES: Final[frozenset[str]] = SIGNED_TYPES | {"welcome", "error", "backoff"}
"""Message types the gateway sends and the agent receives."""


class Envelope(WireModel):
    """Fields shared by every envelope; ``sig`` is ``"<key_id>.<base64url Ed25519 signature>"``."""

    id: Identifier
    ts: UtcDatetime
    sig: Annotated[str, Field(max_length=512)] | None = None


class HelloMessage(Envelope):
    """Agent to gateway, first frame after connecting."""

    type: Literal["hello"] = "hello"
    payload: HelloPayload


class WelcomeMessage(Envelope):
    """Gateway to agent, answer to ``hello``; completes the handshake."""

    type: Literal["welcome"] = "welcome"
    payload: WelcomePayload


class HeartbeatMessage(Envelope):
    """Agent to gateway, periodic liveness with host metrics."""

    type: Literal["heartbeat"] = "heartbeat"
    payload: HeartbeatPayload


class InventoryMessage(Envelope):
    """Agent to gateway, full host inventory."""

    type: Literal["inventory"] = "inventory"
    payload: InventoryPayload


class CommandMessage(Envelope):
    """Gateway to agent, signed: run a command."""

    type: Literal["command"] = "command"
    payload: CommandPayload


class OutputChunkMessage(Envelope):
    """Agent to gateway, a piece of a streaming command's output."""

    type: Literal["output_chunk"] = "output_chunk"
    payload: OutputChunkPayload


class CommandResultMessage(Envelope):
    """Agent to gateway, the final outcome of a command."""

    type: Literal["command_result"] = "command_result"
    payload: CommandResultPayload


class CancelMessage(Envelope):
    """Gateway to agent, signed: cancel a running command."""

    type: Literal["cancel"] = "cancel"
    payload: CancelPayload


class PolicyUpdateMessage(Envelope):
    """Gateway to agent, signed: replace the probe's local policy."""

    type: Literal["policy_update"] = "policy_update"
    payload: PolicyUpdatePayload


class KeyRotationMessage(Envelope):
    """Gateway to agent, signed: trust a new signing key."""

    type: Literal["key_rotation"] = "key_rotation"
    payload: KeyRotationPayload


class UpdateMessage(Envelope):
    """Gateway to agent, signed: self-update the probe binary."""

    type: Literal["update"] = "update"
    payload: UpdatePayload


class RejectionMessage(Envelope):
    """Agent to gateway, a signed instruction was refused."""

    type: Literal["rejection"] = "rejection"
    payload: RejectionPayload


class ErrorMessage(Envelope):
    """Either direction, a protocol or processing error."""

    type: Literal["error"] = "error"
    payload: ErrorPayload


class BackoffMessage(Envelope):
    """Gateway to agent, reconnect later (sent during reconnect storms before closing)."""

    type: Literal["backoff"] = "backoff"
    payload: BackoffPayload


class UnknownMessage(WireModel):
    """An envelope whose ``type`` this version does not know; receivers ignore it."""

    type: str
    id: str | None = None


_MessageUnion = (
    HelloMessage
    | WelcomeMessage
    | HeartbeatMessage
    | InventoryMessage
    | CommandMessage
    | OutputChunkMessage
    | CommandResultMessage
    | CancelMessage
    | PolicyUpdateMessage
    | KeyRotationMessage
    | UpdateMessage
    | RejectionMessage
    | ErrorMessage
    | BackoffMessage
)

Message: TypeAlias = Annotated[_MessageUnion, Field(discriminator="type")]
"""Any known wire message, discriminated on ``type``."""

SignedMessage: TypeAlias = CommandMessage | CancelMessage | PolicyUpdateMessage | KeyRotationMessage | UpdateMessage
"""The messages whose types are in :data:`SIGNED_TYPES`."""

SIGNED_MESSAGE_CLASSES: Final = (CommandMessage, CancelMessage, PolicyUpdateMessage, KeyRotationMessage, UpdateMessage)
"""The classes of :data:`SignedMessage`, for ``isinstance`` checks."""

MESSAGE_ADAPTER: Final[TypeAdapter[Message]] = TypeAdapter(Message)
"""Validates and serialises known messages; also the source of the wire JSON Schema."""

_UNKNOWN_TAG = "__unknown__"


def _frame_tag(value: object) -> str | None:
    if not isinstance(value, dict):
        return None
    tag = cast(dict[str, object], value).get("type")
    if not isinstance(tag, str):
        return None
    return tag if tag in MESSAGE_TYPES else _UNKNOWN_TAG


_FRAME_ADAPTER: Final[TypeAdapter[Message | UnknownMessage]] = TypeAdapter(
    Annotated[
        Annotated[HelloMessage, Tag("hello")]
        | Annotated[WelcomeMessage, Tag("welcome")]
        | Annotated[HeartbeatMessage, Tag("heartbeat")]
        | Annotated[InventoryMessage, Tag("inventory")]
        | Annotated[CommandMessage, Tag("command")]
        | Annotated[OutputChunkMessage, Tag("output_chunk")]
        | Annotated[CommandResultMessage, Tag("command_result")]
        | Annotated[CancelMessage, Tag("cancel")]
        | Annotated[PolicyUpdateMessage, Tag("policy_update")]
        | Annotated[KeyRotationMessage, Tag("key_rotation")]
        | Annotated[UpdateMessage, Tag("update")]
        | Annotated[RejectionMessage, Tag("rejection")]
        | Annotated[ErrorMessage, Tag("error")]
        | Annotated[BackoffMessage, Tag("backoff")]
        | Annotated[UnknownMessage, Tag(_UNKNOWN_TAG)],
        Discriminator(_frame_tag),
    ],
    config=ConfigDict(cache_strings=False),  # as WireModel: no process-wide JSON string cache
)
"""Like :data:`MESSAGE_ADAPTER`, but maps unknown string ``type`` values to :class:`UnknownMessage`."""

_MAX_ERRORS_REPORTED = 3


def new_message_id() -> str:
    """Return a fresh envelope id (a random UUID)."""
    return str(uuid.uuid4())


def _peek(text: str | bytes) -> tuple[str | None, str | None]:
    """Best-effort ``(id, type)`` of a frame that failed validation, for error reports."""
    try:
        value: object = pydantic_core.from_json(text, cache_strings=False)
    except ValueError:
        return None, None
    if not isinstance(value, dict):
        return None, None
    fields = cast(dict[str, object], value)
    raw_id, raw_type = fields.get("id"), fields.get("type")
    ref_id = raw_id if isinstance(raw_id, str) and 0 < len(raw_id) <= 128 and "\x00" not in raw_id else None
    message_type = raw_type if isinstance(raw_type, str) else None
    return ref_id, message_type


def _describe(exc: ValidationError) -> str:
    """Summarise validation errors by location and reason, never echoing input values."""
    parts: list[str] = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False)[:_MAX_ERRORS_REPORTED]:
        if error["type"] == "union_tag_not_found":
            parts.append("not an envelope with a string 'type'")
            continue
        location = ".".join(str(part) for part in error["loc"][1:])
        parts.append(f"{location}: {error['msg']}" if location else error["msg"])
    if exc.error_count() > _MAX_ERRORS_REPORTED:
        parts.append(f"and {exc.error_count() - _MAX_ERRORS_REPORTED} more")
    return "; ".join(parts)


def parse_message(text: str | bytes) -> Message | UnknownMessage:
    """Parse one frame into a message.

    Args:
        text: The frame's JSON text.

    Returns:
        The validated message, or :class:`UnknownMessage` when the envelope's ``type`` is a string
        this version does not know (the caller should ignore it).

    Raises:
        MalformedMessage: The frame is not JSON, not an envelope, or fails its message's schema.
            ``ref_id`` and ``message_type`` are filled in when they could be read.
    """
    try:
        return _FRAME_ADAPTER.validate_json(text)
    except ValidationError as exc:
        ref_id, message_type = _peek(text)
        raise MalformedMessage(_describe(exc), ref_id=ref_id, message_type=message_type) from None


def dump_message(message: Message) -> str:
    """Encode a message as compact JSON, omitting ``sig`` when it is not set."""
    exclude = {"sig"} if message.sig is None else None
    return message.model_dump_json(exclude=exclude)


def wire_json_schema() -> dict[str, Any]:
    """Return the JSON Schema (draft 2020-12) of :data:`Message`, the contract in ``contracts/``."""
    schema = MESSAGE_ADAPTER.json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Legator probe wire protocol",
        "description": (
            "One JSON envelope per WebSocket text frame. Envelopes of unknown types are ignored; "
            "signed types carry sig = '<key_id>.<base64url Ed25519 signature>'."
        ),
        **schema,
    }
