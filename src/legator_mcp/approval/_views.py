"""The digest an approval binds to, and the views approvers see (sanitised, never the raw action)."""

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal, cast

from legator_mcp.approval.models import Approval, ApprovalVote
from legator_mcp.approval.schemas import ApprovalRead, ApprovalStatus, ApprovalVoteRead
from legator_probe.protocol.sanitize import sanitize, sanitize_mapping

__all__ = ["action_view", "approval_digest", "canonical_json", "console_url", "intact", "read", "single_probe"]

_PREVIEW_CHARS = 200


def canonical_json(value: Any) -> str:
    """The one JSON encoding digests are computed over: sorted keys, no spaces, UTF-8, no NaN.

    Raises:
        TypeError: If ``value`` holds something JSON cannot represent.
        ValueError: If it holds NaN or infinity.
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def approval_digest(action: Mapping[str, Any], probe_ids: Sequence[str]) -> str:
    """SHA-256 of the canonical JSON of ``action`` and the sorted ``probe_ids``: what an approval authorises.

    Raises:
        TypeError: If ``action`` holds values JSON cannot represent.
        ValueError: If it holds NaN or infinity.
    """
    return hashlib.sha256(canonical_json({"action": action, "probe_ids": sorted(probe_ids)}).encode()).hexdigest()


def console_url(approval_id: str) -> str:
    """Where a human reviews and decides a request in the operator console (relative to the server)."""
    return f"/ui/approvals/{approval_id}"


def _content_view(spec: Mapping[str, Any], content: str) -> dict[str, Any]:
    preview: str | None = None
    if spec.get("encoding") == "base64":
        try:
            data = base64.b64decode(content, validate=True)
        except binascii.Error:
            data = content.encode()
    else:
        data = content.encode()
        # Redact before cutting, so a secret split by the cut is still recognised.
        preview = sanitize(content)[:_PREVIEW_CHARS]
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "preview": preview}


def action_view(action: Mapping[str, Any]) -> dict[str, Any]:
    """The action as approvers see it: secrets redacted, a file's new content as SHA-256, size and preview."""
    shown = dict(action)
    spec: Any = shown.get("spec")
    if shown.get("kind") == "file_write" and isinstance(spec, Mapping):
        spec_view = dict(cast(Mapping[str, Any], spec))
        content = spec_view.get("content")
        if isinstance(content, str):
            spec_view["content"] = _content_view(spec_view, content)
        shown["spec"] = spec_view
    return sanitize_mapping(shown)


def single_probe(probe_ids: Any) -> str | None:
    """The one probe a request concerns, for audit and events; ``None`` for a fan-out (or a mangled row)."""
    if isinstance(probe_ids, list):
        targets = cast(list[Any], probe_ids)
        if len(targets) == 1 and isinstance(targets[0], str):
            return targets[0]
    return None


def _vote(vote: ApprovalVote) -> ApprovalVoteRead:
    decision: Literal["approved", "denied"] = "approved" if vote.decision == "approved" else "denied"
    return ApprovalVoteRead(
        approver=vote.approver,
        approver_kind=vote.approver_kind,
        decision=decision,
        withdrawal=vote.withdrawal,
        reason=vote.reason,
        note=vote.note,
        ts=vote.ts,
    )


def _mapping(value: Any) -> Mapping[str, Any]:
    # Stored JSON is only ever an object unless someone edited the row by hand.
    return cast(Mapping[str, Any], value) if isinstance(value, Mapping) else {}


def read(row: Approval, now: datetime) -> ApprovalRead:
    """Shape a stored request for approvers; a pending request past its expiry reads as ``expired``."""
    status = ApprovalStatus(row.status)
    if status is ApprovalStatus.PENDING and row.expires_at <= now:
        status = ApprovalStatus.EXPIRED
    votes = [_vote(vote) for vote in row.votes]
    decision: Literal["approved", "denied", "expired"] | None = None
    decided_by: str | None = None
    if status in (ApprovalStatus.APPROVED, ApprovalStatus.CONSUMED):
        decision = "approved"
        decided_by = next((v.approver for v in reversed(votes) if v.decision == "approved"), None)
    elif status is ApprovalStatus.DENIED:
        decision = "denied"
        decided_by = next((v.approver for v in votes if v.decision == "denied"), None)
    elif status is ApprovalStatus.EXPIRED:
        decision = "expired"
    policy = sanitize_mapping(_mapping(row.policy))
    policy_decision = policy.get("decision")
    raw_targets: Any = row.probe_ids
    probe_ids = [str(probe) for probe in cast(list[Any], raw_targets)] if isinstance(raw_targets, list) else []
    return ApprovalRead(
        id=row.id,
        status=status,
        decision=decision,
        decided_by=decided_by,
        probe_ids=probe_ids,
        probe_id=probe_ids[0] if probe_ids else "",
        command=action_view(_mapping(row.action)),
        payload_sha256=row.payload_sha256,
        risk_level=row.risk,
        reason=row.summary,
        requester=row.requester,
        requester_kind=row.requester_kind,
        policy_decision=policy_decision if isinstance(policy_decision, str) else None,
        policy_rationale=policy,
        required_approvals=row.required_approvals,
        approvals=votes,
        created_at=row.created_at,
        expires_at=row.expires_at,
        decided_at=row.decided_at,
        consumed_at=row.consumed_at,
        consumed_by_ref=row.consumed_by_ref,
        console_url=console_url(row.id),
    )


def intact(row: Approval, expected_sha256: str) -> bool:
    """Whether the stored action and targets still hash to the stored digest and to ``expected_sha256``."""
    action: Any = row.action
    raw_targets: Any = row.probe_ids
    if not isinstance(action, dict) or not isinstance(raw_targets, list):
        return False
    targets = cast(list[Any], raw_targets)
    if not all(isinstance(probe, str) for probe in targets):
        return False
    recomputed = approval_digest(cast(dict[str, Any], action), targets).encode()
    stored_ok = hmac.compare_digest(recomputed, row.payload_sha256.encode())
    return hmac.compare_digest(recomputed, expected_sha256.encode()) and stored_ok
