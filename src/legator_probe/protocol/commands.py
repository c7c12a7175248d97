"""The signed ``command`` payload and the specs of its six command kinds.

A command payload is a discriminated union on ``kind``; each variant carries the ``spec`` for that
kind, so the wire form is ``{"kind": "shell", "spec": {"argv": [...]}, ...}`` and the JSON Schema
states exactly which spec goes with which kind.
"""

import base64
import binascii
from typing import Annotated, Literal, Self, TypeAlias

from pydantic import Field, TypeAdapter, model_validator

from legator_probe.protocol.payloads import SignedPayload, WireModel
from legator_probe.protocol.types import AbsolutePath, Identifier, NonNegativeInt, PlainText

__all__ = [
    "COMMAND_PAYLOAD_ADAPTER",
    "DEFAULT_MAX_OUTPUT_BYTES",
    "DEFAULT_TIMEOUT_S",
    "MAX_FILE_READ_BYTES",
    "MAX_OUTPUT_BYTES",
    "MAX_TIMEOUT_S",
    "CommandBase",
    "CommandPayload",
    "CommandSpec",
    "FileReadCommand",
    "FileReadSpec",
    "FileWriteCommand",
    "FileWriteSpec",
    "KubectlCommand",
    "KubectlSpec",
    "ProcessAction",
    "ProcessCommand",
    "ProcessSpec",
    "ShellCommand",
    "ShellSpec",
    "SignalName",
    "SystemdAction",
    "SystemdCommand",
    "SystemdSpec",
]

DEFAULT_TIMEOUT_S = 30.0
"""Command timeout when the sender does not set one."""

MAX_TIMEOUT_S = 3600.0
"""Longest timeout a command may ask for."""

DEFAULT_MAX_OUTPUT_BYTES = 1024 * 1024
"""Bytes of stdout and of stderr kept in a ``command_result`` when the sender does not set a cap."""

MAX_OUTPUT_BYTES = 16 * 1024 * 1024
"""Largest output cap a command may ask for."""

MAX_FILE_READ_BYTES = 16 * 1024 * 1024
"""Largest ``max_bytes`` a ``file_read`` may ask for."""

ProcessAction: TypeAlias = Literal["list", "inspect", "signal"]
"""What a ``process`` command does."""

SignalName: TypeAlias = Literal["TERM", "KILL", "HUP", "INT", "QUIT", "USR1", "USR2", "STOP", "CONT"]
"""Signals a ``process`` command may send, without the ``SIG`` prefix."""

SystemdAction: TypeAlias = Literal[
    "status", "list", "journal", "start", "stop", "restart", "reload", "enable", "disable"
]
"""What a ``systemd`` command does; ``status``, ``list`` and ``journal`` only read."""

_EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=256)]
_AccountName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\$?$", max_length=32)]
# No leading "-": a unit name must never be parsed as a systemctl option.
_UnitName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_:@.\\][A-Za-z0-9_:@.\\-]*$", max_length=256)]
_Namespace = Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)]
_KubeContext = Annotated[str, Field(pattern=r"^[^-\s]\S*$", max_length=253)]
_Argument = Annotated[PlainText, Field(max_length=65536)]


class ShellSpec(WireModel):
    """Run a program: ``argv`` is exec'd directly, ``script`` runs under ``sh -c``; exactly one is set."""

    argv: Annotated[list[_Argument], Field(min_length=1)] | None = None
    script: PlainText | None = None
    cwd: AbsolutePath | None = None
    env: dict[_EnvName, PlainText] = {}

    @model_validator(mode="after")
    def _exactly_one_program(self) -> Self:
        if (self.argv is None) == (self.script is None):
            raise ValueError("exactly one of argv and script must be set")
        if self.argv is not None and not self.argv[0]:
            raise ValueError("argv[0] must name a program")
        if self.script is not None and not self.script.strip():
            raise ValueError("script must not be blank")
        return self


class FileReadSpec(WireModel):
    """Read up to ``max_bytes`` of a file from ``offset``, or only its last ``tail_lines`` lines."""

    path: AbsolutePath
    max_bytes: Annotated[int, Field(ge=1, le=MAX_FILE_READ_BYTES)] = 65536
    offset: NonNegativeInt = 0
    tail_lines: Annotated[int, Field(ge=1, le=100_000)] | None = None

    @model_validator(mode="after")
    def _offset_or_tail(self) -> Self:
        if self.tail_lines is not None and self.offset:
            raise ValueError("offset and tail_lines are mutually exclusive")
        return self


