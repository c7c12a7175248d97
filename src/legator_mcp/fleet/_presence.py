"""What the gateway reports about probes: connections, heartbeats, inventory, and the offline sweep.

Only status transitions are audited and published, once each; an ordinary heartbeat writes no audit record.
Heartbeats are group-committed: those arriving while a batch is being written are written together in the
next one, so the cost per heartbeat falls as the fleet grows.
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

import anyio
from sqlalchemy.ext.asyncio import AsyncSession

from legator_mcp.audit.service import AuditService
from legator_mcp.db._errors import map_db_errors
from legator_mcp.db.session import Database
from legator_mcp.errors import InvalidRequest, NotFound, ServiceUnavailable
from legator_mcp.events.service import EventBus
from legator_mcp.fleet import _views
from legator_mcp.fleet._health import RECOVERY_MARGIN, assess
from legator_mcp.fleet.models import Probe, ProbeInventory
from legator_mcp.fleet.schemas import CLOSE_HEARTBEAT_TIMEOUT, HeartbeatRead, InventoryRead, ProbeRead, ProbeStatus
from legator_mcp.fleet.store import FleetStore
from legator_mcp.principal import Principal, PrincipalKind
from legator_probe.protocol.payloads import HeartbeatPayload, HelloPayload, InventoryPayload

__all__ = ["Presence"]

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


@dataclass
class _HeartbeatBatch:
    items: dict[str, tuple[HeartbeatPayload, datetime]] = field(
        default_factory=dict[str, tuple[HeartbeatPayload, datetime]]
    )
    results: dict[str, HeartbeatRead] = field(default_factory=dict[str, HeartbeatRead])
    done: bool = False
    error: BaseException | None = None


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
        disconnect: Disconnect,
    ) -> None:
        self._db = database
        self._audit = audit
        self._events = events
        self._store = store
        self._clock = clock
        self._timing = timing
        self._is_connected = is_connected
        self._disconnect = disconnect
        self._batch: _HeartbeatBatch | None = None
        self._lock = anyio.Lock()

    async def _require(self, session: AsyncSession, probe_id: str) -> Probe:
        probe = await self._store.probe(session, probe_id, for_update=True)
        if probe is None:
            raise NotFound(f"probe {probe_id} not found", details={"probe_id": probe_id})
        return probe

    async def _record(self, session: AsyncSession, transitions: list[_Transition], actor: Principal | None) -> None:
        for t in transitions:
            await self._audit.record(
                type=t.type,
                actor=actor or f"probe:{t.probe_id}",
                principal_kind=PrincipalKind.PROBE,
                probe_id=t.probe_id,
                summary=t.summary,
                detail=t.detail,
                session=session,
            )

    def _publish(self, transitions: list[_Transition]) -> None:
        for t in transitions:
            self._events.publish(t.type, summary=t.summary, probe_id=t.probe_id, detail=t.detail)

    async def connected(self, *, probe_id: str, hello: HelloPayload) -> ProbeRead:
        if hello.probe_id != probe_id:
            raise InvalidRequest("hello names another probe", details={"probe_id": probe_id})
        now = self._clock()
        transitions: list[_Transition] = []
        async with self._db.write() as session:
            probe = await self._require(session, probe_id)
            probe.connected_at = probe.last_seen_at = now
            probe.version = hello.version[:64]
            new = "degraded" if probe.status == "degraded" else "online"
            if new != probe.status:
                transitions.append(_Transition(probe_id, probe.hostname, probe.status, new, "probe connected"))
                probe.status, probe.status_changed_at = new, now
            await self._record(session, transitions, None)
            read = _views.probe_read(probe, now=now, timing=self._timing)
        self._publish(transitions)
        return read

    async def disconnected(self, *, probe_id: str, reason: str) -> None:
        if self._is_connected(probe_id):
            return
        now = self._clock()
        transitions: list[_Transition] = []
        async with self._db.write() as session:
            probe = await self._store.probe(session, probe_id, for_update=True)
            if probe is None or probe.status in ("offline", "pending"):
                return
            transitions.append(_Transition(probe_id, probe.hostname, probe.status, "offline", reason[:200]))
            probe.status, probe.status_changed_at = "offline", now
            await self._record(session, transitions, None)
        self._publish(transitions)

    async def heartbeat(self, *, probe_id: str, heartbeat: HeartbeatPayload) -> HeartbeatRead:
        batch = self._batch
        if batch is None:
            batch = self._batch = _HeartbeatBatch()
        batch.items[probe_id] = (heartbeat, self._clock())
        async with self._lock:
            if not batch.done:
                if self._batch is batch:
                    self._batch = None
                # Shielded: the batch carries other probes' heartbeats too, and their callers wait on it.
                with anyio.CancelScope(shield=True):
                    try:
                        batch.results = await self._write_heartbeats(batch.items)
                    except BaseException as exc:
                        batch.error = exc
                        raise
                    finally:
                        batch.done = True
        if batch.error is not None:
            raise ServiceUnavailable("the heartbeat could not be recorded") from batch.error
        result = batch.results.get(probe_id)
        if result is None:
            raise NotFound(f"probe {probe_id} not found", details={"probe_id": probe_id})
        return result

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
                for probe_id, hostname, status, cpus, changed_at in await self._store.heartbeat_targets(
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
                await self._store.apply_heartbeats(session, rows)
                await self._record(session, transitions, None)
        self._publish(transitions)
        return results

    async def inventory(self, *, probe_id: str, inventory: InventoryPayload) -> InventoryRead:
        now = self._clock()
        async with self._db.write() as session:
            probe = await self._require(session, probe_id)
            row = ProbeInventory(
                probe_id=probe_id, data=inventory.model_dump(mode="json"), collected_at=inventory.collected_at,
                received_at=now,
            )  # fmt: skip
            await self._store.put_inventory(session, row)
            probe.os = inventory.os[:64]
            probe.arch = inventory.arch[:32]
            probe.kernel = inventory.kernel[:255]
            probe.cpus = inventory.cpus
            probe.mem_total_bytes = inventory.mem_total_bytes
            probe.disk_total_bytes = sum(disk.total_bytes for disk in inventory.disks) or None
            probe.inventory_collected_at = inventory.collected_at
        return _views.inventory_read(row)

    async def sweep(self, *, offline_after: timedelta) -> list[str]:
        now = self._clock()
        transitions: list[_Transition] = []
        async with self._db.write() as session:
            stale = await self._store.stale_live_probes(session, seen_before=now - offline_after)
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
