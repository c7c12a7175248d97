"""Type aliases and constrained field types shared by the wire protocol modules."""

import posixpath
from datetime import UTC, datetime
from typing import Annotated, Literal, TypeAlias

from pydantic import AfterValidator, AwareDatetime, Field

__all__ = [
    "AbsolutePath",
    "CapabilityLevel",
    "CommandKind",
    "CommandStatus",
    "Identifier",
    "NonNegativeInt",
    "OutputStream",
    "PlainText",
    "RejectionReason",
    "UtcDatetime",
]

CapabilityLevel: TypeAlias = Literal["observe", "diagnose", "remediate"]
"""Probe capability levels, lowest first; a probe refuses anything above its level."""

CommandKind: TypeAlias = Literal["shell", "file_read", "file_write", "process", "systemd", "kubectl"]
"""The six executable command kinds a ``command`` message can carry."""

CommandStatus: TypeAlias = Literal["ok", "error", "timeout", "canceled", "refused"]
"""Final status of a command, reported in ``command_result``."""

OutputStream: TypeAlias = Literal["stdout", "stderr"]
"""Which output stream an ``output_chunk`` belongs to."""

RejectionReason: TypeAlias = Literal[
    "bad_signature", "unknown_key", "wrong_probe", "expired", "replayed", "malformed", "policy"
]
"""Why the probe refused a signed instruction; ``policy`` comes from the probe's own policy check."""


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _absolute_path(value: str) -> str:
    if not posixpath.isabs(value):
        raise ValueError("must be an absolute path")
    return value


UtcDatetime: TypeAlias = Annotated[AwareDatetime, AfterValidator(_to_utc)]
"""A timezone-aware timestamp, normalised to UTC; serialised as ISO-8601 with a ``Z`` suffix."""

PlainText: TypeAlias = Annotated[str, AfterValidator(_no_nul)]
"""A string without NUL characters, safe to hand to ``exec`` and to the file system."""

Identifier: TypeAlias = Annotated[str, Field(min_length=1, max_length=128), AfterValidator(_no_nul)]
"""A non-empty identifier (probe, request, envelope, key or policy id) of at most 128 characters."""

AbsolutePath: TypeAlias = Annotated[
    str, Field(min_length=1, max_length=4096), AfterValidator(_no_nul), AfterValidator(_absolute_path)
]
"""An absolute POSIX path without NUL characters."""

NonNegativeInt: TypeAlias = Annotated[int, Field(ge=0)]
"""An integer that is zero or more (byte counts, sequence numbers, durations)."""
