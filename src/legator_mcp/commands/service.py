"""Command runs as durable records: created with their policy decision, completed with the probe's result."""

import hashlib
import json
import secrets
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from legator_mcp.audit.service import AuditService
from legator_mcp.commands.models import CommandRun
from legator_mcp.commands.schemas import TERMINAL_STATUSES, CommandRunRead, CommandStatus
from legator_mcp.commands.store import CommandStore
from legator_mcp.db.base import utcnow
from legator_mcp.db.session import Database
from legator_mcp.errors import Conflict, NotFound
from legator_mcp.events.service import EventBus
from legator_mcp.policy.schemas import PolicyDecision
from legator_mcp.principal import Principal, PrincipalKind
from legator_probe.protocol import CommandPayload, CommandResultPayload
from legator_probe.protocol.sanitize import sanitize, sanitize_mapping

__all__ = ["STORED_OUTPUT_BYTES", "CommandService", "new_request_id", "payload_digest", "stored_spec"]

STORED_OUTPUT_BYTES = 256 * 1024
"""How much of each of stdout and stderr is kept in the database (the full sizes are kept too)."""

_WRITE_PREVIEW_CHARS = 200


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
        spec = command.spec.model_dump(mode="json")
        row = CommandRun(
            request_id=command.request_id,
            probe_id=command.probe_id,
            kind=command.kind,
            spec=stored_spec(command.kind, spec),
            payload_sha256=payload_digest(
                probe_id=command.probe_id, kind=command.kind, spec=spec, timeout_s=command.timeout_s
            ),
            timeout_s=command.timeout_s,
            requested_by=actor.actor,
            principal_kind=actor.kind.value,
            via=actor.via,
            origin_request_id=origin_request_id,
            status=status.value,
            decision=decision.decision.value,
            risk=decision.risk,
            required_level=decision.required_level,
            rationale=decision.model_dump(mode="json"),
            approval_id=approval_id,
            approval_sha256=approval_sha256,
            created_at=self._clock(),
            dispatched_at=self._clock() if status is CommandStatus.DISPATCHED else None,
            finished_at=self._clock() if status in TERMINAL_STATUSES else None,
            error_code="policy_denied" if status is CommandStatus.DENIED else None,
            error="; ".join(decision.rationale) if status is CommandStatus.DENIED else None,
        )
        audit_type = {
            CommandStatus.DISPATCHED: "command.sent",
            CommandStatus.DENIED: "command.denied",
            CommandStatus.PENDING_APPROVAL: "command.queued",
        }[status]
        async with self._db.write() as session:
            await self._store.add(session, row)
            await self._audit.record(
                type=audit_type,
                actor=actor,
                principal_kind=actor.kind,
                probe_id=command.probe_id,
                summary=f"{command.kind} command {command.request_id} {status.value} (risk {decision.risk})",
                detail={
                    "request_id": command.request_id,
                    "kind": command.kind,
                    "spec": row.spec,
                    "payload_sha256": row.payload_sha256,
                    "decision": decision.decision.value,
                    "risk": decision.risk,
                    "required_level": decision.required_level,
                    "rationale": decision.rationale,
                },
                session=session,
            )
            read = _read(row)
        self._events.publish(
            "command.dispatched" if status is CommandStatus.DISPATCHED else f"command.{status.value}",
            summary=f"{command.kind} command {command.request_id} {status.value}",
            probe_id=command.probe_id,
            detail={"request_id": command.request_id},
        )
        return read

    async def record_result(self, *, probe_id: str, result: CommandResultPayload) -> CommandRunRead | None:
        """Store a probe's final result for one of its commands.

        Returns:
            The completed run, or ``None`` when the result is unknown, for another probe, or already final
            (a duplicate or late result changes nothing).
        """
        async with self._db.write() as session:
            row = await self._store.get(session, result.request_id, for_update=True)
            if row is None or row.probe_id != probe_id or row.status in TERMINAL_STATUSES:
                return None
            stdout, cut_out = _cap(sanitize(result.stdout))
            stderr, cut_err = _cap(sanitize(result.stderr))
            row.status = result.status
            row.exit_code = result.exit_code
            row.stdout, row.stderr = stdout, stderr
            row.stdout_bytes = max(result.stdout_bytes, len(result.stdout.encode()))
            row.stderr_bytes = max(result.stderr_bytes, len(result.stderr.encode()))
            row.truncated = result.truncated or cut_out or cut_err
            row.duration_ms = result.duration_ms
            row.error_code = result.error_code
            row.error = sanitize(result.error) if result.error else None
            row.data = sanitize_mapping(result.data) if result.data else None
            row.finished_at = self._clock()
            await self._audit.record(
                type="command.result",
                actor=f"probe:{probe_id}",
                principal_kind=PrincipalKind.PROBE,
                probe_id=probe_id,
                summary=f"command {row.request_id} finished: {result.status} (exit {result.exit_code})",
                detail={
                    "request_id": row.request_id,
                    "status": result.status,
                    "exit_code": result.exit_code,
                    "duration_ms": result.duration_ms,
                    "stdout_bytes": row.stdout_bytes,
                    "stderr_bytes": row.stderr_bytes,
                    "truncated": row.truncated,
                    "error_code": result.error_code,
                },
                session=session,
            )
            read = _read(row)
        ok = read.status is CommandStatus.OK and (read.exit_code in (0, None))
        self._events.publish(
            "command.completed" if ok else "command.failed",
            summary=f"command {read.request_id} {read.status.value}",
            probe_id=probe_id,
            detail={"request_id": read.request_id, "status": read.status.value, "exit_code": read.exit_code},
        )
        return read

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
            summary=f"command {row.request_id} finished: {status.value} ({error_code})",
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

    async def mark_dispatched(self, *, request_id: str, actor: str) -> CommandRunRead:
        """Move an approved run from ``pending_approval`` to ``dispatched`` (audited as ``command.sent``).

        Raises:
            Conflict: If the run is no longer waiting for approval.
        """
        async with self._db.write() as session:
            row = await self._store.get(session, request_id, for_update=True)
            if row is None or row.status != CommandStatus.PENDING_APPROVAL.value:
                raise Conflict(f"command {request_id} is not waiting for approval")
            row.status = CommandStatus.DISPATCHED.value
            row.dispatched_at = self._clock()
            await self._audit.record(
                type="command.sent",
                actor=actor,
                principal_kind=PrincipalKind.SYSTEM,
                probe_id=row.probe_id,
                summary=f"approved {row.kind} command {request_id} dispatched",
                detail={"request_id": request_id, "approval_id": row.approval_id, "payload_sha256": row.payload_sha256},
                session=session,
            )
            read = _read(row)
        self._events.publish(
            "command.dispatched", summary=f"approved command {request_id} dispatched", probe_id=read.probe_id,
            detail={"request_id": request_id, "approval_id": read.approval_id},
        )  # fmt: skip
        return read

    async def note_cancel(self, *, actor: Principal, run: CommandRunRead) -> None:
        """Audit that ``actor`` asked to cancel ``run``."""
        await self._audit.record(
            type="command.cancel_requested",
            actor=actor,
            principal_kind=actor.kind,
            probe_id=run.probe_id,
            summary=f"cancel requested for command {run.request_id}",
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
