"""Wire shapes for API keys, users and the caller's identity."""

from datetime import datetime, timedelta
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from legator_mcp._duration import parse_duration
from legator_mcp.principal import Permission, Role, parse_grants

__all__ = ["ApiKeyCreate", "ApiKeyCreated", "ApiKeyList", "ApiKeyRead", "MeRead", "UserCreate", "UserList", "UserRead"]

Name = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@ -]*$")]


def _check_grants(values: list[str]) -> list[str]:
    parse_grants(values)
    return [value.strip().lower() for value in values]


def _duration_or_none(value: Any) -> timedelta | None:
    if value is None or isinstance(value, timedelta):
        return value
    if isinstance(value, str | int | float):
        return parse_duration(value)
    raise ValueError("expires_in must be a duration like 720h or 30d, or seconds")


class ApiKeyCreate(BaseModel):
    """Ask for a new API key."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    permissions: list[Permission] = Field(min_length=1)
    grants: list[str] = Field(default_factory=list[str], description="tenant:<id>, org:<id> or scope:<id>")
    expires_in: timedelta | None = Field(default=None, description="Lifetime such as 720h or 30d; none = no expiry")

    _grants = field_validator("grants")(_check_grants)
    _expires = field_validator("expires_in", mode="before")(_duration_or_none)


class ApiKeyRead(BaseModel):
    """An API key as listed: never the key itself."""

    id: str
    name: str
    key_prefix: str
    permissions: list[Permission]
    grants: list[str]
    created_at: datetime
    created_by: str | None
    expires_at: datetime | None
    last_used_at: datetime | None
    enabled: bool


class ApiKeyCreated(BaseModel):
    """The one response that carries a new key in plain text."""

    key: ApiKeyRead
    plain_key: str
    warning: str = "Store this key securely. It will not be shown again."


class ApiKeyList(BaseModel):
    """Every API key."""

    keys: list[ApiKeyRead]
    total: int


class UserCreate(BaseModel):
    """Create a user who signs in with a password."""

    model_config = ConfigDict(extra="forbid")

    username: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_.@-]*$")]
    password: Annotated[str, Field(min_length=12, max_length=1024)]
    role: Role
    display_name: Annotated[str, Field(max_length=200)] = ""
    permissions: list[Permission] = Field(default_factory=list[Permission], description="Only for role=custom")
    grants: list[str] = Field(default_factory=list[str])

    _grants = field_validator("grants")(_check_grants)


class UserRead(BaseModel):
    """A user, without the password hash."""

    id: str
    username: str
    display_name: str
    role: Role
    permissions: list[Permission]
    grants: list[str]
    enabled: bool
    created_at: datetime
    last_login_at: datetime | None


class UserList(BaseModel):
    """Every user."""

    users: list[UserRead]
    total: int


class MeRead(BaseModel):
    """Who the caller is and what it may do."""

    id: str
    kind: str
    name: str
    permissions: list[Permission]
    grants: list[str]
