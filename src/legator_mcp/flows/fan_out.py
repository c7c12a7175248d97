"""Run one command on many probes: resolve targets → policy per target → bounded, stoppable execution → summary.

Every target goes through :class:`~legator_mcp.flows.run_command.CommandFlow`, so the policy gate and the
audit trail apply to each host exactly as for a single command: allowed targets run, targets policy queues
wait together for ONE approval (:meth:`CommandFlow.queue_many`), denied targets are recorded and reported,
and targets that are not connected are reported as ``offline`` without anything being sent.

Persistence is batched, so the hot path has no per-host round trip: every target is evaluated with one
classification and one read of the templates; the denied, the queued and each wave of allowed targets are
recorded (runs and audit events) in one transaction per group and signed with one read of the signing keys;
results are written by group commit (:meth:`~legator_mcp.commands.service.CommandService.record_result`), a
transaction per batch of results that arrive together. A result is committed before its waiter sees it, so
``wait=True`` returns durable results.
"""

import secrets
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import anyio
from pydantic import BaseModel, ConfigDict, Field

from legator_mcp.commands.schemas import CommandRunRead, CommandStatus
from legator_mcp.errors import InvalidRequest, PermissionDenied
from legator_mcp.fleet.schemas import ProbeRead
from legator_mcp.fleet.service import FleetService
from legator_mcp.flows.run_command import CommandFlow, CommandRequest, Target
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
    # A probe that went away between the check and the send is reported like one that was away all along.
    unreachable = run.status is CommandStatus.ERROR and run.error_code == "probe_unavailable" and run.exit_code is None
    return TargetResult(
        probe_id=probe.id, hostname=probe.hostname, status="offline" if unreachable else run.status.value,
        exit_code=run.exit_code, stdout=run.stdout, stderr=run.stderr, duration_ms=run.duration_ms,
        truncated=run.truncated, request_id=run.request_id, error_code=run.error_code, approval_id=run.approval_id,
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
            probes = await self._fleet.get_probes(targets.probe_ids)
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
        live: list[ProbeRead] = []
        for probe in probes:
            if self._links.is_connected(probe.id):
                live.append(probe)
            else:
                await state.record(
                    TargetResult(probe_id=probe.id, hostname=probe.hostname, status="offline",
                                 error_code="probe_offline")
                )  # fmt: skip
        decisions = await self._flow.evaluate_many(actor=actor, probes=live, request=request)
        grouped: dict[Decision, list[Target]] = {outcome: [] for outcome in Decision}
        for probe, decision in zip(live, decisions, strict=True):
            grouped[decision.decision].append((probe, decision))
        denied = await self._flow.record_denied(actor=actor, targets=grouped[Decision.DENY], request=request)
        await self._record_runs(grouped[Decision.DENY], denied, state)
        queued = await self._flow.queue_targets(actor=actor, targets=grouped[Decision.QUEUE], request=request)
        await self._record_runs(grouped[Decision.QUEUE], queued, state)
        allowed = grouped[Decision.ALLOW]
        if wait:
            first, rest = allowed[:canary], allowed[canary:]
            await self._window(actor, first, request, state, max_concurrency)
            if first and any(state.results[probe.id].failed for probe, _ in first):
                state.stopped = True
            await self._window(actor, rest, request, state, max_concurrency)
        else:
            for start in range(0, len(allowed), max_concurrency):
                wave = allowed[start : start + max_concurrency]
                await self._record_runs(
                    wave, await self._flow.start_many(actor=actor, targets=wave, request=request), state
                )
        not_run = [p for p in probes if p.id not in state.results]
        for probe in not_run:
            await state.record(TargetResult(probe_id=probe.id, hostname=probe.hostname, status="not_run"))
        results = [state.results[p.id] for p in probes]
        return FanOutResult(
            fanout_id="fan-" + secrets.token_hex(8),
            results=results,
            summary=summarise(results),
            stopped_early=bool(not_run),
            approval_id=next((run.approval_id for run in queued if run.approval_id), None),
        )

    async def _record_runs(self, targets: Sequence[Target], runs: Sequence[CommandRunRead], state: _Run) -> None:
        for (probe, _), run in zip(targets, runs, strict=True):
            await state.record(_from_run(probe, run))

    async def _window(
        self, actor: Principal, targets: list[Target], request: CommandRequest, state: _Run, max_concurrency: int
    ) -> None:
        """Keep up to ``max_concurrency`` commands in flight until every target ran or the error budget is spent.

        Free slots are filled together: each wave of targets is recorded and dispatched in one go
        (:meth:`CommandFlow.start_many`), and results that complete together free their slots together.
        """
        pending = deque(targets)
        probes: dict[str, ProbeRead] = {}
        free = max_concurrency
        with self._flow.completions() as completions:
            try:
                while True:
                    if pending and free and not state.over_budget:
                        wave = [pending.popleft() for _ in range(min(free, len(pending)))]
                        free -= len(wave)
                        runs: list[CommandRunRead] = []
                        # Shielded so every command sent is known here before a cancellation can land.
                        with anyio.CancelScope(shield=True):
                            runs = await self._flow.start_many(actor=actor, targets=wave, request=request)
                            for (probe, _), run in zip(wave, runs, strict=True):
                                if run.status is CommandStatus.DISPATCHED:
                                    probes[run.request_id] = probe
                                    completions.add(run)
                        for (probe, _), run in zip(wave, runs, strict=True):
                            if run.status is not CommandStatus.DISPATCHED:
                                await state.record(_from_run(probe, run))
                                free += 1
                        continue
                    if not completions:
                        break
                    for request_id, run in (await completions.next()).items():
                        probe = probes.pop(request_id)
                        free += 1
                        await state.record(
                            _from_run(probe, run) if run is not None else TargetResult(
                                probe_id=probe.id, hostname=probe.hostname, status="error", request_id=request_id,
                                error_code="not_found",
                            )
                        )  # fmt: skip
            except anyio.get_cancelled_exc_class():
                # The caller went away (MCP cancellation, shutdown): stop the commands on the probes as well.
                with anyio.CancelScope(shield=True), anyio.move_on_after(_CANCEL_GRACE_S):
                    async with anyio.create_task_group() as cancelling:
                        for request_id in sorted(completions.pending):
                            cancelling.start_soon(self._cancel, actor, request_id)
                raise

    async def _cancel(self, actor: Principal, request_id: str) -> None:
        await self._flow.cancel_if_running(actor=actor, request_id=request_id)
