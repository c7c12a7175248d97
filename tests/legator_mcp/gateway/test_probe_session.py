"""A probe's session seen from the probe's side of the wire (the agent's protocol over a plain WebSocket client).

- A connection keeps being read while the database writer is busy. The server stops reading a WebSocket until
  the application has taken its last message; a session that waited for the writer with each heartbeat left the
  probe's keepalive pings unanswered, and under a write backlog probes gave up and redialled
  (bench/probe_swarm.py, 10,000 probes).
- The welcome names the inventory on file, so an unchanged host need not resend it on connecting.
"""

from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime
from typing import Any, TypeVar

import anyio
import pytest
import websockets.asyncio.client as ws_client
from tests.support.app import Running, serve
from tests.support.probes import register_probe
from tests.support.waiting import until

from legator_mcp.audit.schemas import AuditQuery
from legator_mcp.errors import NotFound
from legator_mcp.principal import Principal
from legator_mcp.settings import Settings
from legator_probe.protocol import (
    ErrorMessage,
    HeartbeatPayload,
    HelloPayload,
    InventoryPayload,
    KeyRotationMessage,
    PackageInfo,
    PolicyUpdateMessage,
    ProbeProtocol,
    Side,
    TrustedKey,
    Verifier,
    WelcomeMessage,
    decode_public_key,
    inventory_digest,
)

pytestmark = pytest.mark.anyio

E = TypeVar("E")


@pytest.fixture
async def cp(settings: Settings) -> AsyncIterator[Running]:
    async with serve(settings) as running:
        yield running


class _Probe:
    """The agent's side of the protocol over a plain WebSocket client: enough to say hello and report."""

    def __init__(self, ws: ws_client.ClientConnection, registered: dict[str, Any]) -> None:
        self.ws = ws
        key = registered["signing_key"]
        verifier = Verifier(
            probe_id=registered["probe_id"], now=lambda: datetime.now(UTC),
            keys=[TrustedKey(key["key_id"], decode_public_key(key["public_key"]))],
        )  # fmt: skip
        self.protocol = ProbeProtocol(Side.AGENT, verifier=verifier)

    async def flush(self) -> None:
        for frame in self.protocol.data_to_send():
            await self.ws.send(frame)

    async def until_policy(self) -> WelcomeMessage:
        """Read until the welcome and the signed policy have come; returns the welcome."""
        welcome: WelcomeMessage | None = None
        async for raw in self.ws:
            self.protocol.receive_text(str(raw))
            for event in self.protocol.events_received():
                if isinstance(event, WelcomeMessage):
                    welcome = event
                if isinstance(event, PolicyUpdateMessage) and welcome is not None:
                    return welcome
        raise AssertionError("the connection closed before the handshake completed")

    async def next_event(self, kind: type[E]) -> E:
        """Read until an event of ``kind`` comes (a signed one only once its signature checked out)."""
        async for raw in self.ws:
            self.protocol.receive_text(str(raw))
            for event in self.protocol.events_received():
                if isinstance(event, kind):
                    return event
        raise AssertionError(f"the connection closed before a {kind.__name__} came")


def _heartbeat(uptime_s: float) -> HeartbeatPayload:
    return HeartbeatPayload(
        uptime_s=uptime_s, load=(0.1, 0.1, 0.1), mem_total_bytes=8 * 2**30, mem_used_bytes=2**30,
        disk_total_bytes=100 * 2**30, disk_used_bytes=10 * 2**30,
    )  # fmt: skip


