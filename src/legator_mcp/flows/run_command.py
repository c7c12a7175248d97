"""Run one command on one probe: authorise → evaluate policy → record → sign and dispatch → track → result.

Every surface that runs a command (REST, MCP tools, jobs, fan-out, packs) goes through :class:`CommandFlow`,
so the policy gate and the audit trail cannot be skipped.
"""

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeAlias

from pydantic import BaseModel

from legator_mcp.approval.schemas import ApprovalRead
from legator_mcp.approval.service import ApprovalService
from legator_mcp.commands.schemas import CommandRunRead, CommandStatus
from legator_mcp.commands.service import CommandService, NewRun, new_request_id, payload_digest
from legator_mcp.errors import InvalidRequest, LegatorError, NotFound, PermissionDenied, ProbeUnavailable
from legator_mcp.fleet.schemas import ProbeRead
from legator_mcp.fleet.service import FleetService
from legator_mcp.flows._completions import Completions
from legator_mcp.policy.schemas import Decision, PolicyDecision
from legator_mcp.policy.service import PolicyService
from legator_mcp.principal import Permission, Principal
from legator_probe.protocol import COMMAND_PAYLOAD_ADAPTER, CommandPayload
from legator_probe.protocol.commands import DEFAULT_MAX_OUTPUT_BYTES, DEFAULT_TIMEOUT_S

__all__ = ["CommandFlow", "CommandRequest", "ProbeDispatcher", "Progress", "Target"]

Progress = Callable[[float, float | None, str], Awaitable[None]]
"""``(progress, total, message)`` callback for long waits (MCP progress notifications)."""

RESULT_GRACE_S = 5.0
"""How much longer than the command's own timeout a waiter waits for the probe's result."""

Target: TypeAlias = tuple[ProbeRead, PolicyDecision]
"""A probe and the policy decision for running a command there (from :meth:`CommandFlow.evaluate_many`)."""

_RISKS = ["low", "medium", "high", "critical"]


class ProbeDispatcher(Protocol):
    """What the flow needs from the probe hub (implemented by ``gateway.hub.Hub``)."""

    def signed_fields(self, probe_id: str) -> dict[str, Any]: ...

    async def dispatch(self, command: CommandPayload) -> None: ...

    async def dispatch_many(self, commands: Sequence[CommandPayload]) -> dict[str, LegatorError]: ...

    async def wait(self, request_id: str, *, timeout: float) -> CommandRunRead | None: ...

    async def expire(
        self, request_id: str, *, status: CommandStatus, error_code: str, error: str
    ) -> CommandRunRead | None: ...

    def is_tracking(self, request_id: str) -> bool: ...

    def watch(self, request_id: str, callback: Callable[[CommandRunRead], None]) -> bool: ...

    def unwatch(self, request_id: str, callback: Callable[[CommandRunRead], None]) -> None: ...

    async def cancel(self, run: CommandRunRead) -> None: ...


class CommandRequest(BaseModel):
    """A command as a caller asks for it: a kind and its typed parameters."""

    kind: str
    spec: dict[str, Any]
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
    stream: bool = True
    request_id: str | None = None


def _action(command: CommandPayload) -> dict[str, Any]:
    """The part of a command an approval binds to: everything but its per-send fields (ids, nonce, expiry)."""
    return command.model_dump(mode="json", exclude={"request_id", "probe_id", "nonce", "expires_at"})


