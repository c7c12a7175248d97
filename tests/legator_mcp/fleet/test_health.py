"""Health scoring from heartbeat metrics: every finding names its value and threshold."""

from typing import Any

import pytest

from legator_mcp.fleet._health import CRITICAL_PENALTY, RECOVERY_MARGIN, WARNING_PENALTY, Assessment, assess

GIB = 1024**3
WARN = 100 - WARNING_PENALTY
CRIT = 100 - CRITICAL_PENALTY


def metrics(*, load5: float = 0.2, mem_pct: float = 40, disk_pct: float = 50, uptime: float = 3600.0) -> dict[str, Any]:
    return {
        "uptime_s": uptime,
        "load": [0.1, load5, 0.1],
        "mem_total_bytes": 16 * GIB,
        "mem_used_bytes": int(16 * GIB * mem_pct / 100),
        "disk_total_bytes": 100 * GIB,
        "disk_used_bytes": int(100 * GIB * disk_pct / 100),
        "running_commands": 0,
    }


def _assess(
    data: dict[str, Any] | None, *, cpus: int | None = 4, age: float | None = 5.0, margin: float = 1.0
) -> Assessment:
    return assess(data, cpus=cpus, heartbeat_age_s=age, heartbeat_interval_s=30, offline_after_s=90, margin=margin)


@pytest.mark.parametrize(
    ("data", "age", "status", "checks", "score"),
    [
        pytest.param(metrics(), 5.0, "healthy", [], 100, id="healthy"),
        pytest.param(metrics(disk_pct=90), 5.0, "degraded", [("disk", "warning")], WARN, id="disk-warn"),
        pytest.param(metrics(disk_pct=97), 5.0, "critical", [("disk", "critical")], CRIT, id="disk-crit"),
        pytest.param(metrics(load5=6.0), 5.0, "degraded", [("load", "warning")], WARN, id="load-warn"),
        pytest.param(metrics(load5=9.0), 5.0, "critical", [("load", "critical")], CRIT, id="load-crit"),
        pytest.param(metrics(mem_pct=96), 5.0, "critical", [("memory", "critical")], 60, id="memory-crit"),
        pytest.param(metrics(), 65.0, "degraded", [("heartbeat", "warning")], WARN, id="late"),
        pytest.param(metrics(), 120.0, "critical", [("heartbeat", "critical")], CRIT, id="stale"),
        pytest.param(
            metrics(load5=9, mem_pct=99, disk_pct=99), 500.0, "critical",
            [("load", "critical"), ("memory", "critical"), ("disk", "critical"), ("heartbeat", "critical")], 0,
            id="everything-floors-at-zero",
        ),
    ],
)  # fmt: skip
def test_scores_and_reasons_follow_the_thresholds(
    data: dict[str, Any], age: float, status: str, checks: list[tuple[str, str]], score: int
) -> None:
    result = _assess(data, age=age)
    assert result.status == status
    assert [(r.check, r.severity) for r in result.reasons] == checks
    assert result.score == score
    for reason in result.reasons:
        assert f"{reason.threshold:g}" in reason.message, "a reason names its threshold"


def test_load_is_judged_per_cpu_and_skipped_without_a_cpu_count() -> None:
    assert _assess(metrics(load5=3.0), cpus=4).status == "healthy"
    assert _assess(metrics(load5=3.0), cpus=1).status == "critical"
    unknown = _assess(metrics(load5=50.0), cpus=None)
    assert unknown.status == "healthy"
    assert unknown.metrics is not None and unknown.metrics.load_per_cpu is None


def test_no_heartbeat_yet_is_unknown_with_a_reason() -> None:
    result = _assess(None)
    assert (result.status, result.score, result.metrics) == ("unknown", 0, None)
    assert [r.message for r in result.reasons] == ["no heartbeat data yet"]


def test_the_recovery_margin_lowers_the_thresholds() -> None:
    assert _assess(metrics(disk_pct=83)).status == "healthy"
    assert _assess(metrics(disk_pct=83), margin=RECOVERY_MARGIN).status == "degraded"


def test_metrics_are_reported_as_percentages() -> None:
    result = _assess(metrics(mem_pct=50, disk_pct=25, load5=2.0), cpus=4)
    assert result.metrics is not None
    assert (result.metrics.mem_used_pct, result.metrics.disk_used_pct, result.metrics.load_per_cpu) == (50.0, 25.0, 0.5)
    assert result.metrics.heartbeat_age_s == 5.0
