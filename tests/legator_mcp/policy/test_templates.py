"""Policy templates on SQLite and PostgreSQL: built-ins, custom CRUD, the evaluate rules, and applying to probes."""

from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import event

from legator_mcp.audit.schemas import AuditQuery
from legator_mcp.audit.service import AuditService
from legator_mcp.db.session import Database
from legator_mcp.errors import Conflict, InvalidRequest, NotFound, ProbeUnavailable
from legator_mcp.events.service import EventBus
from legator_mcp.fleet.keys import KeyRing
from legator_mcp.fleet.schemas import ProbeRead, RegistrationRequest, TokenCreate
from legator_mcp.fleet.service import FleetService
from legator_mcp.policy.schemas import Decision, PolicyTemplateCreate, PolicyTemplateUpdate, ProbeRules
from legator_mcp.policy.service import BUILTINS, PolicyService
from legator_mcp.principal import Permission, Principal, PrincipalKind
from legator_mcp.settings import Settings

pytestmark = pytest.mark.anyio

ADMIN = Principal(PrincipalKind.USER, "u-admin", "admin", frozenset({Permission.ADMIN}), via="rest")


class FakeHub:
    """Records pushes; a probe is connected when its id is in ``online``."""

    def __init__(self) -> None:
        self.online: set[str] = set()
        self.pushed: list[tuple[ProbeRead, ProbeRules]] = []

    async def push_policy(self, probe: ProbeRead, *, rules: ProbeRules) -> None:
        if probe.id not in self.online:
            raise ProbeUnavailable(f"probe {probe.id} is not connected")
        self.pushed.append((probe, rules))


@dataclass
class World:
    policy: PolicyService
    fleet: FleetService
    audit: AuditService
    hub: FakeHub
    database: Database

    async def probe(self, hostname: str = "web-1") -> str:
        token = await self.fleet.create_token(actor=ADMIN, request=TokenCreate(policy_level="remediate"))
        result = await self.fleet.register(request=RegistrationRequest(token=token.token, hostname=hostname))
        return result.probe_id

    async def decide(self, policy_id: str | None, level: str, kind: str, spec: dict[str, Any]) -> Any:
        return await self.policy.evaluate(principal=ADMIN, probe_level=level, policy_id=policy_id, kind=kind, spec=spec)


@pytest.fixture
async def world(database: Database, settings: Settings) -> World:
    audit = AuditService(database=database)
    fleet = FleetService(
        database=database, audit=audit, events=EventBus(), settings=settings, keyring=KeyRing(bytes(range(32)))
    )
    hub = FakeHub()
    return World(PolicyService(database=database, audit=audit, fleet=fleet, hub=hub), fleet, audit, hub, database)


def custom(**fields: Any) -> PolicyTemplateCreate:
    return PolicyTemplateCreate.model_validate({"name": "web", "level": "remediate", **fields})


async def test_builtins_are_listed_first_and_cannot_be_changed(world: World) -> None:
    listed = await world.policy.list_templates()
    assert [t.id for t in listed.templates] == ["observe-only", "diagnose", "full-remediate"]
    assert [t.level for t in listed.templates] == ["observe", "diagnose", "remediate"]
    assert all("/etc/shadow" in t.path_deny and "/etc/gshadow" in t.path_deny for t in listed.templates)
    with pytest.raises(Conflict):
        await world.policy.delete_template(actor=ADMIN, template_id="diagnose")
    with pytest.raises(Conflict):
        await world.policy.update_template(
            actor=ADMIN, template_id="observe-only", request=PolicyTemplateUpdate(name="x")
        )
    with pytest.raises(Conflict):
        await world.policy.create_template(actor=ADMIN, request=custom(name="Diagnose"))


async def test_custom_templates_are_created_versioned_and_deleted_with_audit(world: World) -> None:
    created = await world.policy.create_template(actor=ADMIN, request=custom(allowed=["uptime"]))
    assert created.id.startswith("pol-") and created.version == 1 and created.allow_patterns == ["uptime"]
    assert (await world.policy.get_template(created.id)) == created
    with pytest.raises(Conflict):
        await world.policy.create_template(actor=ADMIN, request=custom())
    updated = await world.policy.update_template(
        actor=ADMIN, template_id=created.id, request=PolicyTemplateUpdate(name="web", level="diagnose")
    )
    assert updated.version == 2 and updated.level == "diagnose" and updated.allow_patterns == []
    await world.policy.delete_template(actor=ADMIN, template_id=created.id)
    with pytest.raises(NotFound):
        await world.policy.get_template(created.id)
    with pytest.raises(NotFound):
        await world.policy.delete_template(actor=ADMIN, template_id=created.id)
    types = [e.type for e in (await world.audit.search(AuditQuery(limit=50))).events]
    assert {"policy.template_created", "policy.template_updated", "policy.template_deleted"} <= set(types)


