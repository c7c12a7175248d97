"""The fleet service against real SQLite and PostgreSQL: tokens, registration, status, health, tags, keys, cleanup."""

import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
from sqlalchemy import select, text

from legator_mcp.audit.schemas import AuditQuery
from legator_mcp.audit.service import AuditService
from legator_mcp.db.session import Database
from legator_mcp.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    ProbeUnavailable,
    Unauthenticated,
)
from legator_mcp.events.service import Event, EventBus, Subscription
from legator_mcp.fleet.keys import KeyRing
from legator_mcp.fleet.models import Probe, RegistrationToken
from legator_mcp.fleet.schemas import (
    CLOSE_CREDENTIAL_REPLACED,
    CLOSE_HEARTBEAT_TIMEOUT,
    CLOSE_PROBE_DELETED,
    PROBE_ID_PATTERN,
    ProbeRead,
    RegistrationRequest,
    RegistrationResult,
    TokenCreate,
)
from legator_mcp.fleet.service import FleetService
from legator_mcp.principal import Permission, Principal, PrincipalKind
from legator_mcp.settings import Settings
from legator_probe.protocol.messages import CommandMessage, KeyRotationMessage, new_message_id
from legator_probe.protocol.payloads import (
    DiskInfo,
    HeartbeatPayload,
    HelloPayload,
    InventoryPayload,
    KeyRotationPayload,
    PackageInfo,
)
from legator_probe.protocol.signing import TrustedKey, Verifier, decode_public_key, sign_envelope

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
MASTER = bytes(range(32))
ADMIN = Principal(PrincipalKind.USER, "u-1", "alice", frozenset({Permission.ADMIN}), via="rest")
OPERATOR = Principal(PrincipalKind.API_KEY, "k-1", "ops-bot", frozenset({Permission.FLEET_WRITE}), via="mcp")
GIB = 1024**3


class StepClock:
    """A clock that stands still until a test moves it."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class FakeLink:
    """The gateway hub's side of ``ProbeLink``: which probes are connected, and what was asked of them."""

    fleet: FleetService | None = None
    connected: set[str] = field(default_factory=set[str])
    heard: set[str] = field(default_factory=set[str])
    """Probes whose connection delivered a frame lately (their heartbeats may not be written yet)."""
    disconnects: list[tuple[str, int]] = field(default_factory=list[tuple[str, int]])
    rotations: list[KeyRotationMessage] = field(default_factory=list[KeyRotationMessage])
    fail_push: bool = False
    after_push: Callable[[], Awaitable[None]] | None = None

    def is_connected(self, probe_id: str) -> bool:
        return probe_id in self.connected

    def heard_within(self, probe_id: str, seconds: float) -> bool:
        return probe_id in self.heard

    async def disconnect(self, probe_id: str, *, code: int, reason: str) -> None:
        self.disconnects.append((probe_id, code))
        self.connected.discard(probe_id)

    async def push_key_rotation(self, probe: ProbeRead, *, new_generation: int, overlap_s: int) -> None:
        if self.fail_push:
            raise ProbeUnavailable("socket closed")
        assert self.fleet is not None
        # Sign exactly as the hub does: with the generation the fleet says signs now.
        identity = await self.fleet.signing_identity(probe.id)
        ring = self.fleet.keyring
        payload = KeyRotationPayload(
            probe_id=probe.id, nonce=new_message_id(), expires_at=T0 + timedelta(minutes=2),
            new_key_id=ring.key_id(probe.id, new_generation),
            new_public_key=ring.encoded_public_key(probe.id, new_generation), overlap_s=overlap_s,
        )  # fmt: skip
        message = KeyRotationMessage(id=new_message_id(), ts=T0, payload=payload)
        signed = sign_envelope(
            message, key_id=identity.key_id, private_key=ring.private_key(probe.id, identity.generation)
        )
        self.rotations.append(signed)
        if self.after_push is not None:
            await self.after_push()


@dataclass
class Fleet:
    service: FleetService
    audit: AuditService
    events: EventBus
    clock: StepClock
    link: FakeLink
    database: Database

    async def register(self, hostname: str, **token: Any) -> RegistrationResult:
        created = await self.service.create_token(actor=ADMIN, request=TokenCreate(**token))
        return await self.service.register(request=RegistrationRequest(token=created.token, hostname=hostname))

    async def online(self, hostname: str, **token: Any) -> RegistrationResult:
        registered = await self.register(hostname, **token)
        self.link.connected.add(registered.probe_id)
        hello = HelloPayload(probe_id=registered.probe_id, version="0.1.0", hostname=hostname)
        await self.service.probe_connected(probe_id=registered.probe_id, hello=hello)
        return registered

    async def audit_types(self, type: str) -> list[str]:
        page = await self.audit.search(AuditQuery(type=type, limit=500))
        return [event.probe_id or "" for event in page.events]


