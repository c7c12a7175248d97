"""The policy gate: the probe's level caps what may run, with reasons."""

from typing import Any

import pytest

from legator_mcp.policy._templates import decide
from legator_mcp.policy.classifier import classify
from legator_mcp.policy.schemas import Decision, PolicyDecision
from legator_mcp.principal import Principal

ME = Principal.system("tester")


def evaluate(*, probe_level: str, policy_id: str, kind: str, spec: dict[str, Any]) -> PolicyDecision:
    """The pure rules behind ``PolicyService.evaluate`` (templates and storage: test_templates.py)."""
    return decide(
        verdict=classify(kind, spec), kind=kind, spec=spec, probe_level=probe_level, policy_id=policy_id,
        template=None, actor=ME.actor,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("level", "kind", "spec", "expected"),
    [
        pytest.param("observe", "shell", {"argv": ["uptime"]}, Decision.ALLOW, id="observe-read"),
        pytest.param("observe", "file_write", {"path": "/tmp/x", "content": "y"}, Decision.DENY, id="observe-write"),
        pytest.param(
            "diagnose", "systemd", {"action": "journal", "unit": "nginx.service"}, Decision.ALLOW, id="diagnose-journal"
        ),
        pytest.param(
            "diagnose", "systemd", {"action": "restart", "unit": "nginx.service"}, Decision.DENY, id="diagnose-restart"
        ),
        pytest.param(
            "remediate",
            "systemd",
            {"action": "restart", "unit": "nginx.service"},
            Decision.ALLOW,
            id="remediate-restart",
        ),
        pytest.param("observe", "kubectl", {"argv": ["get", "pods"]}, Decision.DENY, id="observe-kubectl"),
    ],
)
def test_the_probe_level_caps_what_may_run(level: str, kind: str, spec: dict[str, object], expected: Decision) -> None:
    decision = evaluate(probe_level=level, policy_id="p1", kind=kind, spec=spec)
    assert decision.decision is expected
    assert decision.probe_level == level
    assert decision.indicators and decision.rationale
    assert any("system:tester" in line for line in decision.rationale)


def test_a_denial_names_the_levels_and_the_policy() -> None:
    decision = evaluate(
        probe_level="observe", policy_id="observe-only", kind="file_write",
        spec={"path": "/etc/hosts", "content": "x"},
    )  # fmt: skip
    assert decision.decision is Decision.DENY
    assert decision.required_level == "remediate"
    assert any("observe" in line and "remediate" in line and "observe-only" in line for line in decision.rationale)
