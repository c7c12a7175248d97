"""Job runs meet probes: send a queued run through the command flow, follow its command, finish the run.

Every run goes through :class:`~legator_mcp.flows.run_command.CommandFlow` as its job's owner, so the one policy
gate decides its admission (``allow`` → ``running``; ``queue`` → ``pending`` until a human approves; ``deny`` →
``denied``) and the command is signed, tracked and audited like any other.

A run's command id is fixed when the run is inserted. Sending looks the command up first: after a crash between
sending and recording, the command that exists is adopted instead of sent again. While a run is ``running`` on
this process its output is streamed into the database (:meth:`JobFlow.tap`); when its command finishes (or was
already finished, or its result was lost to a restart) :meth:`JobFlow.reconcile` moves the run to its final
state, and the job service queues the next attempt if it failed with attempts left.
"""

import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

import anyio
from pydantic import BaseModel, Field

from legator_mcp.approval.service import ApprovalService
from legator_mcp.commands.schemas import CommandRunRead, CommandStatus
from legator_mcp.db.base import utcnow
from legator_mcp.errors import InvalidRequest, LegatorError, NotFound, PermissionDenied, ProbeUnavailable
from legator_mcp.events.service import Event
from legator_mcp.fleet.schemas import ProbeRead
from legator_mcp.fleet.service import FleetService
from legator_mcp.flows.run_command import CommandFlow, CommandRequest, Target
from legator_mcp.jobs.schemas import (
    ACTIVE_STATUSES,
    JobCancelResult,
    JobRead,
    JobRunAction,
    JobRunQuery,
    JobRunRead,
    RunStatus,
)
from legator_mcp.jobs.service import JobDispatch, JobOutputChunk, JobService
from legator_mcp.policy.schemas import Decision
from legator_mcp.principal import Principal
from legator_probe.protocol import OutputChunkPayload

__all__ = ["ActiveRuns", "JobEvents", "JobFlow", "JobHub", "RunOutput"]

logger = logging.getLogger("legator.jobs")

RESULT_GRACE = timedelta(seconds=30)
"""How long after its timeout a sent command's result may still arrive before the run counts it lost."""

_FLUSH_CHUNKS = 64
_FLUSH_S = 0.25


class StreamItem(Protocol):
    """One item of a command's live stream (``gateway.hub.StreamItem``): an output chunk, or the final run."""

    @property
    def chunk(self) -> OutputChunkPayload | None: ...

    @property
    def run(self) -> CommandRunRead | None: ...


class JobHub(Protocol):
    """What the job flow needs from the probe hub (implemented by ``gateway.hub.Hub``)."""

    def is_tracking(self, request_id: str) -> bool: ...

    def stream(self, request_id: str) -> AsyncIterator[StreamItem]: ...

    async def expire(
        self, request_id: str, *, status: CommandStatus, error_code: str, error: str
    ) -> CommandRunRead | None: ...


class RunOutput(BaseModel):
    """Streamed output of a run from a cursor; call again with ``next_cursor`` for more."""

    run_id: str
    request_id: str
    status: RunStatus
    terminal: bool
    chunks: list[JobOutputChunk]
    next_cursor: int = Field(description="Pass back as cursor to continue after these chunks")
    output: str | None = Field(default=None, description="The run's final output (stdout then stderr), once final")


class ActiveRuns(BaseModel):
    """Active runs of a job after a bounded wait; ``completed`` when none is left."""

    job_id: str
    polled_at: datetime
    completed: bool
    active: int
    active_runs: list[JobRunRead]
    runs: list[JobRunRead] | None = None
    job: JobRead | None = None


class JobEvent(BaseModel):
    """A job lifecycle event with its position in this process's event log."""

    seq: int
    id: str
    type: str
    ts: datetime
    probe_id: str | None = None
    summary: str
    detail: dict[str, Any] | None = None


