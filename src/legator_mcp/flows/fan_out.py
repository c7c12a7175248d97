"""Run one command on many probes: resolve targets → policy per target → bounded, stoppable execution → summary.

Every target goes through :class:`~legator_mcp.flows.run_command.CommandFlow`, so the policy gate and the
audit trail apply to each host exactly as for a single command: allowed targets run, targets policy queues
wait together for ONE approval (:meth:`CommandFlow.queue_many`), denied targets are recorded and reported,
and targets that are not connected are reported as ``offline`` without anything being sent.

Persistence: each target's run is still recorded by :class:`~legator_mcp.commands.service.CommandService`
(one write when it is sent and one when its result arrives). Batching those writes is left for later.
"""

import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import anyio
from pydantic import BaseModel, ConfigDict, Field

from legator_mcp.commands.schemas import CommandRunRead
from legator_mcp.commands.service import new_request_id
from legator_mcp.errors import InvalidRequest, LegatorError, PermissionDenied, ProbeUnavailable
from legator_mcp.fleet.schemas import ProbeRead
from legator_mcp.fleet.service import FleetService
from legator_mcp.flows.run_command import CommandFlow, CommandRequest
from legator_mcp.policy.schemas import Decision
from legator_mcp.principal import Permission, Principal

__all__ = [
    "MAX_TARGETS",
    "FanOutFlow",
    "FanOutResult",
    "FanOutSummary",
    "OnResult",
    "TargetResult",
    "TargetSelector",
]

MAX_TARGETS = 10_000
"""The most probes one fan-out may address."""

_CANCEL_GRACE_S = 5.0


class TargetSelector(BaseModel):
    """Which probes a fan-out addresses; every given filter must match (ids, tag and labels are ANDed)."""

    model_config = ConfigDict(extra="forbid")

    probe_ids: list[str] | None = Field(default=None, min_length=1, max_length=MAX_TARGETS)
    tag: str | None = Field(default=None, min_length=1, max_length=64)
    selector: dict[str, str] | None = Field(
        default=None, min_length=1, description="Label key=value pairs a probe must all carry"
    )


class TargetResult(BaseModel):
    """What happened on one target."""

    probe_id: str
    hostname: str
    status: str = Field(
        description="ok, error, timeout, canceled, refused, lost, denied, pending_approval, dispatched, "
        "offline (nothing sent) or not_run (stopped early before it was scheduled)"
    )
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    duration_ms: int | None = None
    truncated: bool = False
    request_id: str | None = Field(default=None, description="Fetch it with GET /api/v1/commands/{requestId}")
    error_code: str | None = None
    approval_id: str | None = None

    @property
    def failed(self) -> bool:
        """Whether this result counts against ``max_errors`` (and fails a canary)."""
        return self.status not in {"ok", "pending_approval", "dispatched", "not_run", "denied", "offline"} or (
            self.status == "ok" and self.exit_code not in (0, None)
        )


class FanOutSummary(BaseModel):
    """Counts per outcome; ``failed`` includes non-zero exits, errors, refusals, cancellations and lost runs."""

    total: int = 0
    succeeded: int = 0
    failed: int = 0
    timed_out: int = 0
    denied: int = 0
    offline: int = 0
    pending_approval: int = 0
    not_run: int = 0
    dispatched: int = 0


class FanOutResult(BaseModel):
    """A fan-out's per-target results (in target order) and their summary."""

    fanout_id: str
    results: list[TargetResult]
    summary: FanOutSummary
    stopped_early: bool = False
    approval_id: str | None = Field(default=None, description="The one approval the queued targets wait for")


OnResult = Callable[[TargetResult, int, int], Awaitable[None]]
"""``(result, done, total)``: called as each target's outcome is known (progress reporting)."""


class ProbeLinks(Protocol):
    """What fan-out needs from the hub: whether a probe is connected."""

    def is_connected(self, probe_id: str) -> bool: ...


def summarise(results: Sequence[TargetResult]) -> FanOutSummary:
    """Count ``results`` by outcome."""
    summary = FanOutSummary(total=len(results))
    for result in results:
        if result.status == "ok" and result.exit_code in (0, None):
            summary.succeeded += 1
        elif result.status == "timeout":
            summary.timed_out += 1
        elif result.status in {"denied", "offline", "pending_approval", "not_run", "dispatched"}:
            name = result.status
            setattr(summary, name, getattr(summary, name) + 1)
        else:
            summary.failed += 1
    return summary