@pytest.fixture
async def fleet(database: Database, settings: Settings) -> Fleet:
    clock = StepClock()
    audit = AuditService(database=database, clock=clock)
    events = EventBus(clock=clock)
    link = FakeLink()
    service = FleetService(
        database=database, audit=audit, events=events, settings=settings, keyring=KeyRing(MASTER), clock=clock,
        link=link,
    )  # fmt: skip
    link.fleet = service
    return Fleet(service, audit, events, clock, link, database)


def heartbeat(*, disk_pct: float = 40, mem_pct: float = 30, load5: float = 0.2) -> HeartbeatPayload:
    return HeartbeatPayload(
        uptime_s=1000,
        load=(0.1, load5, 0.1),
        mem_total_bytes=8 * GIB,
        mem_used_bytes=int(8 * GIB * mem_pct / 100),
        disk_total_bytes=100 * GIB,
        disk_used_bytes=int(100 * GIB * disk_pct / 100),
    )


def inventory(hostname: str, *, cpus: int = 2, packages: int = 3) -> InventoryPayload:
    return InventoryPayload(
        hostname=hostname, os="linux", os_version="Debian 12", kernel="6.1.0", arch="x86_64", cpus=cpus,
        mem_total_bytes=8 * GIB, disks=[DiskInfo(mount="/", fstype="ext4", total_bytes=100 * GIB, used_bytes=GIB)],
        packages=[PackageInfo(name=f"pkg{n}", version="1", manager="apt") for n in range(packages)], collected_at=T0,
    )  # fmt: skip


def drain(subscription: Subscription) -> list[Event]:
    events: list[Event] = []
    while True:
        try:
            events.append(subscription._receive.receive_nowait())
        except anyio.WouldBlock:
            return events


# -- tokens ----------------------------------------------------------------------------------------------------


async def test_a_token_is_shown_once_and_only_its_digest_is_stored(fleet: Fleet) -> None:
    created = await fleet.service.create_token(
        actor=OPERATOR, request=TokenCreate(multi_use=True, tags=["Prod", "web"], expires_in="2h"),  # pyright: ignore[reportArgumentType]
        base_url="http://cp.example:8080/",
    )  # fmt: skip
    assert created.token.startswith("lrt_") and len(created.token) == 68
    assert created.expires_at == T0 + timedelta(hours=2)
    assert created.tags == ["prod", "web"] and created.policy_level == "observe"
    assert created.install_command == (
        f"legator-probe init --server http://cp.example:8080 --token {created.token} && legator-probe run"
    )
    async with fleet.database.read() as session:
        row = (await session.execute(select(RegistrationToken))).scalar_one()
    assert row.token_hash == hashlib.sha256(created.token.encode()).hexdigest()
    listed = await fleet.service.list_tokens()
    assert created.token not in listed.model_dump_json()
    assert (listed.count, listed.total, listed.tokens[0].token_prefix) == (1, 1, created.token[:12])
    events = (await fleet.audit.search(AuditQuery(type="token.generated"))).events
    assert len(events) == 1 and created.token not in events[0].model_dump_json()


async def test_only_an_admin_may_issue_tokens_for_remediate_probes(fleet: Fleet) -> None:
    with pytest.raises(PermissionDenied):
        await fleet.service.create_token(actor=OPERATOR, request=TokenCreate(policy_level="remediate"))
    created = await fleet.service.create_token(actor=ADMIN, request=TokenCreate(policy_level="remediate"))
    registered = await fleet.service.register(request=RegistrationRequest(token=created.token, hostname="db-1"))
    assert registered.policy.level == "remediate"
    assert registered.policy.policy_id == "default-remediate"


# -- registration ----------------------------------------------------------------------------------------------


async def test_registration_issues_an_identity_a_credential_a_signing_key_and_a_policy(fleet: Fleet) -> None:
    created = await fleet.service.create_token(actor=ADMIN, request=TokenCreate(tags=["prod"]))
    result = await fleet.service.register(
        request=RegistrationRequest(token=created.token, hostname="Web-1.Example.COM", os="linux", tags=["web"])
    )
    assert PROBE_ID_PATTERN.fullmatch(result.probe_id)
    assert result.credential.startswith("lpc_") and len(result.credential) == 68
    assert result.signing_key.algorithm == "ed25519"
    assert result.signing_key.key_id == fleet.service.keyring.key_id(result.probe_id, 1)
    assert result.signing_key.public_key == fleet.service.keyring.encoded_public_key(result.probe_id, 1)
    assert result.policy.model_dump() == {
        "policy_id": "default-observe", "level": "observe", "path_allow": [], "path_deny": [], "version": 1,
    }  # fmt: skip
    assert result.heartbeat_interval_s == 30.0
    authenticated = await fleet.service.authenticate_probe(result.credential)
    assert (authenticated.signing_generation, authenticated.key_rotation_pending) == (1, False)
    probe = authenticated.probe
    assert (probe.id, probe.hostname, probe.status, probe.tags) == (
        result.probe_id,
        "web-1.example.com",
        "pending",
        ["prod", "web"],
    )
    assert (await fleet.audit.search(AuditQuery(type="probe.registered"))).events[0].detail == {
        "hostname": "web-1.example.com", "reused_identity": False, "token_id": created.token_id,
        "token_prefix": created.token[:12], "tags": ["prod", "web"], "policy_level": "observe",
    }  # fmt: skip


