"""Command runs as durable records: created with their policy decision, completed with the probe's result."""

import hashlib
import json
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from legator_mcp.audit.service import AuditEntry, AuditService
from legator_mcp.commands.models import CommandRun
from legator_mcp.commands.schemas import TERMINAL_STATUSES, CommandRunRead, CommandStatus
from legator_mcp.commands.store import CommandStore
from legator_mcp.db.base import utcnow
from legator_mcp.db.group_commit import GroupCommit
from legator_mcp.db.session import Database
from legator_mcp.errors import NotFound
from legator_mcp.events.service import EventBus
from legator_mcp.policy.schemas import PolicyDecision
from legator_mcp.principal import Principal, PrincipalKind
from legator_probe.protocol import CommandPayload, CommandResultPayload
from legator_probe.protocol.sanitize import sanitize, sanitize_mapping

__all__ = ["STORED_OUTPUT_BYTES", "CommandService", "NewRun", "new_request_id", "payload_digest", "stored_spec"]

STORED_OUTPUT_BYTES = 256 * 1024
"""How much of each of stdout and stderr is kept in the database (the full sizes are kept too)."""

_WRITE_PREVIEW_CHARS = 200

_CREATED_AUDIT = {
    CommandStatus.DISPATCHED: "command.sent",
    CommandStatus.DENIED: "command.denied",
    CommandStatus.PENDING_APPROVAL: "command.queued",
}


@dataclass(frozen=True)
class NewRun:
    """A command to record with its policy decision: ``dispatched``, ``denied`` or ``pending_approval``."""

    command: CommandPayload
    decision: PolicyDecision
    status: CommandStatus
    approval_id: str | None = None
    approval_sha256: str | None = None
    origin_request_id: str | None = None


def new_request_id() -> str:
    """Return a fresh, unguessable command handle."""
    return "cmd-" + secrets.token_hex(10)


