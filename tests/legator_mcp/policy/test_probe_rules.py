"""A template's patterns in the probe's dialect: the probe enforces what it can and never refuses what we allow."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from legator_mcp.policy._probe_rules import probe_rules
from legator_mcp.policy._templates import BUILTINS, decide
from legator_mcp.policy.classifier import classify
from legator_mcp.policy.schemas import Decision, PolicyTemplateCreate, PolicyTemplateRead
from legator_probe.agent.policy import LocalPolicy
from legator_probe.agent.settings import PolicyConfig
from legator_probe.protocol import COMMAND_PAYLOAD_ADAPTER

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def template(**fields: Any) -> PolicyTemplateRead:
    create = PolicyTemplateCreate.model_validate({"name": "t", "level": "remediate", **fields})
    return PolicyTemplateRead(
        id="pol-test", builtin=False, version=1, created_at=T0, updated_at=T0, **create.model_dump()
    )


def both(rules: PolicyTemplateRead, kind: str, spec: dict[str, Any]) -> tuple[Decision, bool]:
    """The control plane's decision and whether the probe, given the pushed rules, would run it."""
    ours = decide(
        verdict=classify(kind, spec), kind=kind, spec=spec, probe_level="remediate", policy_id=rules.id,
        template=rules, actor="tester",
    )  # fmt: skip
    pushed = probe_rules(rules)
    local = LocalPolicy(PolicyConfig(level="remediate", **pushed.model_dump()))
    command = COMMAND_PAYLOAD_ADAPTER.validate_python(
        {"kind": kind, "spec": spec, "request_id": "cmd-1", "probe_id": "prb-1", "nonce": "n" * 32,
         "expires_at": datetime.now(UTC) + timedelta(minutes=1)}
    )  # fmt: skip
    return ours.decision, local.evaluate(command).allowed


def test_no_template_means_no_local_rules() -> None:
    assert probe_rules(None).model_dump() == {
        "allow_patterns": [], "block_patterns": [], "path_allow": [], "path_deny": []
    }  # fmt: skip


def test_builtin_templates_push_their_path_rules_and_exact_block_patterns() -> None:
    rules = probe_rules(BUILTINS["observe-only"])
    assert "/etc/shadow" in rules.path_deny
    assert "r[m]" in rules.block_patterns and "rm *" in rules.block_patterns


@pytest.mark.parametrize(
    ("fields", "kind", "spec", "ours", "probe_runs"),
    [
        pytest.param({"block_patterns": ["touch *"]}, "shell", {"argv": ["touch", "/tmp/x"]}, Decision.DENY, False,
                     id="glob-block-enforced-on-both"),
        pytest.param({"block_patterns": ["ls"]}, "shell", {"argv": ["lsblk"]}, Decision.ALLOW, True,
                     id="plain-block-is-exact-not-a-prefix"),
        pytest.param({"block_patterns": ["ls"]}, "shell", {"argv": ["ls"]}, Decision.DENY, False,
                     id="plain-block-still-blocks-itself"),
        pytest.param({"block_patterns": ["re:^curl .*"]}, "shell", {"argv": ["curl", "-s", "x"]}, Decision.DENY, True,
                     id="regex-block-stays-with-the-control-plane"),
        pytest.param({"allow_patterns": ["df *"]}, "shell", {"argv": ["/bin/df", "-h"]}, Decision.ALLOW, True,
                     id="allow-covers-a-program-named-by-path"),
        pytest.param({"allow_patterns": ["df *"]}, "shell", {"argv": ["free", "-m"]}, Decision.DENY, False,
                     id="allow-list-enforced-on-both"),
        pytest.param({"allow_patterns": ["df *", "re:^uptime$"]}, "shell", {"argv": ["uptime"]}, Decision.ALLOW, True,
                     id="an-allow-list-with-a-regex-is-not-pushed"),
        pytest.param({"path_deny": ["/srv/private"]}, "file_read", {"path": "/srv/private/key"}, Decision.DENY, False,
                     id="path-deny-on-both"),
    ],
)  # fmt: skip
def test_the_probe_agrees_with_the_control_plane_or_leaves_the_decision_to_it(
    fields: dict[str, Any], kind: str, spec: dict[str, Any], ours: Decision, probe_runs: bool
) -> None:
    decision, runs = both(template(**fields), kind, spec)
    assert decision is ours
    assert runs is probe_runs
    # The one direction that must never happen: the probe refusing what the control plane allows.
    assert runs or decision is not Decision.ALLOW
