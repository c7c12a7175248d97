"""The audit service against real SQLite and PostgreSQL databases: recording, search, export, verify, purge."""

import csv
import hashlib
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
from pydantic import ValidationError
from sqlalchemy import delete, select, text, update
from sqlalchemy.exc import DBAPIError

from legator_mcp.audit._chain import GENESIS_HASH
from legator_mcp.audit.models import AuditCheckpoint, AuditEvent
from legator_mcp.audit.schemas import CSV_COLUMNS, AuditEventRead, AuditQuery
from legator_mcp.audit.service import AuditEntry, AuditService
from legator_mcp.db.session import Database
from legator_mcp.errors import InvalidRequest
from legator_mcp.observability import request_id_var
from legator_mcp.principal import Permission, Principal, PrincipalKind
from legator_probe.protocol.sanitize import REDACTED

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 1, 1, tzinfo=UTC)
ALICE = Principal(PrincipalKind.USER, "u-1", "alice", frozenset({Permission.ADMIN}), via="rest")
BOT = Principal(PrincipalKind.API_KEY, "k-1", "ops-bot", frozenset({Permission.FLEET_WRITE}), via="mcp")
LEGATOR_KEY = "lgk_" + "0123456789abcdef" * 4


class StepClock:
    """A clock that stands still until a test moves it."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@pytest.fixture
def clock() -> StepClock:
    return StepClock()


@pytest.fixture
def audit(database: Database, clock: StepClock) -> AuditService:
    return AuditService(database=database, clock=clock, batch_size=7)


async def record_many(audit: AuditService, count: int, *, type: str = "fleet.probe_updated", **kwargs: Any) -> None:
    for n in range(count):
        await audit.record(type=type, actor=ALICE, summary=f"event {n}", **kwargs)


async def all_pages(audit: AuditService, query: AuditQuery) -> list[AuditEventRead]:
    events: list[AuditEventRead] = []
    while True:
        page = await audit.search(query=query)
        events.extend(page.events)
        assert page.has_more is (page.next_cursor is not None)
        if page.next_cursor is None:
            return events
        query = query.model_copy(update={"cursor": page.next_cursor})


async def stored_rows(database: Database) -> list[AuditEventRead]:
    async with database.read() as session:
        rows = (await session.scalars(select(AuditEvent).order_by(AuditEvent.seq))).all()
        return [AuditEventRead.model_validate(row) for row in rows]


async def execute(database: Database, sql: str, **params: Any) -> None:
    async with database.write() as session:
        await session.execute(text(sql), params)


# Recording


async def test_record_links_each_event_to_its_predecessor(audit: AuditService) -> None:
    first = await audit.record(
        type="auth.key_created",
        actor=ALICE,
        summary="API key ops-bot created",
        detail={"name": "ops-bot", "permissions": ["fleet:write"]},
        after={"enabled": True},
        request_id="req-1",
    )
    second = await audit.record(type="auth.key_revoked", actor=BOT, summary="API key revoked", before={"enabled": True})

    assert (first.seq, second.seq) == (1, 2)
    assert first.prev_hash == GENESIS_HASH
    assert second.prev_hash == first.hash
    assert (first.actor, first.principal_kind, first.via) == ("user:alice", "user", "rest")
    assert (second.actor, second.principal_kind, second.via) == ("api_key:ops-bot", "api_key", "mcp")
    assert first.request_id == "req-1"
    assert first.ts.tzinfo is not None
    verification = await audit.verify()
    assert verification.ok
    assert verification.checked == 2


async def test_record_hash_covers_every_stored_field(audit: AuditService) -> None:
    event = await audit.record(type="fleet.probe_tagged", actor=ALICE, summary="tagged", probe_id="p-1")

    content = event.model_dump(mode="python", exclude={"hash"})
    content["ts"] = event.ts.astimezone(UTC).isoformat(timespec="microseconds")
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert event.hash == hashlib.sha256(canonical.encode()).hexdigest()


async def test_record_accepts_a_bare_actor_for_a_caller_without_principal(audit: AuditService) -> None:
    event = await audit.record(
        type="auth.login_failed", actor="anonymous", summary="login failed", detail={"method": "local"}
    )
    probe = await audit.record(
        type="inventory.updated", actor="probe:p-9", principal_kind=PrincipalKind.PROBE, summary="inventory"
    )

    assert (event.actor, event.principal_kind, event.via) == ("anonymous", "anonymous", None)
    assert probe.principal_kind == "probe"


@pytest.mark.parametrize(
    "event_type",
    [
        pytest.param("login", id="no-domain"),
        pytest.param("Auth.Login", id="upper-case"),
        pytest.param("auth.", id="empty-verb"),
        pytest.param("auth key.created", id="space"),
    ],
)
async def test_record_rejects_a_malformed_event_type(audit: AuditService, event_type: str) -> None:
    with pytest.raises(InvalidRequest) as excinfo:
        await audit.record(type=event_type, actor=ALICE, summary="x")
    assert excinfo.value.code == "invalid_request"


async def test_record_redacts_credentials_before_hashing_and_storing(audit: AuditService, database: Database) -> None:
    event = await audit.record(
        type="auth.login_failed",
        actor="anonymous",
        summary=f"login as admin password=hunter2 with key {LEGATOR_KEY}",
        detail={"password": "hunter2", "note": f"used {LEGATOR_KEY}", "nested": {"api_key": "sekrit-value"}},
        before={"token": "abc"},
        after={"command": "mysql --password=hunter2"},
    )

    raw = json.dumps(
        [(row.summary, row.actor, row.detail, row.before, row.after) for row in await stored_rows(database)]
    )
    for secret in ("hunter2", LEGATOR_KEY, "sekrit-value"):
        assert secret not in raw
        assert secret not in event.model_dump_json()
    assert event.detail is not None
    assert event.detail["password"] == "[REDACTED]"
    assert "password=[REDACTED]" in event.summary
    assert (await audit.verify()).ok


async def test_record_redacts_a_bare_actor_but_keeps_a_principal_verbatim(audit: AuditService) -> None:
    pasted = await audit.record(type="auth.login_failed", actor=f"user:{LEGATOR_KEY}", summary="login failed")
    key = await audit.record(type="auth.key_used", actor=BOT, summary="key used")

    assert LEGATOR_KEY not in pasted.actor
    assert key.actor == "api_key:ops-bot"


async def test_record_takes_the_request_id_of_the_request_being_served(audit: AuditService) -> None:
    token = request_id_var.set("req-42")
    try:
        implicit = await audit.record(type="fleet.probe_updated", actor=ALICE, summary="implicit")
        explicit = await audit.record(type="fleet.probe_updated", actor=ALICE, summary="explicit", request_id="r-1")
    finally:
        request_id_var.reset(token)
    outside = await audit.record(type="fleet.probe_updated", actor=ALICE, summary="outside")

    assert (implicit.request_id, explicit.request_id, outside.request_id) == ("req-42", "r-1", None)


async def test_record_inside_a_caller_transaction_commits_and_rolls_back_with_it(
    audit: AuditService, database: Database
) -> None:
    class Abort(Exception):
        pass

    with pytest.raises(Abort):
        async with database.write() as session:
            await audit.record(type="fleet.probe_deleted", actor=ALICE, summary="rolled back", session=session)
            raise Abort
    assert await audit.count() == 0

    async with database.write() as session:
        kept = await audit.record(type="fleet.probe_deleted", actor=ALICE, summary="kept", session=session)
    assert kept.seq == 1
    assert [row.summary for row in await stored_rows(database)] == ["kept"]
    assert (await audit.verify()).ok


async def test_record_stores_detail_values_as_plain_json(audit: AuditService) -> None:
    event = await audit.record(
        type="job.run.started",
        actor=Principal.system(),
        summary="nul\x00byte",
        detail={"at": T0, "kind": PrincipalKind.PROBE, "ratio": float("nan"), "tags": ("a", "b")},
    )

    assert event.detail == {"at": "2026-01-01T00:00:00Z", "kind": "probe", "ratio": "nan", "tags": ["a", "b"]}
    assert "\x00" not in event.summary
    assert (await audit.verify()).ok


async def test_record_rejects_detail_that_is_not_an_object(audit: AuditService) -> None:
    bad: Any = ["not", "an", "object"]
    with pytest.raises(InvalidRequest):
        await audit.record(type="fleet.probe_updated", actor=ALICE, summary="x", detail=bad)


async def test_record_many_chains_a_batch_exactly_as_successive_records_would(
    audit: AuditService, database: Database
) -> None:
    first = await audit.record(type="fleet.probe_updated", actor=ALICE, summary="before the batch")
    entries = [
        AuditEntry(type="command.sent", actor=BOT, summary=f"command {n} sent", probe_id=f"prb-{n}",
                   detail={"n": n, "note": f"with key {LEGATOR_KEY}"})
        for n in range(5)
    ]  # fmt: skip
    async with database.write() as session:
        assert await audit.record_many(entries, session=session) == 5
    last = await audit.record(type="fleet.probe_updated", actor=ALICE, summary="after the batch")

    rows = await stored_rows(database)
    assert [row.seq for row in rows] == [1, 2, 3, 4, 5, 6, 7] and last.seq == 7
    assert rows[1].prev_hash == first.hash and last.prev_hash == rows[5].hash
    assert [row.probe_id for row in rows[1:6]] == [f"prb-{n}" for n in range(5)]
    assert all(row.actor == "api_key:ops-bot" and row.via == "mcp" for row in rows[1:6])
    assert LEGATOR_KEY not in json.dumps([row.detail for row in rows])
    assert (await audit.verify()).ok


async def test_record_many_redacts_values_the_batch_shares_as_it_would_each_alone(
    audit: AuditService, database: Database
) -> None:
    # A fan-out's events hand over the same spec and rationale objects; each is cleaned once, never less well.
    env = {"API_KEY": "k", "REGION": "eu"}
    spec: dict[str, Any] = {"script": f"deploy --token={LEGATOR_KEY}", "env": env}
    rationale = ["classified shell as risk low", f"requested with {LEGATOR_KEY}"]
    details = [{"request_id": f"cmd-{n:04x}", "spec": spec, "rationale": rationale, "password": spec} for n in range(4)]
    async with database.write() as session:
        await audit.record_many(
            [AuditEntry(type="command.sent", actor=BOT, summary="sent", detail=d) for d in details], session=session
        )
    for detail in details[:1]:
        await audit.record(type="command.sent", actor=BOT, summary="sent", detail=detail)
    rows = await stored_rows(database)
    alone = rows[-1].detail
    assert alone is not None and LEGATOR_KEY not in json.dumps(alone)
    assert alone["password"] == REDACTED and alone["spec"]["env"]["API_KEY"] == REDACTED
    assert alone["spec"]["env"]["REGION"] == "eu"
    assert [row.detail for row in rows[:4]] == [{**alone, "request_id": f"cmd-{n:04x}"} for n in range(4)]
    assert env["API_KEY"] == "k"  # the caller's objects are left as they were
    assert (await audit.verify()).ok


async def test_record_many_appends_nothing_when_one_event_is_malformed(audit: AuditService, database: Database) -> None:
    entries = [
        AuditEntry(type="command.sent", actor=BOT, summary="fine"),
        AuditEntry(type="Bad", actor=BOT, summary=""),
    ]
    with pytest.raises(InvalidRequest):
        async with database.write() as session:
            await audit.record_many(entries, session=session)
    assert await audit.count() == 0
    async with database.write() as session:
        assert await audit.record_many([], session=session) == 0
    assert (await audit.verify()).ok


# Concurrency


async def test_concurrent_records_form_one_chain_without_gaps_or_forks(database: Database) -> None:
    audit = AuditService(database=database)
    tasks, per_task = 60, 3

    async def writer(n: int) -> None:
        for i in range(per_task):
            await audit.record(type="command.sent", actor=BOT, summary=f"writer {n} event {i}", probe_id=f"p-{n}")

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for n in range(tasks):
                tg.start_soon(writer, n)

    rows = await stored_rows(database)
    total = tasks * per_task
    assert [row.seq for row in rows] == list(range(1, total + 1))
    assert len({row.prev_hash for row in rows}) == total
    assert [row.prev_hash for row in rows] == [GENESIS_HASH, *(row.hash for row in rows[:-1])]
    verification = await audit.verify()
    assert verification.ok
    assert verification.checked == total


async def test_verify_sees_a_consistent_snapshot_while_writers_append(database: Database) -> None:
    audit = AuditService(database=database, batch_size=5)
    results: list[bool] = []

    async def writer(n: int) -> None:
        for i in range(5):
            await audit.record(type="command.sent", actor=BOT, summary=f"{n}/{i}")

    async def verifier() -> None:
        results.extend([(await audit.verify()).ok for _ in range(5)])

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for n in range(20):
                tg.start_soon(writer, n)
            tg.start_soon(verifier)

    assert results == [True] * 5
    assert (await audit.verify()).checked == 100


async def test_append_holds_the_head_row_lock_until_commit_on_postgresql(postgres_database: Database) -> None:
    database = postgres_database
    audit = AuditService(database=database)
    first: list[AuditEventRead] = []
    second: list[AuditEventRead] = []

    async def record_second() -> None:
        second.append(await audit.record(type="command.sent", actor=BOT, summary="second"))

    async def lock_waiters() -> int:
        async with database.engine.connect() as conn:
            waiting = await conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
            return waiting.scalar_one()

    await audit.record(type="command.sent", actor=ALICE, summary="committed before")
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            async with database.write() as session:
                first.append(await audit.record(type="command.sent", actor=ALICE, summary="first", session=session))

                async with database.engine.connect() as other:
                    with pytest.raises(DBAPIError) as excinfo:
                        await other.execute(text("SELECT last_seq FROM audit_head WHERE id = 1 FOR UPDATE NOWAIT"))
                assert getattr(excinfo.value.orig, "sqlstate", None) == "55P03"  # lock_not_available

                tg.start_soon(record_second)
                while await lock_waiters() == 0:
                    pass
                assert second == []

    assert (first[0].seq, second[0].seq) == (2, 3)
    assert second[0].prev_hash == first[0].hash
    assert (await audit.verify()).ok


# Search


async def test_search_filters_by_type_actor_probe_and_time(audit: AuditService, clock: StepClock) -> None:
    await audit.record(type="command.sent", actor=ALICE, summary="a", probe_id="p-1")
    clock.advance(timedelta(hours=1))
    await audit.record(type="command.result", actor=BOT, summary="b", probe_id="p-1")
    clock.advance(timedelta(hours=1))
    await audit.record(type="command.sent", actor=BOT, summary="c", probe_id="p-2")
    clock.advance(timedelta(hours=1))
    await audit.record(type="policy.changed", actor=ALICE, summary="d")

    async def summaries(**filters: Any) -> list[str]:
        page = await audit.search(query=AuditQuery(**filters))
        return [event.summary for event in page.events]

    assert await summaries() == ["d", "c", "b", "a"]
    assert await summaries(type="command.sent") == ["c", "a"]
    assert await summaries(actor="api_key:ops-bot") == ["c", "b"]
    assert await summaries(probe_id="p-1") == ["b", "a"]
    assert await summaries(since=T0 + timedelta(hours=1)) == ["d", "c", "b"]
    assert await summaries(until=T0 + timedelta(hours=2)) == ["b", "a"]
    assert await summaries(type="command.sent", actor="api_key:ops-bot", probe_id="p-2") == ["c"]
    assert await summaries(type="job.run.started") == []
    assert await audit.count(query=AuditQuery(type="command.sent")) == 2
    assert await audit.count() == 4


async def test_search_pages_with_a_cursor_without_duplicates_or_gaps(audit: AuditService) -> None:
    await record_many(audit, 23)
    await record_many(audit, 4, type="auth.login")

    everything = await all_pages(audit, AuditQuery(limit=5))
    logins = await all_pages(audit, AuditQuery(type="fleet.probe_updated", limit=4))

    assert [event.seq for event in everything] == list(range(27, 0, -1))
    assert [event.seq for event in logins] == list(range(23, 0, -1))
    first = await audit.search(query=AuditQuery(limit=27))
    assert (first.has_more, first.next_cursor) == (False, None)


async def test_search_cursor_survives_events_recorded_between_pages(audit: AuditService) -> None:
    await record_many(audit, 6)
    page = await audit.search(query=AuditQuery(limit=3))
    await record_many(audit, 2)

    rest = await audit.search(query=AuditQuery(limit=10, cursor=page.next_cursor))

    assert [e.seq for e in page.events] + [e.seq for e in rest.events] == [6, 5, 4, 3, 2, 1]


@pytest.mark.parametrize(
    "cursor",
    [
        pytest.param("not-a-cursor!", id="garbage"),
        pytest.param("c2VxOmFiYw", id="non-numeric"),  # "seq:abc"
        pytest.param("c2VxOjA", id="zero"),  # "seq:0"
        pytest.param("MTI", id="no-prefix"),  # "12"
        pytest.param("gA", id="not-ascii"),
    ],
)
async def test_search_rejects_a_cursor_it_did_not_issue(audit: AuditService, cursor: str) -> None:
    with pytest.raises(InvalidRequest) as excinfo:
        await audit.search(query=AuditQuery(cursor=cursor))
    assert excinfo.value.code == "invalid_request"


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"limit": 0}, id="limit-zero"),
        pytest.param({"limit": 501}, id="limit-too-big"),
        pytest.param({"since": "2026-01-01T00:00:00"}, id="naive-since"),
    ],
)
def test_audit_query_rejects_bad_parameters(params: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        AuditQuery.model_validate(params)


def test_audit_query_parses_query_string_values() -> None:
    query = AuditQuery.model_validate({"type": "", "limit": "20", "since": "2026-01-01T00:00:00Z", "cursor": ""})

    assert (query.type, query.limit, query.since, query.cursor) == (None, 20, T0, None)
    assert AuditQuery().limit == 50


# Export


async def test_export_yields_every_matching_event_in_chain_order(audit: AuditService) -> None:
    for n in range(30):
        await audit.record(type="command.sent" if n % 3 else "command.result", actor=ALICE, summary=f"{n}")

    exported = [event async for event in audit.export(query=AuditQuery(limit=1))]
    sent = [event async for event in audit.export(query=AuditQuery(type="command.sent"))]

    assert [event.seq for event in exported] == list(range(1, 31))
    assert [event.summary for event in sent] == [str(n) for n in range(30) if n % 3]


async def test_export_shapes_are_json_lines_and_csv_friendly(audit: AuditService) -> None:
    await audit.record(
        type="command.sent", actor=ALICE, summary='quoted "text", commas', probe_id="p-1", detail={"x": 1}
    )
    await audit.record(type="auth.login", actor="anonymous", summary="multi\nline")

    events = [event async for event in audit.export(query=AuditQuery())]
    lines = [event.model_dump_json() for event in events]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CSV_COLUMNS))
    writer.writeheader()
    writer.writerows(event.csv_row() for event in events)

    assert [AuditEventRead.model_validate_json(line) for line in lines] == events
    assert json.loads(lines[0])["detail"] == {"x": 1}
    rows = list(csv.DictReader(io.StringIO(buffer.getvalue())))
    assert list(rows[0])[:6] == ["id", "timestamp", "type", "probe_id", "actor", "summary"]
    assert rows[0]["summary"] == 'quoted "text", commas'
    assert rows[1]["summary"] == "multi\nline"
    assert rows[1]["probe_id"] == ""
    assert datetime.fromisoformat(rows[0]["timestamp"]) == events[0].ts


async def test_export_stops_cleanly_when_the_consumer_does(audit: AuditService) -> None:
    await record_many(audit, 20)

    taken: list[int] = []
    async for event in audit.export(query=AuditQuery()):
        taken.append(event.seq)
        if len(taken) == 9:
            break

    assert taken == list(range(1, 10))
    assert (await audit.verify()).ok


# Verification and tampering


async def test_verify_accepts_an_empty_log(audit: AuditService) -> None:
    verification = await audit.verify()

    assert (verification.ok, verification.checked, verification.first_broken) == (True, 0, None)
    assert verification.checkpoint_seq is None


async def test_verify_reports_an_edited_summary_as_a_hash_mismatch(audit: AuditService, database: Database) -> None:
    await record_many(audit, 10)
    await execute(database, "UPDATE audit_events SET summary = 'nothing happened' WHERE seq = 4")

    verification = await audit.verify()

    assert not verification.ok
    assert verification.checked == 3
    broken = verification.first_broken
    assert broken is not None
    assert (broken.seq, broken.reason) == (4, "hash_mismatch")
    assert broken.found == (await stored_rows(database))[3].hash


async def test_verify_reports_an_edited_json_detail(audit: AuditService, database: Database) -> None:
    await record_many(audit, 5, detail={"exit_code": 1})
    async with database.write() as session:
        await session.execute(update(AuditEvent).where(AuditEvent.seq == 2).values(detail={"exit_code": 0}))

    broken = (await audit.verify()).first_broken

    assert broken is not None
    assert (broken.seq, broken.reason) == (2, "hash_mismatch")


async def test_verify_reports_a_deleted_middle_row_as_a_gap(audit: AuditService, database: Database) -> None:
    await record_many(audit, 10)
    await execute(database, "DELETE FROM audit_events WHERE seq = 5")

    broken = (await audit.verify()).first_broken

    assert broken is not None
    assert (broken.seq, broken.reason, broken.expected, broken.found) == (6, "gap", "5", "6")


async def test_verify_reports_a_changed_prev_hash(audit: AuditService, database: Database) -> None:
    await record_many(audit, 6)
    await execute(database, "UPDATE audit_events SET prev_hash = :h WHERE seq = 3", h="f" * 64)

    broken = (await audit.verify()).first_broken

    assert broken is not None
    assert (broken.seq, broken.reason, broken.found) == (3, "prev_hash_mismatch", "f" * 64)


async def test_verify_finds_an_edit_even_when_the_row_was_rehashed(audit: AuditService, database: Database) -> None:
    await record_many(audit, 6)
    rows = await stored_rows(database)
    forged = rows[2].model_copy(update={"summary": "forged"})
    content = forged.model_dump(mode="python", exclude={"hash"})
    content["ts"] = forged.ts.astimezone(UTC).isoformat(timespec="microseconds")
    new_hash = hashlib.sha256(
        json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    ).hexdigest()
    await execute(database, "UPDATE audit_events SET summary = 'forged', hash = :h WHERE seq = 3", h=new_hash)

    broken = (await audit.verify()).first_broken

    assert broken is not None
    assert (broken.seq, broken.reason) == (4, "prev_hash_mismatch")


async def test_verify_reports_rows_cut_off_the_end(audit: AuditService, database: Database) -> None:
    await record_many(audit, 6)
    await execute(database, "DELETE FROM audit_events WHERE seq >= 5")

    verification = await audit.verify()

    assert verification.checked == 4
    assert verification.first_broken is not None
    assert (verification.first_broken.seq, verification.first_broken.reason) == (6, "gap")


async def test_verify_reports_rows_cut_off_the_start_without_a_checkpoint(
    audit: AuditService, database: Database
) -> None:
    await record_many(audit, 6)
    await execute(database, "DELETE FROM audit_events WHERE seq <= 2")

    broken = (await audit.verify()).first_broken

    assert broken is not None
    assert (broken.seq, broken.reason, broken.expected) == (3, "gap", "1")


# Retention


async def test_purge_deletes_old_events_and_keeps_the_chain_verifiable(audit: AuditService, clock: StepClock) -> None:
    for day in range(10):
        await audit.record(type="command.sent", actor=BOT, summary=f"day {day}")
        clock.advance(timedelta(days=1))

    result = await audit.purge(older_than=timedelta(days=5), actor=ALICE)

    assert (result.deleted, result.checkpoint_seq) == (5, 5)
    assert await audit.count() == 6
    verification = await audit.verify()
    assert (verification.ok, verification.checked, verification.checkpoint_seq) == (True, 6, 5)
    purged = (await audit.search(query=AuditQuery(type="audit.purged"))).events
    assert len(purged) == 1
    assert purged[0].seq == 11
    assert purged[0].actor == "user:alice"
    assert purged[0].detail is not None
    assert (purged[0].detail["deleted"], purged[0].detail["upto_seq"]) == (5, 5)
    await audit.record(type="command.sent", actor=BOT, summary="after purge")
    assert (await audit.verify()).checked == 7


async def test_purge_with_nothing_old_enough_deletes_nothing_but_is_recorded(
    audit: AuditService, clock: StepClock
) -> None:
    await record_many(audit, 3)

    result = await audit.purge(older_than=timedelta(days=1), actor=ALICE)

    assert (result.deleted, result.checkpoint_seq) == (0, None)
    assert await audit.count() == 4
    verification = await audit.verify()
    assert (verification.ok, verification.checkpoint_seq) == (True, None)


async def test_purge_of_everything_then_again_keeps_verifying(audit: AuditService, clock: StepClock) -> None:
    await record_many(audit, 4)
    clock.advance(timedelta(seconds=1))

    first = await audit.purge(older_than=timedelta(0), actor=ALICE)
    await record_many(audit, 3)
    clock.advance(timedelta(seconds=1))
    second = await audit.purge(older_than=timedelta(0), actor=Principal.system())

    assert (first.deleted, first.checkpoint_seq) == (4, 4)
    assert (second.deleted, second.checkpoint_seq) == (4, 8)
    verification = await audit.verify()
    assert (verification.ok, verification.checked, verification.checkpoint_seq) == (True, 1, 8)


async def test_purge_only_deletes_a_prefix_of_the_chain(audit: AuditService, clock: StepClock) -> None:
    await audit.record(type="command.sent", actor=BOT, summary="old")
    clock.advance(timedelta(days=10))
    await audit.record(type="command.sent", actor=BOT, summary="new")
    clock.advance(timedelta(days=-10))  # the clock stepped back
    await audit.record(type="command.sent", actor=BOT, summary="old again")
    clock.advance(timedelta(days=10))

    result = await audit.purge(older_than=timedelta(days=5), actor=ALICE)

    assert result.deleted == 1
    assert (await audit.verify()).ok


async def test_purge_rejects_a_negative_age(audit: AuditService) -> None:
    with pytest.raises(InvalidRequest):
        await audit.purge(older_than=timedelta(seconds=-1), actor=ALICE)


async def _purged_log(audit: AuditService, clock: StepClock) -> None:
    for _ in range(8):
        await audit.record(type="command.sent", actor=BOT, summary="x")
        clock.advance(timedelta(days=1))
    await audit.purge(older_than=timedelta(days=4), actor=ALICE)  # deletes seq 1..4, records seq 9


async def test_verify_finds_a_tamper_after_a_purge(audit: AuditService, database: Database, clock: StepClock) -> None:
    await _purged_log(audit, clock)
    await execute(database, "UPDATE audit_events SET actor = 'user:mallory' WHERE seq = 6")

    verification = await audit.verify()

    assert verification.checkpoint_seq == 4
    assert verification.checked == 1
    assert verification.first_broken is not None
    assert (verification.first_broken.seq, verification.first_broken.reason) == (6, "hash_mismatch")


async def test_verify_reports_rows_deleted_right_after_the_checkpoint(
    audit: AuditService, database: Database, clock: StepClock
) -> None:
    await _purged_log(audit, clock)
    await execute(database, "DELETE FROM audit_events WHERE seq = 5")

    broken = (await audit.verify()).first_broken

    assert broken is not None
    assert (broken.seq, broken.reason, broken.expected) == (6, "gap", "5")


async def test_verify_reports_a_first_row_that_does_not_chain_onto_the_checkpoint(
    audit: AuditService, database: Database, clock: StepClock
) -> None:
    await _purged_log(audit, clock)
    await execute(database, "UPDATE audit_checkpoints SET upto_hash = :h", h="e" * 64)

    broken = (await audit.verify()).first_broken

    assert broken is not None
    assert (broken.seq, broken.reason, broken.expected) == (5, "checkpoint_mismatch", "e" * 64)


async def test_verify_reports_a_checkpoint_forged_to_hide_deleted_rows(
    audit: AuditService, database: Database, clock: StepClock
) -> None:
    await _purged_log(audit, clock)
    fifth = (await stored_rows(database))[0]
    assert fifth.seq == 5
    async with database.write() as session:
        await session.execute(delete(AuditEvent).where(AuditEvent.seq == 5))
        await session.execute(update(AuditCheckpoint).values(upto_seq=5, upto_hash=fifth.hash))

    verification = await audit.verify()

    assert verification.first_broken is not None
    assert verification.first_broken.reason == "checkpoint_mismatch"
    assert verification.first_broken.seq == 5