async def test_a_connection_is_still_read_while_its_heartbeats_wait_for_the_writer(cp: Running) -> None:
    registered = await register_probe(cp.base_url, cp.admin_key, "busy-writer-1")
    probe_id = registered["probe_id"]
    url = cp.base_url.replace("http://", "ws://") + "/ws/probe"
    services = cp.app.services
    headers = {"Authorization": f"Bearer {registered['credential']}"}
    with anyio.fail_after(30):
        async with ws_client.connect(url, additional_headers=headers, ping_interval=None) as ws:
            probe = _Probe(ws, registered)
            probe.protocol.send_hello(HelloPayload(probe_id=probe_id, version="1.0.0", hostname="busy-writer-1"))
            await probe.flush()
            await probe.until_policy()
            await until(lambda: services.hub.is_connected(probe_id))
            async with services.database.write():
                # The writer is held: each heartbeat below needs it. The reader must still take the frame after
                # them: a malformed one, which it answers with a protocol error without touching the database.
                for uptime in (101.0, 102.0, 103.0):
                    probe.protocol.send_heartbeat(_heartbeat(uptime))
                await probe.flush()
                await ws.send("{not json")
                with anyio.fail_after(5):
                    error = await probe.next_event(ErrorMessage)
                assert error.payload.code == "malformed_message"

            # Released: the heartbeats are written, and the last one is what the probe's health shows.
            async def last_uptime() -> float | None:
                metrics = (await services.fleet.health(probe_id)).metrics
                return None if metrics is None else metrics.uptime_s

            await until(lambda: _equals(last_uptime(), 103.0))


async def _equals(value: Awaitable[float | None], expected: float) -> bool:
    return await value == expected


async def test_the_welcome_names_the_inventory_on_file(cp: Running) -> None:
    registered = await register_probe(cp.base_url, cp.admin_key, "inventory-1")
    probe_id = registered["probe_id"]
    url = cp.base_url.replace("http://", "ws://") + "/ws/probe"
    headers = {"Authorization": f"Bearer {registered['credential']}"}
    hello = HelloPayload(probe_id=probe_id, version="1.0.0", hostname="inventory-1")
    inventory = InventoryPayload(
        hostname="inventory-1", os="linux", os_version="12", kernel="6.1.0", arch="x86_64", cpus=2,
        mem_total_bytes=2**30, packages=[PackageInfo(name="curl", version="8.0", manager="dpkg")],
        collected_at=datetime.now(UTC),
    )  # fmt: skip
    with anyio.fail_after(30):
        async with ws_client.connect(url, additional_headers=headers) as ws:
            probe = _Probe(ws, registered)
            probe.protocol.send_hello(hello)
            await probe.flush()
            assert (await probe.until_policy()).payload.inventory_digest is None  # nothing on file yet
            probe.protocol.send_inventory(inventory)
            await probe.flush()
            await until(lambda: _has_inventory(cp, probe_id))
        async with ws_client.connect(url, additional_headers=headers) as ws:
            probe = _Probe(ws, registered)
            probe.protocol.send_hello(hello)
            await probe.flush()
            welcome = await probe.until_policy()
    assert welcome.payload.inventory_digest == inventory_digest(inventory)


async def _has_inventory(cp: Running, probe_id: str) -> bool:
    try:
        await cp.app.services.fleet.get_inventory(probe_id)
    except NotFound:
        return False
    return True


async def test_a_key_rotation_lost_with_its_connection_is_signed_for_and_sent_again(cp: Running) -> None:
    registered = await register_probe(cp.base_url, cp.admin_key, "rotation-1")
    probe_id, old_key = registered["probe_id"], registered["signing_key"]["key_id"]
    url = cp.base_url.replace("http://", "ws://") + "/ws/probe"
    headers = {"Authorization": f"Bearer {registered['credential']}"}
    hello = HelloPayload(probe_id=probe_id, version="1.0.0", hostname="rotation-1", trusted_key_ids=[old_key])
    services = cp.app.services
    with anyio.fail_after(30):
        async with ws_client.connect(url, additional_headers=headers) as ws:
            probe = _Probe(ws, registered)
            probe.protocol.send_hello(hello)
            await probe.flush()
            await probe.until_policy()
            rotated = await services.fleet.rotate_key(actor=Principal.system("tests"), probe_id=probe_id)
            assert rotated.delivery == "pushed"
            # The rotation was queued on this connection, which drops before the probe applies it.
        async with ws_client.connect(url, additional_headers=headers) as ws:
            probe = _Probe(ws, registered)  # still trusts only the old key, and says so
            probe.protocol.send_hello(hello)
            await probe.flush()
            await probe.until_policy()  # signed with the key it trusts, so it verifies
            rotation = await probe.next_event(KeyRotationMessage)
    assert rotation.payload.new_key_id == rotated.key_id

    async def delivered() -> list[tuple[str | None, object]]:
        # Audited once the push succeeded, so possibly just after the probe has the frame.
        events = (await services.audit.search(AuditQuery(type="probe.key_delivered"))).events
        return [(e.probe_id, (e.detail or {}).get("redelivered")) for e in events]

    assert await until(delivered) == [(probe_id, True)]


