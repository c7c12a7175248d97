"""Registration tokens and probe registration (the part of the fleet service a new probe meets first)."""

import hashlib
import secrets
import shlex
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy.ext.asyncio import AsyncSession

from legator_mcp.audit.service import AuditService
from legator_mcp.db.session import Database
from legator_mcp.errors import Conflict, InvalidRequest, PermissionDenied, ServiceUnavailable, Unauthenticated
from legator_mcp.events.service import EventBus
from legator_mcp.fleet import _views
from legator_mcp.fleet.keys import KeyRing
from legator_mcp.fleet.models import Probe, RegistrationToken
from legator_mcp.fleet.schemas import (
    CLOSE_CREDENTIAL_REPLACED,
    CREDENTIAL_PREFIX,
    MAX_TAGS,
    TOKEN_PREFIX,
    PolicyLevel,
    PolicyRead,
    ProbeRead,
    RegistrationRequest,
    RegistrationResult,
    SigningKeyRead,
    TokenCreate,
    TokenCreated,
    TokenList,
    TokenRead,
)
from legator_mcp.fleet.store import FleetStore
from legator_mcp.principal import Permission, Principal, PrincipalKind
from legator_mcp.settings import Settings

__all__ = ["Registrar", "digest"]

_PROBE_ID_ATTEMPTS = 8
_REGISTRATION_ATTEMPTS = 3

Disconnect = Callable[[str, int, str], Awaitable[bool]]
"""``(probe_id, close_code, reason)``: close the probe's live connection, if any; returns whether it had one."""


def digest(secret: str) -> str:
    """The stored verifier of a token or credential (256-bit random secrets, so a plain SHA-256 suffices)."""
    return hashlib.sha256(secret.encode()).hexdigest()


