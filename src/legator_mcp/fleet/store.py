"""Queries of the fleet domain; callers pass the session of their transaction."""

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from legator_mcp.db._errors import map_db_errors
from legator_mcp.db.bulk import insert_rows, update_rows
from legator_mcp.fleet.models import Probe, ProbeInventory, ProbeTag, RegistrationToken

__all__ = ["FleetStore"]

LIVE_STATUSES = ("online", "degraded")

_IN_LIST_CAP = 500
"""Ids per ``IN (...)`` list: SQLite caps the bound parameters of one statement."""


def _id_chunks(probe_ids: Iterable[str]) -> Iterator[list[str]]:
    """The distinct ids in sorted order (rows locked in id order cannot deadlock), in lists of at most the cap."""
    unique = sorted(set(probe_ids))
    for start in range(0, len(unique), _IN_LIST_CAP):
        yield unique[start : start + _IN_LIST_CAP]


class FleetStore:
    """Every SQL statement of the fleet domain."""

    # -- registration tokens ----------------------------------------------------------------------------------

    async def add_token(self, session: AsyncSession, token: RegistrationToken) -> RegistrationToken:
        with map_db_errors("a registration token with that digest exists"):
            session.add(token)
            await session.flush()
        return token

    async def token_by_hash(self, session: AsyncSession, token_hash: str) -> RegistrationToken | None:
        stmt = select(RegistrationToken).where(RegistrationToken.token_hash == token_hash)
        return (await session.execute(stmt)).scalar_one_or_none()

    async def list_tokens(self, session: AsyncSession) -> Sequence[RegistrationToken]:
        stmt = select(RegistrationToken).order_by(RegistrationToken.created_at, RegistrationToken.id)
        return (await session.execute(stmt)).scalars().all()

    async def consume_token(self, session: AsyncSession, token_id: str, now: datetime) -> bool:
        """Count one use of a token if it is still usable; ``False`` if it expired or was used meanwhile.

        One conditional UPDATE: concurrent registrations with one single-use token serialise on the row, and
        the loser re-reads ``uses = 1`` and matches nothing.
        """
        stmt = (
            update(RegistrationToken)
            .where(
                RegistrationToken.id == token_id,
                RegistrationToken.expires_at > now,
                or_(RegistrationToken.multi_use.is_(True), RegistrationToken.uses == 0),
            )
            .values(uses=RegistrationToken.uses + 1, last_used_at=now)
            .execution_options(synchronize_session=False)
        )
        result = await session.execute(stmt)
        return getattr(result, "rowcount", 0) == 1

    # -- probes -----------------------------------------------------------------------------------------------

    async def add_probe(self, session: AsyncSession, probe: Probe) -> Probe:
        with map_db_errors(f"a probe named {probe.hostname!r} already exists"):
            session.add(probe)
            await session.flush()
        return probe

    async def probe(self, session: AsyncSession, probe_id: str, *, for_update: bool = False) -> Probe | None:
        return await session.get(Probe, probe_id, with_for_update=for_update or None)

    async def probes(
        self, session: AsyncSession, probe_ids: Sequence[str], *, for_update: bool = False
    ) -> dict[str, Probe]:
        """The probes of ``probe_ids`` that exist; with ``for_update`` locked in id order (no deadlocks)."""
        found: dict[str, Probe] = {}
        for chunk in _id_chunks(probe_ids):
            stmt = select(Probe).where(Probe.id.in_(chunk)).order_by(Probe.id)
            if for_update:
                stmt = stmt.with_for_update()
            found.update((probe.id, probe) for probe in (await session.execute(stmt)).scalars())
        return found

    async def probes_with_policy(self, session: AsyncSession, policy_id: str) -> Sequence[Probe]:
        stmt = select(Probe).where(Probe.policy_id == policy_id).order_by(Probe.id)
        return (await session.execute(stmt)).scalars().all()

    async def probe_exists(self, session: AsyncSession, probe_id: str) -> bool:
        return (await session.execute(select(Probe.id).where(Probe.id == probe_id))).first() is not None

    async def probe_by_hostname(
        self, session: AsyncSession, hostname: str, *, for_update: bool = False
    ) -> Probe | None:
        stmt = select(Probe).where(Probe.hostname == hostname)
        if for_update:
            stmt = stmt.with_for_update()
        return (await session.execute(stmt)).scalar_one_or_none()

    async def probe_by_credential(self, session: AsyncSession, credential_hash: str) -> Probe | None:
        stmt = select(Probe).where(Probe.credential_hash == credential_hash)
        return (await session.execute(stmt)).scalar_one_or_none()

    def _filtered(self, status: str | None, tag: str | None) -> Any:
        stmt = select(Probe)
        if status is not None:
            stmt = stmt.where(Probe.status == status)
        if tag is not None:
            stmt = stmt.where(Probe.id.in_(select(ProbeTag.probe_id).where(ProbeTag.tag == tag)))
        return stmt

    async def list_probes(
        self,
        session: AsyncSession,
        *,
        status: str | None = None,
        tag: str | None = None,
        after_id: str | None = None,
        limit: int | None = None,
    ) -> Sequence[Probe]:
        stmt = self._filtered(status, tag)
        if after_id is not None:
            stmt = stmt.where(Probe.id > after_id)
        stmt = stmt.order_by(Probe.id)
        if limit is not None:
            stmt = stmt.limit(limit)
        return (await session.execute(stmt)).scalars().all()

    async def count_probes(self, session: AsyncSession, *, status: str | None = None, tag: str | None = None) -> int:
        inner = self._filtered(status, tag).with_only_columns(Probe.id).subquery()
        return int((await session.execute(select(func.count()).select_from(inner))).scalar_one())

    async def count_by_status(self, session: AsyncSession) -> dict[str, int]:
        rows = await session.execute(select(Probe.status, func.count()).group_by(Probe.status))
        return {status: int(count) for status, count in rows.all()}

    async def live_probe_ids(self, session: AsyncSession, *, limit: int) -> list[str]:
        stmt = select(Probe.id).where(Probe.status.in_(LIVE_STATUSES)).order_by(Probe.id).limit(limit)
        return list((await session.execute(stmt)).scalars().all())

    async def tag_counts(self, session: AsyncSession) -> dict[str, int]:
        rows = await session.execute(select(ProbeTag.tag, func.count()).group_by(ProbeTag.tag).order_by(ProbeTag.tag))
        return {tag: int(count) for tag, count in rows.all()}

    def set_tags(self, probe: Probe, tags: Iterable[str]) -> None:
        """Make ``probe``'s tag rows exactly ``tags`` (kept rows stay, so no primary key is re-inserted)."""
        wanted = set(tags)
        probe.tag_rows = [row for row in probe.tag_rows if row.tag in wanted] + [
            ProbeTag(probe_id=probe.id, tag=tag) for tag in sorted(wanted - {row.tag for row in probe.tag_rows})
        ]

    async def delete_probe(self, session: AsyncSession, probe_id: str) -> bool:
        result = await session.execute(
            delete(Probe).where(Probe.id == probe_id).execution_options(synchronize_session=False)
        )
        return bool(getattr(result, "rowcount", 0))

    async def stale_live_probes(self, session: AsyncSession, *, seen_before: datetime) -> Sequence[Row[str, str, str]]:
        """Lock and return ``(id, hostname, status)`` of online/degraded probes silent since before ``seen_before``.

        On PostgreSQL rows another sweeper holds are skipped, so two replicas never report the same transition.
        """
        stmt = (
            select(Probe.id, Probe.hostname, Probe.status)
            .where(Probe.status.in_(LIVE_STATUSES), Probe.last_seen_at < seen_before)
            .order_by(Probe.id)
            .with_for_update(skip_locked=True)
        )
        return (await session.execute(stmt)).all()

    async def mark_offline(self, session: AsyncSession, probe_ids: Sequence[str], now: datetime) -> None:
        if not probe_ids:
            return
        await session.execute(
            update(Probe)
            .where(Probe.id.in_(probe_ids))
            .values(status="offline", status_changed_at=now)
            .execution_options(synchronize_session=False)
        )

    async def presence_rows(
        self, session: AsyncSession, probe_ids: Sequence[str]
    ) -> list[Row[str, str, str, int | None, datetime]]:
        """Lock and return ``(id, hostname, status, cpus, status_changed_at)`` of a batch of probes (heartbeats,
        disconnections, inventories) that exist.

        Rows are locked in id order, so concurrent batches (other replicas) cannot deadlock.
        """
        found: list[Row[str, str, str, int | None, datetime]] = []
        for chunk in _id_chunks(probe_ids):
            stmt = (
                select(Probe.id, Probe.hostname, Probe.status, Probe.cpus, Probe.status_changed_at)
                .where(Probe.id.in_(chunk))
                .order_by(Probe.id)
                .with_for_update()
            )
            found.extend((await session.execute(stmt)).all())
        return found

    async def offline_before(self, session: AsyncSession, cutoff: datetime) -> Sequence[Probe]:
        stmt = (
            select(Probe)
            .where(Probe.status == "offline", Probe.status_changed_at < cutoff)
            .order_by(Probe.id)
            .with_for_update()
        )
        return (await session.execute(stmt)).scalars().all()

    # -- inventory --------------------------------------------------------------------------------------------

    async def inventory(self, session: AsyncSession, probe_id: str) -> ProbeInventory | None:
        return await session.get(ProbeInventory, probe_id)

    async def replace_inventories(self, session: AsyncSession, rows: list[dict[str, Any]]) -> None:
        """Make each row (``probe_id``, ``data``, ``collected_at``, ``received_at``) its probe's one inventory."""
        for chunk in _id_chunks(row["probe_id"] for row in rows):
            await session.execute(delete(ProbeInventory).where(ProbeInventory.probe_id.in_(chunk)))
        await insert_rows(session, ProbeInventory, rows)

    async def update_probes(self, session: AsyncSession, rows: list[dict[str, Any]]) -> None:
        """Set columns of many probes, one executemany per set of columns (each dict carries ``id``)."""
        await update_rows(session, Probe, rows, key="id")

    async def count_with_policy(self, session: AsyncSession, policy_id: str) -> int:
        statement = select(func.count()).select_from(Probe).where(Probe.policy_id == policy_id)
        return int((await session.execute(statement)).scalar_one())
