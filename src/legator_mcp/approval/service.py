"""The approval queue: persistent requests bound to a digest of their payload, decided by other principals.

A queued action becomes a request holding the exact action and targets, and ``payload_sha256``, the SHA-256
of their canonical JSON (:func:`approval_digest`). Principals other than the requester vote; one denial
denies, ``required_approvals`` distinct approvals approve. Callbacks registered with
:meth:`ApprovalService.on_approved` run after the approving transaction commits and call
:meth:`ApprovalService.consume`, which re-checks the digest and releases the action exactly once.

The queue's errors (``approval_expired``, ``self_approval``, ``approval_tampered`` …) are defined in
:mod:`legator_mcp.approval.errors` and re-exported here, the module other domains import.
"""

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, Literal, cast

from sqlalchemy.ext.asyncio import AsyncSession

from legator_mcp._periodic import every
from legator_mcp.approval._views import action_view, approval_digest, canonical_json, console_url, intact, single_probe
from legator_mcp.approval._views import read as read_approval
from legator_mcp.approval.errors import (
    AlreadyVoted,
    ApprovalConsumed,
    ApprovalDecided,
    ApprovalExpired,
    ApprovalNotApproved,
    ApprovalTampered,
    SelfApproval,
)
from legator_mcp.approval.models import Approval, ApprovalVote
from legator_mcp.approval.schemas import (
    ApprovalAction,
    ApprovalPage,
    ApprovalRead,
    ApprovalStatus,
)
from legator_mcp.approval.store import ApprovalStore
from legator_mcp.audit.service import AuditService
from legator_mcp.db.base import new_id, utcnow
from legator_mcp.db.cursor import decode_cursor, encode_cursor
from legator_mcp.db.session import Database
from legator_mcp.errors import InvalidRequest, LegatorError, NotFound
from legator_mcp.events.service import EventBus
from legator_mcp.principal import Principal
from legator_probe.protocol.sanitize import sanitize

__all__ = [
    "DEFAULT_TTL",
    "AlreadyVoted",
    "ApprovalConsumed",
    "ApprovalDecided",
    "ApprovalExpired",
    "ApprovalNotApproved",
    "ApprovalService",
    "ApprovalTampered",
    "ApprovedCallback",
    "SelfApproval",
    "action_view",
    "approval_digest",
    "console_url",
]

logger = logging.getLogger("legator.approval")

DEFAULT_TTL = timedelta(minutes=15)
"""How long a request waits for a decision unless the requester asks for another lifetime."""

MAX_TTL = timedelta(days=7)
"""The longest lifetime a request may ask for."""

MAX_TARGETS = 10_000
"""The most probes one request may cover (a fan-out's whole target set)."""

_SUMMARY_CHARS = 2000
_AUDIT_TARGETS = 100
_REAP_BATCH = 200

ApprovedCallback = Callable[[ApprovalRead], Awaitable[None]]
"""Runs when a request becomes approved; see :meth:`ApprovalService.on_approved`."""


def _json_object(value: Mapping[str, Any], what: str) -> dict[str, Any]:
    try:
        plain: Any = json.loads(canonical_json(value))
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"the {what} must be a JSON object") from exc
    if not isinstance(plain, dict):
        raise InvalidRequest(f"the {what} must be a JSON object")
    return cast(dict[str, Any], plain)


