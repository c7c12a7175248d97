"""The approval queue against real SQLite and PostgreSQL: voting rules, expiry, one-time release, tampering, races."""

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
from sqlalchemy import text

from legator_mcp.approval.schemas import ApprovalRead, ApprovalStatus
from legator_mcp.approval.service import (
    AlreadyVoted,
    ApprovalConsumed,
    ApprovalDecided,
    ApprovalExpired,
    ApprovalNotApproved,
    ApprovalService,
    ApprovalTampered,
    SelfApproval,
    approval_digest,
)
from legator_mcp.audit.schemas import AuditQuery
from legator_mcp.audit.service import AuditService
from legator_mcp.db.session import Database
from legator_mcp.errors import InvalidRequest, LegatorError, NotFound, ProbeUnavailable
from legator_mcp.events.service import EventBus
from legator_mcp.principal import Permission, Principal, PrincipalKind

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ALICE = Principal(PrincipalKind.USER, "u-alice", "alice", frozenset({Permission.ADMIN}), via="mcp")
BOB = Principal(PrincipalKind.USER, "u-bob", "bob", frozenset({Permission.APPROVAL_WRITE}), via="rest")
CAROL = Principal(PrincipalKind.API_KEY, "k-carol", "carol", frozenset({Permission.APPROVAL_WRITE}), via="mcp")
SECRET = "hunter2-Zq8vR3xK9"
ACTION: dict[str, Any] = {
    "kind": "shell",
    "spec": {"argv": ["systemctl", "restart", "nginx"], "env": {"DB_PASSWORD": SECRET}},
    "timeout_s": 30.0,
    "request_id": "cmd-0001",
}
POLICY: dict[str, Any] = {"decision": "queue", "risk": "high", "rationale": ["systemctl restart changes a service"]}


