"""Authentication and identity management: API keys, users, and turning credentials into principals."""

import hashlib
import os
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import anyio.to_thread
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from legator_mcp.audit.service import AuditService
from legator_mcp.auth.models import ApiKey, User
from legator_mcp.auth.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyRead, UserCreate, UserRead
from legator_mcp.auth.store import AuthStore
from legator_mcp.db.base import utcnow
from legator_mcp.db.session import Database
from legator_mcp.errors import Conflict, InvalidRequest, NotFound, Unauthenticated
from legator_mcp.principal import ROLE_PERMISSIONS, Permission, Principal, PrincipalKind, Role

__all__ = ["ADMIN_KEY_FILE", "API_KEY_PREFIX", "AuthService", "hash_api_key", "write_secret_file"]

API_KEY_PREFIX = "lgk_"
"""Every Legator API key starts with this, so scanners and the sanitiser recognise it."""

ADMIN_KEY_FILE = "admin-api-key"
"""File in the data dir that receives the first admin key (mode 0600)."""

_TOUCH_INTERVAL = timedelta(seconds=60)
_DUMMY_HASH = PasswordHasher().hash("legator-timing-equaliser")


def write_secret_file(path: Path, secret: str) -> None:
    """Write ``secret`` to ``path`` readable by its owner only (0600), creating parent directories."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(secret + "\n")
    os.chmod(path, 0o600)


def hash_api_key(plain: str) -> str:
    """Return the stored digest of an API key (keys are 256-bit random, so a plain SHA-256 suffices)."""
    return hashlib.sha256(plain.encode()).hexdigest()


def _key_read(row: ApiKey) -> ApiKeyRead:
    return ApiKeyRead(
        id=row.id,
        name=row.name,
        key_prefix=row.key_prefix,
        permissions=[Permission(p) for p in row.permissions],
        grants=list(row.grants),
        created_at=row.created_at,
        created_by=row.created_by,
        expires_at=row.expires_at,
        last_used_at=row.last_used_at,
        enabled=row.enabled,
    )


def _user_permissions(row: User) -> frozenset[Permission]:
    role = Role(row.role)
    if role is Role.CUSTOM:
        return frozenset(Permission(p) for p in row.permissions)
    return ROLE_PERMISSIONS[role]


def _user_read(row: User) -> UserRead:
    return UserRead(
        id=row.id,
        username=row.username,
        display_name=row.display_name,
        role=Role(row.role),
        permissions=sorted(_user_permissions(row)),
        grants=list(row.grants),
        enabled=row.enabled,
        created_at=row.created_at,
        last_login_at=row.last_login_at,
    )


class AuthService:
    """Issues and checks credentials, and manages API keys and users."""

    def __init__(
        self,
        *,
        database: Database,
        audit: AuditService,
        store: AuthStore | None = None,
        clock: Callable[[], datetime] = utcnow,
        password_hasher: PasswordHasher | None = None,
    ) -> None:
        self._db = database
        self._audit = audit
        self._store = store or AuthStore()
        self._clock = clock
        self._hasher = password_hasher or PasswordHasher()

    # -- API keys -------------------------------------------------------------------------------------------

    async def create_api_key(self, *, actor: Principal, request: ApiKeyCreate) -> ApiKeyCreated:
        """Create an API key and return it in plain text, once.

        Raises:
            PermissionDenied: Never here; adapters check ``admin`` before calling.
        """
        plain = API_KEY_PREFIX + secrets.token_hex(32)
        now = self._clock()
        row = ApiKey(
            name=request.name,
            key_prefix=plain[:12],
            key_hash=hash_api_key(plain),
            permissions=sorted({p.value for p in request.permissions}),
            grants=sorted(set(request.grants)),
            created_at=now,
            created_by=actor.actor,
            expires_at=now + request.expires_in if request.expires_in else None,
            enabled=True,
        )
        async with self._db.write() as session:
            await self._store.add_key(session, row)
            read = _key_read(row)
            await self._audit.record(
                type="auth.key_created",
                actor=actor,
                summary=f"API key {row.name!r} created",
                detail={"key_id": row.id, "key_prefix": row.key_prefix, "permissions": row.permissions},
                after=read.model_dump(mode="json"),
                session=session,
            )
        return ApiKeyCreated(key=read, plain_key=plain)

    async def list_api_keys(self) -> list[ApiKeyRead]:
        """Return every API key (never the secret)."""
        async with self._db.read() as session:
            return [_key_read(row) for row in await self._store.list_keys(session)]

    async def delete_api_key(self, *, actor: Principal, key_id: str) -> None:
        """Revoke and delete an API key.

        Raises:
            NotFound: If no key has that id.
            Conflict: If a key tries to delete itself (it would lock the caller out mid-request).
        """
        if actor.kind is PrincipalKind.API_KEY and actor.id == key_id:
            raise Conflict("an API key cannot delete itself; use another admin credential")
        async with self._db.write() as session:
            row = await self._store.key_by_id(session, key_id)
            if row is None:
                raise NotFound(f"API key {key_id} not found")
            before = _key_read(row).model_dump(mode="json")
            await self._store.delete_key(session, key_id)
            await self._audit.record(
                type="auth.key_deleted",
                actor=actor,
                summary=f"API key {row.name!r} deleted",
                detail={"key_id": key_id},
                before=before,
                session=session,
            )

    async def authenticate_api_key(self, plain: str) -> Principal:
        """Turn a presented API key into a principal.

        Raises:
            Unauthenticated: If the key is malformed, unknown, disabled or expired.
        """
        if not plain.startswith(API_KEY_PREFIX) or len(plain) > 256:
            raise Unauthenticated("invalid API key")
        async with self._db.read() as session:
            row = await self._store.key_by_hash(session, hash_api_key(plain))
        now = self._clock()
        if row is None or not row.enabled:
            raise Unauthenticated("invalid API key")
        if row.expires_at is not None and row.expires_at <= now:
            raise Unauthenticated("API key expired", details={"reason": "expired"})
        if row.last_used_at is None or now - row.last_used_at > _TOUCH_INTERVAL:
            async with self._db.write() as session:
                await self._store.touch_key(session, row.id, now)
        return Principal(
            kind=PrincipalKind.API_KEY,
            id=row.id,
            name=row.name,
            permissions=frozenset(Permission(p) for p in row.permissions),
            grants=tuple(row.grants),
        )

    async def ensure_bootstrap_key(self, data_dir: Path) -> str | None:
        """On a database with no keys and no users, create an admin key and write it to a 0600 file.

        Returns:
            The plain key when one was created, else ``None`` (the key is never logged).
        """
        async with self._db.read() as session:
            if await self._store.count_keys(session) or await self._store.list_users(session):
                return None
        created = await self.create_api_key(
            actor=Principal.system(),
            request=ApiKeyCreate(name="bootstrap-admin", permissions=[Permission.ADMIN]),
        )
        await anyio.to_thread.run_sync(write_secret_file, data_dir / ADMIN_KEY_FILE, created.plain_key)
        return created.plain_key

    # -- users ----------------------------------------------------------------------------------------------

    async def create_user(self, *, actor: Principal, request: UserCreate) -> UserRead:
        """Create a user with an argon2-hashed password.

        Raises:
            Conflict: If the username is taken.
            InvalidRequest: If permissions are given for a built-in role.
        """
        if request.permissions and request.role is not Role.CUSTOM:
            raise InvalidRequest("permissions can only be set for role 'custom'", details={"field": "permissions"})
        password_hash = await anyio.to_thread.run_sync(self._hasher.hash, request.password)
        row = User(
            username=request.username,
            display_name=request.display_name or request.username,
            password_hash=password_hash,
            role=request.role.value,
            permissions=sorted({p.value for p in request.permissions}),
            grants=sorted(set(request.grants)),
            enabled=True,
            created_at=self._clock(),
        )
        async with self._db.write() as session:
            await self._store.add_user(session, row)
            read = _user_read(row)
            await self._audit.record(
                type="auth.user_created",
                actor=actor,
                summary=f"user {row.username!r} created with role {row.role}",
                detail={"user_id": row.id},
                after=read.model_dump(mode="json"),
                session=session,
            )
        return read

    async def list_users(self) -> list[UserRead]:
        """Return every user."""
        async with self._db.read() as session:
            return [_user_read(row) for row in await self._store.list_users(session)]

    async def delete_user(self, *, actor: Principal, user_id: str) -> None:
        """Delete a user.

        Raises:
            NotFound: If no user has that id.
            Conflict: If a user tries to delete themself.
        """
        if actor.kind is PrincipalKind.USER and actor.id == user_id:
            raise Conflict("a user cannot delete themself")
        async with self._db.write() as session:
            row = await self._store.user_by_id(session, user_id)
            if row is None:
                raise NotFound(f"user {user_id} not found")
            before = _user_read(row).model_dump(mode="json")
            await self._store.delete_user(session, user_id)
            await self._audit.record(
                type="auth.user_deleted",
                actor=actor,
                summary=f"user {row.username!r} deleted",
                detail={"user_id": user_id},
                before=before,
                session=session,
            )

    async def authenticate_password(self, *, username: str, password: str) -> Principal:
        """Check a username and password.

        Raises:
            Unauthenticated: If the user is unknown, disabled, or the password is wrong.
        """
        async with self._db.read() as session:
            row = await self._store.user_by_name(session, username)
        stored = row.password_hash if row is not None else _DUMMY_HASH
        try:
            await anyio.to_thread.run_sync(self._hasher.verify, stored, password)
            ok = row is not None and row.enabled
        except (VerificationError, InvalidHashError):
            ok = False
        if not ok or row is None:
            await self._audit.record(
                type="auth.login_failed",
                actor=f"user:{username[:64]}",
                summary="password sign-in failed",
                detail={"username": username[:64]},
            )
            raise Unauthenticated("invalid credentials")
        async with self._db.write() as session:
            await self._store.touch_user_login(session, row.id, self._clock())
            await self._audit.record(
                type="auth.login",
                actor=f"user:{row.username}",
                principal_kind=PrincipalKind.USER,
                summary="password sign-in",
                session=session,
            )
        return Principal(
            kind=PrincipalKind.USER,
            id=row.id,
            name=row.username,
            permissions=_user_permissions(row),
            grants=tuple(row.grants),
        )

    async def record_denied(
        self, *, actor: Principal | None, surface: str, required: str | None, reason: str, request_id: str | None
    ) -> None:
        """Audit a refused request (no credential, bad credential, or too few permissions)."""
        await self._audit.record(
            type="auth.authorization_denied",
            actor=actor if actor is not None else "anonymous",
            summary=f"denied {surface}: {reason}",
            detail={"surface": surface, "required_permission": required, "reason": reason},
            request_id=request_id,
        )
