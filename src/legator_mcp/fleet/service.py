"""The fleet: registration tokens, probe registration and credentials, connection status and health, inventory,
tags, signing-key rotation and clean-up.

:class:`FleetService` is the one entry point; registration (``_registration``) and what the gateway reports
(``_presence``) live in helper modules. Status transitions (``probe.online``, ``probe.degraded``,
``probe.recovered``, ``probe.offline``) are audited and published once each; heartbeats are group-committed
and write no audit record.
"""

import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Literal, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from legator_mcp._periodic import every
from legator_mcp.audit.service import AuditService
from legator_mcp.db.base import utcnow
from legator_mcp.db.session import Database
from legator_mcp.errors import Conflict, InvalidRequest, NotFound, ProbeUnavailable, Unauthenticated
from legator_mcp.events.service import EventBus
from legator_mcp.fleet import _views
from legator_mcp.fleet._presence import Presence
from legator_mcp.fleet._registration import Registrar, digest
from legator_mcp.fleet.keys import KeyRing
from legator_mcp.fleet.models import Probe
from legator_mcp.fleet.schemas import (
    CLOSE_CREDENTIAL_REPLACED,
    CLOSE_HEARTBEAT_TIMEOUT,
    CLOSE_PROBE_DELETED,
    CREDENTIAL_PREFIX,
    KEY_ROTATION_OVERLAP_S,
    MAX_TAGS,
    TOKEN_PREFIX,
    AuthenticatedProbe,
    CleanupResult,
    FleetInventory,
    FleetQueryAnswer,
    FleetSummary,
    HealthRead,
    HeartbeatRead,
    InventoryRead,
    InventoryReport,
    KeyRotationRead,
    PolicyLevel,
    ProbeDeleted,
    ProbePage,
    ProbeRead,
    ProbeStatus,
    ProbeTagsRead,
    RegistrationRequest,
    RegistrationResult,
    SigningIdentity,
    TagCounts,
    TokenCreate,
    TokenCreated,
    TokenList,
)
from legator_mcp.fleet.store import FleetStore
from legator_mcp.principal import Principal
from legator_mcp.settings import Settings
from legator_probe.protocol.payloads import HeartbeatPayload, HelloPayload, InventoryPayload

__all__ = [
    "CLOSE_CREDENTIAL_REPLACED",
    "CLOSE_HEARTBEAT_TIMEOUT",
    "CLOSE_PROBE_DELETED",
    "CREDENTIAL_PREFIX",
    "KEY_ROTATION_OVERLAP_S",
    "TOKEN_PREFIX",
    "FleetService",
    "ProbeLink",
]

logger = logging.getLogger("legator.fleet")

_SUMMARY_CONNECTED_CAP = 1000


class ProbeLink(Protocol):
    """What the fleet needs from the live probe connections; the gateway hub implements it."""

    def is_connected(self, probe_id: str) -> bool:
        """Whether the probe has a live connection to this process."""
        ...

    def heard_within(self, probe_id: str, seconds: float) -> bool:
        """Whether the probe's live connection here delivered a frame in the last ``seconds``.

        This is fresher than ``last_seen_at`` in the database, which lags while heartbeats queue for the writer.
        """
        ...

    async def disconnect(self, probe_id: str, *, code: int, reason: str) -> None:
        """Close the probe's connection with WebSocket close ``code``, if it has one here."""
        ...

    async def push_key_rotation(self, probe: ProbeRead, *, new_generation: int, overlap_s: int) -> None:
        """Send the probe a ``key_rotation`` to ``new_generation``, signed with the key it trusts now
        (:meth:`FleetService.signing_identity`).

        Raises:
            ProbeUnavailable: If it could not be sent.
        """
        ...