async def test_a_probe_trusting_none_of_its_keys_is_audited_and_published(cp: Running) -> None:
    registered = await register_probe(cp.base_url, cp.admin_key, "untrusting-1")
    probe_id, key_id = registered["probe_id"], registered["signing_key"]["key_id"]
    url = cp.base_url.replace("http://", "ws://") + "/ws/probe"
    headers = {"Authorization": f"Bearer {registered['credential']}"}
    services = cp.app.services
    with anyio.fail_after(30):
        async with services.events.subscribe("probe.keys_untrusted") as untrusted:
            # A probe from before trusted_key_ids (None) says nothing either way: not reported.
            async with ws_client.connect(url, additional_headers=headers) as ws:
                probe = _Probe(ws, registered)
                probe.protocol.send_hello(HelloPayload(probe_id=probe_id, version="1.0.0", hostname="untrusting-1"))
                await probe.flush()
                await probe.until_policy()
            assert await untrusted.next(timeout=0.5) is None
            # One that lists only keys the control plane never gave it (an old config restored) is.
            async with ws_client.connect(url, additional_headers=headers) as ws:
                probe = _Probe(ws, registered)
                hello = HelloPayload(
                    probe_id=probe_id, version="1.0.0", hostname="untrusting-1", trusted_key_ids=["g7-0123abcd"]
                )
                probe.protocol.send_hello(hello)
                await probe.flush()
                event = await untrusted.next(timeout=20)
                await probe.until_policy()  # still connected, still sent its policy (which it would refuse)
    assert event is not None and event.probe_id == probe_id
    assert event.detail == {"generation": 1, "expected_key_ids": [key_id], "trusted_key_ids": ["g7-0123abcd"]}
    audited = (await services.audit.search(AuditQuery(type="probe.keys_untrusted"))).events
    assert [(e.probe_id, e.detail) for e in audited] == [(probe_id, event.detail)]
    assert "re-register" in audited[0].summary


@pytest.fixture
async def slow_inventories(settings: Settings) -> AsyncIterator[Running]:
    paced = settings.model_copy(update={"probe_inventory_per_second": 0.01, "probe_inventory_max_delay_s": 3600.0})
    async with serve(paced) as running:
        yield running


async def test_the_welcome_gives_each_connection_a_later_slot_for_its_inventory(slow_inventories: Running) -> None:
    cp = slow_inventories
    url = cp.base_url.replace("http://", "ws://") + "/ws/probe"
    delays: list[float | None] = []
    with anyio.fail_after(30):
        for name in ("paced-1", "paced-2"):
            registered = await register_probe(cp.base_url, cp.admin_key, name)
            headers = {"Authorization": f"Bearer {registered['credential']}"}
            async with ws_client.connect(url, additional_headers=headers) as ws:
                probe = _Probe(ws, registered)
                probe.protocol.send_hello(HelloPayload(probe_id=registered["probe_id"], version="1.0", hostname=name))
                await probe.flush()
                delays.append((await probe.until_policy()).payload.inventory_delay_s)
    assert delays[0] == 0.0  # the first to connect sends at once
    assert delays[1] is not None and 99 < delays[1] <= 100  # the next slot, 1 / 0.01 s later
