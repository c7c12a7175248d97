"""What the gateway reports about probes: connections, heartbeats, inventory, and the offline sweep.

Only status transitions are audited and published, once each; an ordinary heartbeat writes no audit record.
Connections, disconnections, heartbeats and inventories are group-committed (:class:`GroupCommit`): reports
arriving while a batch is being written are written together in the next one, so a reconnect storm or a
heartbeat wave costs a few transactions, not one per probe.
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

from sqlalchemy.ext.asyncio import AsyncSession

from legator_mcp.audit.service import AuditEntry, AuditService
from legator_mcp.db._errors import map_db_errors
from legator_mcp.db.group_commit import GroupCommit
from legator_mcp.db.session import Database
from legator_mcp.errors import InvalidRequest, LegatorError, NotFound, ServiceUnavailable
from legator_mcp.events.service import EventBus
from legator_mcp.fleet import _views
from legator_mcp.fleet._health import RECOVERY_MARGIN, assess
from legator_mcp.fleet.models import Probe
from legator_mcp.fleet.schemas import CLOSE_HEARTBEAT_TIMEOUT, HeartbeatRead, InventoryReport, ProbeRead, ProbeStatus
from legator_mcp.fleet.store import FleetStore
from legator_mcp.principal import Principal, PrincipalKind
from legator_probe.protocol.payloads import HeartbeatPayload, HelloPayload

__all__ = ["Presence"]

R = TypeVar("R")

Disconnect = Callable[[str, int, str], Awaitable[bool]]
"""``(probe_id, close_code, reason)``: close the probe's live connection, if any; returns whether it had one."""


def _transition_type(previous: str, new: str) -> str:
    if new == "offline":
        return "probe.offline"
    if new == "degraded":
        return "probe.degraded"
    return "probe.recovered" if previous == "degraded" else "probe.online"


@dataclass(frozen=True)
class _Transition:
    probe_id: str
    hostname: str
    previous: str
    new: str
    reason: str

    @property
    def type(self) -> str:
        return _transition_type(self.previous, self.new)

    @property
    def summary(self) -> str:
        return f"probe {self.hostname} ({self.probe_id}) {self.previous} → {self.new}: {self.reason}"

    @property
    def detail(self) -> dict[str, Any]:
        return {"from": self.previous, "to": self.new, "reason": self.reason, "hostname": self.hostname}


