"""The small status file next to the config: how the last connection attempt went.

``legator-probe run`` rewrites it on every connection transition; ``legator-probe status`` reads it.
It holds no secret (mode 0600 all the same, like its directory).
"""

import logging
import os
from datetime import datetime
from pathlib import Path
from typing import Literal, TypeAlias

from pydantic import BaseModel, ValidationError

from legator_probe.agent.settings import write_private_file

__all__ = ["ConnectionOutcome", "ConnectionStatus", "read_status", "status_path", "write_status"]

logger = logging.getLogger(__name__)

ConnectionOutcome: TypeAlias = Literal[
    "connecting", "connected", "disconnected", "failed", "auth_failed", "retry_after", "stopped"
]
"""What the daemon last saw: ``auth_failed`` means the control plane refused the credential."""


class ConnectionStatus(BaseModel):
    """Contents of the status file."""

    outcome: ConnectionOutcome
    detail: str = ""
    updated_at: datetime
    last_connected_at: datetime | None = None
    next_attempt_in_s: float | None = None
    pid: int = 0


def status_path(config_path: Path) -> Path:
    """``/etc/legator/probe.json`` → ``/etc/legator/probe.state.json``."""
    return config_path.with_name(f"{config_path.stem}.state.json")


def read_status(path: Path) -> ConnectionStatus | None:
    """Read the status file; ``None`` when it is missing or unreadable."""
    try:
        return ConnectionStatus.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValidationError):
        return None


def write_status(path: Path, status: ConnectionStatus) -> None:
    """Write the status file atomically; failures are logged, never raised (it is only informational)."""
    try:
        write_private_file(path, status.model_copy(update={"pid": os.getpid()}).model_dump_json(indent=2) + "\n")
    except OSError as exc:
        logger.warning("cannot write the status file %s: %s", path, exc.strerror)
