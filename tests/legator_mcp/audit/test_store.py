"""Store-level behaviour of the audit log that the service does not show directly."""

import pytest
from sqlalchemy import text

from legator_mcp.audit import store
from legator_mcp.audit._chain import GENESIS_HASH
from legator_mcp.db.session import Database
from legator_mcp.errors import InvalidRequest


@pytest.mark.parametrize("seq", [1, 7, 2**62])
def test_cursor_round_trips_and_is_opaque(seq: int) -> None:
    cursor = store.encode_cursor(seq)

    assert store.decode_cursor(cursor) == seq
    assert str(seq) not in cursor


def test_cursor_with_an_absurd_sequence_number_is_rejected() -> None:
    with pytest.raises(InvalidRequest):
        store.decode_cursor(store.encode_cursor(10**30))


@pytest.mark.anyio
async def test_lock_head_creates_the_head_row_once(database: Database) -> None:
    async with database.write() as session:
        assert await store.read_head(session) is None
        assert await store.lock_head(session) == (0, GENESIS_HASH)
        assert await store.lock_head(session) == (0, GENESIS_HASH)
    async with database.read() as session:
        assert await store.read_head(session) == (0, GENESIS_HASH)


@pytest.mark.anyio
async def test_begin_snapshot_uses_repeatable_read_on_postgresql(postgres_database: Database) -> None:
    database = postgres_database
    async with database.read() as session:
        await store.begin_snapshot(session)
        level = (await session.execute(text("SHOW transaction_isolation"))).scalar_one()
    assert level == "repeatable read"