class Presence:
    """Keeps each probe's status, last-seen time, metrics, health and inventory current."""

    def __init__(
        self,
        *,
        database: Database,
        audit: AuditService,
        events: EventBus,
        store: FleetStore,
        clock: Callable[[], datetime],
        timing: _views.Timing,
        is_connected: Callable[[str], bool],
        heard_within: Callable[[str, float], bool],
        disconnect: Disconnect,
    ) -> None:
        self._db = database
        self._audit = audit
        self._events = events
        self._store = store
        self._clock = clock
        self._timing = timing
        self._is_connected = is_connected
        self._heard_within = heard_within
        self._disconnect = disconnect
        self._connects = GroupCommit[str, tuple[HelloPayload, datetime], ProbeRead](self._write_connects)
        self._disconnects = GroupCommit[str, tuple[str, datetime], None](self._write_disconnects)
        self._heartbeats = GroupCommit[str, tuple[HeartbeatPayload, datetime], HeartbeatRead](self._write_heartbeats)
        self._inventories = GroupCommit[str, tuple[InventoryReport, datetime], bool](self._write_inventories)

    @staticmethod
    async def _submit(group: "GroupCommit[str, Any, R]", probe_id: str, value: Any, what: str) -> R | None:
        try:
            return await group.submit(probe_id, value)
        except LegatorError:
            raise
        except Exception as exc:
            raise ServiceUnavailable(f"the {what} could not be recorded") from exc

    @staticmethod
    def _found(result: R | None, probe_id: str) -> R:
        if result is None:
            raise NotFound(f"probe {probe_id} not found", details={"probe_id": probe_id})
        return result

    async def _require(self, session: AsyncSession, probe_id: str) -> Probe:
        probe = await self._store.probe(session, probe_id, for_update=True)
        if probe is None:
            raise NotFound(f"probe {probe_id} not found", details={"probe_id": probe_id})
        return probe

    async def _record(self, session: AsyncSession, transitions: list[_Transition], actor: Principal | None) -> None:
        # One append for the batch: 10,000 probes going offline at a shutdown, or online in a storm, is one lock of
        # the chain head and one insert (one record() each took the 10,000-probe shutdown over 30 s).
        entries = [
            AuditEntry(
                type=t.type, actor=actor or f"probe:{t.probe_id}", principal_kind=PrincipalKind.PROBE,
                probe_id=t.probe_id, summary=t.summary, detail=t.detail,
            )
            for t in transitions
        ]  # fmt: skip
        if entries:
            await self._audit.record_many(entries, session=session)

    def _publish(self, transitions: list[_Transition]) -> None:
        for t in transitions:
            self._events.publish(t.type, summary=t.summary, probe_id=t.probe_id, detail=t.detail)

    async def connected(self, *, probe_id: str, hello: HelloPayload) -> ProbeRead:
        if hello.probe_id != probe_id:
            raise InvalidRequest("hello names another probe", details={"probe_id": probe_id})
        result = await self._submit(self._connects, probe_id, (hello, self._clock()), "connection")
        return self._found(result, probe_id)

    async def _write_connects(self, items: dict[str, tuple[HelloPayload, datetime]]) -> dict[str, ProbeRead]:
        results: dict[str, ProbeRead] = {}
        transitions: list[_Transition] = []
        async with self._db.write() as session:
            for probe_id, probe in (await self._store.probes(session, list(items), for_update=True)).items():
                hello, now = items[probe_id]
                probe.connected_at = probe.last_seen_at = now
                probe.version = hello.version[:64]
                new = "degraded" if probe.status == "degraded" else "online"
                if new != probe.status:
                    transitions.append(_Transition(probe_id, probe.hostname, probe.status, new, "probe connected"))
                    probe.status, probe.status_changed_at = new, now
                results[probe_id] = _views.probe_read(probe, now=now, timing=self._timing)
            await self._record(session, transitions, None)
        self._publish(transitions)
        return results

    async def disconnected(self, *, probe_id: str, reason: str) -> None:
        if not self._is_connected(probe_id):
            await self._submit(self._disconnects, probe_id, (reason, self._clock()), "disconnection")

    async def _write_disconnects(self, items: dict[str, tuple[str, datetime]]) -> dict[str, None]:
        transitions: list[_Transition] = []
        rows: list[dict[str, Any]] = []
        async with self._db.write() as session:
            # A probe that reconnected while this batch waited keeps its status.
            gone = [probe_id for probe_id in items if not self._is_connected(probe_id)]
            for probe_id, hostname, status, _, _ in await self._store.presence_rows(session, gone):
                if status in ("offline", "pending"):
                    continue
                reason, now = items[probe_id]
                transitions.append(_Transition(probe_id, hostname, status, "offline", reason[:200]))
                rows.append({"id": probe_id, "status": "offline", "status_changed_at": now})
            await self._store.update_probes(session, rows)
            await self._record(session, transitions, None)
        self._publish(transitions)
        return {}

    async def heartbeat(self, *, probe_id: str, heartbeat: HeartbeatPayload) -> HeartbeatRead:
        result = await self._submit(self._heartbeats, probe_id, (heartbeat, self._clock()), "heartbeat")
        return self._found(result, probe_id)

    def _judge(
        self, probe_id: str, hostname: str, status: str, cpus: int | None, heartbeat: HeartbeatPayload, seen: datetime
    ) -> tuple[dict[str, Any], HeartbeatRead, _Transition | None]:
        """The column values a heartbeat writes, its result, and the status transition it causes (if any)."""
        metrics = heartbeat.model_dump(mode="json")
        timing = self._timing
        kwargs: dict[str, Any] = {
            "cpus": cpus, "heartbeat_age_s": None, "heartbeat_interval_s": timing.heartbeat_interval_s,
            "offline_after_s": timing.offline_after_s,
        }  # fmt: skip
        health = assess(metrics, **kwargs)
        verdict = assess(metrics, margin=RECOVERY_MARGIN, **kwargs) if status == "degraded" else health
        new: ProbeStatus = "online" if verdict.status == "healthy" else "degraded"
        transition = None
        if new != status:
            why = "; ".join(r.message for r in verdict.reasons) or "all health checks pass"
            transition = _Transition(probe_id, hostname, status, new, why)
        values: dict[str, Any] = {
            "id": probe_id, "last_seen_at": seen, "metrics": metrics, "health_score": health.score,
            "health_reasons": [r.model_dump(mode="json") for r in health.reasons], "status": new,
        }  # fmt: skip
        result = HeartbeatRead(
            probe_id=probe_id, status=new, previous_status=cast(ProbeStatus, status), health_score=health.score,
            health_status=health.status,
        )  # fmt: skip
        return values, result, transition

    async def _write_heartbeats(self, items: dict[str, tuple[HeartbeatPayload, datetime]]) -> dict[str, HeartbeatRead]:
        results: dict[str, HeartbeatRead] = {}
        transitions: list[_Transition] = []
        rows: list[dict[str, Any]] = []
        with map_db_errors():
            async with self._db.write() as session:
                for probe_id, hostname, status, cpus, changed_at in await self._store.presence_rows(
                    session, list(items)
                ):
                    heartbeat, seen = items[probe_id]
                    values, results[probe_id], transition = self._judge(
                        probe_id, hostname, status, cpus, heartbeat, seen
                    )
                    # Every row sets the same columns, so the store can write them all in one executemany.
                    values["status_changed_at"] = changed_at if transition is None else seen
                    rows.append(values)
                    if transition is not None:
                        transitions.append(transition)
                await self._store.update_probes(session, rows)
                await self._record(session, transitions, None)
        self._publish(transitions)
        return results

    async def inventory(self, *, probe_id: str, report: InventoryReport) -> None:
        self._found(await self._submit(self._inventories, probe_id, (report, self._clock()), "inventory"), probe_id)

    async def _write_inventories(self, items: dict[str, tuple[InventoryReport, datetime]]) -> dict[str, bool]:
        # Three statements per batch whatever its size; whoever reads an inventory reads it from the database.
        async with self._db.write() as session:
            found = [row[0] for row in await self._store.presence_rows(session, list(items))]
            inventories: list[dict[str, Any]] = []
            probes: list[dict[str, Any]] = []
            for probe_id in found:
                report, now = items[probe_id]
                inventories.append(
                    {"probe_id": probe_id, "data": report.data, "collected_at": report.collected_at, "received_at": now}
                )
                probes.append({
                    "id": probe_id, "os": report.os, "arch": report.arch, "kernel": report.kernel, "cpus": report.cpus,
                    "mem_total_bytes": report.mem_total_bytes, "disk_total_bytes": report.disk_total_bytes,
                    "inventory_collected_at": report.collected_at, "inventory_digest": report.digest,
                })  # fmt: skip
            await self._store.replace_inventories(session, inventories)
            await self._store.update_probes(session, probes)
        return dict.fromkeys(found, True)

    async def sweep(self, *, offline_after: timedelta) -> list[str]:
        now = self._clock()
        transitions: list[_Transition] = []
        async with self._db.write() as session:
            stale = await self._store.stale_live_probes(session, seen_before=now - offline_after)
            # A probe whose connection delivered a frame lately is alive: its heartbeat waits for the writer.
            silent = offline_after.total_seconds()
            stale = [row for row in stale if not self._heard_within(row[0], silent)]
            await self._store.mark_offline(session, [probe_id for probe_id, _, _ in stale], now)
            reason = f"no heartbeat for more than {offline_after.total_seconds():g}s"
            transitions = [
                _Transition(probe_id, hostname, status, "offline", reason) for probe_id, hostname, status in stale
            ]
            await self._record(session, transitions, Principal.system("fleet-sweeper"))
        self._publish(transitions)
        for t in transitions:
            # Silent that long but still connected here: the connection is dead or stuck; the probe will redial.
            await self._disconnect(t.probe_id, CLOSE_HEARTBEAT_TIMEOUT, "no heartbeat")
        return [t.probe_id for t in transitions]
