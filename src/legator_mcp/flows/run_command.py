"""Run one command on one probe: authorise → evaluate policy → record → sign and dispatch → track → result.

Every surface that runs a command (REST, MCP tools, jobs, fan-out, packs) goes through :class:`CommandFlow`,
so the policy gate and the audit trail cannot be skipped.
"""

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from pydantic import BaseModel

from legator_mcp.approval.schemas import ApprovalRead
from legator_mcp.approval.service import ApprovalService
from legator_mcp.commands.schemas import CommandRunRead, CommandStatus
from legator_mcp.commands.service import CommandService, new_request_id, payload_digest
from legator_mcp.errors import InvalidRequest, NotFound, PermissionDenied, ProbeUnavailable
from legator_mcp.fleet.service import FleetService
from legator_mcp.policy.schemas import Decision, PolicyDecision
from legator_mcp.policy.service import PolicyService
from legator_mcp.principal import Permission, Principal
from legator_probe.protocol import COMMAND_PAYLOAD_ADAPTER, CommandPayload
from legator_probe.protocol.commands import DEFAULT_MAX_OUTPUT_BYTES, DEFAULT_TIMEOUT_S

__all__ = ["CommandFlow", "CommandRequest", "ProbeDispatcher", "Progress"]

Progress = Callable[[float, float | None, str], Awaitable[None]]
"""``(progress, total, message)`` callback for long waits (MCP progress notifications)."""

RESULT_GRACE_S = 5.0
"""How much longer than the command's own timeout a waiter waits for the probe's result."""


class ProbeDispatcher(Protocol):
    """What the flow needs from the probe hub (implemented by ``gateway.hub.Hub``)."""

    def signed_fields(self, probe_id: str) -> dict[str, Any]: ...

    async def dispatch(self, command: CommandPayload) -> None: ...

    async def wait(self, request_id: str, *, timeout: float) -> CommandRunRead | None: ...

    async def expire(
        self, request_id: str, *, status: CommandStatus, error_code: str, error: str
    ) -> CommandRunRead | None: ...

    def is_tracking(self, request_id: str) -> bool: ...

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
        if not actor.has(Permission.COMMAND_EXEC):
            raise PermissionDenied(
                "running commands needs command:exec", details={"required_permission": "command:exec"}
            )
        probe = await self._fleet.get_probe(probe_id)
        command = self._payload(probe.id, request)
        decision = await self._policy.evaluate(
            principal=actor,
            probe_level=probe.policy_level,
            policy_id=probe.policy_id,
            kind=command.kind,
            spec=command.spec.model_dump(mode="json"),
        )
        if decision.decision is Decision.DENY:
            return await self._commands.create(
                actor=actor, command=command, decision=decision, status=CommandStatus.DENIED
            )
        if decision.decision is Decision.QUEUE:
            return await self._queue(actor=actor, probe_hostname=probe.hostname, command=command, decision=decision)
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
        finished = await self._hub.wait(command.request_id, timeout=command.timeout_s + RESULT_GRACE_S)
        if finished is None:
            finished = await self._hub.expire(
                command.request_id, status=CommandStatus.TIMEOUT, error_code="result_timeout",
                error=f"no result from the probe within {command.timeout_s + RESULT_GRACE_S:.0f}s",
            )  # fmt: skip
        return finished or await self._commands.get(command.request_id)

    async def _queue(
        self, *, actor: Principal, probe_hostname: str, command: CommandPayload, decision: PolicyDecision
    ) -> CommandRunRead:
        action = _action(command)
        approval = await self._approvals.request(
            requester=actor,
            probe_ids=[command.probe_id],
            action=action,
            risk=decision.risk,
            summary=f"{command.kind} on {probe_hostname} needs approval (risk {decision.risk})",
            policy=decision.model_dump(mode="json"),
        )
        run = await self._commands.create(
            actor=actor, command=command, decision=decision, status=CommandStatus.PENDING_APPROVAL,
            approval_id=approval.id, approval_sha256=approval.payload_sha256,
        )  # fmt: skip
        return run.model_copy(update={"approval_expires_at": approval.expires_at})

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
        if not actor.has(Permission.COMMAND_EXEC):
            raise PermissionDenied(
                "running commands needs command:exec", details={"required_permission": "command:exec"}
            )
        if not probe_ids or len(set(probe_ids)) != len(probe_ids):
            raise InvalidRequest("probe_ids must be distinct and non-empty", details={"field": "probe_ids"})
        runs: list[CommandRunRead] = []
        queued: list[tuple[CommandPayload, PolicyDecision]] = []
        for probe_id in probe_ids:
            probe = await self._fleet.get_probe(probe_id)
            command = self._payload(probe.id, request.model_copy(update={"request_id": None}))
            decision = await self._policy.evaluate(
                principal=actor, probe_level=probe.policy_level, policy_id=probe.policy_id, kind=command.kind,
                spec=command.spec.model_dump(mode="json"),
            )  # fmt: skip
            if decision.decision is Decision.DENY:
                runs.append(
                    await self._commands.create(
                        actor=actor, command=command, decision=decision, status=CommandStatus.DENIED
                    )
                )
            else:
                queued.append((command, decision))
        if not queued:
            return runs
        first, first_decision = queued[0]
        risks = ["low", "medium", "high", "critical"]
        risk = max((d.risk for _, d in queued), key=lambda r: risks.index(r) if r in risks else len(risks))
        approval = await self._approvals.request(
            requester=actor,
            probe_ids=[command.probe_id for command, _ in queued],
            action=_action(first),
            risk=risk,
            summary=f"{first.kind} on {len(queued)} probe(s) needs approval (risk {risk})",
            policy=first_decision.model_dump(mode="json"),
        )
        for command, decision in queued:
            run = await self._commands.create(
                actor=actor, command=command, decision=decision, status=CommandStatus.PENDING_APPROVAL,
                approval_id=approval.id, approval_sha256=approval.payload_sha256,
            )  # fmt: skip
            runs.append(run.model_copy(update={"approval_expires_at": approval.expires_at}))
        return runs

    async def execute_approved(self, approval: ApprovalRead) -> None:
        """Run the commands an approval released, exactly as they were queued (the approval hook).

        The approval is consumed once, checked against the digest recorded when it was queued; then the released
        action is checked again against each waiting command run's own digest and target. A mismatch anywhere
        means the stored request was altered after it was queued, and that run does not run. One approval may
        cover several runs (a fan-out's queued set, see :meth:`queue_many`): every one of them is dispatched.
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
                continue
            command = COMMAND_PAYLOAD_ADAPTER.validate_python(
                {**action, "request_id": run.request_id, **self._hub.signed_fields(run.probe_id)}
            )
            await self._commands.mark_dispatched(request_id=run.request_id, actor=f"approval:{approval.id}")
            try:
                await self._hub.dispatch(command)
            except ProbeUnavailable:
                await self._commands.fail(
                    request_id=run.request_id, status=CommandStatus.ERROR, error_code="probe_unavailable",
                    error=f"approved, but probe {run.probe_id} is not connected",
                )  # fmt: skip

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