def payload_digest(*, probe_id: str, kind: str, spec: Mapping[str, Any], timeout_s: float) -> str:
    """SHA-256 of the canonical command: what an approval binds to and what the audit log names."""
    canonical = json.dumps(
        {"probe_id": probe_id, "kind": kind, "spec": spec, "timeout_s": timeout_s},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def stored_spec(kind: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec as it is stored and shown: sanitised, and a file's content reduced to a digest and preview."""
    shown = dict(spec)
    if kind == "file_write" and isinstance(shown.get("content"), str):
        content: str = shown["content"]
        shown["content"] = {
            "sha256": hashlib.sha256(content.encode()).hexdigest(),
            "chars": len(content),
            "preview": content[:_WRITE_PREVIEW_CHARS],
        }
    return sanitize_mapping(shown)


def _cap(text: str) -> tuple[str, bool]:
    raw = text.encode()
    if len(raw) <= STORED_OUTPUT_BYTES:
        return text, False
    return raw[:STORED_OUTPUT_BYTES].decode(errors="ignore"), True


def _completion(result: CommandResultPayload, now: datetime) -> dict[str, Any]:
    """The columns a probe's final result sets: its outcome and its output, redacted and capped."""
    stdout, cut_out = _cap(sanitize(result.stdout))
    stderr, cut_err = _cap(sanitize(result.stderr))
    return {
        "status": result.status,
        "exit_code": result.exit_code,
        "stdout": stdout,
        "stderr": stderr,
        "stdout_bytes": max(result.stdout_bytes, len(result.stdout.encode())),
        "stderr_bytes": max(result.stderr_bytes, len(result.stderr.encode())),
        "truncated": result.truncated or cut_out or cut_err,
        "duration_ms": result.duration_ms,
        "error_code": result.error_code,
        "error": sanitize(result.error) if result.error else None,
        "data": sanitize_mapping(result.data) if result.data else None,
        "finished_at": now,
    }


def _read(row: CommandRun) -> CommandRunRead:
    return CommandRunRead(
        request_id=row.request_id,
        probe_id=row.probe_id,
        kind=row.kind,
        spec=row.spec,
        status=CommandStatus(row.status),
        decision=row.decision,
        risk=row.risk,
        required_level=row.required_level,
        rationale=row.rationale,
        approval_id=row.approval_id,
        requested_by=row.requested_by,
        exit_code=row.exit_code,
        stdout=row.stdout,
        stderr=row.stderr,
        stdout_bytes=row.stdout_bytes,
        stderr_bytes=row.stderr_bytes,
        truncated=row.truncated,
        duration_ms=row.duration_ms,
        error_code=row.error_code,
        error=row.error,
        data=row.data,
        timeout_s=row.timeout_s,
        created_at=row.created_at,
        dispatched_at=row.dispatched_at,
        finished_at=row.finished_at,
    )


class CommandService:
    """Create, complete and look up command runs; each change is audited in the same transaction."""

    def __init__(
        self,
        *,
        database: Database,
        audit: AuditService,
        events: EventBus,
        store: CommandStore | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._db = database
        self._audit = audit
        self._events = events
        self._store = store or CommandStore()
        self._clock = clock
        self._results = GroupCommit[tuple[str, str], tuple[str, CommandResultPayload], CommandRunRead](
            self._write_results
        )

    async def create(
        self,
        *,
        actor: Principal,
        command: CommandPayload,
        decision: PolicyDecision,
        status: CommandStatus,
        approval_id: str | None = None,
        approval_sha256: str | None = None,
        origin_request_id: str | None = None,
    ) -> CommandRunRead:
        """Record a requested command with its policy decision (``dispatched``, ``denied`` or ``pending_approval``).

        Raises:
            Conflict: If the request id is already used.
        """
        run = NewRun(command, decision, status, approval_id, approval_sha256, origin_request_id)
        return (await self.create_many(actor=actor, runs=[run]))[0]

    async def create_many(self, *, actor: Principal, runs: Sequence[NewRun]) -> list[CommandRunRead]:
        """Record several requested commands, and their audit events, in ONE transaction.

        Returns:
            The runs, in the order given.

        Raises:
            Conflict: If a request id is already used (then none is recorded).
        """
        now = self._clock()
        shown: dict[str, dict[str, Any]] = {}
        dumped: dict[int, dict[str, Any]] = {}
        rows: list[dict[str, Any]] = []
        for run in runs:
            # A fan-out's runs share the command and usually the decision: redact and dump each once per batch.
            spec = run.command.spec.model_dump(mode="json")
            key = run.command.kind + json.dumps(spec, sort_keys=True)
            if key not in shown:
                shown[key] = stored_spec(run.command.kind, spec)
            if id(run.decision) not in dumped:
                dumped[id(run.decision)] = run.decision.model_dump(mode="json")
            rows.append(self._values(actor, run, now, spec=spec, shown=shown[key], rationale=dumped[id(run.decision)]))
        async with self._db.write() as session:
            await self._store.insert_many(session, rows)
            await self._audit.record_many(
                [
                    AuditEntry(
                        type=_CREATED_AUDIT[run.status], actor=actor, probe_id=row["probe_id"],
                        summary=f"{row['kind']} command {run.status.value} "
                        f"(risk {run.decision.risk})",
                        detail={
                            "request_id": row["request_id"], "kind": row["kind"], "spec": row["spec"],
                            "payload_sha256": row["payload_sha256"], "decision": run.decision.decision.value,
                            "risk": run.decision.risk, "required_level": run.decision.required_level,
                            "rationale": run.decision.rationale,
                        },
                    )
                    for run, row in zip(runs, rows, strict=True)
                ],
                session=session,
            )  # fmt: skip
        reads = [CommandRunRead.model_validate(row) for row in rows]
        for read in reads:
            self._events.publish(
                "command.dispatched" if read.status is CommandStatus.DISPATCHED else f"command.{read.status.value}",
                summary=f"{read.kind} command {read.request_id} {read.status.value}",
                probe_id=read.probe_id,
                detail={"request_id": read.request_id},
            )
        return reads

    @staticmethod
    def _values(
        actor: Principal,
        run: NewRun,
        now: datetime,
        *,
        spec: dict[str, Any],
        shown: dict[str, Any],
        rationale: dict[str, Any],
    ) -> dict[str, Any]:
        """The ``command_runs`` row for ``run``: ``spec`` as sent, ``shown`` as stored, ``rationale`` dumped."""
        command, decision, status = run.command, run.decision, run.status
        return {
            "request_id": command.request_id,
            "probe_id": command.probe_id,
            "kind": command.kind,
            "spec": shown,
            "payload_sha256": payload_digest(
                probe_id=command.probe_id, kind=command.kind, spec=spec, timeout_s=command.timeout_s
            ),
            "timeout_s": command.timeout_s,
            "requested_by": actor.actor,
            "principal_kind": actor.kind.value,
            "via": actor.via,
            "origin_request_id": run.origin_request_id,
            "status": status.value,
            "decision": decision.decision.value,
            "risk": decision.risk,
            "required_level": decision.required_level,
            "rationale": rationale,
            "approval_id": run.approval_id,
            "approval_sha256": run.approval_sha256,
            "created_at": now,
            "dispatched_at": now if status is CommandStatus.DISPATCHED else None,
            "finished_at": now if status in TERMINAL_STATUSES else None,
            "error_code": "policy_denied" if status is CommandStatus.DENIED else None,
            "error": "; ".join(decision.rationale) if status is CommandStatus.DENIED else None,
        }

    async def record_result(self, *, probe_id: str, result: CommandResultPayload) -> CommandRunRead | None:
        """Store a probe's final result for one of its commands; returns once it is committed.

        Results that arrive while another batch is being written are written together in the next transaction
        (:class:`~legator_mcp.db.group_commit.GroupCommit`): a fan-out's results cost a few transactions, not
        one each.

        Returns:
            The completed run, or ``None`` when the result is unknown, for another probe, or already final
            (a duplicate or late result changes nothing).
        """
        # Keyed by probe too, so a result claiming another probe's request cannot displace that probe's own.
        return await self._results.submit((probe_id, result.request_id), (probe_id, result))

    async def _write_results(
        self, items: dict[tuple[str, str], tuple[str, CommandResultPayload]]
    ) -> dict[tuple[str, str], CommandRunRead]:
        reads = await self.record_results(list(items.values()))
        return {key: read for key, read in zip(items, reads, strict=True) if read is not None}

    async def record_results(self, results: Sequence[tuple[str, CommandResultPayload]]) -> list[CommandRunRead | None]:
        """Store several ``(probe_id, result)`` pairs and their audit events in ONE transaction.

        Returns:
            Per pair, in order: the completed run, or ``None`` as for :meth:`record_result`.
        """
        reads: list[CommandRunRead | None] = []
        entries: list[AuditEntry] = []
        changes: list[dict[str, Any]] = []
        now = self._clock()
        async with self._db.write() as session:
            rows = await self._store.values_for_update(session, [result.request_id for _, result in results])
            for probe_id, result in results:
                row = rows.get(result.request_id)
                if row is None or row["probe_id"] != probe_id or row["status"] in TERMINAL_STATUSES:
                    reads.append(None)
                    continue
                change = _completion(result, now)
                row.update(change)
                changes.append({"request_id": result.request_id, **change})
                entries.append(
                    AuditEntry(
                        type="command.result",
                        actor=f"probe:{probe_id}",
                        principal_kind=PrincipalKind.PROBE,
                        probe_id=probe_id,
                        summary=f"command finished: {result.status} (exit {result.exit_code})",
                        detail={
                            "request_id": result.request_id,
                            "status": result.status,
                            "exit_code": result.exit_code,
                            "duration_ms": result.duration_ms,
                            "stdout_bytes": change["stdout_bytes"],
                            "stderr_bytes": change["stderr_bytes"],
                            "truncated": change["truncated"],
                            "error_code": result.error_code,
                        },
                    )
                )
                reads.append(CommandRunRead.model_validate(row))
            await self._store.update_many(session, changes)
            await self._audit.record_many(entries, session=session)
        for read in reads:
            if read is None:
                continue
            ok = read.status is CommandStatus.OK and (read.exit_code in (0, None))
            self._events.publish(
                "command.completed" if ok else "command.failed",
                summary=f"command {read.request_id} {read.status.value}",
                probe_id=read.probe_id,
                detail={"request_id": read.request_id, "status": read.status.value, "exit_code": read.exit_code},
            )
        return reads

    async def fail(
        self, *, request_id: str, status: CommandStatus, error_code: str, error: str
    ) -> CommandRunRead | None:
        """Finish a run on the control plane's side (probe gone, lost after a restart, no result in time)."""
        async with self._db.write() as session:
            row = await self._store.get(session, request_id, for_update=True)
            if row is None or row.status in TERMINAL_STATUSES:
                return None
            await self._finish(session, row, status=status, error_code=error_code, error=error)
            read = _read(row)
        self._events.publish(
            "command.failed", summary=f"command {request_id} {status.value}", probe_id=read.probe_id,
            detail={"request_id": request_id, "status": status.value, "error_code": error_code},
        )  # fmt: skip
        return read

    async def _finish(
        self, session: AsyncSession, row: CommandRun, *, status: CommandStatus, error_code: str, error: str
    ) -> None:
        row.status = status.value
        row.error_code = error_code
        row.error = error
        row.finished_at = self._clock()
        await self._audit.record(
            type="command.result",
            actor="legator",
            principal_kind=PrincipalKind.SYSTEM,
            probe_id=row.probe_id,
            summary=f"command finished: {status.value} ({error_code})",
            detail={"request_id": row.request_id, "status": status.value, "error_code": error_code, "error": error},
            session=session,
        )

    async def awaiting_approval(self, approval_id: str) -> list[tuple[CommandRunRead, str, str | None]]:
        """Runs waiting on ``approval_id``, with the payload digest and approval digest recorded when queued."""
        async with self._db.read() as session:
            rows = await self._store.by_approval(session, approval_id)
        return [
            (_read(row), row.payload_sha256, row.approval_sha256)
            for row in rows
            if row.status == CommandStatus.PENDING_APPROVAL.value
        ]

    async def mark_dispatched(self, *, request_ids: Sequence[str], actor: str) -> list[CommandRunRead]:
        """Move approved runs from ``pending_approval`` to ``dispatched`` (each audited as ``command.sent``), in one
        transaction.

        Returns:
            The runs moved, in the order given; a run no longer waiting for approval is left out (and unchanged).
        """
        if not request_ids:
            return []
        now = self._clock()
        reads: list[CommandRunRead] = []
        async with self._db.write() as session:
            rows = await self._store.values_for_update(session, request_ids)
            entries: list[AuditEntry] = []
            changes: list[dict[str, Any]] = []
            for request_id in request_ids:
                row = rows.get(request_id)
                if row is None or row["status"] != CommandStatus.PENDING_APPROVAL.value:
                    continue
                change = {"status": CommandStatus.DISPATCHED.value, "dispatched_at": now}
                row.update(change)
                changes.append({"request_id": request_id, **change})
                entries.append(
                    AuditEntry(
                        type="command.sent", actor=actor, principal_kind=PrincipalKind.SYSTEM,
                        probe_id=row["probe_id"], summary=f"approved {row['kind']} command dispatched",
                        detail={
                            "request_id": request_id, "approval_id": row["approval_id"],
                            "payload_sha256": row["payload_sha256"],
                        },
                    )
                )  # fmt: skip
                reads.append(CommandRunRead.model_validate(row))
            await self._store.update_many(session, changes)
            await self._audit.record_many(entries, session=session)
        for read in reads:
            self._events.publish(
                "command.dispatched", summary=f"approved command {read.request_id} dispatched", probe_id=read.probe_id,
                detail={"request_id": read.request_id, "approval_id": read.approval_id},
            )  # fmt: skip
        return reads

    async def note_cancel(self, *, actor: Principal, run: CommandRunRead) -> None:
        """Audit that ``actor`` asked to cancel ``run``."""
        await self._audit.record(
            type="command.cancel_requested",
            actor=actor,
            principal_kind=actor.kind,
            probe_id=run.probe_id,
            summary="cancel requested",
            detail={"request_id": run.request_id},
        )

    async def get(self, request_id: str) -> CommandRunRead:
        """Return one run.

        Raises:
            NotFound: If there is no run with that request id.
        """
        async with self._db.read() as session:
            row = await self._store.get(session, request_id)
        if row is None:
            raise NotFound(f"command {request_id} not found")
        return _read(row)

    async def pending(self) -> list[CommandRunRead]:
        """Runs dispatched (or awaiting approval) that have no result yet, newest first."""
        async with self._db.read() as session:
            rows = await self._store.with_status(session, [CommandStatus.DISPATCHED.value])
        return [_read(row) for row in rows]

    async def awaiting_any_approval(self, *, limit: int = 500) -> list[CommandRunRead]:
        """Runs still waiting for an approval (the newest ``limit``)."""
        async with self._db.read() as session:
            rows = await self._store.with_status(session, [CommandStatus.PENDING_APPROVAL.value], limit=limit)
        return [_read(row) for row in rows]

    async def recent_for_probe(self, probe_id: str, *, limit: int = 20) -> list[CommandRunRead]:
        """The newest runs for a probe."""
        async with self._db.read() as session:
            rows = await self._store.recent_for_probe(session, probe_id, limit=limit)
        return [_read(row) for row in rows]

    async def expire_overdue(self, *, grace: timedelta = timedelta(seconds=30)) -> list[str]:
        """Mark runs whose result is overdue (timeout plus grace) as ``lost``; used at start and periodically."""
        now = self._clock()
        expired: list[str] = []
        async with self._db.write() as session:
            rows = await self._store.dispatched_before(session, now - grace)
            for row in rows:
                if row.dispatched_at is not None and row.dispatched_at + timedelta(seconds=row.timeout_s) + grace < now:
                    await self._finish(
                        session, row, status=CommandStatus.LOST, error_code="result_lost",
                        error="no result arrived before the command's timeout "
                        "(probe disconnected or control plane restarted)",
                    )  # fmt: skip
                    expired.append(row.request_id)
        return expired
