"""The policy engine: the one function every path that touches a probe goes through.

:meth:`PolicyService.evaluate` classifies a command, loads the probe's template and weighs both against the
probe's level (see :func:`legator_mcp.policy._templates.decide` for the rules and their order), then consults
the registered capacity signal providers (:mod:`legator_mcp.policy.capacity`). :meth:`evaluate_many` does the
same for a fan-out's targets with one classification and one read of their templates. Templates are the
three built-ins (in code, never stored) and custom ones in ``policy_templates``; applying one to a probe sets
its level, bumps its policy version and pushes a signed ``policy_update`` with the template's rules (re-sent
on every reconnect, and to every probe using a template when it is edited).
"""

import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import anyio

from legator_mcp.audit.service import AuditService
from legator_mcp.db.base import utcnow
from legator_mcp.db.session import Database
from legator_mcp.errors import Conflict, InvalidRequest, NotFound, ProbeUnavailable
from legator_mcp.fleet.schemas import ProbeRead
from legator_mcp.fleet.service import FleetService
from legator_mcp.policy._probe_rules import probe_rules
from legator_mcp.policy._templates import APPROVAL_THRESHOLD, BUILTINS, decide
from legator_mcp.policy.capacity import CapacitySignalProvider, apply_capacity
from legator_mcp.policy.classifier import Classification, classify
from legator_mcp.policy.models import PolicyTemplate
from legator_mcp.policy.schemas import (
    CapacitySignal,
    Decision,
    PolicyApplied,
    PolicyDecision,
    PolicyTemplateCreate,
    PolicyTemplateList,
    PolicyTemplateRead,
    PolicyTemplateUpdate,
    ProbeRules,
)
from legator_mcp.policy.store import PolicyStore
from legator_mcp.principal import Principal

__all__ = ["APPROVAL_THRESHOLD", "BUILTINS", "CapacitySignalProvider", "PolicyPusher", "PolicyService"]

_STORED_PREFIX = "pol-"
"""How the id of every custom (stored) template starts."""

_CAPACITY_CONCURRENCY = 32
"""Capacity signals asked for at once during a fan-out's evaluation."""


class PolicyPusher(Protocol):
    """What the service needs from the probe hub (implemented by ``gateway.hub.Hub``)."""

    async def push_policy(self, probe: ProbeRead, *, rules: ProbeRules) -> None: ...


def _read(row: PolicyTemplate) -> PolicyTemplateRead:
    return PolicyTemplateRead(
        id=row.id, name=row.name, description=row.description, level=row.level,  # pyright: ignore[reportArgumentType]
        builtin=False, allow_patterns=list(row.allow_patterns), block_patterns=list(row.block_patterns),
        path_allow=list(row.path_allow), path_deny=list(row.path_deny),
        preapproved_patterns=list(row.preapproved_patterns), version=row.version, created_at=row.created_at,
        updated_at=row.updated_at,
    )  # fmt: skip


def _snapshot(template: PolicyTemplateRead) -> dict[str, Any]:
    return template.model_dump(
        mode="json", exclude={"created_at", "updated_at", "builtin", "allowed", "blocked", "paths"}
    )


