"""Capacity signals in the policy gate: degraded denies, limited queues, and the built-in heartbeat provider."""

from pathlib import Path
from typing import Any

import pytest

from legator_mcp.audit.service import AuditService
from legator_mcp.db.session import Database
from legator_mcp.events.service import EventBus
from legator_mcp.fleet.keys import KeyRing
from legator_mcp.fleet.schemas import HealthMetrics, ProbeRead, RegistrationRequest, TokenCreate
from legator_mcp.fleet.service import FleetService
from legator_mcp.policy._templates import decide
from legator_mcp.policy.capacity import CapacityThresholds, HeartbeatCapacity, apply_capacity, assess_metrics
from legator_mcp.policy.classifier import classify
from legator_mcp.policy.schemas import CapacitySignal, CapacityState, Decision, PolicyDecision
from legator_mcp.policy.service import PolicyService
from legator_mcp.principal import Permission, Principal, PrincipalKind
from legator_mcp.settings import Settings
from legator_probe.protocol.payloads import HeartbeatPayload

pytestmark = pytest.mark.anyio

ADMIN = Principal(PrincipalKind.USER, "u-admin", "admin", frozenset({Permission.ADMIN}), via="rest")
GIB = 1024**3
UPTIME = ("shell", {"argv": ["uptime"]})
RESTART = ("systemd", {"action": "restart", "unit": "nginx.service"})
STOP = ("systemd", {"action": "stop", "unit": "nginx.service"})


def decision_for(kind: str, spec: dict[str, Any], level: str = "remediate") -> PolicyDecision:
    return decide(
        verdict=classify(kind, spec), kind=kind, spec=spec, probe_level=level, policy_id=None, template=None,
        actor=ADMIN.actor,
    )  # fmt: skip


def signal(state: CapacityState, source: str = "grafana") -> CapacitySignal:
    return CapacitySignal(state=state, source=source, reason=f"{source} says {state.value}")


@pytest.mark.parametrize(
    ("command", "level", "states", "outcome", "rule"),
    [
        pytest.param(UPTIME, "remediate", [], Decision.ALLOW, "below_threshold", id="no-signal"),
        pytest.param(UPTIME, "remediate", ["ok", "ok"], Decision.ALLOW, "below_threshold", id="ok"),
        pytest.param(UPTIME, "remediate", ["ok", "limited"], Decision.QUEUE, "capacity_limited", id="limited-queues"),
        pytest.param(UPTIME, "remediate", ["limited", "degraded"], Decision.DENY, "capacity_degraded",
                     id="worst-wins"),
        pytest.param(STOP, "remediate", ["limited"], Decision.QUEUE, "approval_threshold", id="queued-stays"),
        pytest.param(STOP, "remediate", ["degraded"], Decision.DENY, "capacity_degraded", id="queued-to-deny"),
        pytest.param(RESTART, "observe", ["ok"], Decision.DENY, "level_cap", id="deny-never-softened"),
        pytest.param(RESTART, "observe", ["degraded"], Decision.DENY, "level_cap", id="deny-keeps-its-rule"),
    ],
)  # fmt: skip
def test_the_worst_signal_adjusts_the_decision_and_the_rationale_names_the_provider(
    command: tuple[str, dict[str, Any]], level: str, states: list[str], outcome: Decision, rule: str
) -> None:
    base = decision_for(*command, level=level)
    signals = [signal(CapacityState(s), source=f"src{n}") for n, s in enumerate(states)]
    adjusted = apply_capacity(base, signals)
    assert adjusted.decision is outcome and adjusted.rule == rule
    assert adjusted.capacity == signals
    assert adjusted.rationale[-1] == base.rationale[-1]  # "requested by …" stays last
    if rule.startswith("capacity_"):
        worst = max(signals, key=lambda s: ["ok", "limited", "degraded"].index(s.state.value))
        assert any(rule in line and worst.source in line and worst.reason in line for line in adjusted.rationale)