class CommandFlow:
    """The one way a command reaches a probe."""

    def __init__(
        self,
        *,
        fleet: FleetService,
        policy: PolicyService,
        commands: CommandService,
        approvals: ApprovalService,
        hub: ProbeDispatcher,
    ) -> None:
        self._fleet = fleet
        self._policy = policy
        self._commands = commands
        self._approvals = approvals
        self._hub = hub
        approvals.on_approved(self.execute_approved)

    def _payload(self, probe_id: str, request: CommandRequest) -> CommandPayload:
        try:
            return COMMAND_PAYLOAD_ADAPTER.validate_python(
                {
                    "kind": request.kind,
                    "spec": request.spec,
                    "timeout_s": request.timeout_s,
                    "max_output_bytes": request.max_output_bytes,
                    "stream": request.stream,
                    "request_id": request.request_id or new_request_id(),
                    **self._hub.signed_fields(probe_id),
                }
            )
        except ValueError as exc:
            raise InvalidRequest(f"invalid {request.kind} command: {exc}".splitlines()[0][:300]) from exc

    def _require_exec(self, actor: Principal) -> None:
        if not actor.has(Permission.COMMAND_EXEC):
            raise PermissionDenied(
                "running commands needs command:exec", details={"required_permission": "command:exec"}
            )

    async def evaluate(self, *, actor: Principal, probe_id: str, request: CommandRequest) -> PolicyDecision:
        """Answer "what would happen if I ran this there?" without running anything.

        Raises:
            NotFound: If the probe does not exist.
            InvalidRequest: If the command does not validate.
        """
        probe = await self._fleet.get_probe(probe_id)
        command = self._payload(probe.id, request)
        return await self._policy.evaluate(
            principal=actor,
            probe_level=probe.policy_level,
            policy_id=probe.policy_id,
            kind=command.kind,
            spec=command.spec.model_dump(mode="json"),
            target=probe,
        )

    async def evaluate_many(
        self, *, actor: Principal, probes: Sequence[ProbeRead], request: CommandRequest
    ) -> list[PolicyDecision]:
        """:meth:`evaluate` for many probes at once (one classification, one read of their templates).

        Raises:
            InvalidRequest: If the command does not validate.
        """
        if not probes:
            return []
        command = self._payload(probes[0].id, request)
        return await self._policy.evaluate_many(
            principal=actor, targets=probes, kind=command.kind, spec=command.spec.model_dump(mode="json")
        )

    async def run(
        self,
        *,
        actor: Principal,
        probe_id: str,
        request: CommandRequest,
        wait: bool,
        progress: Progress | None = None,
    ) -> CommandRunRead:
        """Run ``request`` on a probe if policy allows, recording every step.

        Returns:
            The run: ``denied`` (policy said no; nothing was sent), ``dispatched`` (``wait=False``, or no result
            in time), or finished with the probe's result.

        Raises:
            PermissionDenied: If ``actor`` lacks ``command:exec``.
            NotFound: If the probe does not exist.
            InvalidRequest: If the command does not validate.
            ProbeUnavailable: If the probe is not connected (the run is recorded as failed).
        """
        self._require_exec(actor)
        probe = await self._fleet.get_probe(probe_id)
        command = self._payload(probe.id, request)
        decision = await self._policy.evaluate(
            principal=actor,
            probe_level=probe.policy_level,
            policy_id=probe.policy_id,
            kind=command.kind,
            spec=command.spec.model_dump(mode="json"),
            target=probe,
        )
        if decision.decision is Decision.DENY:
            return await self._commands.create(
                actor=actor, command=command, decision=decision, status=CommandStatus.DENIED
            )
        if decision.decision is Decision.QUEUE:
            return (await self._queue_set(actor=actor, queued=[(probe, command, decision)]))[0]
        run = await self._commands.create(
            actor=actor, command=command, decision=decision, status=CommandStatus.DISPATCHED
        )
        try:
            await self._hub.dispatch(command)
        except ProbeUnavailable:
            await self._commands.fail(
                request_id=run.request_id, status=CommandStatus.ERROR, error_code="probe_unavailable",
                error=f"probe {probe.id} is not connected",
            )  # fmt: skip
            raise
        if not wait:
            return run
        if progress is not None:
            await progress(0, None, f"dispatched {command.kind} to {probe.hostname}")
        return await self.finish(run)

    async def finish(self, run: CommandRunRead) -> CommandRunRead:
        """Wait for a dispatched run's result (its timeout plus a grace period); past that it is ``timeout``."""
        if not self._hub.is_tracking(run.request_id):
            # Its result already came in (and is stored) before anyone waited for it.
            return await self._commands.get(run.request_id)
        limit = run.timeout_s + RESULT_GRACE_S
        finished = await self._hub.wait(run.request_id, timeout=limit)
        if finished is None:
            finished = await self._hub.expire(
                run.request_id, status=CommandStatus.TIMEOUT, error_code="result_timeout",
                error=f"no result from the probe within {limit:.0f}s",
            )  # fmt: skip
        return finished or await self._commands.get(run.request_id)

    def completions(self) -> Completions:
        """A waiter for many dispatched runs at once (what :meth:`finish` does for one, without a task each)."""
        return Completions(hub=self._hub, runs=self._commands, grace_s=RESULT_GRACE_S)

    def _commands_for(
        self, targets: Sequence[Target], request: CommandRequest, request_ids: Sequence[str] | None
    ) -> list[CommandPayload]:
        """A fresh payload (own nonce and expiry) per target, with the caller's request ids or new ones.

        Raises:
            InvalidRequest: If ``request_ids`` is given but not one distinct id per target.
        """
        if request_ids is None:
            fresh = request.model_copy(update={"request_id": None})
            return [self._payload(probe.id, fresh) for probe, _ in targets]
        if len(request_ids) != len(targets) or len(set(request_ids)) != len(request_ids):
            raise InvalidRequest("request_ids must be distinct, one per target", details={"field": "request_ids"})
        return [
            self._payload(probe.id, request.model_copy(update={"request_id": request_id}))
            for (probe, _), request_id in zip(targets, request_ids, strict=True)
        ]

    async def record_denied(
        self,
        *,
        actor: Principal,
        targets: Sequence[Target],
        request: CommandRequest,
        request_ids: Sequence[str] | None = None,
    ) -> list[CommandRunRead]:
        """Record ``request`` as ``denied`` on targets policy denied (one transaction; nothing is sent).

        ``request_ids`` (one per target) are the caller's own, chosen and stored before anything is recorded
        (a job run's), so a retried call finds the commands it already made; by default each gets a new one.

        Raises:
            PermissionDenied: If ``actor`` lacks ``command:exec``.
            InvalidRequest: If the command does not validate, or ``request_ids`` is not one distinct id per target.
        """
        self._require_exec(actor)
        commands = self._commands_for(targets, request, request_ids)
        runs = [
            NewRun(command, decision, CommandStatus.DENIED)
            for command, (_, decision) in zip(commands, targets, strict=True)
        ]
        return await self._commands.create_many(actor=actor, runs=runs) if runs else []

    async def start_many(
        self,
        *,
        actor: Principal,
        targets: Sequence[Target],
        request: CommandRequest,
        request_ids: Sequence[str] | None = None,
    ) -> list[CommandRunRead]:
        """Record and dispatch ``request`` on targets policy allowed: one transaction for every run and its audit
        event, one read of the signing keys, then each is signed and sent. Wait for each with :meth:`finish`.

        ``request_ids``: as for :meth:`record_denied`. A request id that already has a command fails the whole
        call (``Conflict``) before anything is sent.

        Returns:
            One run per target, in order: ``dispatched``, or ``error`` (``probe_unavailable`` or ``not_found``)
            when it could not be sent.

        Raises:
            PermissionDenied: If ``actor`` lacks ``command:exec``.
            InvalidRequest: If the command does not validate.
        """
        self._require_exec(actor)
        if not targets:
            return []
        commands = self._commands_for(targets, request, request_ids)
        runs = await self._commands.create_many(
            actor=actor,
            runs=[
                NewRun(command, decision, CommandStatus.DISPATCHED)
                for command, (_, decision) in zip(commands, targets, strict=True)
            ],
        )
        unsent = await self._send(commands)
        return [unsent.get(run.request_id, run) for run in runs]

    async def _send(self, commands: Sequence[CommandPayload], *, note: str = "") -> dict[str, CommandRunRead]:
        """Sign and send ``commands``; each one that could not be sent is finished as ``error`` saying why.

        Returns:
            The finished runs of the commands that were not sent, by request id.
        """
        failed = await self._hub.dispatch_many(commands)
        unsent: dict[str, CommandRunRead] = {}
        for command in commands:
            exc = failed.get(command.request_id)
            if exc is None:
                continue
            code = "probe_unavailable" if isinstance(exc, ProbeUnavailable) else exc.code
            unsent[command.request_id] = await self._commands.fail(
                request_id=command.request_id, status=CommandStatus.ERROR, error_code=code, error=note + exc.message
            ) or await self._commands.get(command.request_id)  # fmt: skip
        return unsent

    async def queue_many(
        self, *, actor: Principal, probe_ids: list[str], request: CommandRequest
    ) -> list[CommandRunRead]:
        """Queue ``request`` on several probes under ONE approval request (a fan-out's queued set).

        Policy is evaluated per target as :meth:`run` does: a target policy denies is recorded as ``denied``;
        every other target waits for the same approval, which (once approved) dispatches all of them once. Each
        target gets its own request id (``request.request_id`` is ignored).

        Raises:
            PermissionDenied: If ``actor`` lacks ``command:exec``.
            NotFound: If a probe does not exist.
            InvalidRequest: If the command does not validate or ``probe_ids`` is empty or repeats a probe.
        """
        self._require_exec(actor)
        if not probe_ids or len(set(probe_ids)) != len(probe_ids):
            raise InvalidRequest("probe_ids must be distinct and non-empty", details={"field": "probe_ids"})
        probes = await self._fleet.get_probes(probe_ids)
        decisions = await self.evaluate_many(actor=actor, probes=probes, request=request)
        targets = list(zip(probes, decisions, strict=True))
        denied = [t for t in targets if t[1].decision is Decision.DENY]
        queued = [t for t in targets if t[1].decision is not Decision.DENY]
        runs = await self.record_denied(actor=actor, targets=denied, request=request)
        return runs + await self.queue_targets(actor=actor, targets=queued, request=request)

    async def queue_targets(
        self,
        *,
        actor: Principal,
        targets: Sequence[Target],
        request: CommandRequest,
        request_ids: Sequence[str] | None = None,
    ) -> list[CommandRunRead]:
        """Queue ``request`` on targets policy queued, under ONE approval request; their runs are recorded in one
        transaction. Approving it dispatches every one of them once (:meth:`execute_approved`). ``request_ids``:
        as for :meth:`record_denied`.

        Raises:
            PermissionDenied: If ``actor`` lacks ``command:exec``.
            InvalidRequest: If the command does not validate.
        """
        self._require_exec(actor)
        if not targets:
            return []
        commands = self._commands_for(targets, request, request_ids)
        queued = [(probe, command, decision) for command, (probe, decision) in zip(commands, targets, strict=True)]
        return await self._queue_set(actor=actor, queued=queued)

    async def _queue_set(
        self, *, actor: Principal, queued: Sequence[tuple[ProbeRead, CommandPayload, PolicyDecision]]
    ) -> list[CommandRunRead]:
        """One approval for every queued command, and their runs recorded in one transaction."""
        probe, first, first_decision = queued[0]
        risk = max((d.risk for _, _, d in queued), key=lambda r: _RISKS.index(r) if r in _RISKS else len(_RISKS))
        where = probe.hostname if len(queued) == 1 else f"{len(queued)} probe(s)"
        approval = await self._approvals.request(
            requester=actor,
            probe_ids=[command.probe_id for _, command, _ in queued],
            action=_action(first),
            risk=risk,
            summary=f"{first.kind} on {where} needs approval (risk {risk})",
            policy=first_decision.model_dump(mode="json"),
        )
        runs = await self._commands.create_many(
            actor=actor,
            runs=[
                NewRun(command, decision, CommandStatus.PENDING_APPROVAL, approval.id, approval.payload_sha256)
                for _, command, decision in queued
            ],
        )
        return [run.model_copy(update={"approval_expires_at": approval.expires_at}) for run in runs]

    async def execute_approved(self, approval: ApprovalRead) -> None:
        """Run the commands an approval released, exactly as they were queued (the approval hook).

        The approval is consumed once, checked against the digest recorded when it was queued; then the released
        action is checked again against each waiting command run's own digest and target. A mismatch anywhere
        means the stored request was altered after it was queued, and that run does not run. One approval may
        cover several runs (a fan-out's queued set, see :meth:`queue_targets`): every one of them is dispatched,
        recorded in one transaction.
        """
        waiting = [
            (run, payload_sha256, approval_sha256)
            for run, payload_sha256, approval_sha256 in await self._commands.awaiting_approval(approval.id)
            if approval_sha256 is not None
        ]
        if not waiting:
            return
        expected = waiting[0][2]
        assert expected is not None
        released = await self._approvals.consume(
            approval_id=approval.id, expected_sha256=expected, consumer_ref=waiting[0][0].request_id
        )
        action = released.action
        targets = set(released.probe_ids)
        intact: list[CommandRunRead] = []
        for run, payload_sha256, approval_sha256 in waiting:
            digest = payload_digest(
                probe_id=run.probe_id, kind=str(action.get("kind")), spec=action.get("spec", {}),
                timeout_s=float(action.get("timeout_s", 0)),
            )  # fmt: skip
            if digest != payload_sha256 or approval_sha256 != expected or run.probe_id not in targets:
                await self._commands.fail(
                    request_id=run.request_id, status=CommandStatus.DENIED, error_code="approval_tampered",
                    error="the approved action differs from the queued command; it was not run",
                )  # fmt: skip
            else:
                intact.append(run)
        moved = await self._commands.mark_dispatched(
            request_ids=[run.request_id for run in intact], actor=f"approval:{approval.id}"
        )
        commands = [
            COMMAND_PAYLOAD_ADAPTER.validate_python(
                {**action, "request_id": run.request_id, **self._hub.signed_fields(run.probe_id)}
            )
            for run in moved
        ]
        await self._send(commands, note="approved, but not sent: ")

    async def _settle_pending(self, run: CommandRunRead) -> CommandRunRead:
        """A run still waiting for approval finishes when its approval was denied or expired."""
        if run.status is not CommandStatus.PENDING_APPROVAL or run.approval_id is None:
            return run
        approval = await self._approvals.get(run.approval_id)
        if approval.status in {"denied", "expired"}:
            return await self._commands.fail(
                request_id=run.request_id, status=CommandStatus.DENIED, error_code=f"approval_{approval.status}",
                error=f"approval {approval.id} was {approval.status}",
            ) or await self._commands.get(run.request_id)  # fmt: skip
        return run.model_copy(update={"approval_expires_at": approval.expires_at})

    async def result(self, *, request_id: str, wait_s: float = 0) -> CommandRunRead:
        """Fetch a run, optionally waiting up to ``wait_s`` seconds for it to finish.

        Raises:
            NotFound: If there is no run with that request id.
        """
        run = await self._settle_pending(await self._commands.get(request_id))
        if not run.finished and wait_s > 0:
            if self._hub.is_tracking(request_id):
                finished = await self._hub.wait(request_id, timeout=wait_s)
                if finished is not None:
                    return finished
            # Re-read: the result may have landed between the first read and the tracking check.
            run = await self._commands.get(request_id)
        return run

    async def cancel_if_running(self, *, actor: Principal, request_id: str) -> None:
        """Cancel the command if it exists and still runs (used when a waiting caller goes away)."""
        try:
            run = await self._commands.get(request_id)
        except NotFound:
            return
        if not run.finished:
            try:
                await self._hub.cancel(run)
            except ProbeUnavailable:
                return
            await self._commands.note_cancel(actor=actor, run=run)

    async def cancel(self, *, actor: Principal, request_id: str) -> CommandRunRead:
        """Ask the probe to cancel a running command (signed); returns the run as it stands.

        Raises:
            NotFound: If there is no run with that request id.
            InvalidRequest: If the run already finished.
            ProbeUnavailable: If its probe is not connected.
        """
        run = await self._commands.get(request_id)
        if run.finished:
            raise InvalidRequest(f"command {request_id} already finished ({run.status.value})")
        await self._hub.cancel(run)
        await self._commands.note_cancel(actor=actor, run=run)
        return run