class PolicyService:
    """Templates, applying them to probes, and deciding ``allow | queue | deny`` for a command, explaining why."""

    def __init__(
        self,
        *,
        database: Database,
        audit: AuditService,
        fleet: FleetService,
        hub: PolicyPusher | None = None,
        capacity: Sequence[CapacitySignalProvider] = (),
    ) -> None:
        self._db = database
        self._audit = audit
        self._fleet = fleet
        self._hub = hub
        self._capacity = list(capacity)
        self._store = PolicyStore()

    def attach_hub(self, hub: PolicyPusher) -> None:
        """Give the service the hub it pushes ``policy_update`` messages through (built after the service)."""
        self._hub = hub

    def add_capacity_provider(self, provider: CapacitySignalProvider) -> None:
        """Consult ``provider`` too for every target evaluated from now on."""
        self._capacity.append(provider)

    # -- templates ----------------------------------------------------------------------------------------------

    async def find_template(self, template_id: str | None) -> PolicyTemplateRead | None:
        """The template with that id, or ``None`` (e.g. a probe's ``default-<level>`` policy)."""
        if template_id is None:
            return None
        return (await self._templates({template_id})).get(template_id)

    async def _templates(self, template_ids: set[str]) -> dict[str, PolicyTemplateRead]:
        found = {i: BUILTINS[i] for i in template_ids if i in BUILTINS}
        # Only ids minted by create_template can be stored ones (``default-<level>`` and the like are not).
        stored = sorted(i for i in template_ids - found.keys() if i.startswith(_STORED_PREFIX))
        if stored:
            async with self._db.read() as session:
                rows = await self._store.get_many(session, stored)
                found.update((row.id, _read(row)) for row in rows)
        return found

    async def get_template(self, template_id: str) -> PolicyTemplateRead:
        """One template.

        Raises:
            NotFound: If no template has that id.
        """
        template = await self.find_template(template_id)
        if template is None:
            raise NotFound(f"policy template {template_id} not found", details={"policy_id": template_id})
        return template

    async def list_templates(self) -> PolicyTemplateList:
        """Every template: the built-ins, then custom ones oldest first."""
        async with self._db.read() as session:
            rows = await self._store.list(session)
            custom = [_read(row) for row in rows]
        return PolicyTemplateList(templates=[*BUILTINS.values(), *custom])

    async def create_template(self, *, actor: Principal, request: PolicyTemplateCreate) -> PolicyTemplateRead:
        """Store a custom template (version 1), audited as ``policy.template_created``.

        Raises:
            Conflict: If a template already has that name.
        """
        if any(t.name.casefold() == request.name.casefold() for t in BUILTINS.values()):
            raise Conflict(f"{request.name!r} is the name of a built-in template", details={"field": "name"})
        now = utcnow()
        row = PolicyTemplate(
            id=f"{_STORED_PREFIX}{uuid.uuid4().hex[:12]}",
            **request.model_dump(),
            version=1,
            created_at=now,
            updated_at=now,
        )
        async with self._db.write() as session:
            await self._store.add(session, row)
            read = _read(row)
            await self._audit.record(
                type="policy.template_created", actor=actor, summary=f"policy template {read.name} ({read.id}) created",
                after=_snapshot(read), session=session,
            )  # fmt: skip
        return read

    def _refuse_builtin(self, template_id: str, verb: str) -> None:
        if template_id in BUILTINS:
            raise Conflict(
                f"{template_id} is a built-in template and cannot be {verb}", details={"policy_id": template_id}
            )

    async def update_template(
        self, *, actor: Principal, template_id: str, request: PolicyTemplateUpdate
    ) -> PolicyTemplateRead:
        """Replace a custom template's fields and bump its version, audited with before and after.

        Every probe that uses it gets the new rules at once on the control plane, and a new policy version with
        the template's level (audited per probe as ``policy.changed``, before and after); connected probes are
        sent it signed now, the others when they reconnect.

        Raises:
            NotFound: If no template has that id.
            Conflict: For a built-in template, or a name another template has.
        """
        self._refuse_builtin(template_id, "edited")
        if any(t.name.casefold() == request.name.casefold() for t in BUILTINS.values()):
            raise Conflict(f"{request.name!r} is the name of a built-in template", details={"field": "name"})
        async with self._db.write() as session:
            row = await self._store.get(session, template_id, for_update=True)
            if row is None:
                raise NotFound(f"policy template {template_id} not found", details={"policy_id": template_id})
            before = _snapshot(_read(row))
            for field, value in request.model_dump().items():
                setattr(row, field, value)
            row.version = row.version + 1
            row.updated_at = utcnow()
            await self._store.flush(session, row)
            read = _read(row)
            await self._audit.record(
                type="policy.template_updated", actor=actor, summary=f"policy template {read.name} ({read.id}) updated",
                before=before, after=_snapshot(read), session=session,
            )  # fmt: skip
        await self._reapply(actor=actor, template=read)
        return read

    async def _reapply(self, *, actor: Principal, template: PolicyTemplateRead) -> None:
        """Give every probe using ``template`` a new policy version and push it to those connected."""
        for probe in await self._fleet.with_policy(template.id):
            updated = await self._fleet.apply_policy(
                actor=actor, probe_id=probe.id, policy_id=template.id, level=template.level,
                summary=f"Policy {template.name} ({template.id}) version {template.version} re-applied after an edit",
            )  # fmt: skip
            try:
                await self._push(updated, template)
            except ProbeUnavailable:
                continue

    async def delete_template(self, *, actor: Principal, template_id: str) -> None:
        """Delete a custom template no probe uses, audited as ``policy.template_deleted``.

        Raises:
            NotFound: If no template has that id.
            Conflict: For a built-in template, or one still applied to probes (apply another first).
        """
        self._refuse_builtin(template_id, "deleted")
        # Checked before the delete's transaction: probes belong to the fleet domain, reached through its service.
        using = await self._fleet.count_with_policy(template_id)
        async with self._db.write() as session:
            row = await self._store.get(session, template_id, for_update=True)
            if row is None:
                raise NotFound(f"policy template {template_id} not found", details={"policy_id": template_id})
            if using:
                raise Conflict(
                    f"policy template {template_id} is applied to {using} probe(s); apply another template first",
                    details={"policy_id": template_id, "probes": using},
                )
            before = _snapshot(_read(row))
            await self._store.delete(session, row)
            await self._audit.record(
                type="policy.template_deleted", actor=actor, summary=f"policy template {row.name} ({row.id}) deleted",
                before=before, session=session,
            )  # fmt: skip

    # -- probes ---------------------------------------------------------------------------------------------------

    async def probe_rules(self, probe: ProbeRead) -> ProbeRules:
        """What the probe enforces itself: its template's patterns (in the probe's dialect) and path rules."""
        return probe_rules(await self.find_template(probe.policy_id))

    async def push(self, probe: ProbeRead) -> None:
        """Send a connected probe its current policy, signed: level, version, command patterns and path rules.

        Raises:
            ProbeUnavailable: If the probe is not connected (or no hub is attached).
        """
        await self._push(probe, await self.find_template(probe.policy_id))

    async def _push(self, probe: ProbeRead, template: PolicyTemplateRead | None) -> None:
        if self._hub is None:
            raise ProbeUnavailable(f"probe {probe.id} is not connected", details={"probe_id": probe.id})
        await self._hub.push_policy(probe, rules=probe_rules(template))

    async def apply(self, *, actor: Principal, probe_id: str, policy_id: str) -> PolicyApplied:
        """Apply a template to a probe: its level and policy id change (audited with before and after) and the
        probe is sent a signed ``policy_update`` — now if it is connected, else when it reconnects.

        Raises:
            NotFound: If the probe or the template does not exist.
        """
        template = await self.get_template(policy_id)
        probe = await self._fleet.apply_policy(
            actor=actor, probe_id=probe_id, policy_id=template.id, level=template.level,
            summary=f"Policy {template.name} ({template.id}) applied",
        )  # fmt: skip
        try:
            await self._push(probe, template)
        except ProbeUnavailable:
            return PolicyApplied(
                status="applied_locally", probe_id=probe.id, policy_id=template.id, level=template.level,
                version=probe.policy_version, note="probe offline: policy saved, it is sent when the probe reconnects",
            )  # fmt: skip
        return PolicyApplied(
            status="applied", probe_id=probe.id, policy_id=template.id, level=template.level,
            version=probe.policy_version,
        )  # fmt: skip

    # -- evaluation -------------------------------------------------------------------------------------------------

    async def evaluate(
        self,
        *,
        principal: Principal,
        probe_level: str,
        policy_id: str | None,
        kind: str,
        spec: Mapping[str, Any],
        target: ProbeRead | None = None,
    ) -> PolicyDecision:
        """Decide ``allow | queue | deny`` for a command on a probe with this level and policy.

        Args:
            principal: Who asks (recorded in the rationale; permissions are checked by the adapters).
            probe_level: The probe's policy level (observe, diagnose or remediate).
            policy_id: The probe's policy template; an id that names no template means level-only rules.
            kind: One of the six command kinds.
            spec: The command's typed parameters as a mapping.
            target: The probe itself; with it, the capacity signal providers are consulted too.

        Raises:
            InvalidRequest: If the command cannot be classified (unknown kind, missing fields).
        """
        verdict = _classify(kind, spec)
        template = await self.find_template(policy_id)
        decision = decide(
            verdict=verdict, kind=kind, spec=spec, probe_level=probe_level, policy_id=policy_id, template=template,
            actor=principal.actor,
        )  # fmt: skip
        if target is None:
            return decision
        signals = await self._signals([target], [decision])
        return apply_capacity(decision, signals.get(target.id, []))

    async def evaluate_many(
        self, *, principal: Principal, targets: Sequence[ProbeRead], kind: str, spec: Mapping[str, Any]
    ) -> list[PolicyDecision]:
        """:meth:`evaluate` one command for many probes: classified once, their templates read at once.

        Returns:
            One decision per target, in order.

        Raises:
            InvalidRequest: If the command cannot be classified.
        """
        verdict = _classify(kind, spec)
        templates = await self._templates({t.policy_id for t in targets})
        by_rules: dict[tuple[str, str], PolicyDecision] = {}
        decisions: list[PolicyDecision] = []
        for target in targets:
            key = (target.policy_level, target.policy_id)
            if key not in by_rules:
                by_rules[key] = decide(
                    verdict=verdict, kind=kind, spec=spec, probe_level=target.policy_level,
                    policy_id=target.policy_id, template=templates.get(target.policy_id), actor=principal.actor,
                )  # fmt: skip
            decisions.append(by_rules[key])
        signals = await self._signals(targets, decisions)
        return [apply_capacity(d, signals.get(t.id, [])) for t, d in zip(targets, decisions, strict=True)]

    async def _signals(
        self, targets: Sequence[ProbeRead], decisions: Sequence[PolicyDecision]
    ) -> dict[str, list[CapacitySignal]]:
        """Every provider's signal for each target the rules did not already deny."""
        asked = [t for t, d in zip(targets, decisions, strict=True) if d.decision is not Decision.DENY]
        if not self._capacity or not asked:
            return {}
        found: dict[tuple[str, int], CapacitySignal] = {}
        limit = anyio.Semaphore(_CAPACITY_CONCURRENCY)

        async def ask(target: ProbeRead, index: int, provider: CapacitySignalProvider) -> None:
            async with limit:
                found[target.id, index] = await provider.signal(target)

        async with anyio.create_task_group() as tg:
            for target in asked:
                for index, provider in enumerate(self._capacity):
                    tg.start_soon(ask, target, index, provider)
        # In provider order, whatever order the answers came in.
        return {t.id: [found[t.id, i] for i in range(len(self._capacity))] for t in asked}


def _classify(kind: str, spec: Mapping[str, Any]) -> Classification:
    try:
        return classify(kind, spec)
    except ValueError as exc:
        raise InvalidRequest(f"cannot evaluate {kind}: {exc}"[:300], details={"field": "spec"}) from exc