class Registrar:
    """Issues registration tokens and turns a valid token into a probe identity."""

    def __init__(
        self,
        *,
        database: Database,
        audit: AuditService,
        events: EventBus,
        settings: Settings,
        keyring: KeyRing,
        store: FleetStore,
        clock: Callable[[], datetime],
        timing: _views.Timing,
        disconnect: Disconnect,
    ) -> None:
        self._db = database
        self._audit = audit
        self._events = events
        self._settings = settings
        self._keyring = keyring
        self._store = store
        self._clock = clock
        self._timing = timing
        self._disconnect = disconnect

    async def create_token(self, *, actor: Principal, request: TokenCreate, base_url: str | None) -> TokenCreated:
        level: PolicyLevel = request.policy_level or self._settings.default_probe_level
        if request.policy_level == "remediate" and not actor.has(Permission.ADMIN):
            raise PermissionDenied(
                "only an admin may issue tokens for remediate-level probes", details={"required_permission": "admin"}
            )
        plain = TOKEN_PREFIX + secrets.token_hex(32)
        now = self._clock()
        row = RegistrationToken(
            token_hash=digest(plain),
            token_prefix=plain[:12],
            multi_use=request.multi_use,
            tags=list(request.tags),
            policy_level=level,
            created_at=now,
            created_by=actor.actor,
            expires_at=now + (request.expires_in or timedelta(seconds=self._settings.registration_token_ttl_s)),
            uses=0,
        )
        async with self._db.write() as session:
            await self._store.add_token(session, row)
            await self._audit.record(
                type="token.generated",
                actor=actor,
                summary=f"registration token {row.token_prefix}… issued ({'multi' if row.multi_use else 'single'}-use)",
                detail={
                    "token_id": row.id,
                    "token_prefix": row.token_prefix,
                    "multi_use": row.multi_use,
                    "expires_at": row.expires_at.isoformat(),
                    "tags": row.tags,
                    "policy_level": level,
                },
                session=session,
            )
        base = (self._settings.public_url or base_url or f"http://{self._settings.listen_addr}").rstrip("/")
        install = f"legator-probe init --server {shlex.quote(base)} --token {shlex.quote(plain)} && legator-probe run"
        return TokenCreated(
            token=plain,
            token_id=row.id,
            expires_at=row.expires_at,
            multi_use=row.multi_use,
            tags=row.tags,
            policy_level=level,
            install_command=install,
        )

    async def list_tokens(self) -> TokenList:
        now = self._clock()
        async with self._db.read() as session:
            rows = await self._store.list_tokens(session)
        tokens = [
            TokenRead(
                id=row.id,
                token_prefix=row.token_prefix,
                multi_use=row.multi_use,
                tags=list(row.tags),
                policy_level=cast(PolicyLevel, row.policy_level),
                created_at=row.created_at,
                created_by=row.created_by,
                expires_at=row.expires_at,
                uses=row.uses,
                last_used_at=row.last_used_at,
                expired=row.expires_at <= now,
                used=not row.multi_use and row.uses > 0,
                active=row.expires_at > now and (row.multi_use or row.uses == 0),
            )
            for row in rows
        ]
        return TokenList(tokens=tokens, count=sum(t.active for t in tokens), total=len(tokens))

    async def register(self, *, request: RegistrationRequest) -> RegistrationResult:
        for attempt in range(_REGISTRATION_ATTEMPTS):
            try:
                return await self._register_once(request)
            except Conflict:
                # First registrations of one hostname racing on PostgreSQL (or a probe id collision): the loser
                # rolled back, its token use included, and on retry finds the winner's row.
                if attempt == _REGISTRATION_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _new_probe_id(self, session: AsyncSession) -> str:
        for _ in range(_PROBE_ID_ATTEMPTS):
            candidate = f"prb-{secrets.token_hex(4)}"
            if not await self._store.probe_exists(session, candidate):
                return candidate
        raise ServiceUnavailable("could not allocate a probe id")  # pragma: no cover - 2**32 ids

    async def _register_once(self, request: RegistrationRequest) -> RegistrationResult:
        credential = CREDENTIAL_PREFIX + secrets.token_hex(32)
        now = self._clock()
        denied: str | None = None
        read: ProbeRead | None = None
        reused = had_credential = False
        async with self._db.write() as session:
            token = await self._store.token_by_hash(session, digest(request.token))
            if token is None:
                denied = "unknown_token"
            elif token.expires_at <= now:
                denied = "expired"
            elif not await self._store.consume_token(session, token.id, now):
                denied = "already_used"
            if token is None or denied is not None:
                await self._audit.record(
                    type="auth.registration_denied",
                    actor="anonymous",
                    summary=f"probe registration refused for {request.hostname}: {denied}",
                    detail={"reason": denied, "hostname": request.hostname, "token_id": token.id if token else None},
                    session=session,
                )
            else:
                probe = await self._store.probe_by_hostname(session, request.hostname, for_update=True)
                tags = set(token.tags) | set(request.tags)
                if probe is None:
                    probe = Probe(
                        id=await self._new_probe_id(session),
                        hostname=request.hostname,
                        os=request.os,
                        arch=request.arch,
                        version=request.version,
                        status="pending",
                        status_changed_at=now,
                        policy_level=token.policy_level,
                        policy_id=f"default-{token.policy_level}",
                        policy_version=1,
                        labels={},
                        credential_hash=digest(credential),
                        key_generation=1,
                        key_rotation_pending=False,
                        registered_at=now,
                    )
                else:
                    reused, had_credential = True, probe.credential_hash is not None
                    tags |= set(probe.tags)
                    probe.credential_hash = digest(credential)
                    probe.os = request.os or probe.os
                    probe.arch = request.arch or probe.arch
                    probe.version = request.version or probe.version
                    # A fresh install is handed the newest key below, so no rotation is left to deliver.
                    probe.key_rotation_pending = False
                if len(tags) > MAX_TAGS:
                    raise InvalidRequest(f"a probe may carry at most {MAX_TAGS} tags", details={"field": "tags"})
                self._store.set_tags(probe, tags)
                if reused:
                    await session.flush()
                else:
                    await self._store.add_probe(session, probe)
                read = _views.probe_read(probe, now=now, timing=self._timing)
                await self._audit.record(
                    type="probe.registered",
                    actor=f"probe:{probe.id}",
                    principal_kind=PrincipalKind.PROBE,
                    probe_id=probe.id,
                    summary=f"probe {probe.hostname} ({probe.id}) {'re-registered' if reused else 'registered'}",
                    detail={
                        "hostname": probe.hostname,
                        "reused_identity": reused,
                        "token_id": token.id,
                        "token_prefix": token.token_prefix,
                        "tags": sorted(tags),
                        "policy_level": probe.policy_level,
                    },
                    after=read.model_dump(mode="json"),
                    session=session,
                )
        if denied is not None or read is None:
            raise Unauthenticated("invalid, expired or already used registration token", details={"reason": denied})
        if had_credential:
            await self._disconnect(read.id, CLOSE_CREDENTIAL_REPLACED, "credential replaced by a new registration")
        self._events.publish(
            "probe.registered", summary=f"probe {read.hostname} registered", probe_id=read.id,
            detail={"reused_identity": reused},
        )  # fmt: skip
        return RegistrationResult(
            probe_id=read.id,
            credential=credential,
            signing_key=SigningKeyRead(
                key_id=self._keyring.key_id(read.id, read.key_generation),
                public_key=self._keyring.encoded_public_key(read.id, read.key_generation),
            ),
            policy=PolicyRead(policy_id=read.policy_id, level=read.policy_level, version=read.policy_version),
            heartbeat_interval_s=self._settings.heartbeat_interval_s,
        )