async def test_the_database_and_the_audit_log_never_hold_a_plain_token_or_credential(fleet: Fleet) -> None:
    created = await fleet.service.create_token(actor=ADMIN, request=TokenCreate())
    result = await fleet.service.register(request=RegistrationRequest(token=created.token, hostname="web-1"))
    dump: list[str] = []
    async with fleet.database.read() as session:
        for table in ("probes", "registration_tokens", "probe_tags", "audit_events"):
            rows = (await session.execute(text(f"SELECT * FROM {table}"))).all()
            dump.extend(json.dumps([str(v) for v in row]) for row in rows)
        probe = (await session.execute(select(Probe))).scalar_one()
    everything = "\n".join(dump)
    assert created.token not in everything
    assert result.credential not in everything
    assert probe.credential_hash == hashlib.sha256(result.credential.encode()).hexdigest()


async def test_a_single_use_token_registers_once_and_then_is_refused_and_audited(fleet: Fleet) -> None:
    created = await fleet.service.create_token(actor=ADMIN, request=TokenCreate())
    await fleet.service.register(request=RegistrationRequest(token=created.token, hostname="web-1"))
    with pytest.raises(Unauthenticated) as refused:
        await fleet.service.register(request=RegistrationRequest(token=created.token, hostname="web-2"))
    assert refused.value.details == {"reason": "already_used"}
    denied = (await fleet.audit.search(AuditQuery(type="auth.registration_denied"))).events
    assert len(denied) == 1 and denied[0].detail is not None
    assert denied[0].detail["reason"] == "already_used"
    assert created.token not in denied[0].model_dump_json()
    listed = (await fleet.service.list_tokens()).tokens[0]
    assert (listed.used, listed.uses, listed.active) == (True, 1, False)


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        pytest.param(None, "expired", id="expired"),
        pytest.param("lrt_" + "0" * 64, "unknown_token", id="unknown"),
        pytest.param("not-even-a-token", "unknown_token", id="garbage"),
    ],
)
async def test_expired_and_unknown_tokens_are_refused(fleet: Fleet, token: str | None, reason: str) -> None:
    created = await fleet.service.create_token(actor=ADMIN, request=TokenCreate(multi_use=True, expires_in="10m"))  # pyright: ignore[reportArgumentType]
    fleet.clock.advance(601)
    with pytest.raises(Unauthenticated) as refused:
        await fleet.service.register(request=RegistrationRequest(token=token or created.token, hostname="web-1"))
    assert refused.value.details == {"reason": reason}
    assert await fleet.audit_types("auth.registration_denied") == [""]
    assert (await fleet.service.list_tokens()).tokens[0].expired is True


async def test_a_single_use_token_race_lets_exactly_one_registration_win(fleet: Fleet) -> None:
    created = await fleet.service.create_token(actor=ADMIN, request=TokenCreate())
    outcomes: list[str] = []

    async def attempt(n: int) -> None:
        try:
            await fleet.service.register(request=RegistrationRequest(token=created.token, hostname=f"host-{n}"))
            outcomes.append("registered")
        except Unauthenticated:
            outcomes.append("refused")

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for n in range(8):
                tg.start_soon(attempt, n)
    assert sorted(outcomes) == ["refused"] * 7 + ["registered"]
    assert (await fleet.service.list_probes()).total == 1
    assert (await fleet.service.list_tokens()).tokens[0].uses == 1


async def test_a_multi_use_token_registers_many_probes_until_it_expires(fleet: Fleet) -> None:
    created = await fleet.service.create_token(actor=ADMIN, request=TokenCreate(multi_use=True))
    for n in range(3):
        await fleet.service.register(request=RegistrationRequest(token=created.token, hostname=f"web-{n}"))
    assert (await fleet.service.list_tokens()).tokens[0].uses == 3
    fleet.clock.advance(1801)
    with pytest.raises(Unauthenticated):
        await fleet.service.register(request=RegistrationRequest(token=created.token, hostname="web-9"))


