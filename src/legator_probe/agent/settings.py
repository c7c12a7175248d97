"""Settings of the probe process and the probe's config file.

Two sources, kept apart on purpose:

* :class:`ProbeSettings` (``LEGATOR_PROBE_`` environment variables, read by
  :meth:`ProbeSettings.from_env`) holds how this process runs: timeouts, limits, reconnect tuning, logging.
  It is built once in the CLI and passed down through constructors. It is a plain pydantic model: the
  probe reads a dozen variables and does not need pydantic-settings loaded for that (one dependency less in
  the agent, ~0.3 MiB of its idle RSS).
* :class:`ProbeConfig` is the JSON file written by ``legator-probe init``: who the probe is, where the
  control plane is, its credential, the signing keys it trusts and its last applied policy. The agent
  rewrites it when the control plane pushes a signed ``policy_update`` or ``key_rotation``. It holds a
  secret, so it is always written atomically with mode 0600.
"""

import ipaddress
import json
import os
import tempfile
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)

from legator_probe.protocol.signing import decode_public_key
from legator_probe.protocol.types import CapabilityLevel

__all__ = [
    "CONFIG_FORMAT",
    "DEFAULT_ROOT_CONFIG",
    "ConfigError",
    "PolicyConfig",
    "ProbeConfig",
    "ProbeSettings",
    "SigningKeyConfig",
    "default_config_path",
    "is_loopback_url",
    "load_config",
    "resolve_config_path",
    "save_config",
    "websocket_url",
    "write_private_file",
]

CONFIG_FORMAT = 1
"""Version of the config file layout, stored as ``format``."""

DEFAULT_ROOT_CONFIG = Path("/etc/legator/probe.json")
"""Where the config lives when the probe runs as root and nothing else is said."""

_PathGlob = Annotated[str, Field(min_length=1, max_length=4096, pattern=r"^/")]


class ConfigError(Exception):
    """Raised when the config file is missing, unreadable or malformed; ``str(exc)`` is one line."""


class SigningKeyConfig(BaseModel):
    """A control-plane signing key the probe trusts (raw Ed25519 public key, standard base64)."""

    model_config = ConfigDict(extra="ignore")

    key_id: Annotated[str, Field(min_length=1, max_length=128)]
    algorithm: Literal["ed25519"] = "ed25519"
    public_key: Annotated[str, Field(min_length=1, max_length=128)]
    not_after: datetime | None = None
    """Set while a key is being rotated out: signatures by it are refused after this instant."""

    @field_validator("public_key")
    @classmethod
    def _valid_key(cls, value: str) -> str:
        try:
            decode_public_key(value)
        except ValueError as exc:
            raise ValueError("must be standard base64 of a 32-byte Ed25519 public key") from exc
        return value


class PolicyConfig(BaseModel):
    """The probe's own policy: its capability level and path/command rules.

    ``path_allow``/``path_deny`` are globs over absolute paths (``*`` within a path segment, ``**``
    across segments; a pattern without wildcards also covers everything below it). Deny wins.
    ``allow_patterns``/``block_patterns`` are globs over a command's display line (see
    :func:`legator_probe.agent.policy.command_line`).
    """

    model_config = ConfigDict(extra="ignore")

    policy_id: Annotated[str, Field(min_length=1, max_length=128)] = "default-observe"
    level: CapabilityLevel = "observe"
    path_allow: list[_PathGlob] = []
    path_deny: list[_PathGlob] = []
    allow_patterns: list[Annotated[str, Field(max_length=1024)]] = []
    block_patterns: list[Annotated[str, Field(max_length=1024)]] = []
    version: Annotated[int, Field(ge=0)] = 0


