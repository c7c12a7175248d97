"""Capacity signals: whether a target can take more work now, from sources outside the command itself.

A :class:`CapacitySignalProvider` reports ``ok``, ``limited`` or ``degraded`` for a target probe. The policy
service consults every registered provider for each target whose command the rules would allow or queue, and
the worst signal wins (:func:`apply_capacity`): ``degraded`` turns the decision into ``deny`` and ``limited``
turns ``allow`` into ``queue``; each rationale names the provider. A deny from the rules is never softened.

:class:`HeartbeatCapacity` is the built-in provider: memory and disk use from the probe's last heartbeat
against two thresholds. It is off by default (``LEGATOR_CAPACITY_FROM_HEARTBEAT``); an external source such as
Grafana plugs in as another provider.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from legator_mcp.fleet.schemas import HealthMetrics, ProbeRead
from legator_mcp.fleet.service import FleetService
from legator_mcp.policy.schemas import CapacitySignal, CapacityState, Decision, PolicyDecision

__all__ = ["CapacitySignalProvider", "CapacityThresholds", "HeartbeatCapacity", "apply_capacity", "assess_metrics"]

_RANK = {CapacityState.OK: 0, CapacityState.LIMITED: 1, CapacityState.DEGRADED: 2}


class CapacitySignalProvider(Protocol):
    """A source of capacity signals (the probe's own heartbeat, Grafana, …).

    A provider must answer for every target: when its own source cannot be reached it reports ``limited``
    with that reason (commands then wait for a human) rather than raising.
    """

    async def signal(self, target: ProbeRead) -> CapacitySignal:
        """How much more work ``target`` can take now, and why."""
        ...


def apply_capacity(decision: PolicyDecision, signals: Sequence[CapacitySignal]) -> PolicyDecision:
    """``decision`` adjusted by the worst of ``signals``: degraded → deny, limited → queue. Pure.

    A ``deny`` stays a deny; ``ok`` signals are recorded in ``capacity`` but change nothing.
    """
    if not signals:
        return decision
    worst = max(signals, key=lambda s: _RANK[s.state])
    rationale = list(decision.rationale[:-1])
    requested_by = decision.rationale[-1:]
    outcome, rule = decision.decision, decision.rule
    if decision.decision is Decision.DENY or worst.state is CapacityState.OK:
        pass
    elif worst.state is CapacityState.DEGRADED:
        outcome, rule = Decision.DENY, "capacity_degraded"
        rationale.append(f"rule capacity_degraded: capacity provider {worst.source} reports degraded: {worst.reason}")
    elif decision.decision is Decision.ALLOW:
        outcome, rule = Decision.QUEUE, "capacity_limited"
        rationale.append(
            f"rule capacity_limited: capacity provider {worst.source} reports limited: {worst.reason};"
            " a human must approve it first"
        )
    else:
        rationale.append(f"capacity provider {worst.source} reports limited: {worst.reason} (already queued)")
    return decision.model_copy(
        update={"decision": outcome, "rule": rule, "rationale": [*rationale, *requested_by], "capacity": list(signals)}
    )


@dataclass(frozen=True)
class CapacityThresholds:
    """Used-percentages of memory and disk at which a probe is ``limited`` and ``degraded``."""

    limited_pct: float = 90.0
    degraded_pct: float = 97.0

    def __post_init__(self) -> None:
        if not 0 < self.limited_pct <= self.degraded_pct <= 100:
            raise ValueError("need 0 < limited_pct <= degraded_pct <= 100")


def assess_metrics(metrics: HealthMetrics | None, thresholds: CapacityThresholds) -> CapacitySignal:
    """The heartbeat provider's verdict on one probe's last heartbeat metrics. Pure."""
    if metrics is None:
        return CapacitySignal(state=CapacityState.OK, source="heartbeat", reason="no heartbeat metrics yet")
    state, reasons = CapacityState.OK, list[str]()
    for name, used in (("memory", metrics.mem_used_pct), ("disk", metrics.disk_used_pct)):
        if used is None:
            continue
        if used >= thresholds.degraded_pct:
            state = CapacityState.DEGRADED
            reasons.append(f"{name} used {used:g}% is at or above the degraded threshold {thresholds.degraded_pct:g}%")
        elif used >= thresholds.limited_pct:
            state = max(state, CapacityState.LIMITED, key=_RANK.__getitem__)
            reasons.append(f"{name} used {used:g}% is at or above the limited threshold {thresholds.limited_pct:g}%")
    if not reasons:
        mem = "n/a" if metrics.mem_used_pct is None else f"{metrics.mem_used_pct:g}%"
        disk = "n/a" if metrics.disk_used_pct is None else f"{metrics.disk_used_pct:g}%"
        reasons.append(f"memory {mem} and disk {disk} used, below the limited threshold {thresholds.limited_pct:g}%")
    return CapacitySignal(state=state, source="heartbeat", reason="; ".join(reasons))


class HeartbeatCapacity:
    """Capacity from the probe's own last heartbeat: memory or disk use above a threshold.

    Args:
        fleet: Where the last heartbeat's metrics are read.
        thresholds: The limited and degraded percentages.
    """

    def __init__(self, *, fleet: FleetService, thresholds: CapacityThresholds = CapacityThresholds()) -> None:
        self._fleet = fleet
        self._thresholds = thresholds

    async def signal(self, target: ProbeRead) -> CapacitySignal:
        """Memory and disk use of ``target``'s last heartbeat against the thresholds.

        Raises:
            NotFound: If the probe was deleted meanwhile.
        """
        health = await self._fleet.health(target.id)
        return assess_metrics(health.metrics, self._thresholds)