async def test_re_registering_a_hostname_keeps_its_identity_and_revokes_the_old_credential(fleet: Fleet) -> None:
    first = await fleet.online("web-1", tags=["prod"])
    await fleet.service.rotate_key(actor=ADMIN, probe_id=first.probe_id)
    before = await fleet.service.get_probe(first.probe_id)
    created = await fleet.service.create_token(actor=ADMIN, request=TokenCreate(tags=["edge"], policy_level="diagnose"))
    second = await fleet.service.register(request=RegistrationRequest(token=created.token, hostname="WEB-1"))
    assert second.probe_id == first.probe_id
    assert second.credential != first.credential
    with pytest.raises(Unauthenticated):
        await fleet.service.authenticate_probe(first.credential)
    after = (await fleet.service.authenticate_probe(second.credential)).probe
    assert after.tags == ["edge", "prod"], "tags of the new token are merged in"
    assert (after.policy_level, after.key_generation, after.registered_at) == (
        before.policy_level, before.key_generation, before.registered_at,
    )  # fmt: skip
    assert second.signing_key.key_id == fleet.service.keyring.key_id(first.probe_id, before.key_generation)
    assert fleet.link.disconnects == [(first.probe_id, CLOSE_CREDENTIAL_REPLACED)]
    events = (await fleet.audit.search(AuditQuery(type="probe.registered"))).events
    assert [e.detail["reused_identity"] for e in events if e.detail] == [True, False]
    assert (await fleet.service.list_probes()).total == 1


async def test_registration_refuses_more_than_32_merged_tags(fleet: Fleet) -> None:
    created = await fleet.service.create_token(actor=ADMIN, request=TokenCreate(tags=[f"t{n}" for n in range(20)]))
    with pytest.raises(InvalidRequest):
        await fleet.service.register(
            request=RegistrationRequest(token=created.token, hostname="web-1", tags=[f"r{n}" for n in range(20)])
        )
    assert (await fleet.service.list_tokens()).tokens[0].uses == 0, "the failed registration used nothing"


async def test_probe_credentials_are_checked_by_shape_and_digest(fleet: Fleet) -> None:
    for credential in ("", "lgk_" + "0" * 64, "lpc_" + "0" * 64, "lpc_" + "x" * 500):
        with pytest.raises(Unauthenticated):
            await fleet.service.authenticate_probe(credential)


# -- status transitions ----------------------------------------------------------------------------------------


async def test_each_status_transition_writes_one_audit_record_and_one_event(fleet: Fleet) -> None:
    registered = await fleet.register("web-1")
    probe_id = registered.probe_id
    await fleet.service.record_inventory(probe_id=probe_id, inventory=inventory("web-1", cpus=4))
    async with fleet.events.subscribe("probe.*") as subscription:
        fleet.link.connected.add(probe_id)
        hello = HelloPayload(probe_id=probe_id, version="0.2.0", hostname="web-1")
        connected = await fleet.service.probe_connected(probe_id=probe_id, hello=hello)
        assert (connected.status, connected.version) == ("online", "0.2.0")
        for disk in (40, 41, 90, 92, 50, 51):
            fleet.clock.advance(30)
            await fleet.service.record_heartbeat(probe_id=probe_id, heartbeat=heartbeat(disk_pct=disk))
        fleet.link.connected.discard(probe_id)
        await fleet.service.probe_disconnected(probe_id=probe_id, reason="connection lost")
        await fleet.service.probe_disconnected(probe_id=probe_id, reason="again")
        published = [(e.type, e.detail and e.detail["to"]) for e in drain(subscription)]
    assert published == [
        ("probe.online", "online"), ("probe.degraded", "degraded"), ("probe.recovered", "online"),
        ("probe.offline", "offline"),
    ]  # fmt: skip
    for type in ("probe.online", "probe.degraded", "probe.recovered", "probe.offline"):
        assert await fleet.audit_types(type) == [probe_id], type
    degraded = (await fleet.audit.search(AuditQuery(type="probe.degraded"))).events[0]
    assert degraded.detail is not None and "disk used is 90%" in degraded.detail["reason"]
    assert degraded.actor == f"probe:{probe_id}" and degraded.principal_kind == "probe"
    assert (await fleet.service.get_probe(probe_id)).status == "offline"


async def test_heartbeats_update_last_seen_and_metrics_without_audit_records(fleet: Fleet) -> None:
    registered = await fleet.online("web-1")
    total_before = await fleet.audit.count()
    for _ in range(5):
        fleet.clock.advance(30)
        result = await fleet.service.record_heartbeat(probe_id=registered.probe_id, heartbeat=heartbeat())
        assert (result.status, result.previous_status, result.health_status) == ("online", "online", "healthy")
    assert await fleet.audit.count() == total_before
    probe = await fleet.service.get_probe(registered.probe_id)
    assert probe.last_seen_at == fleet.clock.now
    assert probe.health_score == 100


async def test_a_degraded_probe_recovers_only_with_a_clear_margin(fleet: Fleet) -> None:
    probe_id = (await fleet.online("web-1")).probe_id
    statuses = [
        (await fleet.service.record_heartbeat(probe_id=probe_id, heartbeat=heartbeat(disk_pct=disk))).status
        for disk in (86, 84, 82, 80)
    ]
    assert statuses == ["degraded", "degraded", "degraded", "online"]
    assert await fleet.audit_types("probe.recovered") == [probe_id]


