"""The agent's WebSocket I/O shell around the sans-I/O :class:`~legator_probe.protocol.ProbeProtocol`.

One :class:`AgentConnection` per WebSocket. Its reader runs *read → receive_text → send
data_to_send() → hand each event to the handler*; a single writer task drains a bounded queue of
frames to the socket, so a slow network holds back producers (command output) instead of growing
memory. Frames leave in the order they were queued.
"""

import logging
from collections.abc import Awaitable, Callable
from typing import Final

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from legator_probe.protocol.connection import Event, ProbeProtocol, State
from legator_probe.protocol.errors import CLOSE_NORMAL, InvalidState

__all__ = ["DEFAULT_SEND_QUEUE", "AgentConnection", "ConnectionGone"]

logger = logging.getLogger(__name__)

DEFAULT_SEND_QUEUE: Final = 64
"""Frames queued for the writer before senders wait."""

EventHandler = Callable[[Event], Awaitable[None]]


class ConnectionGone(Exception):
    """Raised by :meth:`AgentConnection.send` when the connection is closing or closed."""


class AgentConnection:
    """One live WebSocket to the control plane, speaking the probe protocol.

    Attributes:
        protocol: The state machine of this connection.
        close_code: The close code the server sent or that we closed with, once closed.
    """

    def __init__(
        self,
        websocket: ClientConnection,
        protocol: ProbeProtocol,
        *,
        send_queue_size: int = DEFAULT_SEND_QUEUE,
        close_timeout_s: float = 5.0,
    ) -> None:
        """Wrap an open WebSocket.

        Args:
            websocket: The connected client WebSocket.
            protocol: A fresh agent-side protocol in ``CONNECTING``.
            send_queue_size: Bound of the outgoing frame queue.
            close_timeout_s: How long :meth:`close` waits for queued frames to leave.
        """
        self.protocol = protocol
        self.close_code: int | None = None
        self._websocket = websocket
        self._close_timeout = close_timeout_s
        self._send: MemoryObjectSendStream[str]
        self._receive: MemoryObjectReceiveStream[str]
        self._send, self._receive = anyio.create_memory_object_stream[str](send_queue_size)
        self._closing = False
        self._writer_done = anyio.Event()

    @property
    def open(self) -> bool:
        """Whether frames can still be sent."""
        return not self._closing and self.protocol.state < State.CLOSING

    async def send(self, operation: Callable[[ProbeProtocol], object]) -> None:
        """Queue the frames produced by a protocol sender, e.g. ``lambda p: p.send_heartbeat(payload)``.

        Waits while the send queue is full.

        Raises:
            ConnectionGone: The connection is closing or closed; nothing was queued.
        """
        if not self.open:
            raise ConnectionGone("the connection is closed")
        try:
            operation(self.protocol)
        except InvalidState as exc:
            raise ConnectionGone(str(exc)) from exc
        await self._enqueue(self.protocol.data_to_send())

    async def _enqueue(self, frames: list[str]) -> None:
        try:
            for frame in frames:
                await self._send.send(frame)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise ConnectionGone("the connection is closed") from None

    async def run(self, handler: EventHandler) -> None:
        """Read frames until the connection closes, passing every protocol event to ``handler``.

        Returns when the WebSocket is closed, by either side or because the protocol failed.
        """
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(self._write)
            try:
                await self._read(handler)
            finally:
                self._closing = True
                self._send.close()
                with anyio.move_on_after(self._close_timeout, shield=True):
                    await self._writer_done.wait()
                task_group.cancel_scope.cancel()
                with anyio.CancelScope(shield=True):
                    await self._websocket.close(self.protocol.close_code or CLOSE_NORMAL)
                self.close_code = self._websocket.close_code
                self.protocol.receive_close()
                self._receive.close()

    async def _read(self, handler: EventHandler) -> None:
        try:
            async for raw in self._websocket:
                await self._receive_frame(raw, handler)
                del raw  # not kept (up to max_frame_bytes) while waiting, maybe for hours, for the next frame
                if self.protocol.state >= State.CLOSING:
                    if self.protocol.protocol_exc is not None:
                        logger.warning("closing the connection: %s", self.protocol.protocol_exc.message)
                    return
                if self._closing:
                    return
        except ConnectionClosed:
            pass
        except ConnectionGone:
            pass

    async def _receive_frame(self, raw: str | bytes, handler: EventHandler) -> None:
        """Feed one frame to the protocol, queue its answers and hand its events to ``handler``.

        A method of its own so that the frame's text and events die with it when it returns.
        """
        text = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
        self.protocol.receive_text(text)
        await self._enqueue(self.protocol.data_to_send())
        for event in self.protocol.events_received():
            await handler(event)

    async def _write(self) -> None:
        try:
            async with self._receive:
                async for frame in self._receive:
                    await self._websocket.send(frame)
                    del frame  # the last frame sent (an inventory, a capped result) is not kept while idle
        except ConnectionClosed:
            self._closing = True
        finally:
            self._writer_done.set()

    async def close(self, code: int = CLOSE_NORMAL) -> None:
        """Close from our side once queued frames have left (bounded by ``close_timeout_s``)."""
        if self._closing:
            return
        self.protocol.close(code)
        self._closing = True
        self._send.close()
        with anyio.move_on_after(self._close_timeout):
            await self._writer_done.wait()
        await self._websocket.close(code)
