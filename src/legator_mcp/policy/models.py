"""Tables of the policy domain: custom policy templates (the built-ins live in code and are never stored)."""

from datetime import datetime

from sqlalchemy import Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from legator_mcp.db.base import Base

__all__ = ["PolicyTemplate"]


class PolicyTemplate(Base):
    """A custom policy template: a level, command patterns and path rules, versioned on every change."""

    __tablename__ = "policy_templates"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    level: Mapped[str] = mapped_column(String(16))
    allow_patterns: Mapped[list[str]]
    block_patterns: Mapped[list[str]]
    path_allow: Mapped[list[str]]
    path_deny: Mapped[list[str]]
    preapproved_patterns: Mapped[list[str]]
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