async def test_concurrent_heartbeats_of_many_probes_are_all_recorded(fleet: Fleet) -> None:
    ids = [(await fleet.online(f"web-{n}")).probe_id for n in range(12)]
    fleet.clock.advance(10)

    async def beat(probe_id: str, disk: float) -> None:
        await fleet.service.record_heartbeat(probe_id=probe_id, heartbeat=heartbeat(disk_pct=disk))

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for n, probe_id in enumerate(ids):
                tg.start_soon(beat, probe_id, 97 if n % 3 == 0 else 20)
    probes = {p.id: p for p in (await fleet.service.list_probes()).probes}
    assert all(probes[i].last_seen_at == fleet.clock.now for i in ids)
    assert sorted(await fleet.audit_types("probe.degraded")) == sorted(ids[::3])


async def test_a_heartbeat_for_a_deleted_probe_is_not_found(fleet: Fleet) -> None:
    probe_id = (await fleet.online("web-1")).probe_id
    await fleet.service.delete_probe(actor=ADMIN, probe_id=probe_id)
    with pytest.raises(NotFound):
        await fleet.service.record_heartbeat(probe_id=probe_id, heartbeat=heartbeat())
    with pytest.raises(NotFound):
        await fleet.service.probe_connected(
            probe_id=probe_id, hello=HelloPayload(probe_id=probe_id, version="1", hostname="web-1")
        )
    await fleet.service.probe_disconnected(probe_id=probe_id, reason="gone")


async def test_a_hello_for_another_probe_is_refused(fleet: Fleet) -> None:
    probe_id = (await fleet.register("web-1")).probe_id
    with pytest.raises(InvalidRequest):
        await fleet.service.probe_connected(
            probe_id=probe_id, hello=HelloPayload(probe_id="prb-ffffffff", version="1", hostname="web-1")
        )


async def test_a_disconnect_is_ignored_while_a_newer_connection_is_live(fleet: Fleet) -> None:
    probe_id = (await fleet.online("web-1")).probe_id
    await fleet.service.probe_disconnected(probe_id=probe_id, reason="replaced")
    assert (await fleet.service.get_probe(probe_id)).status == "online"


async def test_the_sweep_marks_silent_probes_offline_once_and_closes_their_connections(fleet: Fleet) -> None:
    quiet = (await fleet.online("quiet-1")).probe_id
    chatty = (await fleet.online("chatty-1")).probe_id
    fleet.clock.advance(60)
    await fleet.service.record_heartbeat(probe_id=chatty, heartbeat=heartbeat())
    assert await fleet.service.mark_stale_offline() == []
    fleet.clock.advance(31)
    assert await fleet.service.mark_stale_offline() == [quiet]
    assert await fleet.service.mark_stale_offline() == []
    assert fleet.link.disconnects == [(quiet, CLOSE_HEARTBEAT_TIMEOUT)]
    assert (await fleet.service.get_probe(quiet)).status == "offline"
    assert (await fleet.service.get_probe(chatty)).status == "online"
    offline = (await fleet.audit.search(AuditQuery(type="probe.offline"))).events
    assert [(e.probe_id, e.actor) for e in offline] == [(quiet, "system:fleet-sweeper")]
    fleet.clock.advance(5)
    back = await fleet.service.record_heartbeat(probe_id=quiet, heartbeat=heartbeat())
    assert (back.previous_status, back.status) == ("offline", "online")


async def test_the_sweep_spares_a_probe_whose_connection_is_heard_while_its_heartbeats_wait(fleet: Fleet) -> None:
    busy = (await fleet.online("busy-1")).probe_id
    fleet.clock.advance(91)
    fleet.link.heard.add(busy)  # frames arrive; the database has not caught up with them
    assert await fleet.service.mark_stale_offline() == []
    assert fleet.link.disconnects == []
    fleet.link.heard.clear()  # and once the connection falls silent too, it is offline
    assert await fleet.service.mark_stale_offline() == [busy]