def metrics(mem_pct: float | None, disk_pct: float | None) -> HealthMetrics:
    return HealthMetrics(
        uptime_s=1, load=(0, 0, 0), cpus=2, load_per_cpu=0, mem_used_pct=mem_pct, disk_used_pct=disk_pct,
        mem_total_bytes=0, mem_used_bytes=0, disk_total_bytes=0, disk_used_bytes=0, running_commands=0,
        heartbeat_age_s=1,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("mem", "disk", "state", "needle"),
    [
        pytest.param(40.0, 50.0, CapacityState.OK, "below the limited threshold 90%", id="healthy"),
        pytest.param(None, None, CapacityState.OK, "n/a", id="unknown-sizes"),
        pytest.param(90.0, 10.0, CapacityState.LIMITED, "memory used 90% is at or above the limited", id="mem-limited"),
        pytest.param(10.0, 97.0, CapacityState.DEGRADED, "disk used 97% is at or above the degraded", id="disk-full"),
        pytest.param(98.0, 91.0, CapacityState.DEGRADED, "disk used 91%", id="both"),
    ],
)
def test_heartbeat_metrics_against_the_thresholds(
    mem: float | None, disk: float | None, state: CapacityState, needle: str
) -> None:
    verdict = assess_metrics(metrics(mem, disk), CapacityThresholds(limited_pct=90, degraded_pct=97))
    assert verdict.state is state and verdict.source == "heartbeat" and needle in verdict.reason
    assert assess_metrics(None, CapacityThresholds()).state is CapacityState.OK


def test_thresholds_out_of_order_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="limited_pct"):
        CapacityThresholds(limited_pct=98, degraded_pct=90)
    with pytest.raises(ValueError, match="capacity_limited_pct"):
        Settings.model_validate({"data_dir": tmp_path, "capacity_limited_pct": 99, "capacity_degraded_pct": 95})


async def test_the_heartbeat_provider_queues_and_denies_from_real_heartbeats(
    database: Database, settings: Settings
) -> None:
    audit = AuditService(database=database)
    fleet = FleetService(
        database=database, audit=audit, events=EventBus(), settings=settings, keyring=KeyRing(bytes(range(32)))
    )
    policy = PolicyService(database=database, audit=audit, fleet=fleet)

    async def probe(hostname: str, mem_pct: float | None, disk_pct: float) -> ProbeRead:
        token = await fleet.create_token(actor=ADMIN, request=TokenCreate(policy_level="remediate"))
        registered = await fleet.register(request=RegistrationRequest(token=token.token, hostname=hostname))
        if mem_pct is not None:
            await fleet.record_heartbeat(
                probe_id=registered.probe_id,
                heartbeat=HeartbeatPayload(
                    uptime_s=100, load=(0.1, 0.1, 0.1), mem_total_bytes=8 * GIB,
                    mem_used_bytes=int(8 * GIB * mem_pct / 100), disk_total_bytes=100 * GIB,
                    disk_used_bytes=int(100 * GIB * disk_pct / 100),
                ),
            )  # fmt: skip
        return await fleet.get_probe(registered.probe_id)

    probes = [await probe("calm", 30, 40), await probe("tight", 92, 40), await probe("full", 30, 99),
              await probe("silent", None, 0)]  # fmt: skip
    kind, spec = UPTIME

    async def decisions() -> list[PolicyDecision]:
        return await policy.evaluate_many(principal=ADMIN, targets=probes, kind=kind, spec=spec)

    # Off by default: nothing is consulted.
    assert [d.decision for d in await decisions()] == [Decision.ALLOW] * 4
    assert all(d.capacity == [] for d in await decisions())

    policy.add_capacity_provider(HeartbeatCapacity(fleet=fleet))
    many = await decisions()
    assert [d.decision for d in many] == [Decision.ALLOW, Decision.QUEUE, Decision.DENY, Decision.ALLOW]
    assert [d.rule for d in many] == ["below_threshold", "capacity_limited", "capacity_degraded", "below_threshold"]
    assert any("capacity provider heartbeat reports limited: memory used 92%" in line for line in many[1].rationale)
    assert [d.capacity[0].state for d in many] == ["ok", "limited", "degraded", "ok"]
    single = await policy.evaluate(
        principal=ADMIN, probe_level="remediate", policy_id=probes[2].policy_id, kind=kind, spec=spec,
        target=probes[2],
    )  # fmt: skip
    assert single == many[2]
    # Without a target (a bare "what do the rules say"), providers are not asked.
    rules_only = await policy.evaluate(
        principal=ADMIN, probe_level="remediate", policy_id=probes[2].policy_id, kind=kind, spec=spec
    )
    assert rules_only.decision is Decision.ALLOW and rules_only.capacity == []
