"""The policy engine: the one function every path that touches a probe goes through.

:meth:`PolicyService.evaluate` classifies a command, loads the probe's template and weighs both against the
probe's level (see :func:`legator_mcp.policy._templates.decide` for the rules and their order). Templates are
the three built-ins (in code, never stored) and custom ones in ``policy_templates``; applying one to a probe
sets its level, bumps its policy version and pushes a signed ``policy_update`` (re-sent on every reconnect).
"""

import uuid
from collections.abc import Mapping
from typing import Any, Protocol

from legator_mcp.audit.service import AuditService
from legator_mcp.db.base import utcnow
from legator_mcp.db.session import Database
from legator_mcp.errors import Conflict, InvalidRequest, NotFound, ProbeUnavailable
from legator_mcp.fleet.schemas import ProbeRead
from legator_mcp.fleet.service import FleetService
from legator_mcp.policy._templates import APPROVAL_THRESHOLD, BUILTINS, decide
from legator_mcp.policy.classifier import classify
from legator_mcp.policy.models import PolicyTemplate
from legator_mcp.policy.schemas import (
    PolicyApplied,
    PolicyDecision,
    PolicyTemplateCreate,
    PolicyTemplateList,
    PolicyTemplateRead,
    PolicyTemplateUpdate,
)
from legator_mcp.policy.store import PolicyStore
from legator_mcp.principal import Principal

__all__ = ["APPROVAL_THRESHOLD", "BUILTINS", "PolicyPusher", "PolicyService"]


class PolicyPusher(Protocol):
    """What the service needs from the probe hub (implemented by ``gateway.hub.Hub``)."""

    async def push_policy(self, probe: ProbeRead, *, path_allow: list[str], path_deny: list[str]) -> None: ...


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
        self, *, database: Database, audit: AuditService, fleet: FleetService, hub: PolicyPusher | None = None
    ) -> None:
        self._db = database
        self._audit = audit
        self._fleet = fleet
        self._hub = hub
        self._store = PolicyStore()

    def attach_hub(self, hub: PolicyPusher) -> None:
        """Give the service the hub it pushes ``policy_update`` messages through (built after the service)."""
        self._hub = hub

    # -- templates ----------------------------------------------------------------------------------------------

    async def find_template(self, template_id: str | None) -> PolicyTemplateRead | None:
        """The template with that id, or ``None`` (e.g. a probe's ``default-<level>`` policy)."""
        if template_id is None:
            return None
        if template_id in BUILTINS:
            return BUILTINS[template_id]
        async with self._db.read() as session:
            row = await self._store.get(session, template_id)
            return _read(row) if row is not None else None

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
            id=f"pol-{uuid.uuid4().hex[:12]}", **request.model_dump(), version=1, created_at=now, updated_at=now
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

        Probes that use it get the new rules at once on the control plane and the new path rules on their next
        (re)connection or apply.

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
        return read

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

    async def path_rules(self, probe: ProbeRead) -> tuple[list[str], list[str]]:
        """``(path_allow, path_deny)`` of the probe's template (empty when it has none)."""
        template = await self.find_template(probe.policy_id)
        if template is None:
            return [], []
        return list(template.path_allow), list(template.path_deny)

    async def push(self, probe: ProbeRead) -> None:
        """Send a connected probe its current policy, signed, with the template's path rules.

        Raises:
            ProbeUnavailable: If the probe is not connected (or no hub is attached).
        """
        if self._hub is None:
            raise ProbeUnavailable(f"probe {probe.id} is not connected", details={"probe_id": probe.id})
        path_allow, path_deny = await self.path_rules(probe)
        await self._hub.push_policy(probe, path_allow=path_allow, path_deny=path_deny)

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
            await self.push(probe)
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
    ) -> PolicyDecision:
        """Decide ``allow | queue | deny`` for a command on a probe with this level and policy.

        Args:
            principal: Who asks (recorded in the rationale; permissions are checked by the adapters).
            probe_level: The probe's policy level (observe, diagnose or remediate).
            policy_id: The probe's policy template; an id that names no template means level-only rules.
            kind: One of the six command kinds.
            spec: The command's typed parameters as a mapping.

        Raises:
            InvalidRequest: If the command cannot be classified (unknown kind, missing fields).
        """
        try:
            verdict = classify(kind, spec)
        except ValueError as exc:
            raise InvalidRequest(f"cannot evaluate {kind}: {exc}"[:300], details={"field": "spec"}) from exc
        template = await self.find_template(policy_id)
        return decide(
            verdict=verdict, kind=kind, spec=spec, probe_level=probe_level, policy_id=policy_id, template=template,
            actor=principal.actor,
        )  # fmt: skip