# -- health ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("beat", "age", "status", "checks"),
    [
        pytest.param(heartbeat(), 0, "healthy", [], id="healthy"),
        pytest.param(heartbeat(disk_pct=96), 0, "critical", ["disk"], id="high-disk"),
        pytest.param(heartbeat(load5=5.0), 0, "degraded", ["load"], id="high-load"),
        pytest.param(heartbeat(), 200, "critical", ["heartbeat"], id="stale"),
    ],
)
async def test_health_is_computed_from_real_heartbeat_metrics(
    fleet: Fleet, beat: HeartbeatPayload, age: float, status: str, checks: list[str]
) -> None:
    probe_id = (await fleet.online("web-1")).probe_id
    unknown = await fleet.service.health(probe_id)
    assert (unknown.status, unknown.score, unknown.metrics) == ("unknown", 0, None)
    await fleet.service.record_inventory(probe_id=probe_id, inventory=inventory("web-1", cpus=4))
    await fleet.service.record_heartbeat(probe_id=probe_id, heartbeat=beat)
    fleet.clock.advance(age)
    health = await fleet.service.health(probe_id)
    assert health.status == status
    assert [r.check for r in health.reasons] == checks
    assert all(r.message and r.threshold for r in health.reasons)
    assert health.metrics is not None and health.metrics.cpus == 4
    assert health.evaluated_at == fleet.clock.now
    assert (await fleet.service.get_probe(probe_id)).health_status == status


async def test_health_of_an_unknown_probe_is_not_found(fleet: Fleet) -> None:
    with pytest.raises(NotFound):
        await fleet.service.health("prb-00000000")


# -- inventory, reads and roll-ups -----------------------------------------------------------------------------


async def test_inventory_is_stored_copied_onto_the_probe_and_capped_on_request(fleet: Fleet) -> None:
    probe_id = (await fleet.online("web-1")).probe_id
    with pytest.raises(NotFound) as missing:
        await fleet.service.get_inventory(probe_id)
    assert missing.value.details == {"probe_id": probe_id, "reason": "no_inventory"}
    await fleet.service.record_inventory(probe_id=probe_id, inventory=inventory("web-1", cpus=8, packages=30))
    full = await fleet.service.get_inventory(probe_id)
    assert (full.cpus, full.kernel, len(full.packages), full.disk_total_bytes) == (8, "6.1.0", 30, 100 * GIB)
    capped = await fleet.service.get_inventory(probe_id, max_items=10)
    assert len(capped.packages) == 10 and capped.truncated == {"packages": 30}
    probe = await fleet.service.get_probe(probe_id)
    assert (probe.cpus, probe.kernel, probe.os, probe.mem_total_bytes) == (8, "6.1.0", "linux", 8 * GIB)


async def test_lists_filter_by_status_and_tag_and_page_with_a_cursor(fleet: Fleet) -> None:
    for n in range(5):
        await fleet.register(f"web-{n}", tags=["web"] if n % 2 == 0 else ["db"])
    await fleet.online("edge-1", tags=["web"])
    first = await fleet.service.list_probes(limit=4)
    assert (len(first.probes), first.total, first.has_more) == (4, 6, True)
    assert first.next_cursor is not None
    rest = await fleet.service.list_probes(limit=4, cursor=first.next_cursor)
    assert (len(rest.probes), rest.has_more, rest.next_cursor) == (2, False, None)
    ids = [p.id for p in first.probes + rest.probes]
    assert ids == sorted(ids) and len(set(ids)) == 6
    assert (await fleet.service.list_probes(tag="web")).total == 4
    assert [p.hostname for p in (await fleet.service.list_probes(status="online")).probes] == ["edge-1"]
    assert (await fleet.service.list_probes(status="online", tag="db")).total == 0
    assert sorted(p.hostname for p in await fleet.service.by_tag("db")) == ["web-1", "web-3"]
    with pytest.raises(InvalidRequest):
        await fleet.service.list_probes(cursor="garbage")


async def test_the_summary_counts_statuses_tags_and_connected_probes(fleet: Fleet) -> None:
    online = (await fleet.online("web-1", tags=["prod", "web"])).probe_id
    await fleet.register("web-2", tags=["prod"])
    summary = await fleet.service.summary()
    assert summary.total_probes == 2
    assert summary.by_status == {"pending": 1, "online": 1, "degraded": 0, "offline": 0}
    assert summary.tags == {"prod": 2, "web": 1}
    assert (summary.connected, summary.connected_total, summary.pending_approvals) == ([online], 1, 0)
    assert (await fleet.service.tags()).tags == {"prod": 2, "web": 1}


async def test_the_fleet_inventory_lists_probes_and_aggregates_all_matches(fleet: Fleet) -> None:
    for n in range(3):
        probe_id = (await fleet.online(f"web-{n}", tags=["web"])).probe_id
        await fleet.service.record_inventory(probe_id=probe_id, inventory=inventory(f"web-{n}", cpus=2))
    await fleet.register("db-1", tags=["db"])
    everything = await fleet.service.fleet_inventory(limit=2)
    assert (len(everything.probes), everything.truncated) == (2, True)
    aggregates = everything.aggregates
    assert (aggregates.total_probes, aggregates.online, aggregates.total_cpus) == (4, 3, 6)
    assert aggregates.total_ram_bytes == 3 * 8 * GIB
    assert aggregates.probes_by_os == {"linux": 3, "unknown": 1}
    assert aggregates.tag_distribution == {"db": 1, "web": 3}
    web = await fleet.service.fleet_inventory(tag="web")
    assert web.aggregates.total_probes == 3 and not web.truncated
    assert web.probes[0].disk_bytes == 100 * GIB and web.probes[0].kernel == "6.1.0"