def test_invalid_regular_expressions_are_refused() -> None:
    with pytest.raises(ValueError, match="invalid regular expression"):
        custom(block_patterns=["re:(unclosed"])


async def test_block_pattern_denies_and_names_the_pattern(world: World) -> None:
    template = await world.policy.create_template(actor=ADMIN, request=custom(block_patterns=["curl *"]))
    decision = await world.decide(template.id, "remediate", "shell", {"script": "uptime; /usr/bin/curl http://x"})
    assert decision.decision is Decision.DENY and decision.rule == "block_pattern"
    assert any("'curl *'" in line and template.id in line for line in decision.rationale)


async def test_allow_list_denies_anything_it_does_not_cover(world: World) -> None:
    template = await world.policy.create_template(actor=ADMIN, request=custom(allow_patterns=["uptime", "df *"]))
    assert (await world.decide(template.id, "remediate", "shell", {"argv": ["uptime"]})).decision is Decision.ALLOW
    assert (await world.decide(template.id, "remediate", "shell", {"script": "df -h"})).decision is Decision.ALLOW
    for spec in ({"argv": ["free", "-m"]}, {"script": "df -h; free"}, {"script": "df $(rm -rf /tmp/x)"}):
        decision = await world.decide(template.id, "remediate", "shell", spec)
        assert decision.decision is Decision.DENY and decision.rule == "allow_list", spec


async def test_level_cap_denies_with_the_indicator(world: World) -> None:
    decision = await world.decide("observe-only", "observe", "systemd", {"action": "restart", "unit": "nginx"})
    assert decision.decision is Decision.DENY
    decision = await world.decide("diagnose", "diagnose", "file_write", {"path": "/tmp/x", "content": "y"})
    assert decision.decision is Decision.DENY and decision.rule == "level_cap"
    assert any("file_write" in line and "diagnose" in line for line in decision.rationale)


async def test_high_risk_queues_unless_preapproved_but_critical_always_queues(world: World) -> None:
    restart = {"action": "stop", "unit": "nginx.service"}
    queued = await world.decide("full-remediate", "remediate", "systemd", restart)
    assert queued.decision is Decision.QUEUE and queued.rule == "approval_threshold"
    template = await world.policy.create_template(
        actor=ADMIN, request=custom(preapproved_patterns=["systemctl stop nginx*", "reboot*"])
    )
    allowed = await world.decide(template.id, "remediate", "systemd", restart)
    assert allowed.decision is Decision.ALLOW and allowed.rule == "preapproved"
    assert any("pre-approves" in line and template.id in line for line in allowed.rationale)
    critical = await world.decide(template.id, "remediate", "shell", {"argv": ["reboot"]})
    assert critical.risk == "critical" and critical.decision is Decision.QUEUE
    assert any("critical is never pre-approved" in line for line in critical.rationale)


async def test_path_rules_deny_outside_allow_and_inside_deny(world: World) -> None:
    template = await world.policy.create_template(
        actor=ADMIN, request=custom(path_allow=["/var/log", "/srv/app/*"], path_deny=["/var/log/secret"])
    )
    ok = await world.decide(template.id, "remediate", "file_read", {"path": "/var/log/syslog"})
    assert ok.decision is Decision.ALLOW
    outside = await world.decide(template.id, "remediate", "file_read", {"path": "/var/log/../../etc/hosts"})
    assert outside.decision is Decision.DENY and outside.rule == "path_allow"
    inside = await world.decide(template.id, "remediate", "file_read", {"path": "/var/log/secret/token"})
    assert inside.decision is Decision.DENY and inside.rule == "path_deny"
    shadow = await world.decide("full-remediate", "remediate", "file_read", {"path": "/etc/shadow"})
    assert shadow.decision is Decision.DENY and shadow.rule == "path_deny"


async def test_unknown_policy_ids_use_the_level_only_and_bad_specs_are_invalid(world: World) -> None:
    decision = await world.decide("default-observe", "observe", "shell", {"argv": ["uptime"]})
    assert decision.decision is Decision.ALLOW and decision.policy_id == "default-observe"
    with pytest.raises(InvalidRequest):
        await world.decide("diagnose", "diagnose", "nonsense", {})


async def test_apply_updates_the_probe_audits_and_pushes_when_connected(world: World) -> None:
    probe_id = await world.probe()
    offline = await world.policy.apply(actor=ADMIN, probe_id=probe_id, policy_id="diagnose")
    assert offline.status == "applied_locally" and offline.note and offline.level == "diagnose"
    probe = await world.fleet.get_probe(probe_id)
    assert (probe.policy_id, probe.policy_level) == ("diagnose", "diagnose")
    world.hub.online.add(probe_id)
    applied = await world.policy.apply(actor=ADMIN, probe_id=probe_id, policy_id="observe-only")
    assert applied.status == "applied" and applied.version == offline.version + 1
    pushed, rules = world.hub.pushed[-1]
    assert pushed.policy_id == "observe-only" and pushed.policy_level == "observe" and "/etc/shadow" in rules.path_deny
    events = (await world.audit.search(AuditQuery(type="policy.changed", limit=10))).events
    assert events and events[0].before and events[0].after
    assert events[0].after["policy_id"] == "observe-only" and events[0].before["policy_id"] == "diagnose"
    with pytest.raises(NotFound):
        await world.policy.apply(actor=ADMIN, probe_id=probe_id, policy_id="pol-missing")
    with pytest.raises(NotFound):
        await world.policy.apply(actor=ADMIN, probe_id="prb-missing", policy_id="diagnose")


