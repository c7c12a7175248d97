"""Who is asking: the authenticated principal every service call carries, and the permission vocabulary."""

import enum
from dataclasses import dataclass, field

__all__ = ["ROLE_PERMISSIONS", "Permission", "Principal", "PrincipalKind", "Role", "parse_grants"]


class Permission(enum.StrEnum):
    """A permission a route, tool or resource requires. ``admin`` satisfies every check."""

    FLEET_READ = "fleet:read"
    FLEET_WRITE = "fleet:write"
    COMMAND_EXEC = "command:exec"
    APPROVAL_READ = "approval:read"
    APPROVAL_WRITE = "approval:write"
    AUDIT_READ = "audit:read"
    WEBHOOK_MANAGE = "webhook:manage"
    ADMIN = "admin"


class Role(enum.StrEnum):
    """Built-in user roles; ``custom`` means the user's own permission list applies."""

    ADMIN = "admin"
    OPERATOR = "operator"
    VIEWER = "viewer"
    CUSTOM = "custom"


ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset({Permission.ADMIN}),
    Role.OPERATOR: frozenset(
        {
            Permission.FLEET_READ,
            Permission.FLEET_WRITE,
            Permission.COMMAND_EXEC,
            Permission.APPROVAL_READ,
            Permission.APPROVAL_WRITE,
            Permission.AUDIT_READ,
            Permission.WEBHOOK_MANAGE,
        }
    ),
    Role.VIEWER: frozenset({Permission.FLEET_READ, Permission.APPROVAL_READ, Permission.AUDIT_READ}),
    Role.CUSTOM: frozenset(),
}
"""What each built-in role may do."""

GRANT_DIMENSIONS = ("tenant", "org", "scope")
"""The federation grant dimensions a key or user can be narrowed to."""


def parse_grants(values: list[str]) -> dict[str, frozenset[str]]:
    """Group ``tenant:<id>`` / ``org:<id>`` / ``scope:<id>`` strings by dimension (ids lower-cased).

    Raises:
        ValueError: If a value is not of one of the three forms or has an empty id.
    """
    grants: dict[str, set[str]] = {}
    for raw in values:
        dimension, sep, ident = raw.strip().partition(":")
        dimension = dimension.lower()
        ident = ident.strip().lower()
        if not sep or dimension not in GRANT_DIMENSIONS or not ident:
            raise ValueError(f"grant must be tenant:<id>, org:<id> or scope:<id>, got {raw!r}")
        grants.setdefault(dimension, set()).add(ident)
    return {key: frozenset(value) for key, value in grants.items()}


class PrincipalKind(enum.StrEnum):
    """What sort of identity a principal is."""

    API_KEY = "api_key"
    USER = "user"
    PROBE = "probe"
    SYSTEM = "system"
    ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: the actor recorded in audit and checked by permissions and policy."""

    kind: PrincipalKind
    id: str
    name: str
    permissions: frozenset[Permission] = field(default_factory=lambda: frozenset[Permission]())
    grants: tuple[str, ...] = ()
    via: str | None = None
    """The surface the call came through (``rest``, ``mcp``, ``cli``, ``console``), for audit."""

    def has(self, permission: Permission) -> bool:
        """Whether this principal holds ``permission`` (``admin`` implies all)."""
        return Permission.ADMIN in self.permissions or permission in self.permissions

    @property
    def actor(self) -> str:
        """The stable actor string written to audit records, e.g. ``api_key:ops-bot``."""
        return f"{self.kind.value}:{self.name}"

    def with_via(self, via: str) -> "Principal":
        """Return a copy tagged with the surface it arrived through."""
        return Principal(self.kind, self.id, self.name, self.permissions, self.grants, via)

    @classmethod
    def system(cls, name: str = "legator") -> "Principal":
        """The control plane acting on its own (scheduler, reaper, start-up)."""
        return cls(PrincipalKind.SYSTEM, name, name, frozenset({Permission.ADMIN}))