def _from_run(probe: ProbeRead, run: CommandRunRead) -> TargetResult:
    return TargetResult(
        probe_id=probe.id, hostname=probe.hostname, status=run.status.value, exit_code=run.exit_code,
        stdout=run.stdout, stderr=run.stderr, duration_ms=run.duration_ms, truncated=run.truncated,
        request_id=run.request_id, error_code=run.error_code, approval_id=run.approval_id,
    )  # fmt: skip


class _Run:
    """The mutable state of one fan-out while it executes."""

    def __init__(self, total: int, on_result: OnResult | None, max_errors: int | None) -> None:
        self.results: dict[str, TargetResult] = {}
        self.total = total
        self.errors = 0
        self.max_errors = max_errors
        self.stopped = False
        self._on_result = on_result

    @property
    def over_budget(self) -> bool:
        return self.stopped or (self.max_errors is not None and self.errors > self.max_errors)

    async def record(self, result: TargetResult) -> None:
        self.results[result.probe_id] = result
        if result.failed:
            self.errors += 1
        if self._on_result is not None:
            await self._on_result(result, len(self.results), self.total)


class FanOutFlow:
    """Run a command on a set of probes through the command flow, bounded and stoppable."""

    def __init__(self, *, fleet: FleetService, command_flow: CommandFlow, links: ProbeLinks) -> None:
        self._fleet = fleet
        self._flow = command_flow
        self._links = links

    async def resolve(self, targets: TargetSelector) -> list[ProbeRead]:
        """The probes ``targets`` selects, in a stable order (the given ids' order, else by id).

        Raises:
            InvalidRequest: If no filter is given or more than :data:`MAX_TARGETS` probes match.
            NotFound: If a listed probe id does not exist.
        """
        if targets.probe_ids is None and targets.tag is None and targets.selector is None:
            raise InvalidRequest("give probe_ids, a tag or a label selector", details={"field": "targets"})
        if targets.probe_ids is not None:
            probes = [await self._fleet.get_probe(probe_id) for probe_id in dict.fromkeys(targets.probe_ids)]
        elif targets.tag is not None:
            probes = await self._fleet.by_tag(targets.tag)
        else:
            probes = []
            cursor: str | None = None
            while True:
                page = await self._fleet.list_probes(limit=500, cursor=cursor)
                probes.extend(page.probes)
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor
        if targets.tag is not None:
            probes = [p for p in probes if targets.tag in p.tags]
        if targets.selector is not None:
            wanted = targets.selector.items()
            probes = [p for p in probes if all(p.labels.get(key) == value for key, value in wanted)]
        if len(probes) > MAX_TARGETS:
            raise InvalidRequest(f"a fan-out addresses at most {MAX_TARGETS} probes", details={"field": "targets"})
        return probes

    async def run(
        self,
        *,
        actor: Principal,
        targets: TargetSelector,
        request: CommandRequest,
        wait: bool,
        max_concurrency: int = 10,
        max_errors: int | None = None,
        canary: int = 0,
        on_result: OnResult | None = None,
    ) -> FanOutResult:
        """Run ``request`` on every selected probe that policy allows.

        Args:
            actor: Who asks; needs ``command:exec``; policy is evaluated for them on each target.
            targets: Which probes.
            request: The command (its ``request_id`` is ignored: each target gets its own).
            wait: Wait for every allowed target's result; otherwise return once each is dispatched.
            max_concurrency: At most this many commands in flight at once (with ``wait``; without it, at most
                this many dispatches at once).
            max_errors: Stop scheduling new targets once more than this many failed (``wait`` only); the ones
                never started are reported as ``not_run``.
            canary: Run the first N allowed targets first and stop if any of them fails (``wait`` only).
            on_result: Called as each target's outcome becomes known.

        Returns:
            One result per selected probe, in target order, with a summary. Queued targets are
            ``pending_approval`` under the single ``approval_id``; approving it runs all of them once.

        Raises:
            PermissionDenied: If ``actor`` lacks ``command:exec``.
            InvalidRequest: If the options, targets or command are invalid.
            NotFound: If a listed probe does not exist.
        """
        if not actor.has(Permission.COMMAND_EXEC):
            raise PermissionDenied(
                "running commands needs command:exec", details={"required_permission": "command:exec"}
            )
        if max_concurrency < 1 or canary < 0 or (max_errors is not None and max_errors < 0):
            raise InvalidRequest("max_concurrency must be >= 1, canary and max_errors >= 0")
        if not wait and (canary or max_errors is not None):
            raise InvalidRequest("canary and max_errors need wait=true (they depend on results)")
        probes = await self.resolve(targets)
        state = _Run(len(probes), on_result, max_errors)
        allowed: list[ProbeRead] = []
        denied: list[ProbeRead] = []
        queued: list[ProbeRead] = []
        for probe in probes:
            if not self._links.is_connected(probe.id):
                await state.record(
                    TargetResult(probe_id=probe.id, hostname=probe.hostname, status="offline",
                                 error_code="probe_offline")
                )  # fmt: skip
                continue
            decision = await self._flow.evaluate(actor=actor, probe_id=probe.id, request=request)
            {Decision.ALLOW: allowed, Decision.DENY: denied, Decision.QUEUE: queued}[decision.decision].append(probe)
        for probe in denied:
            await self._run_one(actor, probe, request, wait=False, state=state)
        approval_id = await self._queue(actor, queued, request, state)
        if wait:
            first, rest = allowed[:canary], allowed[canary:]
            await self._batch(actor, first, request, state, max_concurrency)
            if first and any(state.results[p.id].failed for p in first):
                state.stopped = True
            await self._batch(actor, rest, request, state, max_concurrency)
        else:
            await self._batch(actor, allowed, request, state, max_concurrency, wait=False)
        not_run = [p for p in probes if p.id not in state.results]
        for probe in not_run:
            await state.record(TargetResult(probe_id=probe.id, hostname=probe.hostname, status="not_run"))
        results = [state.results[p.id] for p in probes]
        return FanOutResult(
            fanout_id="fan-" + secrets.token_hex(8),
            results=results,
            summary=summarise(results),
            stopped_early=bool(not_run),
            approval_id=approval_id,
        )

    async def _queue(
        self, actor: Principal, queued: list[ProbeRead], request: CommandRequest, state: _Run
    ) -> str | None:
        if not queued:
            return None
        by_id = {p.id: p for p in queued}
        runs = await self._flow.queue_many(actor=actor, probe_ids=list(by_id), request=request)
        approval_id: str | None = None
        for run in runs:
            approval_id = approval_id or run.approval_id
            await state.record(_from_run(by_id[run.probe_id], run))
        return approval_id

    async def _batch(
        self,
        actor: Principal,
        probes: list[ProbeRead],
        request: CommandRequest,
        state: _Run,
        max_concurrency: int,
        *,
        wait: bool = True,
    ) -> None:
        slots = anyio.Semaphore(max_concurrency)

        async def one(probe: ProbeRead) -> None:
            try:
                await self._run_one(actor, probe, request, wait=wait, state=state)
            finally:
                slots.release()

        async with anyio.create_task_group() as tg:
            for probe in probes:
                await slots.acquire()
                if state.over_budget:
                    slots.release()
                    break
                tg.start_soon(one, probe)

    async def _run_one(
        self, actor: Principal, probe: ProbeRead, request: CommandRequest, *, wait: bool, state: _Run
    ) -> None:
        request_id = new_request_id()
        try:
            run = await self._flow.run(
                actor=actor, probe_id=probe.id, request=request.model_copy(update={"request_id": request_id}),
                wait=wait,
            )  # fmt: skip
        except ProbeUnavailable:
            result = TargetResult(
                probe_id=probe.id, hostname=probe.hostname, status="offline", request_id=request_id,
                error_code="probe_unavailable",
            )  # fmt: skip
        except LegatorError as exc:
            # One target's failure (its probe was deleted meanwhile, …) is that target's result, not the fan-out's.
            result = TargetResult(
                probe_id=probe.id, hostname=probe.hostname, status="error", request_id=request_id, error_code=exc.code
            )
        except anyio.get_cancelled_exc_class():
            # The caller went away (MCP cancellation, shutdown): stop the command on the probe as well.
            with anyio.CancelScope(shield=True), anyio.move_on_after(_CANCEL_GRACE_S):
                await self._flow.cancel_if_running(actor=actor, request_id=request_id)
            raise
        else:
            result = _from_run(probe, run)
        await state.record(result)