async def test_a_template_in_use_cannot_be_deleted(world: World) -> None:
    probe_id = await world.probe()
    template = await world.policy.create_template(actor=ADMIN, request=custom())
    await world.policy.apply(actor=ADMIN, probe_id=probe_id, policy_id=template.id)
    with pytest.raises(Conflict):
        await world.policy.delete_template(actor=ADMIN, template_id=template.id)
    await world.policy.apply(actor=ADMIN, probe_id=probe_id, policy_id="diagnose")
    await world.policy.delete_template(actor=ADMIN, template_id=template.id)
    assert set(BUILTINS) == {"observe-only", "diagnose", "full-remediate"}


async def test_editing_a_template_gives_each_probe_using_it_a_new_version_pushed_with_the_rules(world: World) -> None:
    online, offline, elsewhere = await world.probe("web-1"), await world.probe("web-2"), await world.probe("db-1")
    template = await world.policy.create_template(actor=ADMIN, request=custom(block_patterns=["curl *"]))
    for probe_id in (online, offline):
        await world.policy.apply(actor=ADMIN, probe_id=probe_id, policy_id=template.id)
    world.hub.online |= {online, elsewhere}
    before = {p: (await world.fleet.get_probe(p)).policy_version for p in (online, offline, elsewhere)}

    edited = await world.policy.update_template(
        actor=ADMIN, template_id=template.id,
        request=PolicyTemplateUpdate(name="web", level="diagnose", block_patterns=["curl *", "rm", "re:^wget .*"],
                                     allow_patterns=["uptime", "df *"], path_deny=["/srv/private"]),
    )  # fmt: skip

    after = {p: await world.fleet.get_probe(p) for p in (online, offline, elsewhere)}
    assert after[online].policy_version == before[online] + 1 and after[online].policy_level == "diagnose"
    assert after[offline].policy_version == before[offline] + 1 and after[offline].policy_level == "diagnose"
    assert after[elsewhere].policy_version == before[elsewhere]
    [(pushed, rules)] = world.hub.pushed
    assert pushed.id == online and pushed.policy_version == after[online].policy_version
    # In the probe's dialect: a plain pattern matches exactly, regular expressions stay with the control plane.
    assert rules.block_patterns == ["curl *", "r[m]"]
    assert rules.allow_patterns == ["uptime", "*/uptime", "df *", "*/df *"]
    assert rules.path_deny == ["/srv/private"]
    changed = (await world.audit.search(AuditQuery(type="policy.changed", probe_id=online, limit=5))).events[0]
    assert changed.before and changed.after and changed.after["version"] == changed.before["version"] + 1
    assert changed.after["level"] == "diagnose" and changed.before["level"] == "remediate"
    assert edited.version == 2


async def test_evaluate_many_decides_like_evaluate_with_one_read_of_the_templates(world: World) -> None:
    guarded = await world.policy.create_template(actor=ADMIN, request=custom(block_patterns=["systemctl stop *"]))
    ids = [await world.probe(f"host-{n}") for n in range(4)]
    await world.policy.apply(actor=ADMIN, probe_id=ids[0], policy_id=guarded.id)
    await world.policy.apply(actor=ADMIN, probe_id=ids[1], policy_id="observe-only")
    probes = [await world.fleet.get_probe(p) for p in ids]
    spec = {"action": "stop", "unit": "nginx.service"}
    begun: list[int] = []

    def on_begin(_connection: Any) -> None:
        begun.append(1)

    event.listen(world.database.engine.sync_engine, "begin", on_begin)
    try:
        many = await world.policy.evaluate_many(principal=ADMIN, targets=probes, kind="systemd", spec=spec)
    finally:
        event.remove(world.database.engine.sync_engine, "begin", on_begin)
    assert len(begun) == 1  # the one custom template; built-ins and default-<level> ids need no read
    one = [await world.decide(p.policy_id, p.policy_level, "systemd", spec) for p in probes]
    assert many == one
    assert [d.decision for d in many] == [Decision.DENY, Decision.DENY, Decision.QUEUE, Decision.QUEUE]
    assert await world.policy.evaluate_many(principal=ADMIN, targets=[], kind="systemd", spec=spec) == []
    with pytest.raises(InvalidRequest):
        await world.policy.evaluate_many(principal=ADMIN, targets=probes, kind="nonsense", spec={})
