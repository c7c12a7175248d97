"""Command runs on SQLite and PostgreSQL: batches of runs and of results cost a transaction, not one per command."""

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import anyio
import pytest
from sqlalchemy import event

from legator_mcp.audit.schemas import AuditQuery
from legator_mcp.audit.service import AuditService
from legator_mcp.commands.schemas import CommandRunRead, CommandStatus
from legator_mcp.commands.service import CommandService, NewRun, new_request_id
from legator_mcp.db.base import utcnow
from legator_mcp.db.session import Database
from legator_mcp.errors import Conflict
from legator_mcp.events.service import EventBus
from legator_mcp.policy._templates import decide
from legator_mcp.policy.classifier import classify
from legator_mcp.principal import Permission, Principal, PrincipalKind
from legator_probe.protocol import COMMAND_PAYLOAD_ADAPTER, CommandPayload, CommandResultPayload

pytestmark = pytest.mark.anyio

OPERATOR = Principal(PrincipalKind.API_KEY, "k-op", "op", frozenset({Permission.ADMIN}), via="rest")
SPEC = {"argv": ["echo", "hi"]}
DECISION = decide(
    verdict=classify("shell", SPEC), kind="shell", spec=SPEC, probe_level="remediate", policy_id=None, template=None,
    actor=OPERATOR.actor,
)  # fmt: skip


@pytest.fixture
def audit(database: Database) -> AuditService:
    return AuditService(database=database)


@pytest.fixture
def commands(database: Database, audit: AuditService) -> CommandService:
    return CommandService(database=database, audit=audit, events=EventBus())


@contextmanager
def write_transactions(database: Database) -> Iterator[list[int]]:
    """Count the transactions begun on the write engine while the block runs (the real engine's events)."""
    begun: list[int] = []

    def on_begin(_connection: Any) -> None:
        begun.append(1)

    event.listen(database.write_engine.sync_engine, "begin", on_begin)
    try:
        yield begun
    finally:
        event.remove(database.write_engine.sync_engine, "begin", on_begin)


def command(probe_id: str, request_id: str | None = None) -> CommandPayload:
    return COMMAND_PAYLOAD_ADAPTER.validate_python(
        {"kind": "shell", "spec": SPEC, "request_id": request_id or new_request_id(), "probe_id": probe_id,
         "nonce": "n" * 32, "expires_at": utcnow() + timedelta(minutes=2)}
    )  # fmt: skip


def result(run: CommandRunRead, stdout: str = "hi\n") -> CommandResultPayload:
    return CommandResultPayload(
        request_id=run.request_id, status="ok", exit_code=0, stdout=stdout, stderr="", duration_ms=3
    )


async def test_create_many_records_every_run_and_its_audit_event_in_one_transaction(
    commands: CommandService, audit: AuditService, database: Database
) -> None:
    batch = [NewRun(command(f"prb-{n:02d}"), DECISION, CommandStatus.DISPATCHED) for n in range(20)]
    with write_transactions(database) as begun:
        runs = await commands.create_many(actor=OPERATOR, runs=batch)
    assert len(begun) == 1
    assert [run.probe_id for run in runs] == [f"prb-{n:02d}" for n in range(20)]
    assert all(run.status is CommandStatus.DISPATCHED and run.dispatched_at is not None for run in runs)
    stored = await commands.get(runs[7].request_id)
    assert stored == runs[7] and stored.rationale["decision"] == "allow"
    sent = await audit.search(AuditQuery(type="command.sent", limit=100))
    assert {e.detail["request_id"] for e in sent.events if e.detail} == {run.request_id for run in runs}
    assert all(e.actor == "api_key:op" and e.via == "rest" for e in sent.events)
    assert (await audit.verify()).ok