class ApprovalService:
    """The persistent approval queue shared by every surface.

    Args:
        database: Where requests and votes are stored.
        audit: Every request, vote, decision, expiry, release and tamper detection is recorded here.
        events: ``approval.needed``, ``approval.vote``, ``approval.decided``, ``approval.expired``,
            ``approval.consumed`` and ``approval.tamper_detected`` are published here.
        clock: Source of "now" (request times, expiry).
        default_ttl: How long a request waits for a decision unless :meth:`request` says otherwise.
        store: The approval queries (a default one is made).
    """

    def __init__(
        self,
        *,
        database: Database,
        audit: AuditService,
        events: EventBus,
        clock: Callable[[], datetime] = utcnow,
        default_ttl: timedelta = DEFAULT_TTL,
        store: ApprovalStore | None = None,
    ) -> None:
        if default_ttl <= timedelta(0):
            raise ValueError("default_ttl must be positive")
        self._db = database
        self._audit = audit
        self._events = events
        self._clock = clock
        self._default_ttl = default_ttl
        self._store = store or ApprovalStore()
        self._callbacks: list[ApprovedCallback] = []

    def on_approved(self, callback: ApprovedCallback) -> None:
        """Register what runs when a request becomes approved (the command flow executes it).

        Callbacks run in registration order, inside the :meth:`decide` call whose vote approved the request,
        after its transaction committed, and exactly once per approval. A callback releases the action with
        :meth:`consume`, passing the digest it recorded when it queued the action (not the one in the
        :class:`ApprovalRead` it gets, which is read back from the database). A callback that raises a
        ``LegatorError`` (probe offline, tampering) does not undo the approval: the error is logged and the
        next callback runs.
        """
        self._callbacks.append(callback)

    async def request(
        self,
        *,
        requester: Principal,
        probe_ids: list[str],
        action: Mapping[str, Any],
        risk: str,
        summary: str,
        policy: Mapping[str, Any],
        required_approvals: int = 1,
        ttl: timedelta | None = None,
    ) -> ApprovalRead:
        """Queue ``action`` on ``probe_ids`` for approval.

        Args:
            requester: Who asked; they can never approve it themself.
            probe_ids: Every target the action runs on (one request covers a fan-out's whole set).
            action: The exact canonical command, e.g. ``{"kind", "spec", "timeout_s"}``, stored in full.
            risk: The classifier's risk (``low|medium|high|critical``).
            summary: Why it was queued, in one line (shown to approvers as ``reason``).
            policy: The policy decision that queued it (``decision``, rationale, indicators …).
            required_approvals: How many distinct principals must approve.
            ttl: How long it may wait for a decision (default: the service's ``default_ttl``).

        Returns:
            The new pending request; its ``payload_sha256`` is what :meth:`consume` must be given later.

        Raises:
            InvalidRequest: If the targets are empty, duplicated or malformed, ``required_approvals`` is below
                one, ``ttl`` is not positive or over seven days, or the action or policy is not a JSON object
                (the action must also name its ``kind``).
        """
        targets = list(probe_ids)
        if not targets or len(targets) > MAX_TARGETS:
            raise InvalidRequest(
                f"an approval request covers 1 to {MAX_TARGETS} probes", details={"field": "probe_ids"}
            )
        if not all(0 < len(p) <= 64 for p in targets) or len(set(targets)) != len(targets):
            raise InvalidRequest("probe ids must be distinct, non-empty strings", details={"field": "probe_ids"})
        if required_approvals < 1:
            raise InvalidRequest("required_approvals must be at least 1", details={"field": "required_approvals"})
        lifetime = self._default_ttl if ttl is None else ttl
        if not timedelta(0) < lifetime <= MAX_TTL:
            raise InvalidRequest("ttl must be positive and at most 7 days", details={"field": "ttl"})
        stored_action = _json_object(action, "action")
        kind = stored_action.get("kind")
        if not isinstance(kind, str) or not kind:
            raise InvalidRequest("the action must name its kind", details={"field": "action.kind"})
        now = self._clock()
        row = Approval(
            id=new_id(),
            status=ApprovalStatus.PENDING.value,
            requester=requester.actor,
            requester_id=requester.id,
            requester_kind=requester.kind.value,
            requester_via=requester.via,
            probe_ids=targets,
            action=stored_action,
            payload_sha256=approval_digest(stored_action, targets),
            risk=risk,
            summary=sanitize(summary)[:_SUMMARY_CHARS],
            policy=_json_object(policy, "policy"),
            required_approvals=required_approvals,
            created_at=now,
            expires_at=now + lifetime,
            votes=[],
        )
        single = single_probe(targets)
        async with self._db.write() as session:
            await self._store.add(session, row)
            read = read_approval(row, now)
            await self._audit.record(
                type="approval.requested",
                actor=requester,
                probe_id=single,
                summary=f"{kind} on {len(targets)} probe(s) queued for approval (risk {risk}): {read.reason}",
                detail={
                    "approval_id": row.id,
                    "probe_ids": targets[:_AUDIT_TARGETS],
                    "probe_count": len(targets),
                    "command": read.command,
                    "payload_sha256": row.payload_sha256,
                    "risk": risk,
                    "required_approvals": required_approvals,
                    "expires_at": row.expires_at.isoformat(),
                    "policy_decision": read.policy_decision,
                },
                session=session,
            )
        self._events.publish(
            "approval.needed",
            summary=f"{kind} on {len(targets)} probe(s) needs approval (risk {risk})",
            probe_id=single,
            detail={
                "approval_id": row.id,
                "probe_ids": targets[:_AUDIT_TARGETS],
                "kind": kind,
                "risk": risk,
                "console_url": read.console_url,
            },
        )
        return read

    async def decide(
        self,
        *,
        approver: Principal,
        approval_id: str,
        decision: Literal["approved", "denied"],
        reason: str | None = None,
        note: str | None = None,
    ) -> ApprovalRead:
        """Record ``approver``'s vote; one denial denies, ``required_approvals`` distinct approvals approve.

        The requester may deny (withdraw) their own request but never approve it. When this vote approves the
        request, the :meth:`on_approved` callbacks run after the commit and the request is read again, so the
        result shows whether its action was released.

        Returns:
            The request after the vote (``pending`` while more approvals are needed).

        Raises:
            InvalidRequest: If ``decision`` is neither ``approved`` nor ``denied``.
            NotFound: If there is no such request.
            SelfApproval: If the requester approves their own request (the attempt is audited).
            AlreadyVoted: If ``approver`` already voted on it.
            ApprovalExpired: If it expired (it is marked expired).
            ApprovalDecided: If it was already approved, denied or consumed.
        """
        if decision not in ("approved", "denied"):
            raise InvalidRequest("decision must be approved or denied", details={"field": "decision"})
        refusal: LegatorError | None = None
        final: ApprovalStatus | None = None
        async with self._db.write() as session:
            row = await self._store.get(session, approval_id, for_update=True)
            if row is None:
                raise NotFound(f"approval request {approval_id} not found")
            now = self._clock()
            status = ApprovalStatus(row.status)
            if status is ApprovalStatus.PENDING and row.expires_at <= now:
                await self._expire(session, row, now)
                refusal = ApprovalExpired(
                    f"approval request {approval_id} expired at {row.expires_at.isoformat()}",
                    details={"expires_at": row.expires_at.isoformat()},
                )
            elif status is ApprovalStatus.EXPIRED:
                raise ApprovalExpired(
                    f"approval request {approval_id} expired at {row.expires_at.isoformat()}",
                    details={"expires_at": row.expires_at.isoformat()},
                )
            elif status is not ApprovalStatus.PENDING:
                raise ApprovalDecided(
                    f"approval request {approval_id} was already decided: {status.value}",
                    details={"status": status.value},
                )
            elif row.requester_id == approver.id and decision == "approved":
                await self._audit.record(
                    type="approval.self_approval_refused",
                    actor=approver,
                    probe_id=single_probe(row.probe_ids),
                    summary=f"{approver.actor} tried to approve their own request {approval_id}",
                    detail={"approval_id": approval_id},
                    session=session,
                )
                refusal = SelfApproval("the requester cannot approve their own request; ask another approver")
            elif any(vote.approver_id == approver.id for vote in row.votes):
                raise AlreadyVoted(f"{approver.actor} already voted on approval request {approval_id}")
            else:
                final = await self._vote(session, row, approver, decision, reason, note, now)
            read = read_approval(row, now)
        if refusal is not None:
            if isinstance(refusal, ApprovalExpired):
                self._publish_expired(read.id, single_probe(read.probe_ids))
            raise refusal
        self._publish_vote(read, approver, decision, final)
        if final is ApprovalStatus.APPROVED and self._callbacks:
            for callback in self._callbacks:
                try:
                    await callback(read)
                except LegatorError:
                    logger.exception("an on_approved callback failed for approval %s", approval_id)
            read = await self.get(approval_id)
        return read

    async def _vote(
        self,
        session: AsyncSession,
        row: Approval,
        approver: Principal,
        decision: Literal["approved", "denied"],
        reason: str | None,
        note: str | None,
        now: datetime,
    ) -> ApprovalStatus | None:
        withdrawal = row.requester_id == approver.id
        vote = ApprovalVote(
            approver=approver.actor,
            approver_id=approver.id,
            approver_kind=approver.kind.value,
            approver_via=approver.via,
            decision=decision,
            withdrawal=withdrawal,
            reason=sanitize(reason)[:_SUMMARY_CHARS] if reason else None,
            note=sanitize(note)[:200] if note else None,
            ts=now,
        )
        await self._store.add_vote(session, row, vote)
        approvers = {v.approver_id for v in row.votes if v.decision == "approved"}
        final: ApprovalStatus | None = None
        if decision == "denied":
            final = ApprovalStatus.DENIED
        elif len(approvers) >= row.required_approvals:
            final = ApprovalStatus.APPROVED
        probe_id = single_probe(row.probe_ids)
        await self._audit.record(
            type="approval.withdrawn" if withdrawal else "approval.vote",
            actor=approver,
            probe_id=probe_id,
            summary=(
                f"{approver.actor} withdrew their request {row.id}"
                if withdrawal
                else f"{approver.actor} voted {decision} on approval request {row.id} "
                f"({len(approvers)}/{row.required_approvals} approvals)"
            ),
            detail={
                "approval_id": row.id,
                "decision": decision,
                "reason": vote.reason,
                "note": vote.note,
                "approvals": len(approvers),
                "required_approvals": row.required_approvals,
            },
            session=session,
        )
        if final is None:
            return None
        if not await self._store.transition(session, row.id, expected=ApprovalStatus.PENDING, to=final, decided_at=now):
            # The row lock makes this unreachable; if it ever happens, the raise rolls the vote back.
            raise ApprovalDecided(f"approval request {row.id} was decided concurrently")
        await self._audit.record(
            type="approval.decided",
            actor=approver,
            probe_id=probe_id,
            summary=f"approval request {row.id} {final.value}: {row.summary}",
            detail={
                "approval_id": row.id,
                "status": final.value,
                "payload_sha256": row.payload_sha256,
                "approvers": sorted(v.approver for v in row.votes if v.decision == "approved"),
                "withdrawal": withdrawal,
            },
            session=session,
        )
        return final

    async def _expire(self, session: AsyncSession, row: Approval, now: datetime) -> bool:
        if not await self._store.transition(
            session, row.id, expected=ApprovalStatus.PENDING, to=ApprovalStatus.EXPIRED, decided_at=now
        ):
            return False
        await self._audit.record(
            type="approval.expired",
            actor=Principal.system("approval-reaper"),
            probe_id=single_probe(row.probe_ids),
            summary=f"approval request {row.id} expired undecided at {row.expires_at.isoformat()}",
            detail={"approval_id": row.id, "expires_at": row.expires_at.isoformat()},
            session=session,
        )
        return True

    def _publish_expired(self, approval_id: str, probe_id: str | None) -> None:
        self._events.publish(
            "approval.expired",
            summary=f"approval request {approval_id} expired",
            probe_id=probe_id,
            detail={"approval_id": approval_id},
        )

    def _publish_vote(
        self, read: ApprovalRead, approver: Principal, decision: str, final: ApprovalStatus | None
    ) -> None:
        probe_id = single_probe(read.probe_ids)
        self._events.publish(
            "approval.vote",
            summary=f"{approver.actor} voted {decision} on approval request {read.id}",
            probe_id=probe_id,
            detail={"approval_id": read.id, "decision": decision, "approver": approver.actor},
        )
        if final is not None:
            self._events.publish(
                "approval.decided",
                summary=f"approval request {read.id} {final.value}",
                probe_id=probe_id,
                detail={"approval_id": read.id, "status": final.value, "decided_by": approver.actor},
            )

    async def consume(self, *, approval_id: str, expected_sha256: str, consumer_ref: str) -> ApprovalAction:
        """Release an approved request's action to run, exactly once.

        The digest is recomputed from the stored action and targets and compared with the stored
        ``payload_sha256`` and with ``expected_sha256`` (the digest the caller recorded when it queued the
        action). Any mismatch means the row changed after queueing: nothing is released or marked, and the
        detection is audited.

        Args:
            approval_id: The approved request.
            expected_sha256: The ``payload_sha256`` :meth:`request` returned, as the caller kept it.
            consumer_ref: What runs it (e.g. a command request id), recorded as ``consumed_by_ref``.

        Returns:
            The stored action and targets to execute.

        Raises:
            NotFound: If there is no such request.
            ApprovalConsumed: If its action was already released.
            ApprovalNotApproved: If it is pending, denied or expired.
            ApprovalTampered: If the stored request does not match its digest or ``expected_sha256``.
        """
        tampered: ApprovalTampered | None = None
        released: ApprovalAction | None = None
        async with self._db.write() as session:
            row = await self._store.get(session, approval_id, for_update=True)
            if row is None:
                raise NotFound(f"approval request {approval_id} not found")
            status = ApprovalStatus(row.status)
            if status is ApprovalStatus.CONSUMED:
                raise ApprovalConsumed(
                    f"approval request {approval_id} was already used ({row.consumed_by_ref})",
                    details={"consumed_at": row.consumed_at.isoformat() if row.consumed_at else None},
                )
            if status is not ApprovalStatus.APPROVED:
                raise ApprovalNotApproved(
                    f"approval request {approval_id} is {status.value}, not approved", details={"status": status.value}
                )
            probe_id = single_probe(row.probe_ids)
            if not intact(row, expected_sha256):
                await self._audit.record(
                    type="approval.tamper_detected",
                    actor=Principal.system("approval-guard"),
                    probe_id=probe_id,
                    summary=f"approval request {approval_id} changed after it was queued; its action was not run",
                    detail={
                        "approval_id": approval_id,
                        "stored_sha256": row.payload_sha256,
                        "expected_sha256": expected_sha256[:128],
                        "consumer_ref": consumer_ref[:200],
                    },
                    session=session,
                )
                tampered = ApprovalTampered(
                    f"approval request {approval_id} does not match the payload it was approved for; refusing to run it"
                )
            else:
                now = self._clock()
                if not await self._store.transition(
                    session, row.id, expected=ApprovalStatus.APPROVED, to=ApprovalStatus.CONSUMED,
                    consumed_at=now, consumed_by_ref=consumer_ref[:200],
                ):  # fmt: skip
                    raise ApprovalConsumed(f"approval request {approval_id} was already used")
                await self._audit.record(
                    type="approval.consumed",
                    actor=Principal.system("approval-guard"),
                    probe_id=probe_id,
                    summary=f"approval request {approval_id} released its action to {consumer_ref[:200]}",
                    detail={
                        "approval_id": approval_id,
                        "payload_sha256": row.payload_sha256,
                        "consumer_ref": consumer_ref[:200],
                    },
                    session=session,
                )
                released = ApprovalAction(
                    approval_id=row.id,
                    action=row.action,
                    probe_ids=list(row.probe_ids),
                    payload_sha256=row.payload_sha256,
                    requester=row.requester,
                    requester_id=row.requester_id,
                    requester_kind=row.requester_kind,
                    approvers=[v.approver for v in row.votes if v.decision == "approved"],
                )
        if tampered is not None:
            self._events.publish(
                "approval.tamper_detected",
                summary=f"approval request {approval_id} was tampered with; its action was not run",
                detail={"approval_id": approval_id},
            )
            raise tampered
        assert released is not None
        self._events.publish(
            "approval.consumed",
            summary=f"approval request {approval_id} released its action",
            probe_id=single_probe(released.probe_ids),
            detail={"approval_id": approval_id, "consumer_ref": consumer_ref[:200]},
        )
        return released

    async def get(self, approval_id: str) -> ApprovalRead:
        """Return one request as approvers see it.

        Raises:
            NotFound: If there is no such request.
        """
        async with self._db.read() as session:
            row = await self._store.get(session, approval_id)
            if row is None:
                raise NotFound(f"approval request {approval_id} not found")
            return read_approval(row, self._clock())

    async def pending_count(self) -> int:
        """How many requests wait for a decision (unexpired)."""
        async with self._db.read() as session:
            return await self._store.count_pending(session, now=self._clock())

    async def expire_overdue(self) -> list[str]:
        """Mark every pending request past its expiry as expired (audited and published); returns their ids."""
        expired: list[str] = []
        now = self._clock()
        while True:
            async with self._db.write() as session:
                rows = await self._store.overdue(session, now=now, limit=_REAP_BATCH)
                batch = [(row.id, single_probe(row.probe_ids)) for row in rows if await self._expire(session, row, now)]
            for approval_id, probe_id in batch:
                self._publish_expired(approval_id, probe_id)
            expired.extend(approval_id for approval_id, _ in batch)
            if len(rows) < _REAP_BATCH or not batch:
                return expired

    async def run_reaper(self, *, interval_s: float = 30.0) -> None:
        """Run :meth:`expire_overdue` now and then every ``interval_s`` forever; a failed pass is logged."""
        await every(interval_s, self.expire_overdue, what="the approval expiry pass")

    async def list(
        self,
        *,
        status: ApprovalStatus | None = None,
        probe_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> ApprovalPage:
        """Return one page of requests, newest first, with the number still pending.

        Raises:
            InvalidRequest: If ``limit`` is outside 1..500 or ``cursor`` is not a ``next_cursor`` of this list.
        """
        if not 1 <= limit <= 500:
            raise InvalidRequest("limit must be between 1 and 500", details={"field": "limit"})
        after = decode_cursor(cursor, what="approval") if cursor else None
        now = self._clock()
        async with self._db.read() as session:
            rows = await self._store.list(
                session, now=now, status=status, probe_id=probe_id, after=after, limit=limit + 1
            )
            pending = await self._store.count_pending(session, now=now)
            page = [read_approval(row, now) for row in rows[:limit]]
            last = rows[limit - 1] if len(rows) > limit else None
            next_cursor = encode_cursor(last.created_at, last.id) if last is not None else None
        return ApprovalPage(approvals=page, pending_count=pending, next_cursor=next_cursor)
