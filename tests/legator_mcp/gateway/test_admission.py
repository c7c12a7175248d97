"""Admission of probe connections: a bounded rate and a cap on handshakes in progress, answered 503 + Retry-After."""

import random
from collections.abc import AsyncIterator

import anyio
import pytest
import websockets.asyncio.client as ws_client
from tests.support.app import Running, serve
from tests.support.probes import register_probe
from tests.support.waiting import until
from websockets.exceptions import InvalidStatus

from legator_mcp.gateway._admission import Admission, InventoryPacer
from legator_mcp.settings import Settings

pytestmark = pytest.mark.anyio


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_the_bucket_admits_a_burst_then_says_how_long_to_wait() -> None:
    clock = _Clock()
    door = Admission(per_second=0.5, burst=3, max_handshakes=100, clock=clock)
    assert [door.take_token() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert door.take_token() == pytest.approx(2.0)  # one token at 0.5/s
    clock.now += 2.0
    assert door.take_token() == 0.0


async def test_inventories_get_one_slot_each_at_the_paced_rate_up_to_the_longest_delay() -> None:
    clock = _Clock()
    pacer = InventoryPacer(per_second=4, max_delay_s=1.0, clock=clock)
    assert [pacer.delay() for _ in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]  # a storm: later slots, capped
    clock.now += 0.5
    assert pacer.delay() == pytest.approx(0.75)  # the next free slot, not the cap: the capped ones share one
    clock.now += 60
    assert pacer.delay() == 0.0  # idle again: a probe connecting alone is not made to wait
    assert pacer.delay() == 0.25


async def test_connections_queue_for_a_handshake_slot_in_order() -> None:
    door = Admission(per_second=100, burst=100, max_handshakes=1, queue_wait_s=10)
    order: list[str] = []

    async def connect(name: str) -> None:
        assert await door.wait_for_slot() == 0.0
        order.append(name)

    with anyio.fail_after(5):
        assert await door.wait_for_slot() == 0.0
        assert door.saturated
        async with anyio.create_task_group() as tg:
            for name in ("a", "b", "c"):
                tg.start_soon(connect, name)
                await anyio.wait_all_tasks_blocked()
            for _ in range(3):
                door.release_slot()
                await anyio.wait_all_tasks_blocked()
    assert order == ["a", "b", "c"]


async def test_a_connection_that_waited_too_long_is_told_to_come_back_later_spread_by_the_queue() -> None:
    door = Admission(per_second=100, burst=100, max_handshakes=1, queue_wait_s=0.05, rng=random.Random(7))
    with anyio.fail_after(5):
        assert await door.wait_for_slot() == 0.0
        waits: list[float] = []

        async def queued() -> None:
            waits.append(await door.wait_for_slot())

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(queued)
    # Nobody got the slot; each was given a delay within the span the queue needs (50 waiting at >= 1/s).
    assert len(waits) == 50 and all(1.0 <= wait <= 50.0 for wait in waits)
    assert max(waits) - min(waits) > 10  # spread out, not a herd returning together
    assert door.saturated


@pytest.fixture
async def one_handshake(settings: Settings) -> AsyncIterator[Running]:
    """A served control plane that lets one probe handshake run at a time."""
    async with serve(settings.model_copy(update={"probe_max_handshakes": 1, "probe_handshake_queue_s": 0.2})) as cp:
        yield cp


async def _credential(cp: Running, hostname: str) -> str:
    return str((await register_probe(cp.base_url, cp.admin_key, hostname))["credential"])


async def test_a_probe_is_told_to_back_off_while_the_handshake_slots_are_taken(one_handshake: Running) -> None:
    cp = one_handshake
    url = cp.base_url.replace("http://", "ws://") + "/ws/probe"
    first, second = await _credential(cp, "slow-1"), await _credential(cp, "slow-2")
    with anyio.fail_after(20):
        # The first probe is admitted and holds the only slot: it has not said hello yet.
        async with ws_client.connect(url, additional_headers={"Authorization": f"Bearer {first}"}):
            with pytest.raises(InvalidStatus) as refused:
                async with ws_client.connect(url, additional_headers={"Authorization": f"Bearer {second}"}):
                    pass
            response = refused.value.response
            assert response.status_code == 503
            assert int(response.headers["Retry-After"]) >= 1
            assert b"backoff" in response.body
        # Its connection ended, so the slot is free again (released by the session, not by a timer).
        await until(lambda: not cp.app.services.hub.admission_saturated)
        async with ws_client.connect(url, additional_headers={"Authorization": f"Bearer {second}"}):
            pass