async def test_create_many_records_nothing_when_a_request_id_is_taken(
    commands: CommandService, audit: AuditService
) -> None:
    taken = await commands.create(actor=OPERATOR, command=command("prb-a"), decision=DECISION,
                                  status=CommandStatus.DENIED)  # fmt: skip
    batch = [NewRun(command("prb-b"), DECISION, CommandStatus.DISPATCHED),
             NewRun(command("prb-c", taken.request_id), DECISION, CommandStatus.DISPATCHED)]  # fmt: skip
    with pytest.raises(Conflict):
        await commands.create_many(actor=OPERATOR, runs=batch)
    assert [run.probe_id for run in await commands.recent_for_probe("prb-b")] == []
    assert await audit.count() == 1 and (await audit.verify()).ok


async def test_results_arriving_together_share_a_transaction_and_each_caller_gets_its_own_run(
    commands: CommandService, audit: AuditService, database: Database
) -> None:
    runs = await commands.create_many(
        actor=OPERATOR, runs=[NewRun(command(f"prb-{n:02d}"), DECISION, CommandStatus.DISPATCHED) for n in range(20)]
    )
    got: dict[str, CommandRunRead | None] = {}

    async def deliver(run: CommandRunRead) -> None:
        got[run.request_id] = await commands.record_result(probe_id=run.probe_id, result=result(run, run.probe_id))

    with write_transactions(database) as begun:
        async with anyio.create_task_group() as tg:
            for run in runs:
                tg.start_soon(deliver, run)
    # A burst of results shares a transaction (two, should the first one be written before the rest arrive).
    assert len(begun) <= 2, len(begun)
    for run in runs:
        finished = got[run.request_id]
        assert finished is not None and finished.status is CommandStatus.OK and finished.stdout == run.probe_id
        assert await commands.get(run.request_id) == finished
    results = await audit.search(AuditQuery(type="command.result", limit=100))
    assert len(results.events) == 20 and (await audit.verify()).ok


async def test_a_duplicate_or_misaddressed_result_changes_nothing_even_in_the_same_batch(
    commands: CommandService, audit: AuditService
) -> None:
    run, other = await commands.create_many(
        actor=OPERATOR, runs=[NewRun(command(p), DECISION, CommandStatus.DISPATCHED) for p in ("prb-a", "prb-b")]
    )
    # A result claiming prb-a's request from prb-b is ignored and does not displace prb-a's own.
    outcomes = await commands.record_results(
        [("prb-b", result(run, "forged")), ("prb-a", result(run, "real")), ("prb-a", result(run, "again"))]
    )
    assert outcomes[0] is None and outcomes[2] is None
    assert outcomes[1] is not None and outcomes[1].stdout == "real"
    assert (await commands.get(run.request_id)).stdout == "real"
    assert await commands.record_result(probe_id="prb-a", result=result(run, "late")) is None
    assert await commands.record_result(probe_id="prb-b", result=result(other)) is not None
    assert await commands.record_results([]) == []
    assert len((await audit.search(AuditQuery(type="command.result"))).events) == 2


async def test_mark_dispatched_moves_only_runs_still_waiting_for_approval_in_one_transaction(
    commands: CommandService, audit: AuditService, database: Database
) -> None:
    waiting = await commands.create_many(
        actor=OPERATOR,
        runs=[NewRun(command(f"prb-{n}"), DECISION, CommandStatus.PENDING_APPROVAL, "apr-1", "d" * 64)
              for n in range(3)],
    )  # fmt: skip
    await commands.fail(request_id=waiting[1].request_id, status=CommandStatus.DENIED, error_code="approval_expired",
                        error="expired")  # fmt: skip
    with write_transactions(database) as begun:
        moved = await commands.mark_dispatched(
            request_ids=[r.request_id for r in waiting] + ["cmd-unknown"], actor="approval:apr-1"
        )
    assert len(begun) == 1
    assert [r.request_id for r in moved] == [waiting[0].request_id, waiting[2].request_id]
    assert all(r.status is CommandStatus.DISPATCHED and r.dispatched_at is not None for r in moved)
    assert (await commands.get(waiting[1].request_id)).status is CommandStatus.DENIED
    assert await commands.mark_dispatched(request_ids=[], actor="approval:apr-1") == []
    sent = await audit.search(AuditQuery(type="command.sent"))
    assert sorted(e.detail["request_id"] for e in sent.events if e.detail) == sorted(r.request_id for r in moved)