async def test_a_fleet_question_is_answered_from_data_with_matching_probes(fleet: Fleet) -> None:
    await fleet.online("web-1", tags=["env=prod"])
    await fleet.register("web-2", tags=["env=prod"])
    await fleet.online("db-1", tags=["env=staging"])
    answer = await fleet.service.fleet_query("Which prod web servers are online?")
    assert answer.total_probes == 3
    assert answer.by_status == {"pending": 1, "online": 2, "degraded": 0, "offline": 0}
    assert [m.hostname for m in answer.matches] == ["web-1"]
    assert answer.matches[0].matched_on == ["hostname:web", "status:online", "tag:env=prod"]
    assert "3 probes" in answer.answer and "web-1" in answer.answer
    assert [m.hostname for m in (await fleet.service.fleet_query("what is pending?")).matches] == ["web-2"]
    assert (await fleet.service.fleet_query("how many probes are there?")).matches_total == 0
    with pytest.raises(InvalidRequest):
        await fleet.service.fleet_query("   ")


# -- changes ---------------------------------------------------------------------------------------------------


async def test_tags_are_replaced_audited_with_before_and_after_and_idempotent(fleet: Fleet) -> None:
    probe_id = (await fleet.register("web-1", tags=["old"])).probe_id
    result = await fleet.service.set_tags(actor=OPERATOR, probe_id=probe_id, tags=["web", "prod", "web"])
    assert result.tags == ["prod", "web"]
    again = await fleet.service.set_tags(actor=OPERATOR, probe_id=probe_id, tags=["prod", "web"])
    assert again.tags == ["prod", "web"]
    events = (await fleet.audit.search(AuditQuery(type="probe.tags_updated"))).events
    assert len(events) == 1
    assert (events[0].before, events[0].after, events[0].actor) == (
        {"tags": ["old"]}, {"tags": ["prod", "web"]}, "api_key:ops-bot",
    )  # fmt: skip
    assert (await fleet.service.tags()).tags == {"prod": 1, "web": 1}
    assert (await fleet.service.set_tags(actor=OPERATOR, probe_id=probe_id, tags=[])).tags == []
    with pytest.raises(NotFound):
        await fleet.service.set_tags(actor=OPERATOR, probe_id="prb-00000000", tags=["x"])


async def test_deleting_a_probe_revokes_its_credential_and_disconnects_it(fleet: Fleet) -> None:
    registered = await fleet.online("web-1", tags=["web"])
    await fleet.service.record_inventory(probe_id=registered.probe_id, inventory=inventory("web-1"))
    deleted = await fleet.service.delete_probe(actor=ADMIN, probe_id=registered.probe_id)
    assert (deleted.deleted, deleted.disconnected) == (registered.probe_id, True)
    assert fleet.link.disconnects == [(registered.probe_id, CLOSE_PROBE_DELETED)]
    with pytest.raises(Unauthenticated):
        await fleet.service.authenticate_probe(registered.credential)
    with pytest.raises(NotFound):
        await fleet.service.get_probe(registered.probe_id)
    assert (await fleet.service.tags()).tags == {}
    async with fleet.database.read() as session:
        assert (await session.execute(text("SELECT COUNT(*) FROM probe_inventory"))).scalar_one() == 0
    assert await fleet.audit_types("probe.deregistered") == [registered.probe_id]
    with pytest.raises(NotFound):
        await fleet.service.delete_probe(actor=ADMIN, probe_id=registered.probe_id)


async def test_rotating_an_offline_probes_key_is_delivered_on_reconnect(fleet: Fleet) -> None:
    registered = await fleet.register("web-1")
    probe_id = registered.probe_id
    rotated = await fleet.service.rotate_key(actor=ADMIN, probe_id=probe_id)
    assert (rotated.status, rotated.generation, rotated.delivery) == ("rotated", 2, "on_reconnect")
    assert rotated.key_id == fleet.service.keyring.key_id(probe_id, 2)
    again = await fleet.service.rotate_key(actor=ADMIN, probe_id=probe_id)
    assert again.generation == 3
    # The probe knows only generation 1, so that keeps signing until it has been told.
    assert (await fleet.service.signing_identity(probe_id)).generation == 1
    # What the gateway learns when the probe connects: sign with generation 1, a rotation awaits delivery.
    authenticated = await fleet.service.authenticate_probe(registered.credential)
    assert (authenticated.signing_generation, authenticated.key_rotation_pending) == (1, True)
    assert await fleet.service.deliver_pending_key_rotation(probe_id=probe_id) is True
    assert [m.payload.new_key_id for m in fleet.link.rotations] == [fleet.service.keyring.key_id(probe_id, 3)]
    assert fleet.link.rotations[0].sig is not None and fleet.link.rotations[0].sig.startswith("g1-")
    assert (await fleet.service.signing_identity(probe_id)).generation == 3
    assert await fleet.service.deliver_pending_key_rotation(probe_id=probe_id) is False
    events = (await fleet.audit.search(AuditQuery(type="probe.key_rotated"))).events
    assert [(e.before, e.after) for e in events] == [
        ({"key_generation": 2}, {"key_generation": 3}), ({"key_generation": 1}, {"key_generation": 2}),
    ]  # fmt: skip


