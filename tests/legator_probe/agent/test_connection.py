"""The agent's WebSocket shell lets go of each frame once it is handled, in both directions.

A probe can idle for hours between two frames from the control plane; the last one (a ``file_write`` may
carry 16 MiB) must not stay alive all that time, nor the last frame it sent (an inventory, a capped result).
"""

import gc
import tracemalloc
import weakref
from collections.abc import Callable
from datetime import UTC, datetime
from typing import cast

import anyio
import pytest
from websockets.asyncio.client import ClientConnection

from legator_probe.agent._connection import AgentConnection
from legator_probe.protocol.connection import Event, ProbeProtocol, Side
from legator_probe.protocol.messages import ErrorMessage, WelcomeMessage, dump_message, new_message_id
from legator_probe.protocol.payloads import ErrorPayload, HelloPayload, WelcomePayload
from legator_probe.protocol.signing import Verifier

pytestmark = pytest.mark.anyio

_BIG = 4 * 1024 * 1024
"""Characters of the large frames; far above everything else the test allocates."""


def _welcome() -> str:
    now = datetime.now(UTC)
    return dump_message(
        WelcomeMessage(id=new_message_id(), ts=now, payload=WelcomePayload(server_time=now, policy_level="observe"))
    )


def _big_error() -> str:
    payload = ErrorPayload(code="big", message="x" * _BIG)
    return dump_message(ErrorMessage(id=new_message_id(), ts=datetime.now(UTC), payload=payload))


class _IdleGateway:
    """A WebSocket that delivers frames built on demand, then stays silent until closed; it drops what is sent."""

    def __init__(self, *frames: Callable[[], str]) -> None:
        self._frames = list(frames)
        self.idle = anyio.Event()
        self.sent = 0
        self.sent_one = anyio.Event()
        self.close_code: int | None = None
        self._closed = anyio.Event()

    def __aiter__(self) -> "_IdleGateway":
        return self

    async def __anext__(self) -> str:
        if self._frames:
            return self._frames.pop(0)()
        self.idle.set()
        await self._closed.wait()
        raise StopAsyncIteration

    async def send(self, frame: str) -> None:
        self.sent += 1
        self.sent_one.set()

    async def close(self, code: int = 1000) -> None:
        self.close_code = code
        self._closed.set()


def _held_bytes() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def test_frames_are_not_kept_alive_while_the_connection_idles() -> None:
    gateway = _IdleGateway(_welcome, _big_error)
    protocol = ProbeProtocol(Side.AGENT, verifier=Verifier(probe_id="prb-test", now=lambda: datetime.now(UTC)))
    connection = AgentConnection(cast(ClientConnection, gateway), protocol)
    handled: list[weakref.ref[Event]] = []

    async def handler(event: Event) -> None:
        handled.append(weakref.ref(event))

    hello = HelloPayload(probe_id="prb-test", version="1", hostname="host")
    await connection.send(lambda p: p.send_hello(hello))
    tracemalloc.start()
    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(connection.run, handler)
                await gateway.idle.wait()
                assert len(handled) == 2
                assert [ref() for ref in handled] == [None, None]
                assert _held_bytes() < _BIG // 4  # neither the received frame's text nor its parsed message

                gateway.sent_one = anyio.Event()
                await connection.send(lambda p: p.send_error(ErrorPayload(code="big", message="y" * _BIG)))
                await gateway.sent_one.wait()
                await anyio.sleep(0.05)  # the writer is back waiting for the next frame
                assert _held_bytes() < _BIG // 4  # nor the frame it just sent
                await connection.close()
    finally:
        tracemalloc.stop()
    assert gateway.sent == 2 and gateway.close_code == 1000