class FleetService:
    """Registers probes and keeps the fleet's state: status, health, inventory, tags and signing keys.

    Args:
        database: Where probes and tokens live.
        audit: The audit log; changes and status transitions are recorded in the same transaction.
        events: Where status transitions and fleet changes are published.
        settings: Heartbeat interval, offline threshold, token lifetime, default level, public URL.
        keyring: Derives the probes' signing keys.
        clock: Source of "now".
        link: The live connections (the gateway hub); it may be attached later with :meth:`attach_link`.
        store: The queries.
    """

    def __init__(
        self,
        *,
        database: Database,
        audit: AuditService,
        events: EventBus,
        settings: Settings,
        keyring: KeyRing,
        clock: Callable[[], datetime] = utcnow,
        link: ProbeLink | None = None,
        store: FleetStore | None = None,
    ) -> None:
        self._db = database
        self._audit = audit
        self._events = events
        self._settings = settings
        self.keyring = keyring
        self._clock = clock
        self._link = link
        self._store = store or FleetStore()
        self._timing = _views.Timing(settings.heartbeat_interval_s, settings.offline_after_s)
        self._registrar = Registrar(
            database=database, audit=audit, events=events, settings=settings, keyring=keyring, store=self._store,
            clock=clock, timing=self._timing, disconnect=self._disconnect,
        )  # fmt: skip
        self._presence = Presence(
            database=database, audit=audit, events=events, store=self._store, clock=clock, timing=self._timing,
            is_connected=self.is_connected, heard_within=self._heard_within, disconnect=self._disconnect,
        )  # fmt: skip

    def attach_link(self, link: ProbeLink | None) -> None:
        """Connect the service to the live connections (the hub is built after the service)."""
        self._link = link

    def is_connected(self, probe_id: str) -> bool:
        """Whether the probe has a live connection to this process (``False`` without a link)."""
        return self._link is not None and self._link.is_connected(probe_id)

    def _heard_within(self, probe_id: str, seconds: float) -> bool:
        return self._link is not None and self._link.heard_within(probe_id, seconds)

    async def _disconnect(self, probe_id: str, code: int, reason: str) -> bool:
        if self._link is None or not self._link.is_connected(probe_id):
            return False
        await self._link.disconnect(probe_id, code=code, reason=reason)
        return True

    def _read(self, probe: Probe, now: datetime | None = None) -> ProbeRead:
        return _views.probe_read(probe, now=now or self._clock(), timing=self._timing)

    async def _require(self, session: AsyncSession, probe_id: str, *, for_update: bool = False) -> Probe:
        probe = await self._store.probe(session, probe_id, for_update=for_update)
        if probe is None:
            raise NotFound(f"probe {probe_id} not found", details={"probe_id": probe_id})
        return probe

    # -- registration -----------------------------------------------------------------------------------------

    async def create_token(
        self, *, actor: Principal, request: TokenCreate, base_url: str | None = None
    ) -> TokenCreated:
        """Issue a registration token, shown this once (only its SHA-256 is stored), audited as ``token.generated``.

        Args:
            actor: Who asks.
            request: Use count, lifetime, tags and policy level for the probes that register with it.
            base_url: The control plane's URL as the caller reached it, for the install command when
                ``settings.public_url`` is unset.

        Raises:
            PermissionDenied: If a non-admin asks for the ``remediate`` level.
        """
        return await self._registrar.create_token(actor=actor, request=request, base_url=base_url)

    async def list_tokens(self) -> TokenList:
        """Every registration token without its secret; ``count`` is how many are still usable."""
        return await self._registrar.list_tokens()

    async def register(self, *, request: RegistrationRequest) -> RegistrationResult:
        """Register a probe with a registration token, or re-register a known hostname.

        A single-use token is consumed atomically: of concurrent registrations with it exactly one succeeds.
        A known hostname keeps its probe id, policy and keys and gets a new credential; the old credential stops
        working at once and a connection made with it is closed. Tags of the token and the request are merged.

        Raises:
            Unauthenticated: If the token is unknown, expired or used up (audited as
                ``auth.registration_denied``; the token itself is never recorded).
            InvalidRequest: If the merged tags exceed the maximum.
            Conflict: If concurrent registrations of one hostname kept colliding.
        """
        return await self._registrar.register(request=request)

    # -- for the gateway --------------------------------------------------------------------------------------

    async def authenticate_probe(self, credential: str) -> AuthenticatedProbe:
        """Identify a probe by the credential it connects with, and the key generation its connection signs with.

        One read: the gateway needs nothing more from the database to complete the handshake.

        Raises:
            Unauthenticated: If the credential is malformed, unknown, or was replaced by a re-registration.
        """
        if not credential.startswith(CREDENTIAL_PREFIX) or len(credential) > 128:
            raise Unauthenticated("invalid probe credential")
        async with self._db.read() as session:
            probe = await self._store.probe_by_credential(session, digest(credential))
            if probe is None:
                raise Unauthenticated("invalid probe credential")
            return AuthenticatedProbe(
                probe=self._read(probe),
                signing_generation=self._signing_generation(probe),
                key_rotation_pending=probe.key_rotation_pending,
                previous_key_generation=probe.previous_key_generation,
                inventory_digest=probe.inventory_digest,
            )

    async def probe_connected(self, *, probe_id: str, hello: HelloPayload) -> ProbeRead:
        """Record a completed handshake: the probe is online (or stays degraded), seen and connected now.

        Raises:
            NotFound: If the probe was deleted.
            InvalidRequest: If ``hello`` names another probe.
        """
        return await self._presence.connected(probe_id=probe_id, hello=hello)

    async def probe_disconnected(self, *, probe_id: str, reason: str) -> None:
        """Record that the probe's connection ended: it goes offline unless a newer connection is already live.

        Call it after the hub forgot the ended session. An unknown (deleted) probe is ignored.
        """
        await self._presence.disconnected(probe_id=probe_id, reason=reason)

    async def record_heartbeat(self, *, probe_id: str, heartbeat: HeartbeatPayload) -> HeartbeatRead:
        """Store a heartbeat's metrics and health, moving the probe between online and degraded.

        A degraded probe recovers only once every metric is 5 % below its warning threshold, so a value
        hovering at a threshold does not flap. Concurrent heartbeats share one transaction (group commit).

        Raises:
            NotFound: If the probe was deleted.
            ServiceUnavailable: If the database could not be written.
        """
        return await self._presence.heartbeat(probe_id=probe_id, heartbeat=heartbeat)

    async def record_inventory(self, *, probe_id: str, inventory: InventoryPayload | InventoryReport) -> None:
        """Store the probe's inventory and copy its OS, kernel, CPU, memory and disk totals onto the probe
        (:meth:`get_inventory` reads it back). Concurrent inventories share one transaction (group commit).

        Args:
            probe_id: The probe that reported it.
            inventory: The payload, or its :class:`InventoryReport` (what the gateway passes, having dropped the
                parsed payload at once).

        Raises:
            NotFound: If the probe was deleted.
        """
        report = inventory if isinstance(inventory, InventoryReport) else InventoryReport.of(inventory)
        await self._presence.inventory(probe_id=probe_id, report=report)

    async def mark_stale_offline(self) -> list[str]:
        """Mark online or degraded probes silent for ``offline_after_s`` offline and return their ids.

        One still connected here is disconnected too (its connection is dead or stuck; it will redial).
        """
        return await self._presence.sweep(offline_after=timedelta(seconds=self._settings.offline_after_s))

    async def run_sweeper(self, *, interval_s: float | None = None) -> None:
        """Run :meth:`mark_stale_offline` every ``interval_s`` (default a third of ``offline_after_s``) forever.

        A failed pass is logged and the next one runs on schedule.
        """
        interval = interval_s or min(30.0, max(1.0, self._settings.offline_after_s / 3))
        await every(interval, self.mark_stale_offline, what="the offline sweep", wait_first=True)

    async def signing_identity(self, probe_id: str) -> SigningIdentity:
        """The key generation that signs the probe's instructions now.

        While a rotation made offline awaits delivery, that is still the previous generation (the only one
        the probe trusts).

        Raises:
            NotFound: If the probe does not exist.
        """
        async with self._db.read() as session:
            generation = self._signing_generation(await self._require(session, probe_id))
        return SigningIdentity(
            probe_id=probe_id, generation=generation, key_id=self.keyring.key_id(probe_id, generation)
        )

    @staticmethod
    def _signing_generation(probe: Probe) -> int:
        if probe.key_rotation_pending and probe.previous_key_generation is not None:
            return probe.previous_key_generation
        return probe.key_generation

    async def deliver_pending_key_rotation(self, *, probe_id: str, redeliver: bool = False) -> bool:
        """Push a key rotation made while the probe was offline; call it after the handshake.

        With ``redeliver``, push the current generation even though it is recorded as delivered: the probe said in
        its hello that it does not trust that key (the connection that carried the rotation dropped first).

        Returns:
            Whether a rotation was pending (or ``redeliver`` was asked) and has now been delivered.

        Raises:
            NotFound: If the probe does not exist.
            ProbeUnavailable: If the push failed (the rotation stays pending).
        """
        async with self._db.read() as session:
            probe = await self._require(session, probe_id)
            if not (probe.key_rotation_pending or redeliver) or self._link is None:
                return False
            read, generation = self._read(probe), probe.key_generation
        await self._link.push_key_rotation(read, new_generation=generation, overlap_s=KEY_ROTATION_OVERLAP_S)
        async with self._db.write() as session:
            probe = await self._require(session, probe_id, for_update=True)
            if probe.key_generation == generation:
                probe.key_rotation_pending = False
            await self._audit.record(
                type="probe.key_delivered",
                actor=Principal.system("fleet"),
                probe_id=probe_id,
                summary=f"signing key generation {generation} {'re-' if redeliver else ''}delivered to "
                f"{probe.hostname} on reconnect",
                detail={
                    "generation": generation,
                    "key_id": self.keyring.key_id(probe_id, generation),
                    "redelivered": redeliver,
                },  # fmt: skip
                session=session,
            )
        return True

    async def record_untrusted_keys(self, *, probe_id: str, generation: int, trusted_key_ids: list[str]) -> None:
        """Audit and publish that a probe trusts none of its signing keys: its hello listed neither the key of
        ``generation`` nor the one before, so it will refuse every signed instruction (policy, commands, key
        rotations) until it is re-registered. Heartbeats and inventories still arrive.

        Raises:
            NotFound: If the probe does not exist.
        """
        expected = [self.keyring.key_id(probe_id, generation)]
        async with self._db.write() as session:
            probe = await self._require(session, probe_id)
            if probe.previous_key_generation is not None:
                expected.append(self.keyring.key_id(probe_id, probe.previous_key_generation))
            summary = (
                f"probe {probe.hostname} trusts none of its signing keys and will refuse every instruction; "
                "re-register it ('legator-probe init --force')"
            )
            detail: dict[str, object] = {
                "generation": generation,
                "expected_key_ids": expected,
                "trusted_key_ids": trusted_key_ids,
            }
            await self._audit.record(
                type="probe.keys_untrusted",
                actor=Principal.system("fleet"),
                probe_id=probe_id,
                summary=summary,
                detail=detail,
                session=session,
            )
        self._events.publish("probe.keys_untrusted", summary=summary, probe_id=probe_id, detail=detail)

    # -- reads ------------------------------------------------------------------------------------------------

    async def get_probe(self, probe_id: str) -> ProbeRead:
        """One probe's state.

        Raises:
            NotFound: If no probe has that id.
        """
        async with self._db.read() as session:
            return self._read(await self._require(session, probe_id))

    async def get_probes(self, probe_ids: Sequence[str]) -> list[ProbeRead]:
        """The probes with these ids, in the order given (repeats dropped), in one read.

        Raises:
            NotFound: If any of them does not exist.
        """
        now = self._clock()
        async with self._db.read() as session:
            rows = await self._store.probes(session, probe_ids)
        missing = [probe_id for probe_id in probe_ids if probe_id not in rows]
        if missing:
            raise NotFound(f"probe {missing[0]} not found", details={"probe_id": missing[0]})
        return [self._read(rows[probe_id], now) for probe_id in dict.fromkeys(probe_ids)]

    async def with_policy(self, policy_id: str) -> list[ProbeRead]:
        """Every probe that has policy template ``policy_id`` applied, ordered by id."""
        now = self._clock()
        async with self._db.read() as session:
            rows = await self._store.probes_with_policy(session, policy_id)
        return [self._read(row, now) for row in rows]

    async def count_with_policy(self, policy_id: str) -> int:
        """How many probes have policy template ``policy_id`` applied."""
        async with self._db.read() as session:
            return await self._store.count_with_policy(session, policy_id)

    async def list_probes(
        self, *, status: ProbeStatus | None = None, tag: str | None = None, limit: int = 100, cursor: str | None = None
    ) -> ProbePage:
        """A page of probes ordered by id, optionally only those with ``status`` and/or ``tag``.

        Raises:
            InvalidRequest: If ``cursor`` is not the ``next_cursor`` of a previous page.
        """
        if cursor is not None and not cursor.startswith("prb-"):
            raise InvalidRequest("cursor must be the next_cursor of a previous page", details={"field": "cursor"})
        now = self._clock()
        async with self._db.read() as session:
            rows = await self._store.list_probes(session, status=status, tag=tag, after_id=cursor, limit=limit + 1)
            total = await self._store.count_probes(session, status=status, tag=tag)
        more = len(rows) > limit
        probes = [self._read(row, now) for row in rows[:limit]]
        return ProbePage(probes=probes, total=total, next_cursor=probes[-1].id if more else None, has_more=more)

    async def by_tag(self, tag: str) -> list[ProbeRead]:
        """Every probe carrying ``tag``, ordered by id."""
        now = self._clock()
        async with self._db.read() as session:
            rows = await self._store.list_probes(session, tag=tag)
        return [self._read(row, now) for row in rows]

    async def get_inventory(self, probe_id: str, *, max_items: int | None = None) -> InventoryRead:
        """The probe's last inventory; each list section is cut to ``max_items`` when given.

        Raises:
            NotFound: If the probe does not exist or has not reported an inventory yet
                (``details.reason == "no_inventory"``).
        """
        async with self._db.read() as session:
            await self._require(session, probe_id)
            row = await self._store.inventory(session, probe_id)
        if row is None:
            raise NotFound(
                f"probe {probe_id} has not reported an inventory yet",
                details={"probe_id": probe_id, "reason": "no_inventory"},
            )
        return _views.inventory_read(row, max_items=max_items)

    async def health(self, probe_id: str) -> HealthRead:
        """The probe's health: a 0-100 score and the reasons, from its last heartbeat and how old that is.

        Raises:
            NotFound: If no probe has that id.
        """
        now = self._clock()
        async with self._db.read() as session:
            probe = await self._require(session, probe_id)
        verdict = _views.assess_probe(probe, now=now, timing=self._timing)
        return HealthRead(
            probe_id=probe_id, score=verdict.score, status=verdict.status, reasons=verdict.reasons,
            metrics=verdict.metrics, last_seen_at=probe.last_seen_at, evaluated_at=now,
        )  # fmt: skip

    async def summary(self) -> FleetSummary:
        """Status counts, tag counts and the ids of connected (online or degraded) probes."""
        async with self._db.read() as session:
            counts = await self._store.count_by_status(session)
            tags = await self._store.tag_counts(session)
            connected = await self._store.live_probe_ids(session, limit=_SUMMARY_CONNECTED_CAP)
        by_status = {status: counts.get(status, 0) for status in _views.STATUSES}
        return FleetSummary(
            total_probes=sum(counts.values()),
            by_status=by_status,
            tags=tags,
            connected=connected,
            connected_total=by_status["online"] + by_status["degraded"],
        )

    async def tags(self) -> TagCounts:
        """How many probes carry each tag."""
        async with self._db.read() as session:
            return TagCounts(tags=await self._store.tag_counts(session))

    async def fleet_inventory(
        self, *, tag: str | None = None, status: ProbeStatus | None = None, limit: int | None = None
    ) -> FleetInventory:
        """Inventory rows of the matching probes (the first ``limit`` by id) and aggregates over all of them."""
        async with self._db.read() as session:
            rows = await self._store.list_probes(session, status=status, tag=tag)
        return _views.fleet_inventory(rows, limit=limit)

    async def fleet_query(self, question: str) -> FleetQueryAnswer:
        """Answer a question about the fleet from its data: totals, and the probes its words name.

        Raises:
            InvalidRequest: If the question is empty or longer than 1000 characters.
        """
        question = question.strip()
        if not question or len(question) > 1000:
            raise InvalidRequest("question must be 1-1000 characters", details={"field": "question"})
        async with self._db.read() as session:
            rows = await self._store.list_probes(session)
        return _views.answer_question(question, rows, now=self._clock())

    # -- changes ----------------------------------------------------------------------------------------------

    async def set_tags(self, *, actor: Principal, probe_id: str, tags: list[str]) -> ProbeTagsRead:
        """Replace the probe's tags (normalised by :class:`ProbeTagsUpdate`); unchanged tags change nothing.

        Raises:
            NotFound: If no probe has that id.
            InvalidRequest: If there are more tags than the maximum.
        """
        wanted = sorted(set(tags))
        if len(wanted) > MAX_TAGS:
            raise InvalidRequest(f"a probe may carry at most {MAX_TAGS} tags", details={"field": "tags"})
        async with self._db.write() as session:
            probe = await self._require(session, probe_id, for_update=True)
            before = probe.tags
            if before == wanted:
                return ProbeTagsRead(probe_id=probe_id, tags=before)
            self._store.set_tags(probe, wanted)
            await session.flush()
            await self._audit.record(
                type="probe.tags_updated",
                actor=actor,
                probe_id=probe_id,
                summary=f"tags of {probe.hostname} set to {', '.join(wanted) or '(none)'}",
                before={"tags": before},
                after={"tags": wanted},
                session=session,
            )
        self._events.publish(
            "probe.tags_updated", summary=f"tags of {probe_id} changed", probe_id=probe_id, detail={"tags": wanted}
        )
        return ProbeTagsRead(probe_id=probe_id, tags=wanted)

    async def apply_policy(
        self, *, actor: Principal, probe_id: str, policy_id: str, level: PolicyLevel, summary: str
    ) -> ProbeRead:
        """Set the probe's policy template and level, bumping its policy version; audited as ``policy.changed``.

        Raises:
            NotFound: If no probe has that id.
        """
        async with self._db.write() as session:
            probe = await self._require(session, probe_id, for_update=True)
            before = {"policy_id": probe.policy_id, "level": probe.policy_level, "version": probe.policy_version}
            probe.policy_id = policy_id
            probe.policy_level = level
            probe.policy_version = probe.policy_version + 1
            await session.flush()
            after = {"policy_id": policy_id, "level": level, "version": probe.policy_version}
            await self._audit.record(
                type="policy.changed", actor=actor, probe_id=probe_id, summary=summary,
                before=before, after=after, session=session,
            )  # fmt: skip
            read = self._read(probe)
        self._events.publish("policy.changed", summary=summary, probe_id=probe_id, detail=after)
        return read

    async def delete_probe(self, *, actor: Principal, probe_id: str) -> ProbeDeleted:
        """Delete the probe, revoking its credential, and close its live connection.

        Raises:
            NotFound: If no probe has that id.
        """
        async with self._db.write() as session:
            probe = await self._require(session, probe_id, for_update=True)
            before = self._read(probe).model_dump(mode="json")
            await self._store.delete_probe(session, probe_id)
            await self._audit.record(
                type="probe.deregistered",
                actor=actor,
                probe_id=probe_id,
                summary=f"probe {probe.hostname} ({probe_id}) deleted",
                detail={"hostname": probe.hostname, "reason": "deleted"},
                before=before,
                session=session,
            )
        disconnected = await self._disconnect(probe_id, CLOSE_PROBE_DELETED, "probe deleted")
        self.keyring.forget(probe_id)
        self._events.publish("probe.deregistered", summary=f"probe {probe_id} deleted", probe_id=probe_id)
        return ProbeDeleted(deleted=probe_id, disconnected=disconnected)

    async def rotate_key(self, *, actor: Principal, probe_id: str) -> KeyRotationRead:
        """Move the probe to a new signing-key generation.

        A connected probe is sent the new public key first, signed with the key it trusts, which stays valid
        for :data:`KEY_ROTATION_OVERLAP_S` more seconds; if that send fails nothing changes. An offline probe
        is sent the key when it next connects (:meth:`deliver_pending_key_rotation`); until then its
        instructions are signed with the key it knows.

        Raises:
            NotFound: If no probe has that id.
            ProbeUnavailable: If the connected probe could not be sent the new key (the key was not rotated).
            Conflict: If another rotation of the probe finished in between.
        """
        async with self._db.read() as session:
            probe = await self._require(session, probe_id)
            read, current, signing = self._read(probe), probe.key_generation, self._signing_generation(probe)
        new = current + 1
        delivery: Literal["pushed", "on_reconnect"] = "on_reconnect"
        if self._link is not None and self._link.is_connected(probe_id):
            try:
                await self._link.push_key_rotation(read, new_generation=new, overlap_s=KEY_ROTATION_OVERLAP_S)
            except ProbeUnavailable as exc:
                raise ProbeUnavailable(
                    f"could not send the new key to probe {probe_id}; the key was not rotated",
                    details={"probe_id": probe_id},
                ) from exc
            delivery = "pushed"
        key_id = self.keyring.key_id(probe_id, new)
        async with self._db.write() as session:
            probe = await self._require(session, probe_id, for_update=True)
            if probe.key_generation != current:
                raise Conflict("the key was rotated concurrently; retry", details={"probe_id": probe_id})
            probe.previous_key_generation = signing
            probe.key_generation = new
            probe.key_rotation_pending = delivery == "on_reconnect"
            probe.key_rotated_at = self._clock()
            await self._audit.record(
                type="probe.key_rotated",
                actor=actor,
                probe_id=probe_id,
                summary=f"signing key of {probe.hostname} rotated to generation {new} ({delivery})",
                detail={"key_id": key_id, "delivery": delivery, "overlap_s": KEY_ROTATION_OVERLAP_S},
                before={"key_generation": current},
                after={"key_generation": new},
                session=session,
            )
        self._events.publish(
            "probe.key_rotated", summary=f"signing key of {probe_id} rotated", probe_id=probe_id,
            detail={"generation": new, "delivery": delivery},
        )  # fmt: skip
        return KeyRotationRead(probe_id=probe_id, key_id=key_id, generation=new, delivery=delivery)

    async def cleanup(self, *, actor: Principal, older_than: timedelta | None = None) -> CleanupResult:
        """Delete probes offline for longer than ``older_than`` (default one hour).

        Raises:
            InvalidRequest: If ``older_than`` is not positive.
        """
        older_than = timedelta(hours=1) if older_than is None else older_than
        if older_than <= timedelta(0):
            raise InvalidRequest("older_than must be positive", details={"field": "older_than"})
        now = self._clock()
        removed: list[str] = []
        async with self._db.write() as session:
            for probe in await self._store.offline_before(session, now - older_than):
                before = self._read(probe, now).model_dump(mode="json")
                await self._store.delete_probe(session, probe.id)
                removed.append(probe.id)
                await self._audit.record(
                    type="probe.deregistered",
                    actor=actor,
                    probe_id=probe.id,
                    summary=f"probe {probe.hostname} ({probe.id}) removed after more than {older_than} offline",
                    detail={
                        "hostname": probe.hostname,
                        "reason": "cleanup",
                        "older_than_s": older_than.total_seconds(),
                    },
                    before=before,
                    session=session,
                )
        for probe_id in removed:
            self.keyring.forget(probe_id)
            self._events.publish("probe.deregistered", summary=f"probe {probe_id} cleaned up", probe_id=probe_id)
        return CleanupResult(removed=removed, count=len(removed))