async def test_rotating_a_connected_probes_key_is_pushed_signed_with_the_old_key(fleet: Fleet) -> None:
    registered = await fleet.online("web-1")
    probe_id = registered.probe_id
    verifier = Verifier(probe_id=probe_id, now=lambda: T0)
    verifier.trust(TrustedKey(registered.signing_key.key_id, decode_public_key(registered.signing_key.public_key)))
    rotated = await fleet.service.rotate_key(actor=ADMIN, probe_id=probe_id)
    assert (rotated.generation, rotated.delivery) == (2, "pushed")
    (message,) = fleet.link.rotations
    verifier.verify(message)
    verifier.apply_key_rotation(message.payload)
    identity = await fleet.service.signing_identity(probe_id)
    assert (identity.generation, identity.key_id) == (2, rotated.key_id)
    command = CommandMessage.model_validate(
        {"id": "c1", "ts": T0, "payload": {
            "kind": "shell", "request_id": "r1", "probe_id": probe_id, "nonce": "n1",
            "expires_at": T0 + timedelta(minutes=1), "spec": {"argv": ["uptime"]},
        }}
    )  # fmt: skip
    ring = fleet.service.keyring
    verifier.verify(sign_envelope(command, key_id=identity.key_id, private_key=ring.private_key(probe_id, 2)))


async def test_a_failed_key_push_leaves_the_key_unrotated(fleet: Fleet) -> None:
    probe_id = (await fleet.online("web-1")).probe_id
    fleet.link.fail_push = True
    with pytest.raises(ProbeUnavailable):
        await fleet.service.rotate_key(actor=ADMIN, probe_id=probe_id)
    probe = await fleet.service.get_probe(probe_id)
    assert probe.key_generation == 1
    assert (await fleet.service.signing_identity(probe_id)).generation == 1
    assert await fleet.audit_types("probe.key_rotated") == []
    with pytest.raises(NotFound):
        await fleet.service.rotate_key(actor=ADMIN, probe_id="prb-00000000")


async def test_cleanup_removes_only_probes_offline_longer_than_the_threshold(fleet: Fleet) -> None:
    old = (await fleet.online("old-1")).probe_id
    recent = (await fleet.online("recent-1")).probe_id
    live = (await fleet.online("live-1")).probe_id
    pending = (await fleet.register("pending-1")).probe_id
    fleet.link.connected.clear()
    await fleet.service.probe_disconnected(probe_id=old, reason="gone")
    fleet.clock.advance(3000)
    await fleet.service.probe_disconnected(probe_id=recent, reason="gone")
    fleet.clock.advance(700)
    await fleet.service.record_heartbeat(probe_id=live, heartbeat=heartbeat())
    result = await fleet.service.cleanup(actor=ADMIN)
    assert (result.removed, result.count) == ([old], 1)
    remaining = {p.id for p in (await fleet.service.list_probes()).probes}
    assert remaining == {recent, live, pending}
    assert (await fleet.service.cleanup(actor=ADMIN, older_than=timedelta(minutes=10))).removed == [recent]
    with pytest.raises(InvalidRequest):
        await fleet.service.cleanup(actor=ADMIN, older_than=timedelta(0))
    assert sorted(await fleet.audit_types("probe.deregistered")) == sorted([old, recent])


async def test_a_concurrent_rotation_is_a_conflict(fleet: Fleet, database: Database) -> None:
    probe_id = (await fleet.online("web-1")).probe_id

    async def rotate_elsewhere() -> None:
        # Another replica finishes a rotation between this one's push and its commit.
        async with database.write() as session:
            await session.execute(text("UPDATE probes SET key_generation = 7"))

    fleet.link.after_push = rotate_elsewhere
    with pytest.raises(Conflict):
        await fleet.service.rotate_key(actor=ADMIN, probe_id=probe_id)


async def test_the_sweeper_loop_runs_the_sweep_until_cancelled(fleet: Fleet) -> None:
    probe_id = (await fleet.online("quiet-1")).probe_id
    fleet.clock.advance(91)
    event: Event | None = None
    async with fleet.events.subscribe("probe.offline") as subscription:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: fleet.service.run_sweeper(interval_s=0.001))
                event = await subscription.next(5)
                tg.cancel_scope.cancel()
    assert event is not None and event.probe_id == probe_id
