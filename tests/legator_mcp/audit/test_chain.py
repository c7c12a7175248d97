"""The hash chain without a database: canonical hashing, JSON normalisation and the verifier's verdicts."""

import enum
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from legator_mcp.audit._chain import GENESIS_HASH, ChainVerifier, Checkpoint, event_hash, row_hash, to_json_value

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Row:
    seq: int
    prev_hash: str
    id: str = "id"
    ts: datetime = T0
    type: str = "command.sent"
    actor: str = "user:alice"
    principal_kind: str = "user"
    via: str | None = None
    probe_id: str | None = None
    summary: str = "s"
    detail: dict[str, Any] | None = None
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    request_id: str | None = None
    hash: str = field(default="")


def sealed(row: Row) -> Row:
    return replace(row, hash=row_hash(row))


def chain(length: int, *, start: int = 1, prev: str = GENESIS_HASH) -> list[Row]:
    rows: list[Row] = []
    for seq in range(start, start + length):
        row = sealed(Row(seq=seq, id=f"id-{seq}", prev_hash=prev, summary=f"event {seq}"))
        rows.append(row)
        prev = row.hash
    return rows


def test_event_hash_ignores_key_order_and_time_zone_of_the_timestamp() -> None:
    row = Row(seq=1, prev_hash=GENESIS_HASH, detail={"b": 1, "a": [1, {"y": 2, "x": 3}]})
    reordered = replace(row, detail={"a": [1, {"x": 3, "y": 2}], "b": 1})
    elsewhere = replace(row, ts=T0.astimezone(timezone(timedelta(hours=5))))

    assert row_hash(row) == row_hash(reordered) == row_hash(elsewhere)
    assert len(row_hash(row)) == 64


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"seq": 2}, id="seq"),
        pytest.param({"prev_hash": "1" * 64}, id="prev_hash"),
        pytest.param({"ts": T0 + timedelta(microseconds=1)}, id="ts"),
        pytest.param({"via": "mcp"}, id="via"),
        pytest.param({"detail": {}}, id="detail-empty-vs-null"),
        pytest.param({"request_id": "r"}, id="request_id"),
    ],
)
def test_event_hash_changes_with_any_stored_field(change: dict[str, Any]) -> None:
    row = Row(seq=1, prev_hash=GENESIS_HASH)

    assert row_hash(replace(row, **change)) != row_hash(row)


def test_event_hash_ignores_a_stored_hash_field() -> None:
    fields = {name: getattr(Row(seq=1, prev_hash=GENESIS_HASH), name) for name in Row.__dataclass_fields__}

    assert event_hash(fields) == event_hash({**fields, "hash": "anything"})


def test_to_json_value_returns_what_a_json_column_gives_back() -> None:
    class Colour(enum.StrEnum):
        RED = "red"

    value = {
        "when": T0,
        "colour": Colour.RED,
        "pair": (1, 2),
        "inf": float("inf"),
        3: "int key",
        "s": "a\x00b",
        "u": "x\ud800",
    }

    assert to_json_value(value) == {
        "when": "2026-01-01T00:00:00Z",
        "colour": "red",
        "pair": [1, 2],
        "inf": "inf",
        "3": "int key",
        "s": "a\ufffdb",
        "u": "x?",
    }


def test_verifier_accepts_an_intact_chain_fed_in_batches() -> None:
    rows = chain(10)
    verifier = ChainVerifier(None)

    assert verifier.feed(rows[:4]) is None
    assert verifier.feed(rows[4:]) is None
    assert verifier.finish(head_seq=10, head_hash=rows[-1].hash) is None
    assert verifier.checked == 10


def test_verifier_reports_a_head_that_disagrees_with_the_last_row() -> None:
    rows = chain(3)
    verifier = ChainVerifier(None)
    assert verifier.feed(rows) is None

    broken = verifier.finish(head_seq=3, head_hash="9" * 64)

    assert broken is not None
    assert (broken.seq, broken.id, broken.reason) == (3, "id-3", "hash_mismatch")


def test_verifier_reports_rows_without_a_head() -> None:
    verifier = ChainVerifier(None)
    assert verifier.feed(chain(2)) is None

    broken = verifier.finish(head_seq=None, head_hash=None)

    assert broken is not None
    assert broken.reason == "gap"


def test_verifier_reports_a_row_the_checkpoint_says_was_purged() -> None:
    rows = chain(5)
    verifier = ChainVerifier(Checkpoint(id="cp", upto_seq=2, upto_hash=rows[1].hash))

    broken = verifier.feed(rows)

    assert broken is not None
    assert (broken.seq, broken.reason) == (1, "checkpoint_mismatch")


def test_verifier_needs_a_purge_event_vouching_for_the_checkpoint() -> None:
    purged = chain(2)
    rest = chain(3, start=3, prev=purged[-1].hash)
    checkpoint = Checkpoint(id="cp", upto_seq=2, upto_hash=purged[-1].hash)
    verifier = ChainVerifier(checkpoint)
    assert verifier.feed(rest) is None

    broken = verifier.finish(head_seq=5, head_hash=rest[-1].hash)

    assert broken is not None
    assert (broken.seq, broken.id, broken.reason) == (2, "cp", "checkpoint_mismatch")


def test_verifier_accepts_a_checkpoint_its_purge_event_names() -> None:
    purged = chain(2)
    checkpoint = Checkpoint(id="cp", upto_seq=2, upto_hash=purged[-1].hash)
    event = sealed(
        Row(
            seq=3,
            prev_hash=purged[-1].hash,
            type="audit.purged",
            detail={"checkpoint_id": "cp", "upto_seq": 2, "upto_hash": purged[-1].hash, "deleted": 2},
        )
    )
    verifier = ChainVerifier(checkpoint)

    assert verifier.feed([event]) is None
    assert verifier.finish(head_seq=3, head_hash=event.hash) is None
