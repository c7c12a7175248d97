"""The policy engine: the one function every path that touches a probe goes through.

Today it weighs the classifier's verdict against the probe's level; approval queueing and templates build
on the same :meth:`PolicyService.evaluate`.
"""

from collections.abc import Mapping
from typing import Any

from legator_mcp.policy.classifier import Level, Risk, classify
from legator_mcp.policy.schemas import Decision, IndicatorRead, PolicyDecision
from legator_mcp.principal import Principal

__all__ = ["APPROVAL_THRESHOLD", "PolicyService"]

APPROVAL_THRESHOLD = Risk.HIGH
"""Commands at or above this risk wait for a human approval, whatever the probe's level."""


class PolicyService:
    """Decide ``allow | queue | deny`` for a command on a probe, explaining why."""

    def evaluate(
        self,
        *,
        principal: Principal,
        probe_level: str,
        policy_id: str | None,
        kind: str,
        spec: Mapping[str, Any],
    ) -> PolicyDecision:
        """Classify the command and compare the level it needs with the probe's level.

        Args:
            principal: Who asks (recorded in the rationale; permissions are checked by the adapters).
            probe_level: The probe's policy level (observe, diagnose or remediate).
            policy_id: The probe's policy template, named in the rationale.
            kind: One of the six command kinds.
            spec: The command's typed parameters as a mapping.
        """
        verdict = classify(kind, spec)
        level = Level(probe_level)
        rationale = [
            f"classified {kind} as risk {verdict.risk.value}, needing level {verdict.required_level.value}"
            + ("" if verdict.parsed else " (parts could not be parsed, so it is treated as at least high)"),
        ]
        if verdict.required_level > level:
            decision = Decision.DENY
            rationale.append(
                f"probe level {level.value} is below the required level {verdict.required_level.value}"
                f" (policy {policy_id or 'default'})"
            )
        elif verdict.risk >= APPROVAL_THRESHOLD:
            decision = Decision.QUEUE
            rationale.append(f"probe level {level.value} allows level {verdict.required_level.value}")
            rationale.append(
                f"risk {verdict.risk.value} is at or above the approval threshold ({APPROVAL_THRESHOLD.value}): "
                "a human must approve it first"
            )
        else:
            decision = Decision.ALLOW
            rationale.append(f"probe level {level.value} allows level {verdict.required_level.value}")
            rationale.append(f"risk {verdict.risk.value} is below the approval threshold ({APPROVAL_THRESHOLD.value})")
        rationale.append(f"requested by {principal.actor}")
        return PolicyDecision(
            decision=decision,
            risk=verdict.risk.value,
            required_level=verdict.required_level.value,
            probe_level=level.value,
            policy_id=policy_id,
            parsed=verdict.parsed,
            programs=list(verdict.programs),
            indicators=[IndicatorRead(code=i.code, detail=i.detail, risk=i.risk.value) for i in verdict.indicators],
            rationale=rationale,
        )
