"""Tables of the fleet: registration tokens, probes, their tags and their last inventory."""

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from legator_mcp.db.base import Base, new_id

__all__ = ["Probe", "ProbeInventory", "ProbeTag", "RegistrationToken"]

_Json = JSON(none_as_null=True)


class RegistrationToken(Base):
    """A token that lets probes register: only its SHA-256 digest and a display prefix are stored."""

    __tablename__ = "registration_tokens"
    __table_args__ = (Index("ix_registration_tokens_token_hash", "token_hash", unique=True),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    token_hash: Mapped[str] = mapped_column(String(64))
    token_prefix: Mapped[str] = mapped_column(String(16))
    multi_use: Mapped[bool] = mapped_column(Boolean, default=False)
    tags: Mapped[list[str]]
    policy_level: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]
    created_by: Mapped[str | None] = mapped_column(String(200))
    expires_at: Mapped[datetime]
    uses: Mapped[int] = mapped_column(Integer, default=0)
    last_used_at: Mapped[datetime | None]


class Probe(Base):
    """A registered probe.

    ``credential_hash`` is the SHA-256 of the probe's credential (never the credential). ``key_generation`` is
    the newest signing-key generation; while ``key_rotation_pending`` the probe has not been told about it yet
    and still trusts ``previous_key_generation``, which therefore keeps signing. Inventory scalars (``kernel``,
    ``cpus``, byte totals) are copied here so fleet roll-ups need no JSON, with the inventory's digest.
    """

    __tablename__ = "probes"
    __table_args__ = (
        Index("ix_probes_credential_hash", "credential_hash", unique=True),
        Index("ix_probes_status_last_seen_at", "status", "last_seen_at"),
    )

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(253), unique=True)
    os: Mapped[str] = mapped_column(String(64), default="")
    arch: Mapped[str] = mapped_column(String(32), default="")
    version: Mapped[str] = mapped_column(String(64), default="")
    kernel: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))
    status_changed_at: Mapped[datetime]
    policy_level: Mapped[str] = mapped_column(String(16))
    policy_id: Mapped[str] = mapped_column(String(128))
    policy_version: Mapped[int] = mapped_column(Integer, default=1)
    labels: Mapped[dict[str, Any]]
    credential_hash: Mapped[str | None] = mapped_column(String(64))
    key_generation: Mapped[int] = mapped_column(Integer, default=1)
    previous_key_generation: Mapped[int | None] = mapped_column(Integer)
    key_rotation_pending: Mapped[bool] = mapped_column(Boolean, default=False)
    key_rotated_at: Mapped[datetime | None]
    registered_at: Mapped[datetime]
    last_seen_at: Mapped[datetime | None]
    connected_at: Mapped[datetime | None]
    metrics: Mapped[dict[str, Any] | None] = mapped_column(_Json)
    health_score: Mapped[int | None] = mapped_column(Integer)
    health_reasons: Mapped[list[dict[str, Any]] | None] = mapped_column(_Json)
    cpus: Mapped[int | None] = mapped_column(Integer)
    mem_total_bytes: Mapped[int | None] = mapped_column(BigInteger)
    disk_total_bytes: Mapped[int | None] = mapped_column(BigInteger)
    inventory_collected_at: Mapped[datetime | None]
    inventory_digest: Mapped[str | None] = mapped_column(String(64))
    """``inventory_digest()`` of the stored inventory: sent in ``welcome`` so an unchanged host does not resend it."""

    tag_rows: Mapped[list["ProbeTag"]] = relationship(
        lazy="selectin", cascade="all, delete-orphan", passive_deletes=True, order_by="ProbeTag.tag"
    )

    @property
    def tags(self) -> list[str]:
        """The probe's tags, sorted."""
        return [row.tag for row in self.tag_rows]


class ProbeTag(Base):
    """One tag of one probe (a table, so tag filters and counts are indexed queries)."""

    __tablename__ = "probe_tags"

    probe_id: Mapped[str] = mapped_column(String(16), ForeignKey("probes.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)


class ProbeInventory(Base):
    """The last inventory a probe reported (the whole payload as JSON)."""

    __tablename__ = "probe_inventory"

    probe_id: Mapped[str] = mapped_column(String(16), ForeignKey("probes.id", ondelete="CASCADE"), primary_key=True)
    data: Mapped[dict[str, Any]]
    collected_at: Mapped[datetime]
    received_at: Mapped[datetime]