class StepClock:
    """A clock that stands still until a test moves it."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


class Recorder:
    """An on_approved callback that remembers what it was given."""

    def __init__(self) -> None:
        self.calls: list[ApprovalRead] = []

    async def __call__(self, approval: ApprovalRead) -> None:
        self.calls.append(approval)


@pytest.fixture
def clock() -> StepClock:
    return StepClock()


@pytest.fixture
def events() -> EventBus:
    return EventBus()


@pytest.fixture
def audit(database: Database, clock: StepClock) -> AuditService:
    return AuditService(database=database, clock=clock)


@pytest.fixture
def approvals(database: Database, audit: AuditService, events: EventBus, clock: StepClock) -> ApprovalService:
    return ApprovalService(database=database, audit=audit, events=events, clock=clock)


@pytest.fixture
async def recorder(approvals: ApprovalService) -> AsyncIterator[Recorder]:
    callback = Recorder()
    approvals.on_approved(callback)
    yield callback


async def queue(
    approvals: ApprovalService,
    *,
    probe_ids: list[str] | None = None,
    action: dict[str, Any] | None = None,
    required: int = 1,
    ttl: timedelta | None = None,
) -> ApprovalRead:
    return await approvals.request(
        requester=ALICE,
        probe_ids=probe_ids or ["prb-1"],
        action=action or ACTION,
        risk="high",
        summary="restart nginx to pick up the new config",
        policy=POLICY,
        required_approvals=required,
        ttl=ttl,
    )


async def audit_types(audit: AuditService, type: str) -> list[str]:
    page = await audit.search(AuditQuery(type=type, limit=100))
    return [event.actor for event in page.events]


async def test_a_request_is_pending_bound_to_its_digest_audited_and_published(
    approvals: ApprovalService, audit: AuditService, events: EventBus
) -> None:
    async with events.subscribe("approval.*") as subscription:
        request = await queue(approvals, probe_ids=["prb-2", "prb-1"])
        event = await subscription.next(1)
    assert request.status is ApprovalStatus.PENDING
    assert request.payload_sha256 == approval_digest(ACTION, ["prb-1", "prb-2"])
    assert request.probe_ids == ["prb-2", "prb-1"] and request.probe_id == "prb-2"
    assert request.expires_at == T0 + timedelta(minutes=15)
    assert request.requester == ALICE.actor and request.risk_level == "high"
    assert request.policy_decision == "queue" and request.required_approvals == 1
    assert request.console_url == f"/ui/approvals/{request.id}"
    assert await audit_types(audit, "approval.requested") == [ALICE.actor]
    assert event is not None and event.type == "approval.needed"
    assert event.detail is not None and event.detail["approval_id"] == request.id
    assert await approvals.pending_count() == 1


async def test_the_digest_ignores_target_order_and_key_order_but_not_content() -> None:
    reordered = {"timeout_s": 30.0, "request_id": "cmd-0001", "spec": ACTION["spec"], "kind": "shell"}
    assert approval_digest(reordered, ["b", "a"]) == approval_digest(ACTION, ["a", "b"])
    assert approval_digest({**ACTION, "timeout_s": 31.0}, ["a", "b"]) != approval_digest(ACTION, ["a", "b"])
    assert approval_digest(ACTION, ["a", "c"]) != approval_digest(ACTION, ["a", "b"])


async def test_another_principal_approves_and_the_callbacks_fire_once_after_the_commit(
    approvals: ApprovalService, audit: AuditService, events: EventBus
) -> None:
    seen_in_database: list[ApprovalStatus] = []

    async def callback(approval: ApprovalRead) -> None:
        # Another transaction must already see the approval: the callback runs after the commit.
        seen_in_database.append((await approvals.get(approval.id)).status)

    approvals.on_approved(callback)
    request = await queue(approvals)
    async with events.subscribe("approval.decided") as subscription:
        decided = await approvals.decide(
            approver=BOB, approval_id=request.id, decision="approved", reason="looks right"
        )
        event = await subscription.next(1)
    assert decided.status is ApprovalStatus.APPROVED
    assert decided.decision == "approved" and decided.decided_by == BOB.actor
    assert [(v.approver, v.decision, v.reason) for v in decided.approvals] == [(BOB.actor, "approved", "looks right")]
    assert seen_in_database == [ApprovalStatus.APPROVED]
    assert await audit_types(audit, "approval.vote") == [BOB.actor]
    assert await audit_types(audit, "approval.decided") == [BOB.actor]
    assert event is not None and event.detail is not None and event.detail["status"] == "approved"
    with pytest.raises(ApprovalDecided) as again:
        await approvals.decide(approver=CAROL, approval_id=request.id, decision="approved")
    assert again.value.code == "approval_decided" and again.value.http_status == 409
    assert seen_in_database == [ApprovalStatus.APPROVED]


async def test_the_requester_cannot_approve_their_own_request(
    approvals: ApprovalService, audit: AuditService, recorder: Recorder
) -> None:
    request = await queue(approvals)
    same_key_elsewhere = Principal(ALICE.kind, ALICE.id, ALICE.name, ALICE.permissions, via="rest")
    with pytest.raises(SelfApproval) as refused:
        await approvals.decide(approver=same_key_elsewhere, approval_id=request.id, decision="approved")
    assert refused.value.code == "self_approval" and refused.value.http_status == 403
    after = await approvals.get(request.id)
    assert after.status is ApprovalStatus.PENDING and after.approvals == []
    assert recorder.calls == []
    assert await audit_types(audit, "approval.self_approval_refused") == [ALICE.actor]


async def test_the_requester_may_withdraw_their_request_by_denying_it(
    approvals: ApprovalService, audit: AuditService, recorder: Recorder
) -> None:
    request = await queue(approvals)
    withdrawn = await approvals.decide(approver=ALICE, approval_id=request.id, decision="denied", reason="not needed")
    assert withdrawn.status is ApprovalStatus.DENIED
    assert [(v.approver, v.withdrawal) for v in withdrawn.approvals] == [(ALICE.actor, True)]
    assert await audit_types(audit, "approval.withdrawn") == [ALICE.actor]
    assert recorder.calls == []


async def test_two_required_approvals_need_two_distinct_principals(
    approvals: ApprovalService, recorder: Recorder
) -> None:
    request = await queue(approvals, required=2)
    first = await approvals.decide(approver=BOB, approval_id=request.id, decision="approved")
    assert first.status is ApprovalStatus.PENDING and len(first.approvals) == 1
    with pytest.raises(AlreadyVoted) as twice:
        await approvals.decide(approver=BOB, approval_id=request.id, decision="approved")
    assert twice.value.code == "approval_already_voted" and twice.value.http_status == 409
    assert recorder.calls == []
    second = await approvals.decide(approver=CAROL, approval_id=request.id, decision="approved")
    assert second.status is ApprovalStatus.APPROVED
    assert [v.approver for v in second.approvals] == [BOB.actor, CAROL.actor]
    assert [call.id for call in recorder.calls] == [request.id]


async def test_one_denial_denies_even_after_an_approval(approvals: ApprovalService, recorder: Recorder) -> None:
    request = await queue(approvals, required=2)
    await approvals.decide(approver=BOB, approval_id=request.id, decision="approved")
    denied = await approvals.decide(approver=CAROL, approval_id=request.id, decision="denied", note="ticket OPS-1")
    assert denied.status is ApprovalStatus.DENIED
    assert denied.decision == "denied" and denied.decided_by == CAROL.actor
    assert denied.approvals[-1].note == "ticket OPS-1"
    assert recorder.calls == []
    with pytest.raises(ApprovalDecided):
        await approvals.decide(approver=ALICE, approval_id=request.id, decision="denied")


async def test_an_expired_request_cannot_be_approved_and_is_marked_expired(
    approvals: ApprovalService, audit: AuditService, clock: StepClock, recorder: Recorder
) -> None:
    request = await queue(approvals, ttl=timedelta(minutes=5))
    clock.advance(timedelta(minutes=5))
    assert (await approvals.get(request.id)).status is ApprovalStatus.EXPIRED
    assert await approvals.pending_count() == 0
    with pytest.raises(ApprovalExpired) as expired:
        await approvals.decide(approver=BOB, approval_id=request.id, decision="approved")
    assert expired.value.code == "approval_expired" and expired.value.http_status == 409
    with pytest.raises(ApprovalExpired):
        await approvals.decide(approver=CAROL, approval_id=request.id, decision="approved")
    stored = await approvals.get(request.id)
    assert stored.status is ApprovalStatus.EXPIRED and stored.decided_at == clock.now and stored.approvals == []
    assert await approvals.expire_overdue() == []
    assert await audit_types(audit, "approval.expired") == ["system:approval-reaper"]
    assert recorder.calls == []


async def test_the_reaper_expires_only_overdue_pending_requests(
    approvals: ApprovalService, audit: AuditService, events: EventBus, clock: StepClock
) -> None:
    short = await queue(approvals, ttl=timedelta(minutes=1))
    decided = await queue(approvals, ttl=timedelta(minutes=1))
    await approvals.decide(approver=BOB, approval_id=decided.id, decision="denied")
    long = await queue(approvals, ttl=timedelta(hours=1))
    clock.advance(timedelta(minutes=2))
    async with events.subscribe("approval.expired") as subscription:
        assert await approvals.expire_overdue() == [short.id]
        event = await subscription.next(1)
    assert event is not None and event.detail == {"approval_id": short.id}
    assert await approvals.expire_overdue() == []
    assert (await approvals.get(decided.id)).status is ApprovalStatus.DENIED
    assert (await approvals.get(long.id)).status is ApprovalStatus.PENDING
    assert len(await audit_types(audit, "approval.expired")) == 1


async def test_an_approval_releases_exactly_its_payload_once(approvals: ApprovalService, audit: AuditService) -> None:
    request = await queue(approvals, probe_ids=["prb-1", "prb-2"])
    await approvals.decide(approver=BOB, approval_id=request.id, decision="approved")
    released = await approvals.consume(
        approval_id=request.id, expected_sha256=request.payload_sha256, consumer_ref="cmd-0001"
    )
    assert released.action == ACTION and released.probe_ids == ["prb-1", "prb-2"]
    assert released.approvers == [BOB.actor] and released.requester == ALICE.actor
    consumed = await approvals.get(request.id)
    assert consumed.status is ApprovalStatus.CONSUMED and consumed.decision == "approved"
    assert consumed.consumed_by_ref == "cmd-0001" and consumed.consumed_at is not None
    with pytest.raises(ApprovalConsumed) as again:
        await approvals.consume(approval_id=request.id, expected_sha256=request.payload_sha256, consumer_ref="x")
    assert again.value.code == "approval_consumed"
    with pytest.raises(ApprovalDecided):
        await approvals.decide(approver=CAROL, approval_id=request.id, decision="approved")
    assert len(await audit_types(audit, "approval.consumed")) == 1


@pytest.mark.parametrize("decision", ["pending", "denied", "expired"])
async def test_only_an_approved_request_can_be_consumed(
    approvals: ApprovalService, clock: StepClock, decision: str
) -> None:
    request = await queue(approvals, ttl=timedelta(minutes=1))
    if decision == "denied":
        await approvals.decide(approver=BOB, approval_id=request.id, decision="denied")
    if decision == "expired":
        clock.advance(timedelta(minutes=1))
        await approvals.expire_overdue()
    with pytest.raises(ApprovalNotApproved) as refused:
        await approvals.consume(approval_id=request.id, expected_sha256=request.payload_sha256, consumer_ref="x")
    assert refused.value.code == "approval_not_approved"
    with pytest.raises(NotFound):
        await approvals.consume(approval_id="no-such-id", expected_sha256=request.payload_sha256, consumer_ref="x")


TAMPERING = [
    pytest.param(
        "UPDATE approvals SET action = :value WHERE id = :id",
        json.dumps({**ACTION, "spec": {"argv": ["rm", "-rf", "/"]}}),
        id="action-spec-changed",
    ),
    pytest.param(
        "UPDATE approvals SET probe_ids = :value WHERE id = :id",
        json.dumps(["prb-1", "prb-evil"]),
        id="targets-changed",
    ),  # fmt: skip
    pytest.param("UPDATE approvals SET probe_ids = :value WHERE id = :id", json.dumps("prb-1"), id="targets-mangled"),
    pytest.param(
        "UPDATE approvals SET action = :value, payload_sha256 = :digest WHERE id = :id",
        json.dumps({**ACTION, "spec": {"argv": ["rm", "-rf", "/"]}}),
        id="action-and-digest-changed-consistently",
    ),
]


@pytest.mark.parametrize(("statement", "value"), TAMPERING)
async def test_a_request_changed_after_queueing_is_never_released(
    approvals: ApprovalService, audit: AuditService, database: Database, events: EventBus, statement: str, value: str
) -> None:
    request = await queue(approvals)
    await approvals.decide(approver=BOB, approval_id=request.id, decision="approved")
    forged_digest = approval_digest(json.loads(value), ["prb-1"]) if "action" in statement else ""
    async with database.write() as session:
        await session.execute(text(statement), {"value": value, "id": request.id, "digest": forged_digest})
    async with events.subscribe("approval.*") as subscription:
        with pytest.raises(ApprovalTampered) as refused:
            await approvals.consume(approval_id=request.id, expected_sha256=request.payload_sha256, consumer_ref="c1")
        event = await subscription.next(1)
    assert refused.value.code == "approval_tampered" and refused.value.http_status == 409
    stored = await approvals.get(request.id)
    assert stored.status is ApprovalStatus.APPROVED and stored.consumed_at is None
    assert await audit_types(audit, "approval.tamper_detected") == ["system:approval-guard"]
    assert await audit_types(audit, "approval.consumed") == []
    assert event is not None and event.type == "approval.tamper_detected"


async def test_a_digest_other_than_the_one_queued_releases_nothing(approvals: ApprovalService) -> None:
    request = await queue(approvals)
    await approvals.decide(approver=BOB, approval_id=request.id, decision="approved")
    other = approval_digest({**ACTION, "timeout_s": 60.0}, ["prb-1"])
    with pytest.raises(ApprovalTampered):
        await approvals.consume(approval_id=request.id, expected_sha256=other, consumer_ref="c1")
    assert (await approvals.get(request.id)).status is ApprovalStatus.APPROVED


async def race_approvals(approvals: ApprovalService, approval_id: str) -> list[ApprovalRead | LegatorError]:
    """Two approvers decide the same request at the same moment."""
    outcomes: list[ApprovalRead | LegatorError] = []
    start = anyio.Event()

    async def vote(approver: Principal) -> None:
        await start.wait()
        try:
            outcomes.append(await approvals.decide(approver=approver, approval_id=approval_id, decision="approved"))
        except LegatorError as exc:
            outcomes.append(exc)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(vote, BOB)
            tg.start_soon(vote, CAROL)
            await anyio.wait_all_tasks_blocked()
            start.set()
    return outcomes


async def test_racing_decisions_for_the_last_vote_count_once(approvals: ApprovalService, recorder: Recorder) -> None:
    for _ in range(3):
        request = await queue(approvals)
        outcomes = await race_approvals(approvals, request.id)
        wins = [o for o in outcomes if isinstance(o, ApprovalRead)]
        losses = [o for o in outcomes if isinstance(o, LegatorError)]
        assert len(wins) == 1 and wins[0].status is ApprovalStatus.APPROVED
        assert [loss.code for loss in losses] == ["approval_decided"]
        assert len((await approvals.get(request.id)).approvals) == 1
    assert len(recorder.calls) == 3 and len({call.id for call in recorder.calls}) == 3


async def test_racing_consumers_release_the_action_once(approvals: ApprovalService) -> None:
    request = await queue(approvals)
    await approvals.decide(approver=BOB, approval_id=request.id, decision="approved")
    outcomes: list[str] = []
    start = anyio.Event()

    async def consume(ref: str) -> None:
        await start.wait()
        try:
            await approvals.consume(approval_id=request.id, expected_sha256=request.payload_sha256, consumer_ref=ref)
            outcomes.append("released")
        except ApprovalConsumed:
            outcomes.append("approval_consumed")

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for ref in ("a", "b", "c"):
                tg.start_soon(consume, ref)
            await anyio.wait_all_tasks_blocked()
            start.set()
    assert sorted(outcomes) == ["approval_consumed", "approval_consumed", "released"]


async def test_a_callback_that_consumes_shows_in_the_decision_and_a_failing_one_undoes_nothing(
    approvals: ApprovalService,
) -> None:
    released: list[dict[str, Any]] = []
    digests: dict[str, str] = {}

    async def failing(approval: ApprovalRead) -> None:
        raise ProbeUnavailable("probe prb-1 is not connected")

    async def executor(approval: ApprovalRead) -> None:
        action = await approvals.consume(
            approval_id=approval.id, expected_sha256=digests[approval.id], consumer_ref="cmd-0001"
        )
        released.append(action.action)

    approvals.on_approved(failing)
    approvals.on_approved(executor)
    request = await queue(approvals)
    digests[request.id] = request.payload_sha256
    decided = await approvals.decide(approver=BOB, approval_id=request.id, decision="approved")
    assert decided.status is ApprovalStatus.CONSUMED and decided.decision == "approved"
    assert released == [ACTION]


async def test_requests_survive_a_restart(
    approvals: ApprovalService, database: Database, audit: AuditService, clock: StepClock
) -> None:
    request = await queue(approvals, required=2)
    await approvals.decide(approver=BOB, approval_id=request.id, decision="approved")
    restarted = ApprovalService(database=database, audit=audit, events=EventBus(), clock=clock)
    again = await restarted.get(request.id)
    assert again.status is ApprovalStatus.PENDING and [v.approver for v in again.approvals] == [BOB.actor]
    assert (await restarted.decide(approver=CAROL, approval_id=request.id, decision="approved")).status == "approved"


async def test_the_view_never_shows_a_secret_from_the_action(approvals: ApprovalService, audit: AuditService) -> None:
    content = f"listen 443;\npassword={SECRET}\n" + "x" * 500
    write = {"kind": "file_write", "spec": {"path": "/etc/app.conf", "content": content, "mode": 420}, "timeout_s": 60}
    shell = {"kind": "shell", "spec": {"script": f"mysql -u root -p{SECRET} -e 'select 1'"}, "timeout_s": 30}
    seen: list[str] = []
    for action in (write, shell, ACTION):
        request = await queue(approvals, action=action)
        seen.append(request.model_dump_json())
        seen.append((await approvals.get(request.id)).model_dump_json())
        seen.append((await approvals.list()).model_dump_json())
        if action is write:
            shown = request.command["spec"]["content"]
            assert set(shown) == {"sha256", "bytes", "preview"}
            assert shown["bytes"] == len(content.encode()) and len(shown["preview"]) <= 200
            assert shown["preview"].startswith("listen 443;")
    seen.extend(event.model_dump_json() for event in (await audit.search(AuditQuery(limit=100))).events)
    assert all(SECRET not in text for text in seen)
    assert all(SECRET[:8] not in text for text in seen)


async def test_lists_filter_by_status_and_probe_and_page_newest_first(
    approvals: ApprovalService, clock: StepClock
) -> None:
    created: list[ApprovalRead] = []
    for n in range(5):
        created.append(await queue(approvals, probe_ids=[f"prb-{n % 2}", "prb-all"], ttl=timedelta(minutes=10 + n)))
        clock.advance(timedelta(seconds=1) if n != 2 else timedelta(0))
    await approvals.decide(approver=BOB, approval_id=created[0].id, decision="denied")
    newest_first = [r.id for r in sorted(created, key=lambda r: (r.created_at, r.id), reverse=True)]
    pages: list[str] = []
    cursor: str | None = None
    while True:
        page = await approvals.list(limit=2, cursor=cursor)
        pages.extend(r.id for r in page.approvals)
        assert page.pending_count == 4
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert pages == newest_first
    assert [r.id for r in (await approvals.list(probe_id="prb-1")).approvals] == [created[3].id, created[1].id]
    assert (await approvals.list(probe_id="prb-none")).approvals == []
    assert [r.id for r in (await approvals.list(status=ApprovalStatus.DENIED)).approvals] == [created[0].id]
    clock.advance(timedelta(minutes=12))
    expired = await approvals.list(status=ApprovalStatus.EXPIRED)
    assert [r.id for r in expired.approvals] == [created[2].id, created[1].id]
    assert expired.pending_count == 2
    with pytest.raises(InvalidRequest):
        await approvals.list(cursor="not-a-cursor")
    with pytest.raises(InvalidRequest):
        await approvals.list(limit=0)


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"probe_ids": []}, id="no-targets"),
        pytest.param({"probe_ids": ["a", "a"]}, id="duplicate-targets"),
        pytest.param({"probe_ids": [""]}, id="empty-target"),
        pytest.param({"required_approvals": 0}, id="zero-approvers"),
        pytest.param({"ttl": timedelta(0)}, id="zero-ttl"),
        pytest.param({"ttl": timedelta(days=8)}, id="ttl-too-long"),
        pytest.param({"action": {"spec": {}}}, id="action-without-kind"),
        pytest.param({"action": {"kind": "shell", "timeout_s": float("nan")}}, id="action-not-json"),
        pytest.param({"action": {"kind": "shell", "when": T0}}, id="action-with-a-datetime"),
    ],
)
async def test_malformed_requests_are_refused(approvals: ApprovalService, overrides: dict[str, Any]) -> None:
    arguments: dict[str, Any] = {
        "requester": ALICE, "probe_ids": ["prb-1"], "action": ACTION, "risk": "high", "summary": "s",
        "policy": POLICY, **overrides,
    }  # fmt: skip
    with pytest.raises(InvalidRequest):
        await approvals.request(**arguments)
    assert (await approvals.list()).approvals == []


async def test_unknown_requests_and_decisions_are_refused(approvals: ApprovalService) -> None:
    with pytest.raises(NotFound):
        await approvals.get("00000000-0000-0000-0000-000000000000")
    with pytest.raises(NotFound):
        await approvals.decide(approver=BOB, approval_id="missing", decision="approved")
    request = await queue(approvals)
    with pytest.raises(InvalidRequest):
        await approvals.decide(approver=BOB, approval_id=request.id, decision="maybe")  # pyright: ignore[reportArgumentType]
