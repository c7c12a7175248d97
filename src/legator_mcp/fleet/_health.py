"""Health scoring from real heartbeat metrics: pure functions, every finding explained with its threshold.

The score starts at 100 and loses :data:`WARNING_PENALTY` per warning and :data:`CRITICAL_PENALTY` per critical
finding (never below 0). The verdict is the worst severity found: ``critical``, ``degraded`` (warnings only)
or ``healthy``. Checks: the 5-minute load average per CPU, memory used, disk used and heartbeat staleness.
"""

from dataclasses import dataclass
from typing import Any, Literal

from legator_mcp.fleet.schemas import HealthMetrics, HealthReason, HealthStatus

__all__ = ["CRITICAL_PENALTY", "RECOVERY_MARGIN", "WARNING_PENALTY", "Assessment", "Thresholds", "assess"]

WARNING_PENALTY = 15
CRITICAL_PENALTY = 40

RECOVERY_MARGIN = 0.95
"""A degraded probe recovers only once every metric is below 95 % of its warning threshold (hysteresis)."""


@dataclass(frozen=True)
class Thresholds:
    """Where each check turns into a warning or a critical finding."""

    load_per_cpu_warning: float = 1.0
    load_per_cpu_critical: float = 2.0
    memory_warning_pct: float = 85.0
    memory_critical_pct: float = 95.0
    disk_warning_pct: float = 85.0
    disk_critical_pct: float = 95.0


@dataclass(frozen=True)
class Assessment:
    """A health verdict."""

    score: int
    status: HealthStatus
    reasons: list[HealthReason]
    metrics: HealthMetrics | None


def _pct(used: int, total: int) -> float | None:
    return round(used * 100.0 / total, 1) if total > 0 else None


def _check(
    check: Literal["load", "memory", "disk"],
    value: float | None,
    warning: float,
    critical: float,
    describe: str,
    unit: str,
) -> HealthReason | None:
    if value is None:
        return None
    if value >= critical:
        severity: Literal["warning", "critical"] = "critical"
        threshold = critical
    elif value >= warning:
        severity, threshold = "warning", warning
    else:
        return None
    message = f"{describe} is {value:g}{unit}, at or above the {severity} threshold of {threshold:g}{unit}"
    return HealthReason(check=check, severity=severity, message=message, value=value, threshold=threshold)


def assess(
    metrics: dict[str, Any] | None,
    *,
    cpus: int | None,
    heartbeat_age_s: float | None,
    heartbeat_interval_s: float,
    offline_after_s: float,
    thresholds: Thresholds = Thresholds(),
    margin: float = 1.0,
) -> Assessment:
    """Score a probe from its last heartbeat's metrics.

    Args:
        metrics: The last heartbeat payload as JSON data, or ``None`` when there has been none.
        cpus: The CPU count from the inventory; without it the load check is skipped.
        heartbeat_age_s: Seconds since the last heartbeat, or ``None`` to skip the staleness check.
        heartbeat_interval_s: How often heartbeats are expected; twice this late is a warning.
        offline_after_s: Silence after which the probe counts as offline; that is critical.
        thresholds: The thresholds to apply.
        margin: Multiplies the warning and critical thresholds of the metric checks (below 1 to demand a
            clear recovery).
    """
    if metrics is None:
        reason = HealthReason(
            check="heartbeat", severity="critical", message="no heartbeat data yet", value=0.0, threshold=0.0
        )
        return Assessment(score=0, status="unknown", reasons=[reason], metrics=None)
    load = tuple(float(v) for v in metrics.get("load", (0.0, 0.0, 0.0)))
    load_per_cpu = round(load[1] / cpus, 2) if cpus else None
    shaped = HealthMetrics(
        uptime_s=float(metrics.get("uptime_s", 0.0)),
        load=(load[0], load[1], load[2]),
        cpus=cpus,
        load_per_cpu=load_per_cpu,
        mem_used_pct=_pct(int(metrics.get("mem_used_bytes", 0)), int(metrics.get("mem_total_bytes", 0))),
        disk_used_pct=_pct(int(metrics.get("disk_used_bytes", 0)), int(metrics.get("disk_total_bytes", 0))),
        mem_total_bytes=int(metrics.get("mem_total_bytes", 0)),
        mem_used_bytes=int(metrics.get("mem_used_bytes", 0)),
        disk_total_bytes=int(metrics.get("disk_total_bytes", 0)),
        disk_used_bytes=int(metrics.get("disk_used_bytes", 0)),
        running_commands=int(metrics.get("running_commands", 0)),
        heartbeat_age_s=None if heartbeat_age_s is None else round(heartbeat_age_s, 1),
    )
    t = thresholds
    found = [
        _check("load", load_per_cpu, t.load_per_cpu_warning * margin, t.load_per_cpu_critical * margin,
               "5-minute load per CPU", ""),
        _check("memory", shaped.mem_used_pct, t.memory_warning_pct * margin, t.memory_critical_pct * margin,
               "memory used", "%"),
        _check("disk", shaped.disk_used_pct, t.disk_warning_pct * margin, t.disk_critical_pct * margin,
               "disk used", "%"),
    ]  # fmt: skip
    reasons = [reason for reason in found if reason is not None]
    if heartbeat_age_s is not None:
        age = round(heartbeat_age_s, 1)
        if heartbeat_age_s >= offline_after_s:
            reasons.append(HealthReason(
                check="heartbeat", severity="critical", value=age, threshold=offline_after_s,
                message=f"no heartbeat for {age:g}s (a probe counts as offline after {offline_after_s:g}s)",
            ))  # fmt: skip
        elif heartbeat_age_s >= 2 * heartbeat_interval_s:
            reasons.append(HealthReason(
                check="heartbeat", severity="warning", value=age, threshold=2 * heartbeat_interval_s,
                message=(
                    f"last heartbeat {age:g}s ago, at or above the warning threshold of {2 * heartbeat_interval_s:g}s"
                    f" (heartbeats are due every {heartbeat_interval_s:g}s)"
                ),
            ))  # fmt: skip
    penalty = sum(CRITICAL_PENALTY if r.severity == "critical" else WARNING_PENALTY for r in reasons)
    if any(r.severity == "critical" for r in reasons):
        status: HealthStatus = "critical"
    elif reasons:
        status = "degraded"
    else:
        status = "healthy"
    return Assessment(score=max(0, 100 - penalty), status=status, reasons=reasons, metrics=shaped)
