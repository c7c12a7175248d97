"""Control-plane configuration, read from ``LEGATOR_*`` environment variables and CLI flags.

Build :class:`Settings` once (in the CLI) and pass it down; nothing reads the environment at import time.
"""

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from legator_mcp._duration import parse_duration

__all__ = ["Settings", "parse_listen_addr"]

MiB = 1024 * 1024


def parse_listen_addr(value: str) -> tuple[str, int]:
    """Split ``host:port`` (IPv6 as ``[::1]:8080``) into its parts.

    Raises:
        ValueError: If the address has no port or the port is out of range.
    """
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"listen address must look like HOST:PORT, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"listen port must be a number from 0 to 65535, got {port_text!r}")
    return host, int(port_text)


class Settings(BaseSettings):
    """Everything the control plane can be configured with (see docs/configuration.md)."""

    model_config = SettingsConfigDict(env_prefix="LEGATOR_", extra="ignore", validate_default=True)

    data_dir: Path = Field(default=Path("./legator-data"), description="Directory for the database, keys and backups.")
    listen_addr: str = Field(default="127.0.0.1:8080", description="HOST:PORT the server binds.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default is an SQLite file legator.db in the data dir."
    )
    auth_enabled: bool = Field(default=True, description="Require credentials on every API, MCP and console call.")
    max_body_bytes: int = Field(default=4 * MiB, gt=0, description="Largest accepted request body (413 above it).")
    public_url: str | None = Field(default=None, description="External base URL used in links and install commands.")
    mcp_allowed_hosts: list[str] = Field(
        default_factory=list, description="Extra Host header values accepted on /mcp (DNS-rebinding protection)."
    )
    mcp_allowed_origins: list[str] = Field(default_factory=list, description="Extra Origin values accepted on /mcp.")
    master_key: SecretStr | None = Field(
        default=None, description="Base64 master key; default is generated once into <data_dir>/master.key."
    )
    rate_limit_per_minute: int = Field(default=1200, ge=0, description="Requests per minute per principal; 0 = off.")
    heartbeat_interval_s: float = Field(default=30.0, gt=0, description="How often probes send a heartbeat.")
    offline_after_s: float = Field(default=90.0, gt=0, description="Mark a probe offline after this long silent.")
    registration_token_ttl_s: int = Field(default=1800, gt=0, description="Default lifetime of registration tokens.")
    default_probe_level: Literal["observe", "diagnose", "remediate"] = Field(
        default="observe", description="Policy level a newly registered probe starts at."
    )
    max_frame_bytes: int = Field(default=4 * MiB, gt=1024, description="Largest WebSocket frame from a probe.")
    probe_admit_per_second: float = Field(
        default=200.0, gt=0, description="New probe connections admitted per second (a reconnect storm waits)."
    )
    probe_admit_burst: int = Field(default=500, ge=1, description="New probe connections admitted at once.")
    probe_max_handshakes: int = Field(
        default=64, ge=1, description="Probe handshakes in progress at most; more queue for a slot."
    )
    probe_handshake_queue_s: float = Field(
        default=10.0, gt=0, le=25, description="How long a probe queues for a handshake slot before a 503."
    )
    probe_inventory_per_second: float = Field(
        default=50.0, gt=0, description="Connect-time inventories paced to this rate (probes told to wait a slot)."
    )
    probe_inventory_max_delay_s: float = Field(
        default=600.0, ge=0, le=3600, description="The longest a probe is told to wait before its inventory."
    )
    jobs_retry_max_attempts: int = Field(default=1, ge=1, le=100, description="Attempts of a job run by default.")
    jobs_retry_initial_backoff: float = Field(default=5.0, gt=0, description="Seconds before a run's 2nd attempt.")
    jobs_retry_multiplier: float = Field(default=2.0, ge=1, le=100, description="Backoff growth per attempt.")
    jobs_retry_max_backoff: float | None = Field(default=None, gt=0, description="Cap on one backoff (seconds).")
    jobs_scheduler_enabled: bool = Field(default=True, description="Run the job scheduler (one process leads).")
    capacity_from_heartbeat: bool = Field(
        default=False, description="Queue or deny commands on probes whose last heartbeat shows memory or disk full."
    )
    capacity_limited_pct: float = Field(
        default=90.0, gt=0, le=100, description="Memory or disk used % at which changes there wait for approval."
    )
    capacity_degraded_pct: float = Field(
        default=97.0, gt=0, le=100, description="Memory or disk used % at which nothing more runs there."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"

    @field_validator("listen_addr")
    @classmethod
    def _check_listen_addr(cls, value: str) -> str:
        parse_listen_addr(value)
        return value

    @field_validator("jobs_retry_initial_backoff", "jobs_retry_max_backoff", mode="before")
    @classmethod
    def _durations(cls, value: object) -> object:
        if isinstance(value, str) and value.strip() and not value.strip().replace(".", "", 1).isdigit():
            return parse_duration(value).total_seconds()
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://", "sqlite://", "postgresql://")):
            raise ValueError("database_url must be sqlite+aiosqlite://… or postgresql+asyncpg://…")
        if value.startswith("sqlite://"):
            value = "sqlite+aiosqlite://" + value.removeprefix("sqlite://")
        elif value.startswith("postgresql://"):
            value = "postgresql+asyncpg://" + value.removeprefix("postgresql://")
        return value

    @model_validator(mode="after")
    def _resolve_paths(self) -> "Settings":
        self.data_dir = self.data_dir.expanduser().absolute()
        return self

    @model_validator(mode="after")
    def _capacity_thresholds_in_order(self) -> "Settings":
        if self.capacity_limited_pct > self.capacity_degraded_pct:
            raise ValueError("capacity_limited_pct must not exceed capacity_degraded_pct")
        return self

    @property
    def effective_database_url(self) -> str:
        """The database URL to use, defaulting to ``<data_dir>/legator.db``."""
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'legator.db'}"

    @property
    def host(self) -> str:
        """The bind host."""
        return parse_listen_addr(self.listen_addr)[0]

    @property
    def port(self) -> int:
        """The bind port."""
        return parse_listen_addr(self.listen_addr)[1]