class JobEvents(BaseModel):
    """Job lifecycle events after a cursor, oldest first; pass ``next_since`` back as ``since``."""

    events: list[JobEvent]
    count: int
    next_since: int
    polled_at: datetime


def _reason(command: CommandRunRead) -> str | None:
    lines = [str(line) for line in command.rationale.get("rationale", [])]
    rules = [line for line in lines if line.startswith("rule ")]
    return (rules[-1] if rules else lines[-1] if lines else None) or None


def _output(command: CommandRunRead) -> str:
    if command.stderr and command.stdout:
        return command.stdout + ("" if command.stdout.endswith("\n") else "\n") + command.stderr
    return command.stdout or command.stderr


class JobFlow:
    """Send job runs, follow them to the end, and stop them."""

    def __init__(
        self,
        *,
        jobs: JobService,
        command_flow: CommandFlow,
        approvals: ApprovalService,
        hub: JobHub,
        fleet: FleetService,
    ) -> None:
        self._jobs = jobs
        self._fleet = fleet
        self._flow = command_flow
        self._approvals = approvals
        self._hub = hub
        self._spawn: Callable[[Callable[[], Coroutine[Any, Any, None]]], object] | None = None
        self._tapped: set[str] = set()
        self._tapped_requests: set[str] = set()
        self._activity = anyio.Event()
        self._settling: list[tuple[JobRunRead, CommandRunRead]] = []
        self._settler = False

    def attach(self, spawn: Callable[[Callable[[], Coroutine[Any, Any, None]]], object] | None) -> None:
        """Let the flow start background work (output taps) in the scheduler's task group, or stop it."""
        self._spawn = spawn

    def _touch(self) -> None:
        activity, self._activity = self._activity, anyio.Event()
        activity.set()

    # -- sending and following ----------------------------------------------------------------------------------

    async def dispatch(self, run_id: str) -> JobRunRead | None:
        """Send a queued run to its probe through the command flow (or adopt the command it already sent)."""
        return (await self.dispatch_many([run_id])).get(run_id)

    async def dispatch_many(self, run_ids: Sequence[str]) -> dict[str, JobRunRead | None]:
        """Send queued runs to their probes, one batch per job: one policy evaluation for all of a job's targets,
        one transaction for their command records (under the runs' own request ids), one read of the signing keys,
        then one transaction moving the runs to where their commands are. A run whose command may already exist
        (it was not inserted here, or a send of it was tried) adopts that command instead of sending it again.
        Runs that are no longer queued are reconciled; runs that no longer exist are left out.
        """
        done: dict[str, JobRunRead | None] = {}
        batches: dict[str, list[JobDispatch]] = {}
        for info in await self._jobs.dispatch_infos(run_ids):
            if info.run.status is RunStatus.QUEUED:
                batches.setdefault(info.run.job_id, []).append(info)
            else:
                done[info.run.id] = await self.reconcile(info.run.id)
        for batch in batches.values():
            done.update(await self._send_batch(batch))
        return done

    async def _send_batch(self, infos: Sequence[JobDispatch]) -> dict[str, JobRunRead | None]:
        """Send queued runs of ONE job (they share its command and owner)."""
        actor = infos[0].principal()
        request = CommandRequest(kind=infos[0].kind, spec=infos[0].spec, timeout_s=infos[0].timeout_s, stream=True)
        adopted: list[tuple[JobRunRead, CommandRunRead]] = []
        fresh: list[JobRunRead] = []
        for info in infos:
            # Consumed here, before anything is sent: after this, any later send of the run looks its command up.
            if not self._jobs.unsent_here(info.run.id):
                try:
                    adopted.append((info.run, await self._flow.result(request_id=info.run.request_id)))
                    continue
                except NotFound:
                    pass
            fresh.append(info.run)
        failed: list[tuple[JobRunRead, str]] = []
        if fresh:
            sent, failed = await self._send_fresh(actor, request, fresh)
            adopted.extend(sent)
        done = await self._adopt_many(adopted)
        moved = await self._jobs.transition_many(
            [(run.id, RunStatus.FAILED, {"error": error}) for run, error in failed]
        )
        self._touch()
        for (run, _), read in zip(failed, moved, strict=True):
            done[run.id] = read
        return done

    async def _send_fresh(
        self, actor: Principal, request: CommandRequest, runs: Sequence[JobRunRead]
    ) -> tuple[list[tuple[JobRunRead, CommandRunRead]], list[tuple[JobRunRead, str]]]:
        """Evaluate, record and send runs that have no command yet; returns (run, its command) and (run, error)."""
        failed: list[tuple[JobRunRead, str]] = []
        probes = await self._probes([run.probe_id for run in runs])
        failed.extend((run, f"probe {run.probe_id} not found") for run in runs if run.probe_id not in probes)
        runs = [run for run in runs if run.probe_id in probes]
        try:
            decisions = await self._flow.evaluate_many(
                actor=actor, probes=[probes[run.probe_id] for run in runs], request=request
            )
        except (InvalidRequest, PermissionDenied) as exc:
            return [], failed + [(run, f"{exc.code}: {exc.message}") for run in runs]
        by_decision: dict[Decision, list[tuple[JobRunRead, Target]]] = {}
        for run, decision in zip(runs, decisions, strict=True):
            by_decision.setdefault(decision.decision, []).append((run, (probes[run.probe_id], decision)))
        sent: list[tuple[JobRunRead, CommandRunRead]] = []
        for decision, group in by_decision.items():
            targets = [target for _, target in group]
            request_ids = [run.request_id for run, _ in group]
            try:
                if decision is Decision.DENY:
                    commands = await self._flow.record_denied(
                        actor=actor, targets=targets, request=request, request_ids=request_ids
                    )
                elif decision is Decision.QUEUE:
                    # One approval per run, as an operator approves or withdraws each run on its own.
                    commands = [
                        (await self._flow.queue_targets(actor=actor, targets=[target], request=request,
                                                        request_ids=[request_id]))[0]
                        for target, request_id in zip(targets, request_ids, strict=True)
                    ]  # fmt: skip
                else:
                    commands = await self._flow.start_many(
                        actor=actor, targets=targets, request=request, request_ids=request_ids
                    )
            except (InvalidRequest, PermissionDenied) as exc:
                failed.extend((run, f"{exc.code}: {exc.message}") for run, _ in group)
                continue
            for (run, _), command in zip(group, commands, strict=True):
                if command.status is CommandStatus.ERROR:
                    offline = command.error_code == "probe_unavailable"
                    failed.append((run, f"probe {run.probe_id} offline" if offline else command.error or "not sent"))
                else:
                    sent.append((run, command))
        return sent, failed

    async def _probes(self, probe_ids: Sequence[str]) -> dict[str, ProbeRead]:
        """The probes that exist among ``probe_ids``, by id (one read unless some are gone)."""
        try:
            return {probe.id: probe for probe in await self._fleet.get_probes(probe_ids)}
        except NotFound:
            found: dict[str, ProbeRead] = {}
            for probe_id in dict.fromkeys(probe_ids):
                try:
                    found[probe_id] = await self._fleet.get_probe(probe_id)
                except NotFound:
                    continue
            return found

    async def _finish(self, run: JobRunRead, to: RunStatus, **values: Any) -> JobRunRead | None:
        moved = await self._jobs.transition(run_id=run.id, to=to, **values)
        self._touch()
        return moved

    async def _adopt(self, run: JobRunRead, command: CommandRunRead) -> JobRunRead | None:
        """Bring a run in line with its command's state."""
        return (await self._adopt_many([(run, command)]))[run.id]

    async def _adopt_many(self, pairs: Sequence[tuple[JobRunRead, CommandRunRead]]) -> dict[str, JobRunRead | None]:
        """Bring runs in line with their commands' states: at most two transactions (admission, then the end)."""
        if not pairs:
            return {}
        admitted: list[tuple[str, RunStatus, dict[str, Any]]] = []
        for run, command in pairs:
            admission: dict[str, Any] = {
                "admission_decision": command.decision,
                "admission_reason": _reason(command),
                "admission_rationale": command.rationale,
                "approval_id": command.approval_id,
            }
            if command.status is CommandStatus.PENDING_APPROVAL:
                admitted.append((run.id, RunStatus.PENDING, admission))
            elif command.status is CommandStatus.DENIED:
                admitted.append((run.id, RunStatus.DENIED, {**admission, "error": command.error,
                                                            "output": command.error or ""}))  # fmt: skip
            elif run.status in {RunStatus.QUEUED, RunStatus.PENDING}:
                admitted.append((run.id, RunStatus.RUNNING, admission))
        moved = dict(
            zip((run_id for run_id, _, _ in admitted), await self._jobs.transition_many(admitted), strict=True)
        )
        done: dict[str, JobRunRead | None] = {}
        ended: list[tuple[str, RunStatus, dict[str, Any]]] = []
        unseen: list[JobRunRead] = []  # sent, but their result came in before the run was running
        for run, command in pairs:
            if run.id in moved:
                run = moved[run.id] or await self._jobs.get_run(run.id)
            status = command.status
            if status in {CommandStatus.PENDING_APPROVAL, CommandStatus.DENIED, CommandStatus.DISPATCHED}:
                if status is CommandStatus.DISPATCHED and run.status is RunStatus.RUNNING:
                    if self._hub.is_tracking(run.request_id):
                        self._start_tap(run)
                    else:
                        unseen.append(run)
                done[run.id] = run
                continue
            ok = status is CommandStatus.OK and command.exit_code in (0, None)
            to = (
                RunStatus.SUCCESS
                if ok
                else RunStatus.CANCELED
                if status is CommandStatus.CANCELED
                else RunStatus.FAILED
            )
            exit_note = f" (exit {command.exit_code})" if command.exit_code is not None else ""
            error = None if ok else command.error or f"command {status.value}{exit_note}"
            values = {"exit_code": command.exit_code, "output": _output(command),
                      "output_truncated": command.truncated, "error": error}  # fmt: skip
            ended.append((run.id, to, values))
        for (run_id, _, _), read in zip(ended, await self._jobs.transition_many(ended), strict=True):
            done[run_id] = read or await self._jobs.get_run(run_id)
        if admitted or ended:
            self._touch()
        finished: list[tuple[JobRunRead, CommandRunRead]] = []
        for run in unseen:
            command = await self._flow.result(request_id=run.request_id)
            if command.finished:
                finished.append((run, command))
        # A result not stored yet is published after it is, and the run is running by then (on_command_event).
        done.update(await self._adopt_many(finished))
        return done

    async def reconcile(self, run_id: str) -> JobRunRead | None:
        """Move an active run to where its command is; a command whose result can no longer come is lost."""
        try:
            run = await self._jobs.get_run(run_id)
        except NotFound:
            return None
        if run.status not in ACTIVE_STATUSES:
            return run
        try:
            # result() also settles a command whose approval was denied or expired.
            command = await self._flow.result(request_id=run.request_id)
        except NotFound:
            if run.status is RunStatus.QUEUED:
                return run
            return await self._finish(run, RunStatus.FAILED, error="its command record is missing")
        if command.status is CommandStatus.DISPATCHED and not self._hub.is_tracking(run.request_id):
            sent = command.dispatched_at or command.created_at
            if utcnow() > sent + timedelta(seconds=command.timeout_s) + RESULT_GRACE:
                lost = await self._hub.expire(
                    run.request_id, status=CommandStatus.LOST, error_code="result_lost",
                    error="control plane restarted: the command's result did not arrive in time",
                )  # fmt: skip
                command = lost or await self._flow.result(request_id=run.request_id)
        return await self._adopt(run, command)

    def following(self, run_id: str) -> bool:
        """Whether this process streams the run's command live (its tap will finish the run)."""
        return run_id in self._tapped

    def _start_tap(self, run: JobRunRead) -> None:
        if self._spawn is None or run.id in self._tapped or not self._hub.is_tracking(run.request_id):
            return
        self._tapped.add(run.id)
        self._tapped_requests.add(run.request_id)

        async def tap() -> None:
            try:
                await self.tap(run)
            finally:
                self._tapped.discard(run.id)
                self._tapped_requests.discard(run.request_id)

        self._spawn(tap)

    async def tap(self, run: JobRunRead) -> None:
        """Store a running run's streamed output as it arrives, then finish the run when its command does."""
        send, receive = anyio.create_memory_object_stream[StreamItem](1024)

        async def pump() -> None:
            async with send:
                async for item in self._hub.stream(run.request_id):
                    await send.send(item)

        last_seq = -1
        final: CommandRunRead | None = None
        buffer: list[JobOutputChunk] = []
        async with anyio.create_task_group() as group, receive:
            group.start_soon(pump)
            closed = False
            while not closed:
                item: StreamItem | None = None
                with anyio.move_on_after(_FLUSH_S):
                    try:
                        item = await receive.receive()
                    except anyio.EndOfStream:
                        closed = True
                if item is not None and item.run is not None:
                    final = item.run
                if item is not None and item.chunk is not None and item.chunk.seq > last_seq:
                    last_seq = item.chunk.seq
                    buffer.append(JobOutputChunk(seq=item.chunk.seq, stream=item.chunk.stream, data=item.chunk.data))
                if buffer and (item is None or closed or item.run is not None or len(buffer) >= _FLUSH_CHUNKS):
                    try:
                        await self._jobs.add_output(run_id=run.id, chunks=buffer)
                    except LegatorError:
                        logger.exception("storing output of job run %s failed", run.id)
                    buffer = []
                    self._touch()
        if final is not None and final.finished:
            await self._settle(run.model_copy(update={"status": RunStatus.RUNNING}), final)
        else:
            await self.reconcile(run.id)

    async def _settle(self, run: JobRunRead, command: CommandRunRead) -> None:
        """Finish a run whose command finished: runs finishing together are moved in one transaction (what a fire's
        runs finishing at once would otherwise cost one write each)."""
        if self._spawn is None:
            await self._adopt(run, command)
            return
        self._settling.append((run, command))
        if not self._settler:
            self._settler = True
            self._spawn(self._settle_all)

    async def _settle_all(self) -> None:
        try:
            while self._settling:
                batch, self._settling = self._settling, []  # what arrives meanwhile is the next batch
                try:
                    await self._adopt_many(batch)
                except Exception:
                    # The sweep reconciles these runs with their commands; the traceback is logged.
                    logger.exception("finishing %d job run(s) failed", len(batch))
        finally:
            self._settler = False

    async def on_command_event(self, event: Event) -> None:
        """Follow a job command's change of state (approved and sent, finished) published on the bus."""
        request_id = str((event.detail or {}).get("request_id", ""))
        if not request_id.startswith("job-") or request_id in self._tapped_requests:
            return  # not a job's command, or its tap follows it to the end already
        run = await self._jobs.run_for_request(request_id)
        if run is not None and run.status in ACTIVE_STATUSES and run.status is not RunStatus.QUEUED:
            await self.reconcile(run.id)

    # -- operator actions ---------------------------------------------------------------------------------------

    async def _stop(self, actor: Principal, run: JobRunRead, previous: RunStatus) -> None:
        if previous is RunStatus.RUNNING:
            try:
                await self._flow.cancel(actor=actor, request_id=run.request_id)
            except (ProbeUnavailable, InvalidRequest, NotFound):
                logger.info("job run %s: its command could not be canceled on the probe", run.id)
        elif previous is RunStatus.PENDING and run.approval_id:
            owner = (await self._jobs.dispatch_info(run.id)).principal()
            try:
                await self._approvals.decide(
                    approver=owner, approval_id=run.approval_id, decision="denied",
                    reason=f"job run {run.id} was canceled by {actor.actor}",
                )  # fmt: skip
            except LegatorError:
                logger.info("job run %s: its approval request was already decided", run.id)
        self._touch()

    async def cancel_run(self, *, actor: Principal, job_id: str, run_id: str) -> JobRunAction:
        """Cancel a run: a running command is stopped on its probe, a waiting approval is withdrawn.

        Raises:
            NotFound: If there is no such run of that job.
            InvalidTransition: If the run already finished.
        """
        run, previous = await self._jobs.cancel_run(actor=actor, job_id=job_id, run_id=run_id)
        await self._stop(actor, run, previous)
        return JobRunAction(job_id=job_id, run=run)

    async def cancel_job(self, *, actor: Principal, job_id: str) -> JobCancelResult:
        """Cancel every active run of a job, stopping their commands.

        Raises:
            NotFound: If there is no such job.
        """
        result, canceled = await self._jobs.cancel_job(actor=actor, job_id=job_id)
        for run, previous in canceled:
            await self._stop(actor, run, previous)
        return result

    # -- waiting ------------------------------------------------------------------------------------------------

    async def poll_active(
        self, *, job_id: str, wait_s: float, include_runs: bool = True, include_job: bool = False
    ) -> ActiveRuns:
        """Wait up to ``wait_s`` seconds until a job has no active run.

        Raises:
            NotFound: If there is no such job.
        """
        job = await self._jobs.get_job(job_id)
        with anyio.move_on_after(max(wait_s, 0)):
            while await self._jobs.active_runs(job_id=job_id, limit=1):
                await self._jobs.event_log.wait(1.0)
        active = await self._jobs.active_runs(job_id=job_id)
        runs = None
        if include_runs:
            runs = (await self._jobs.list_runs(JobRunQuery(job_id=job_id, limit=50))).runs
        return ActiveRuns(
            job_id=job_id, polled_at=utcnow(), completed=not active, active=len(active), active_runs=active,
            runs=runs, job=job if include_job else None,
        )  # fmt: skip

    async def output(self, *, run_id: str, cursor: int, wait_s: float, max_chunks: int) -> RunOutput:
        """A run's streamed output from ``cursor``, waiting up to ``wait_s`` seconds for new chunks.

        Raises:
            NotFound: If there is no such run.
        """
        run = await self._jobs.get_run(run_id)
        chunks = await self._jobs.output(run_id=run_id, from_seq=cursor, limit=max_chunks)
        with anyio.move_on_after(max(wait_s, 0)):
            while not chunks and run.active:
                activity = self._activity
                with anyio.move_on_after(1.0):
                    await activity.wait()
                run = await self._jobs.get_run(run_id)
                chunks = await self._jobs.output(run_id=run_id, from_seq=cursor, limit=max_chunks)
        next_cursor = chunks[-1].seq + 1 if chunks else cursor
        return RunOutput(
            run_id=run.id, request_id=run.request_id, status=run.status, terminal=run.terminal, chunks=chunks,
            next_cursor=next_cursor, output=run.output if run.terminal else None,
        )  # fmt: skip

    async def events(self, *, filters: dict[str, Any], since: int, wait_s: float, limit: int) -> JobEvents:
        """Job lifecycle events after ``since`` matching ``filters``, long-polling up to ``wait_s`` seconds."""
        log = self._jobs.event_log
        found = log.since(since, filters, limit)
        with anyio.move_on_after(max(wait_s, 0)):
            while not found:
                await log.wait(wait_s)
                found = log.since(since, filters, limit)
        events = [JobEvent(seq=seq, **event.model_dump()) for seq, event in found]
        next_since = events[-1].seq if events else max(since, 0) if since <= log.last_seq else log.last_seq
        return JobEvents(events=events, count=len(events), next_since=next_since, polled_at=utcnow())