class ProbeConfig(BaseModel):
    """The probe's config file (JSON), written by ``init`` and updated by signed instructions."""

    model_config = ConfigDict(extra="ignore", cache_strings=False)  # as the wire models: no JSON string cache

    format: Literal[1] = CONFIG_FORMAT
    server_url: Annotated[str, Field(min_length=1, max_length=2048)]
    probe_id: Annotated[str, Field(min_length=1, max_length=128)]
    credential: SecretStr
    signing_keys: Annotated[list[SigningKeyConfig], Field(min_length=1)]
    policy: PolicyConfig = PolicyConfig()
    tags: list[Annotated[str, Field(min_length=1, max_length=128)]] = []
    ca_file: Path | None = None
    max_concurrent_commands: Annotated[int, Field(ge=1, le=256)] = 8
    inventory_interval_s: Annotated[float, Field(ge=10, le=86400)] = 900.0
    heartbeat_interval_s: Annotated[float, Field(gt=0, le=3600)] = 30.0

    @field_validator("server_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.query or parts.fragment:
            raise ValueError("must not carry a query or fragment")
        return value.rstrip("/")

    @field_validator("credential")
    @classmethod
    def _non_empty_credential(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("must not be empty")
        return value

    def to_json(self) -> str:
        """Return the file's JSON text, credential included (the only place it is revealed)."""
        document: dict[str, Any] = self.model_dump(mode="json")
        document["credential"] = self.credential.get_secret_value()
        return json.dumps(document, indent=2, sort_keys=False) + "\n"


ENV_PREFIX = "LEGATOR_PROBE_"

_NONE_WORDS = frozenset({"", "none", "null"})


class ProbeSettings(BaseModel):
    """How the probe process runs; :meth:`from_env` reads every field from ``LEGATOR_PROBE_<FIELD>``.

    ``hostname`` is read from ``LEGATOR_HOSTNAME`` (or ``LEGATOR_PROBE_HOSTNAME``) and overrides the
    OS host name in registration, ``hello`` and inventory.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    config: Path | None = None
    """Config file path; the ``--config`` option wins over it."""
    hostname: Annotated[str, Field(min_length=1, max_length=253)] | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"

    open_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    """Limit on the TCP/TLS/WebSocket handshake and on waiting for ``welcome``."""
    ping_interval_s: Annotated[float, Field(gt=0)] | None = 30.0
    """WebSocket ping cadence; ``None`` disables transport keepalive."""
    ping_timeout_s: Annotated[float, Field(gt=0)] | None = 30.0
    close_timeout_s: Annotated[float, Field(gt=0)] = 5.0
    max_frame_bytes: Annotated[int, Field(ge=64 * 1024)] = 4 * 1024 * 1024  # the control plane's default limit
    """Largest frame accepted from the control plane."""
    send_queue_size: Annotated[int, Field(ge=1)] = 64
    """Frames waiting for the writer before producers (command output) are held back."""
    compression: bool = False
    """Negotiate permessage-deflate; off by default to keep the probe's memory small."""

    backoff_base_s: Annotated[float, Field(gt=0)] = 1.0
    backoff_cap_s: Annotated[float, Field(gt=0)] = 300.0
    backoff_reset_after_s: Annotated[float, Field(ge=0)] = 60.0
    """A connection that lived this long resets the backoff to its base."""
    auth_failure_delay_s: Annotated[float, Field(gt=0)] = 60.0
    """Steady delay (±20 % jitter) after the control plane refused the credential."""

    drain_timeout_s: Annotated[float, Field(ge=0)] = 10.0
    """On shutdown, how long running commands may finish before they are canceled."""
    max_concurrent_commands: Annotated[int, Field(ge=1, le=256)] | None = None
    """Overrides the config file's ``max_concurrent_commands`` when set."""
    command_cwd: Path = Path("/")
    """Working directory of commands that do not set one."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "ProbeSettings":
        """Build the settings from ``LEGATOR_PROBE_<FIELD>`` variables (names are case-insensitive; for a field
        that may be unset, ``none``, ``null`` or an empty value unsets it). Other variables are ignored.

        Raises:
            pydantic.ValidationError: A variable holds a value its field does not accept (``loc`` is the field).
        """
        env = os.environ if environ is None else environ
        by_name = {key.upper(): value for key, value in env.items()}
        values: dict[str, Any] = {}
        for name, field in cls.model_fields.items():
            raw = by_name.get(ENV_PREFIX + name.upper())
            if name == "hostname":
                raw = by_name.get("LEGATOR_HOSTNAME", raw)
            if raw is None:
                continue
            optional = type(None) in get_args(field.annotation)
            values[name] = None if optional and raw.strip().lower() in _NONE_WORDS else raw
        return cls.model_validate(values)


# --- paths and files ------------------------------------------------------------------------


def default_config_path(*, euid: int | None = None, home: Path | None = None) -> Path:
    """Return ``/etc/legator/probe.json`` for root, else ``~/.config/legator/probe.json``."""
    if (os.geteuid() if euid is None else euid) == 0:
        return DEFAULT_ROOT_CONFIG
    return (home or Path.home()) / ".config" / "legator" / "probe.json"


def resolve_config_path(option: Path | None, settings: ProbeSettings) -> Path:
    """Pick the config path: ``--config``, else ``LEGATOR_PROBE_CONFIG``, else :func:`default_config_path`."""
    path = option or settings.config or default_config_path()
    return path.expanduser()


def write_private_file(path: Path, text: str) -> None:
    """Atomically replace ``path`` with ``text``, mode 0600, creating a 0700 parent if it is missing.

    The data is written to a temporary file in the same directory, flushed to disk and renamed over
    the target, so a crash leaves either the old or the new file, never a torn one.

    Raises:
        OSError: The directory or file cannot be created or written.
    """
    parent = path.parent
    if not parent.exists():
        parent.mkdir(parents=True, exist_ok=True)
        parent.chmod(0o700)
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_config(path: Path) -> ProbeConfig:
    """Read and validate the config file.

    Raises:
        ConfigError: The file is missing, unreadable, not JSON or fails validation; the message is
            one line naming the file and the first problem (never a secret value).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"no probe config at {path}; run 'legator-probe init --server URL --token T'") from None
    except OSError as exc:
        raise ConfigError(f"cannot read probe config {path}: {exc.strerror}") from None
    try:
        return ProbeConfig.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "file"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        if first["type"] == "json_invalid":
            raise ConfigError(f"invalid probe config {path}: not valid JSON") from None
        raise ConfigError(f"invalid probe config {path}: {where}: {first['msg']}{more}") from None


def save_config(path: Path, config: ProbeConfig) -> None:
    """Write the config file atomically with mode 0600 (see :func:`write_private_file`).

    Raises:
        OSError: The file cannot be written.
    """
    write_private_file(path, config.to_json())


# --- URLs -----------------------------------------------------------------------------------


def websocket_url(server_url: str) -> str:
    """Return the ``ws(s)://…/ws/probe`` URL for a control-plane base URL."""
    parts = urlsplit(server_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}/ws/probe"


def is_loopback_url(url: str) -> bool:
    """Tell whether a URL's host is a loopback address or ``localhost``."""
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