class FileWriteSpec(WireModel):
    """Atomically replace a file (temp file + rename), keeping a backup unless ``backup`` is false."""

    path: AbsolutePath
    content: str
    encoding: Literal["utf-8", "base64"] = "utf-8"
    mode: Annotated[int, Field(ge=0, le=0o7777)] | None = None
    owner: _AccountName | None = None
    group: _AccountName | None = None
    backup: bool = True

    @model_validator(mode="after")
    def _content_matches_encoding(self) -> Self:
        if self.encoding == "base64":
            try:
                base64.b64decode(self.content, validate=True)
            except binascii.Error as exc:
                raise ValueError("content is not valid base64") from exc
        return self

    def content_bytes(self) -> bytes:
        """Return the bytes to write, decoding ``content`` according to ``encoding``."""
        if self.encoding == "base64":
            return base64.b64decode(self.content, validate=True)
        return self.content.encode("utf-8")


class ProcessSpec(WireModel):
    """List processes, inspect one, or send one a signal."""

    action: ProcessAction
    pid: Annotated[int, Field(ge=1)] | None = None
    signal: SignalName | None = None
    name_filter: Annotated[str, Field(max_length=256)] | None = None

    @model_validator(mode="after")
    def _fields_match_action(self) -> Self:
        if self.action == "list":
            if self.pid is not None:
                raise ValueError("pid is not allowed for action 'list'")
        elif self.pid is None:
            raise ValueError(f"pid is required for action {self.action!r}")
        if (self.action == "signal") != (self.signal is not None):
            raise ValueError("signal is required for action 'signal' and allowed only there")
        return self


class SystemdSpec(WireModel):
    """Query or change a systemd unit; ``lines`` bounds a journal tail."""

    action: SystemdAction
    unit: _UnitName | None = None
    lines: Annotated[int, Field(ge=1, le=10_000)] = 100

    @model_validator(mode="after")
    def _unit_unless_list(self) -> Self:
        if self.action != "list" and self.unit is None:
            raise ValueError(f"unit is required for action {self.action!r}")
        return self


class KubectlSpec(WireModel):
    """Run kubectl with ``argv`` (without the ``kubectl`` itself), optionally in a namespace and context."""

    argv: Annotated[list[Annotated[_Argument, Field(min_length=1)]], Field(min_length=1)]
    namespace: _Namespace | None = None
    context: _KubeContext | None = None


CommandSpec: TypeAlias = ShellSpec | FileReadSpec | FileWriteSpec | ProcessSpec | SystemdSpec | KubectlSpec
"""Any of the six command specs."""


class CommandBase(SignedPayload):
    """Fields shared by every command kind; use :data:`CommandPayload` to refer to a whole command."""

    request_id: Identifier
    timeout_s: Annotated[float, Field(gt=0, le=MAX_TIMEOUT_S)] = DEFAULT_TIMEOUT_S
    max_output_bytes: Annotated[int, Field(ge=1, le=MAX_OUTPUT_BYTES)] = DEFAULT_MAX_OUTPUT_BYTES
    stream: bool = False


class ShellCommand(CommandBase):
    """A ``shell`` command."""

    kind: Literal["shell"] = "shell"
    spec: ShellSpec


class FileReadCommand(CommandBase):
    """A ``file_read`` command."""

    kind: Literal["file_read"] = "file_read"
    spec: FileReadSpec


class FileWriteCommand(CommandBase):
    """A ``file_write`` command."""

    kind: Literal["file_write"] = "file_write"
    spec: FileWriteSpec


class ProcessCommand(CommandBase):
    """A ``process`` command."""

    kind: Literal["process"] = "process"
    spec: ProcessSpec


class SystemdCommand(CommandBase):
    """A ``systemd`` command."""

    kind: Literal["systemd"] = "systemd"
    spec: SystemdSpec


class KubectlCommand(CommandBase):
    """A ``kubectl`` command."""

    kind: Literal["kubectl"] = "kubectl"
    spec: KubectlSpec


CommandPayload: TypeAlias = Annotated[
    ShellCommand | FileReadCommand | FileWriteCommand | ProcessCommand | SystemdCommand | KubectlCommand,
    Field(discriminator="kind"),
]
"""Payload of a ``command`` message: one variant per command kind, discriminated on ``kind``."""

COMMAND_PAYLOAD_ADAPTER: TypeAdapter[CommandPayload] = TypeAdapter(CommandPayload)
"""Validates a command payload from a dict or JSON, e.g. arguments assembled by an MCP tool."""
